//! The runtime-class configuration (`configuration-*.toml`): whatever the text, `parse`
//! returns a config or an error, and a config it returns is one the shim can use without
//! panicking: every timeout is non-zero and can be added to a clock reading.
#![no_main]

use std::path::Path;
use std::time::{Duration, Instant};

use contrast_config::RuntimeClassConfig;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let Ok(config) = RuntimeClassConfig::parse(text, Path::new("/fuzz/configuration.toml")) else { return };
    let q = &config.hypervisor.qemu;
    assert!((1..=q.default_maxvcpus).contains(&q.default_vcpus));
    assert!(q.default_memory <= q.default_maxmemory);
    let now = Instant::now();
    for (name, timeout) in [
        ("dial_timeout", config.dial_timeout()),
        ("request_timeout", config.request_timeout()),
        ("qmp_timeout_ms", Duration::from_millis(q.qmp_timeout_ms)),
        ("qmp_command_timeout_ms", Duration::from_millis(q.qmp_command_timeout_ms)),
        ("powerdown_timeout_ms", Duration::from_millis(q.powerdown_timeout_ms)),
        ("quit_timeout_ms", Duration::from_millis(q.quit_timeout_ms)),
    ] {
        assert!(!timeout.is_zero(), "{name} = 0 was accepted");
        assert!(now.checked_add(timeout).is_some(), "{name} = {timeout:?} overflows a deadline");
    }
    let _ = config.cpu_model(true);
    let _ = config.cpu_model(false);
    let _ = config.confidential_path();
});
