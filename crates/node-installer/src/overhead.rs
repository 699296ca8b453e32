//! The RuntimeClass `overhead`: what a pod costs on the node beyond its guest RAM, computed
//! from what `make bench` measured rather than from a guess.

use anyhow::{Context, Result};

/// What one idle pod measured on the node beyond its guest RAM, written by `make bench`
/// (tests/examples/bench_shim.rs): the RuntimeClass overhead is computed from it.
const MEASURED_OVERHEAD: &str = include_str!("../../../packaging/pod-overhead.toml");
/// Headroom over the idle measurement, percent: a busy pod's QEMU and shim hold more
/// (exec sessions, streamed I/O buffers, device queues).
pub const OVERHEAD_MARGIN_PERCENT: u64 = 25;

/// Memory a pod costs beyond its guest RAM, MiB: shim, QEMU and its helpers as measured, with
/// [`OVERHEAD_MARGIN_PERCENT`]; on `insecure`, which runs under TCG where a node has no KVM,
/// also the bound of TCG's translated-code cache (absent under KVM, so not on `snp`/`tdx`).
pub fn overhead_mib(platform: &str) -> Result<u64> {
    overhead_mib_from(MEASURED_OVERHEAD, platform)
}

/// [`overhead_mib`] from the text of a `pod-overhead.toml` (the benchmark's fresh one).
pub fn overhead_mib_from(measured: &str, platform: &str) -> Result<u64> {
    let measured: toml::Table = measured.parse().context("packaging/pod-overhead.toml")?;
    let kib = |key: &str| -> Result<u64> {
        let v = measured.get(key).and_then(toml::Value::as_integer);
        let v = v.with_context(|| format!("packaging/pod-overhead.toml: no integer {key}"))?;
        u64::try_from(v).with_context(|| format!("packaging/pod-overhead.toml: {key} is negative"))
    };
    let idle_kib = kib("shim_kib")? + kib("qemu_kib")? + kib("helpers_kib")?;
    let mut mib = (idle_kib * (100 + OVERHEAD_MARGIN_PERCENT)).div_ceil(100 * 1024);
    if platform == "insecure" {
        mib += u64::from(contrast_config::TCG_TB_SIZE_MIB);
    }
    Ok(mib)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn measured_kib(key: &str) -> u64 {
        let t: toml::Table = MEASURED_OVERHEAD.parse().expect("toml");
        t[key].as_integer().and_then(|v| u64::try_from(v).ok()).expect(key)
    }

    #[test]
    fn overhead_covers_the_measured_idle_pod_with_headroom() {
        let idle_kib = measured_kib("shim_kib") + measured_kib("qemu_kib") + measured_kib("helpers_kib");
        let snp = overhead_mib("snp").expect("snp");
        assert!(snp * 1024 >= idle_kib * 5 / 4, "{snp} MiB for {idle_kib} KiB measured");
        assert!(snp * 1024 < idle_kib * 5 / 4 + 1024, "rounded up by less than a MiB");
        assert_eq!(overhead_mib("tdx").expect("tdx"), snp);
    }

    #[test]
    fn insecure_also_reserves_the_tcg_cache_bound_and_it_covers_what_was_measured() {
        let snp = overhead_mib("snp").expect("snp");
        let insecure = overhead_mib("insecure").expect("insecure");
        assert_eq!(insecure, snp + u64::from(contrast_config::TCG_TB_SIZE_MIB));
        assert!(measured_kib("tcg_cache_kib") <= u64::from(contrast_config::TCG_TB_SIZE_MIB) * 1024);
    }
}
