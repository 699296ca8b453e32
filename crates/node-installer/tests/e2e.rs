//! End to end on this machine: install the insecure runtime class into a temporary host root,
//! run the real containerd on the config the installer edited, start a pod over CRI with the
//! installed handler (it boots a real VM from the installed image), exec in it, then uninstall
//! and find the config as it was.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::ok;
use contrast_cri_client::CriClient;
use contrast_tests::containerd::{Containerd, Release, IMAGE};

const CLEANUP_DEADLINE: Duration = Duration::from_secs(20);

/// The shim `cargo test` built beside this test (or `CONTRAST_SHIM`).
fn shim() -> PathBuf {
    let path = std::env::var_os("CONTRAST_SHIM").map(PathBuf::from).unwrap_or_else(|| {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/containerd-shim-contrast-cc-v2")
    });
    assert!(path.is_file(), "{} missing: run `make test` (it builds the shim first)", path.display());
    path
}

/// A payload of the real artifacts: the shim, the image `make image` built, the templates.
fn real_payload(dir: &Path) -> PathBuf {
    let image = contrast_tests::image_dir().expect("pod-VM image");
    let p = dir.join("payload");
    for sub in ["bin", "share", "config"] {
        std::fs::create_dir_all(p.join(sub)).expect("mkdir");
    }
    std::os::unix::fs::symlink(shim(), p.join("bin/containerd-shim-contrast-cc-v2")).expect("link shim");
    for f in ["vmlinux", "initrd.img", "root.img", "cmdline", "reference-values.json"] {
        std::os::unix::fs::symlink(image.join(f), p.join("share").join(f)).expect("link image file");
    }
    common::copy_templates(&p);
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn installed_handler_runs_a_cri_pod_and_uninstall_restores_the_config() {
    // The host root is also containerd's own directory (root, state, sockets, opt), so every
    // path in the containerd config is a path under the host root.
    let dir = tempfile::Builder::new().prefix("ni").tempdir().expect("tempdir");
    let d = dir.path().to_owned();
    let host = d.clone();
    let scratch = tempfile::tempdir().expect("tempdir");
    let config = host.join("etc/containerd/config.toml");
    std::fs::create_dir_all(config.parent().unwrap()).expect("mkdir");
    let original = Containerd::base_config(&Release::host(), &d).expect("base config");
    std::fs::write(&config, &original).expect("write config");
    let payload = real_payload(scratch.path());
    // The node's QEMU and vsock helper, where `check` looks for them under the host root.
    std::fs::create_dir_all(host.join("usr/bin")).expect("mkdir");
    for name in ["qemu-system-x86_64", "vhost-device-vsock"] {
        let real = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|d| d.join(name))
            .find(|p| p.is_file())
            .unwrap_or_else(|| panic!("{name} not on PATH"));
        std::os::unix::fs::symlink(real, host.join("usr/bin").join(name)).expect("link");
    }
    let restarts = scratch.path().join("restarts");
    let restart = format!("echo restart >> {}", restarts.display());
    let state = format!("runtime.state_dir=\"{}\"", d.join("run").display());
    let sets = [
        "hypervisor.qemu.accel=\"tcg\"",
        "hypervisor.qemu.vsock_mode=\"hybrid\"",
        "agent.kata.dial_timeout=60",
        state.as_str(),
    ];
    let mut args = vec!["install", "--platform", "insecure", "--payload", payload.to_str().unwrap()];
    args.extend(["--host-root", host.to_str().unwrap(), "--node-root", host.to_str().unwrap()]);
    args.extend(["--restart-command", &restart]);
    for s in &sets {
        args.extend(["--set", s]);
    }
    let out = ok(&args);
    let handler = out.split(':').next().expect("handler in output").to_owned();
    assert!(handler.starts_with("contrast-cc-insecure-"), "{out}");
    assert_eq!(std::fs::read_to_string(&restarts).expect("restart ran").lines().count(), 1);
    let installed = host.join("opt/contrast").join(&handler);
    assert!(installed.join("bin/containerd-shim-contrast-cc-v2").is_file());
    let link = host.join("opt/bin/containerd-shim-contrast-cc-v2");
    assert_eq!(std::fs::read_link(&link).ok(), Some(installed.join("bin/containerd-shim-contrast-cc-v2")));
    let runtime_config = std::fs::read_to_string(installed.join("etc/configuration.toml")).expect("runtime config");
    assert!(runtime_config.contains(&installed.join("share/root.img").display().to_string()), "{runtime_config}");

    let mut cd =
        Containerd::start_with_config(Release::host(), dir, &config).expect("containerd starts on the edited config");
    let mut cri = CriClient::connect(Path::new(&cd.socket())).await.expect("CRI connects");
    let pod = match cri.run_pod("installed", "default", &handler, HashMap::new()).await {
        Ok(pod) => pod,
        Err(e) => panic!(
            "RunPodSandbox: {e:#}\nconfig:\n{}\ncontainerd log:\n{}",
            std::fs::read_to_string(&config).unwrap_or_default(),
            cd.log()
        ),
    };
    let c = cri.run_container(&pod, "c", IMAGE, &["sleep", "1000"]).await.expect("container");
    let (code, stdout, stderr) =
        cri.exec_sync(&c, &["sh", "-c", "echo from the VM; uname -r"]).await.expect("ExecSync");
    assert_eq!(code, 0, "{}", String::from_utf8_lossy(&stderr));
    let text = String::from_utf8_lossy(&stdout);
    assert!(text.starts_with("from the VM\n"), "{text}");
    assert!(!text.contains(&host_kernel()), "exec ran on the host kernel: {text}");
    cri.remove_pod(&pod.id).await.expect("remove pod");
    let left = cd.leftovers_after(CLEANUP_DEADLINE).await;
    assert!(left.is_empty(), "left behind: {left:#?}\n{}", cd.log());

    // The shim of a running pod is SIGKILLed: containerd runs the installed shim's `delete`,
    // which must find the pod although the runtime config is in `<handler>/etc/`, not next to
    // the binary, and leave no QEMU, helper, mount or state dir.
    let pod = cri.run_pod("orphan", "default", &handler, HashMap::new()).await.expect("second pod");
    cri.run_container(&pod, "c", IMAGE, &["sleep", "1000"]).await.expect("container in the second pod");
    let shims = cd.shim_pids();
    assert_eq!(shims.len(), 1, "one shim for the pod: {shims:?}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(shims[0] as i32), nix::sys::signal::Signal::SIGKILL)
        .expect("kill the shim");
    let left = cd.leftovers_after(CLEANUP_DEADLINE).await;
    assert!(left.is_empty(), "left behind after the shim was killed: {left:#?}\n{}", cd.log());
    cri.remove_pod(&pod.id).await.expect("remove the pod whose shim died");
    cd.kill();

    let mut args = vec!["uninstall", "--platform", "insecure", "--payload", payload.to_str().unwrap()];
    args.extend(["--host-root", host.to_str().unwrap(), "--node-root", host.to_str().unwrap()]);
    args.extend(["--restart-command", &restart]);
    for s in &sets {
        args.extend(["--set", s]);
    }
    ok(&args);
    assert_eq!(std::fs::read_to_string(&config).expect("config"), original, "uninstall restores the config");
    assert!(!installed.exists(), "install dir removed");
    assert!(std::fs::symlink_metadata(&link).is_err(), "shim link removed");
    assert_eq!(std::fs::read_to_string(&restarts).expect("restarts").lines().count(), 2);
}

fn host_kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").expect("osrelease").trim().to_owned()
}
