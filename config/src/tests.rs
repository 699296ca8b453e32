use std::collections::BTreeMap;
use std::path::Path;

use super::*;

const MINIMAL: &str = r#"
[hypervisor.qemu]
platform = "insecure"
path = "/usr/bin/qemu-system-x86_64"
kernel = "/k"
initrd = "/i"
enable_annotations = ["default_memory"]
default_maxmemory = 2048
"#;

fn origin() -> &'static Path {
    Path::new("/etc/contrast/test.toml")
}

#[test]
fn minimal_config_gets_defaults() {
    let c = RuntimeClassConfig::parse(MINIMAL, origin()).expect("valid");
    let q = &c.hypervisor.qemu;
    assert_eq!(q.platform, Platform::Insecure);
    assert_eq!(q.default_memory, 512);
    assert_eq!(q.default_vcpus, 1);
    assert_eq!(q.vsock_mode, VsockMode::Auto);
    assert_eq!(c.agent.kata.dial_timeout, 90);
    assert_eq!(c.runtime.state_dir, Path::new("/run/contrast"));
}

#[test]
fn garbage_names_file_and_line() {
    let err = RuntimeClassConfig::parse("[hypervisor.qemu]\nplatform = = 3\n", origin()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("/etc/contrast/test.toml"), "{msg}");
    assert!(msg.contains("line 2"), "{msg}");
}

#[test]
fn unknown_key_is_rejected_by_name() {
    let text = MINIMAL.replace("kernel = \"/k\"", "kernel = \"/k\"\nkernal_params = \"x\"");
    let msg = RuntimeClassConfig::parse(&text, origin()).unwrap_err().to_string();
    assert!(msg.contains("kernal_params"), "{msg}");
}

#[test]
fn unknown_platform_is_rejected() {
    let text = MINIMAL.replace("insecure", "sgx");
    let msg = RuntimeClassConfig::parse(&text, origin()).unwrap_err().to_string();
    assert!(msg.contains("sgx"), "{msg}");
}

#[test]
fn confidential_platform_needs_firmware() {
    let text = MINIMAL.replace("insecure", "snp");
    let msg = RuntimeClassConfig::parse(&text, origin()).unwrap_err().to_string();
    assert!(msg.contains("hypervisor.qemu.firmware"), "{msg}");
}

#[test]
fn memory_above_max_in_config_is_rejected() {
    let text = MINIMAL.replace("default_maxmemory = 2048", "default_maxmemory = 2048\ndefault_memory = 4096");
    let msg = RuntimeClassConfig::parse(&text, origin()).unwrap_err().to_string();
    assert!(msg.contains("hypervisor.qemu.default_memory"), "{msg}");
}

#[test]
fn missing_kernel_file_is_named() {
    let c = RuntimeClassConfig::parse(MINIMAL, origin()).expect("valid");
    let msg = c.check_files(origin()).unwrap_err().to_string();
    // QEMU exists on test machines only after install; either error must name its key.
    assert!(msg.contains("hypervisor.qemu.path") || msg.contains("hypervisor.qemu.kernel"), "{msg}");
}

#[test]
fn non_executable_qemu_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let qemu = dir.path().join("qemu");
    std::fs::write(&qemu, "").expect("write");
    let text = MINIMAL.replace("/usr/bin/qemu-system-x86_64", qemu.to_str().expect("utf8"));
    let c = RuntimeClassConfig::parse(&text, origin()).expect("valid");
    let msg = c.check_files(origin()).unwrap_err().to_string();
    assert!(msg.contains("not executable"), "{msg}");
}

