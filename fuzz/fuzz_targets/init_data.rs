//! Init data as a pod gives it (`io.katacontainers.config.hypervisor.cc_init_data`: base64
//! of gzip of TOML) and as TOML: parsed or refused, never a panic; what parses keeps its
//! digest through the annotation form, and names only plain files.
#![no_main]

use contrast_initdata::InitData;
use libfuzzer_sys::fuzz_target;

fn check(d: &InitData) {
    let again = InitData::from_annotation(&d.annotation()).expect("our own annotation parses");
    assert_eq!(again.digest(), d.digest(), "the digest changed through the annotation form");
    assert_eq!(again.toml(), d.toml());
    for name in d.data.keys() {
        assert!(!name.is_empty() && !name.contains('/') && name != "." && name != "..", "file name {name:?}");
    }
    let _ = (d.host_data(), d.mrconfigid(), d.policy());
}

fuzz_target!(|data: &[u8]| {
    if let Ok(d) = InitData::from_toml(data.to_vec()) {
        check(&d);
    }
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(d) = InitData::from_annotation(text) {
            check(&d);
        }
    }
});
