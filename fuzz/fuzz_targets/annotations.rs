//! A pod's `io.katacontainers.config.hypervisor.*` annotations against a runtime class that
//! enables all of them: an override is refused or stays within the class's bounds. Input:
//! lines `key=value`.
#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use contrast_config::RuntimeClassConfig;
use libfuzzer_sys::fuzz_target;

const CLASS: &str = r#"
[hypervisor.qemu]
platform = "insecure"
path = "/usr/bin/qemu-system-x86_64"
kernel = "/opt/contrast/share/vmlinux"
initrd = "/opt/contrast/share/initrd.img"
image = "/opt/contrast/share/root.img"
default_vcpus = 1
default_maxvcpus = 2
default_memory = 256
default_maxmemory = 2048
enable_annotations = ["default_memory", "default_vcpus", "kernel_params", "cc_init_data"]
"#;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let config = RuntimeClassConfig::parse(CLASS, Path::new("/fuzz/class.toml")).expect("the fixed class parses");
    let annotations: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (format!("io.katacontainers.config.hypervisor.{k}"), v.to_owned()))
        .collect();
    let Ok(o) = config.pod_overrides(&annotations) else { return };
    let q = &config.hypervisor.qemu;
    assert!((1..=q.default_maxvcpus).contains(&o.vcpus), "{} vCPUs accepted", o.vcpus);
    assert!(o.memory_mib <= q.default_maxmemory, "{} MiB accepted", o.memory_mib);
    assert!(!o.extra_kernel_params.chars().any(char::is_control), "control characters reach the command line");
});