fn ann(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[test]
fn allowlisted_memory_annotation_applies() {
    let c = RuntimeClassConfig::parse(MINIMAL, origin()).expect("valid");
    let o = c.pod_overrides(&ann(&[("io.katacontainers.config.hypervisor.default_memory", "1024")])).expect("allowed");
    assert_eq!(o.memory_mib, 1024);
    assert_eq!(o.vcpus, 1);
}

#[test]
fn annotation_not_in_allowlist_is_rejected() {
    let c = RuntimeClassConfig::parse(MINIMAL, origin()).expect("valid");
    let err = c.pod_overrides(&ann(&[("io.katacontainers.config.hypervisor.default_vcpus", "2")])).unwrap_err();
    assert!(err.is_pod_input());
    assert!(err.to_string().contains("not allowed"), "{err}");
}

#[test]
fn memory_annotation_above_max_is_rejected() {
    let c = RuntimeClassConfig::parse(MINIMAL, origin()).expect("valid");
    let err = c.pod_overrides(&ann(&[("io.katacontainers.config.hypervisor.default_memory", "4096")])).unwrap_err();
    assert!(err.to_string().contains("2048"), "{err}");
}

#[test]
fn unrelated_annotations_are_ignored() {
    let c = RuntimeClassConfig::parse(MINIMAL, origin()).expect("valid");
    let o = c.pod_overrides(&ann(&[("io.kubernetes.cri.sandbox-id", "x")])).expect("ignored");
    assert_eq!(o.memory_mib, 512);
}

#[test]
fn example_configs_parse() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config");
    for name in ["configuration-insecure.toml", "configuration-snp.toml", "configuration-tdx.toml"] {
        let path = dir.join(name);
        let text = std::fs::read_to_string(&path).expect("example config exists");
        RuntimeClassConfig::parse(&text, &path).unwrap_or_else(|e| panic!("{e}"));
    }
}

#[test]
fn simulation_is_insecure_only_and_the_cpu_model_is_explicit_on_snp() {
    let sim = format!("{MINIMAL}simulate_launch_binding = true\n");
    let c = RuntimeClassConfig::parse(&sim, origin()).expect("valid");
    assert!(c.confidential_path());
    assert!(!RuntimeClassConfig::parse(MINIMAL, origin()).expect("valid").confidential_path());
    let err = RuntimeClassConfig::parse(&format!("{sim}shared_fs = \"virtio-fs\"\n"), origin()).expect_err("share");
    assert!(err.to_string().contains("shared_fs"), "{err}");
    let err = RuntimeClassConfig::parse(&format!("{MINIMAL}simulate_binding_mismatch = true\n"), origin())
        .expect_err("mismatch without simulation");
    assert!(err.to_string().contains("simulate_binding_mismatch"), "{err}");
    let snp = MINIMAL.replace("\"insecure\"", "\"snp\"") + "firmware = \"/f\"\n";
    let err = RuntimeClassConfig::parse(&format!("{snp}simulate_launch_binding = true\n"), origin())
        .expect_err("snp does not simulate");
    assert!(err.to_string().contains("only the insecure platform simulates"), "{err}");
    let c = RuntimeClassConfig::parse(&snp, origin()).expect("valid");
    assert_eq!(c.cpu_model(true).as_deref(), Some(DEFAULT_SNP_CPU_MODEL));
    assert!(c.confidential_path());
    let c = RuntimeClassConfig::parse(MINIMAL, origin()).expect("valid");
    assert_eq!(c.cpu_model(false), None, "QEMU's default under TCG");
    assert_eq!(c.cpu_model(true).as_deref(), Some("host"));
    let err = RuntimeClassConfig::parse(&format!("{MINIMAL}cpu_model = \"EPYC,x=1\"\n"), origin()).expect_err("bad");
    assert!(err.to_string().contains("cpu_model"), "{err}");
}

#[test]
fn cc_init_data_is_an_allowlisted_annotation() {
    let key = format!("{ANNOTATION_HYPERVISOR_PREFIX}cc_init_data");
    let a: BTreeMap<String, String> = [(key.clone(), "H4sI".to_owned())].into();
    let c = RuntimeClassConfig::parse(MINIMAL, origin()).expect("valid");
    let err = c.pod_overrides(&a).expect_err("not enabled");
    assert!(err.to_string().contains("not allowed"), "{err}");
    let allowed = MINIMAL.replace("[\"default_memory\"]", "[\"default_memory\", \"cc_init_data\"]");
    let c = RuntimeClassConfig::parse(&allowed, origin()).expect("valid");
    assert_eq!(c.pod_overrides(&a).expect("allowed").init_data.as_deref(), Some("H4sI"));
}

