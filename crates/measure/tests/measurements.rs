//! Our launch measurements against independent computations, on the real firmware (Debian's
//! `ovmf-amdsev` / `ovmf-inteltdx`, `scripts/fetch-firmware.sh`) and the real pod-VM image:
//! - SEV-SNP: `sev-snp-measure` from PyPI (`scripts/fetch-sev-snp-measure.sh`), run here on
//!   the same files, for 1, 2 and 8 vCPUs × EPYC-v4 / EPYC-Milan / EPYC-Genoa;
//! - TDX: `tests/tdx_mrtd_reference.py`, a second implementation written for this project
//!   from the TDVF and TDX module layouts alone (no SNP/TDX hardware here to compare with).
//!
//! Both are also compared with what the image build wrote into `reference-values.json`.

use std::path::{Path, PathBuf};
use std::process::Command;

use contrast_measure::{hex, snp, tdx};

fn build_dir(var: &str, default: &str) -> PathBuf {
    let dir = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../build").join(default));
    assert!(dir.is_dir(), "{} missing: run `make image` (or set {var})", dir.display());
    dir
}

fn reference_values(image: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(image.join("reference-values.json")).expect("reference-values.json");
    serde_json::from_str(&text).expect("reference values are JSON")
}

#[test]
fn snp_launch_digests_equal_sev_snp_measure() {
    let image = build_dir("CONTRAST_IMAGE_DIR", "image");
    let tool = build_dir("CONTRAST_SEV_SNP_MEASURE", "sev-snp-measure");
    let ovmf = image.join("OVMF.amdsev.fd");
    let (kernel, initrd) = (image.join("vmlinuz"), image.join("initrd.img"));
    let cmdline = std::fs::read_to_string(image.join("cmdline")).expect("cmdline");
    let files = snp::BootFiles { ovmf: &ovmf, kernel: &kernel, initrd: &initrd, cmdline: &cmdline };
    let ours = snp::Measurer::new(files).expect("measurer");
    let values = reference_values(&image);
    for cpu in snp::CPU_MODELS {
        for vcpus in [1u32, 2, 8] {
            let out = Command::new("python3")
                .args(["-m", "sevsnpmeasure.cli", "--mode", "snp", "--vmm-type", "QEMU", "--output-format", "hex"])
                .args(["--vcpus", &vcpus.to_string(), "--vcpu-type", cpu])
                .arg("--ovmf")
                .arg(&ovmf)
                .arg("--kernel")
                .arg(&kernel)
                .arg("--initrd")
                .arg(&initrd)
                .args(["--append", &cmdline])
                .env("PYTHONPATH", &tool)
                .output()
                .expect("run sev-snp-measure");
            assert!(out.status.success(), "sev-snp-measure: {}", String::from_utf8_lossy(&out.stderr));
            let theirs = String::from_utf8(out.stdout).expect("hex").trim().to_owned();
            let mine = hex(&ours.launch_digest(vcpus, cpu).expect("digest"));
            assert_eq!(mine, theirs, "{cpu} × {vcpus} vCPUs");
            let recorded = &values["snp"]["launch_digests"][cpu][vcpus.to_string()];
            assert_eq!(recorded.as_str(), Some(mine.as_str()), "reference-values.json, {cpu} × {vcpus}");
        }
    }
    // The digest depends on what it should: another command line, another digest.
    let other = format!("{cmdline} quiet");
    let files = snp::BootFiles { ovmf: &ovmf, kernel: &kernel, initrd: &initrd, cmdline: &other };
    let changed = snp::Measurer::new(files).expect("measurer").launch_digest(1, "EPYC-v4").expect("digest");
    assert_ne!(changed, ours.launch_digest(1, "EPYC-v4").expect("digest"));
}

#[test]
fn tdx_mrtd_equals_the_reference_computation() {
    let image = build_dir("CONTRAST_IMAGE_DIR", "image");
    let fw = image.join("OVMF.inteltdx.fd");
    let mine = hex(&tdx::mrtd(&std::fs::read(&fw).expect("firmware")).expect("mrtd"));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tdx_mrtd_reference.py");
    let out = Command::new("python3").arg(&script).arg(&fw).output().expect("run the reference");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(mine, String::from_utf8_lossy(&out.stdout).trim());
    assert_eq!(reference_values(&image)["tdx"]["mrtd"].as_str(), Some(mine.as_str()));
}
