//! Bad configuration and bad pod input: clear errors naming the problem, nothing left.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;

use contrast_config::RuntimeClassConfig;

use crate::{launch, Scratch};

fn load_err(scratch: &Scratch, text: &str) -> String {
    let path = scratch.dir.path().join("configuration.toml");
    std::fs::write(&path, text).expect("write config");
    let err = RuntimeClassConfig::load(&path).expect_err("config must be refused").to_string();
    assert!(err.contains(&path.display().to_string()), "error names the file: {err}");
    err
}

#[test]
fn missing_kernel_is_named() {
    let scratch = Scratch::new();
    let mut c = scratch.config();
    c.kernel = scratch.dir.path().join("no-such-vmlinux");
    let err = load_err(&scratch, &c.to_toml());
    assert!(err.contains("hypervisor.qemu.kernel") && err.contains("no-such-vmlinux"), "{err}");
    assert!(!scratch.state_root().exists());
}

#[test]
fn non_executable_qemu_is_named() {
    let scratch = Scratch::new();
    let qemu = scratch.dir.path().join("qemu-system-x86_64");
    std::fs::write(&qemu, "#!/bin/sh\n").expect("write");
    std::fs::set_permissions(&qemu, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let mut c = scratch.config();
    c.qemu = qemu;
    let err = load_err(&scratch, &c.to_toml());
    assert!(err.contains("hypervisor.qemu.path") && err.contains("not executable"), "{err}");
}

#[test]
fn garbage_config_is_refused_with_line() {
    let scratch = Scratch::new();
    let err = load_err(&scratch, "[hypervisor.qemu\nplatform = insecure\n");
    assert!(err.contains("line 1"), "{err}");
}

#[test]
fn annotation_outside_allowlist_is_refused() {
    let scratch = Scratch::new();
    let config = scratch.load(&scratch.config());
    let ann: BTreeMap<String, String> =
        [("io.katacontainers.config.hypervisor.default_vcpus".to_owned(), "2".to_owned())].into();
    let err = config.pod_overrides(&ann).expect_err("not allowlisted").to_string();
    assert!(err.contains("default_vcpus") && err.contains("not allowed"), "{err}");
}

#[test]
fn memory_above_maximum_is_refused() {
    let scratch = Scratch::new();
    let config = scratch.load(&scratch.config());
    let ann: BTreeMap<String, String> =
        [("io.katacontainers.config.hypervisor.default_memory".to_owned(), "65536".to_owned())].into();
    let err = config.pod_overrides(&ann).expect_err("above max").to_string();
    assert!(err.contains("65536 MiB") && err.contains("2048"), "{err}");
}

/// QEMU itself refuses the kernel: the launch fails with QEMU's own words, and the helper
/// and state dir are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kernel_qemu_cannot_load_leaves_nothing() {
    let scratch = Scratch::new();
    let bogus = scratch.dir.path().join("vmlinux-garbage");
    std::fs::write(&bogus, vec![0x5au8; 4096]).expect("write");
    let mut c = scratch.config();
    c.kernel = bogus;
    let config = scratch.load(&c);
    let err = launch(&scratch, &config, "badkernel").await.err().expect("launch must fail").to_string();
    assert!(err.contains("QEMU exited before its QMP socket was ready"), "{err}");
    assert!(err.contains("QEMU said:"), "QEMU's message is quoted: {err}");
    eprintln!("launch error: {err}");
    scratch.assert_nothing_left("badkernel");
}

/// vhost-device-vsock cannot start: the launch fails naming it, nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_helper_leaves_nothing() {
    let scratch = Scratch::new();
    let helper = scratch.dir.path().join("vhost-device-vsock");
    std::fs::write(&helper, "#!/bin/sh\necho 'cannot bind' >&2\nexit 3\n").expect("write");
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let mut c = scratch.config();
    c.extra = format!("vhost_device_vsock_path = \"{}\"", helper.display());
    let config = scratch.load(&c);
    let err = launch(&scratch, &config, "badhelper").await.err().expect("launch must fail").to_string();
    assert!(err.contains("vhost-device-vsock exited") && err.contains("cannot bind"), "{err}");
    scratch.assert_nothing_left("badhelper");
}