#[test]
fn timeouts_are_bounded_both_ways() {
    // 0 would mean no deadline at all; i64::MAX ms would overflow the deadline (found by the
    // runtime_config fuzz target).
    for (section, line, key) in [
        ("[agent.kata]", "request_timeout = 0", "agent.kata.request_timeout"),
        ("[agent.kata]", "dial_timeout = 3601", "agent.kata.dial_timeout"),
        ("[hypervisor.qemu]", "qmp_timeout_ms = 9223372036854775807", "hypervisor.qemu.qmp_timeout_ms"),
    ] {
        let text = if section == "[agent.kata]" {
            format!("{MINIMAL}\n[agent.kata]\n{line}\n")
        } else {
            MINIMAL.replace("[hypervisor.qemu]\n", &format!("[hypervisor.qemu]\n{line}\n"))
        };
        let msg = RuntimeClassConfig::parse(&text, origin()).expect_err(line).to_string();
        assert!(msg.contains(key) && msg.contains("is not within 1..="), "{line}: {msg}");
    }
    let text = format!("{MINIMAL}\n[agent.kata]\nrequest_timeout = 3600\n");
    assert_eq!(RuntimeClassConfig::parse(&text, origin()).expect("an hour").request_timeout(), MAX_TIMEOUT);
    // A copied volume compared with kubelet's files in a busy loop, or never.
    for interval in ["0", "99", "3600001"] {
        let text = format!("{MINIMAL}\n[runtime]\nvolume_sync_interval_ms = {interval}\n");
        let msg = RuntimeClassConfig::parse(&text, origin()).expect_err(interval).to_string();
        assert!(msg.contains("runtime.volume_sync_interval_ms") && msg.contains("100..="), "{msg}");
    }
    let c = RuntimeClassConfig::parse(MINIMAL, origin()).expect("defaults");
    assert_eq!(c.runtime.volume_sync_interval_ms, 2000);
}

#[test]
fn igvm_takes_no_separate_boot_files_or_command_line() {
    let igvm = "[hypervisor.qemu]\nplatform = \"insecure\"\npath = \"/q\"\nigvm = \"/pod.igvm\"\n\
                enable_annotations = [\"kernel_params\"]\n";
    let c = RuntimeClassConfig::parse(igvm, origin()).expect("igvm alone is a whole boot");
    let err = c.pod_overrides(&ann(&[("io.katacontainers.config.hypervisor.kernel_params", "quiet")])).unwrap_err();
    assert!(err.to_string().contains("command line is fixed"), "{err}");
    for (extra, key) in [
        ("initrd = \"/i\"\n", "initrd"),
        ("firmware = \"/f\"\n", "firmware"),
        ("kernel_params = \"quiet\"\n", "kernel_params"),
        ("kernel_params_file = \"/c\"\n", "kernel_params_file"),
    ] {
        let msg = RuntimeClassConfig::parse(&format!("{igvm}{extra}"), origin()).unwrap_err().to_string();
        assert!(msg.contains(&format!("remove `{key}`")), "{msg}");
    }
    let many = format!("{igvm}default_maxvcpus = 65\n");
    let msg = RuntimeClassConfig::parse(&many, origin()).unwrap_err().to_string();
    assert!(msg.contains("the most vCPUs `igvm` boots"), "{msg}");
    let snp =
        igvm.replace("insecure", "snp").replace("enable_annotations", "cpu_model = \"EPYC-v4\"\nenable_annotations");
    let msg = RuntimeClassConfig::parse(&snp, origin()).unwrap_err().to_string();
    assert!(msg.contains("default_maxvcpus = 1"), "{msg}");
    RuntimeClassConfig::parse(&format!("{snp}default_maxvcpus = 1\n"), origin()).expect("snp + igvm with one vCPU");
    // The file carries the guest policy and the C-bit: the config may only repeat them.
    let same = format!("{snp}default_maxvcpus = 1\nsnp_guest_policy = 0x30000\ncbitpos = 51\n");
    RuntimeClassConfig::parse(&same, origin()).expect("the file's own policy and C-bit");
    for (extra, key) in [("snp_guest_policy = 0x30001\n", "snp_guest_policy"), ("cbitpos = 47\n", "cbitpos")] {
        let text = format!("{snp}default_maxvcpus = 1\n{extra}");
        let msg = RuntimeClassConfig::parse(&text, origin()).unwrap_err().to_string();
        assert!(msg.contains(&format!("remove `{key}`")) && msg.contains("0x30000"), "{msg}");
    }
    let tdx = igvm.replace("insecure", "tdx");
    let msg = RuntimeClassConfig::parse(&tdx, origin()).unwrap_err().to_string();
    assert!(msg.contains("not tdx"), "{msg}");
    let sim = format!("{igvm}simulate_launch_binding = true\nshared_fs = \"none\"\n");
    let msg = RuntimeClassConfig::parse(&sim, origin()).unwrap_err().to_string();
    assert!(msg.contains("fw_cfg"), "{msg}");
    let debug = format!("{igvm}[agent.kata]\ndebug_console_enabled = true\n");
    let msg = RuntimeClassConfig::parse(&debug, origin()).unwrap_err().to_string();
    assert!(msg.contains("debug console"), "{msg}");
}
