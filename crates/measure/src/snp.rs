//! SEV-SNP launch digests through virtee's `sev` crate (`sev::measurement::snp`).
//!
//! The digest covers: the OVMF image, the SEV hashes table OVMF checks at boot (SHA-256 of
//! the bzImage, of the initrd and of the command line with its NUL, as QEMU fills it with
//! `kernel-hashes=on`), and one VMSA per vCPU, whose register state carries the CPU model's
//! signature (family/model/stepping). Guest memory size, the guest policy and `host-data` are
//! not part of it (`host-data` is reported separately as HOST_DATA).

use std::path::{Path, PathBuf};

use sev::measurement::snp::{calc_snp_ovmf_hash, snp_calc_launch_digest, SnpMeasurementArgs};
use sev::measurement::vcpu_types::CpuType;
use sev::measurement::vmsa::{GuestFeatures, VMMType};

/// CPU models the reference values carry digests for (QEMU `-cpu` names).
pub const CPU_MODELS: &[&str] = &["EPYC-v4", "EPYC-Milan", "EPYC-Genoa"];
/// VMSA SEV_FEATURES of a guest launched by upstream QEMU/KVM (KVM_SEV_INIT2): SNPActive only.
pub const GUEST_FEATURES: u64 = 0x1;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("unknown CPU model {0:?}")]
    CpuModel(String),
    #[error("SNP launch digest of {}: {message}", ovmf.display())]
    Measurement { ovmf: PathBuf, message: String },
    #[error("the command line must not start or end with whitespace (QEMU hashes it as given)")]
    CommandLine,
}

/// What a pod VM boots from on `snp` (`-bios` OVMF, `-kernel`, `-initrd`, `-append`).
#[derive(Debug, Clone)]
pub struct BootFiles<'a> {
    pub ovmf: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub cmdline: &'a str,
}

/// Computes launch digests for many vCPU counts and CPU models of one set of boot files.
pub struct Measurer<'a> {
    files: BootFiles<'a>,
    /// The OVMF part, computed once (hex).
    ovmf_hash: String,
}

impl<'a> Measurer<'a> {
    pub fn new(files: BootFiles<'a>) -> Result<Self, Error> {
        // The sev crate trims the command line; QEMU does not. Refuse what would differ.
        if files.cmdline.trim() != files.cmdline {
            return Err(Error::CommandLine);
        }
        let ovmf_hash = calc_snp_ovmf_hash(files.ovmf.to_owned()).map_err(|e| measurement(files.ovmf, e))?.get_hex_ld();
        Ok(Measurer { files, ovmf_hash })
    }

    /// The 48-byte launch digest for `vcpus` vCPUs of QEMU CPU model `cpu_model`.
    pub fn launch_digest(&self, vcpus: u32, cpu_model: &str) -> Result<[u8; 48], Error> {
        let vcpu_type = CpuType::try_from(cpu_model).map_err(|_| Error::CpuModel(cpu_model.to_owned()))?;
        let args = SnpMeasurementArgs {
            vcpus,
            vcpu_type,
            ovmf_file: self.files.ovmf.to_owned(),
            guest_features: GuestFeatures(GUEST_FEATURES),
            kernel_file: Some(self.files.kernel.to_owned()),
            initrd_file: Some(self.files.initrd.to_owned()),
            append: Some(self.files.cmdline),
            ovmf_hash_str: Some(&self.ovmf_hash),
            vmm_type: Some(VMMType::QEMU),
        };
        let digest = snp_calc_launch_digest(args).map_err(|e| measurement(self.files.ovmf, e))?;
        Ok(from_hex(&digest.get_hex_ld()))
    }
}

fn measurement(ovmf: &Path, e: impl std::fmt::Display) -> Error {
    Error::Measurement { ovmf: ovmf.to_owned(), message: e.to_string() }
}

/// The digest's bytes back from its hex form (the crate exposes no byte accessor).
fn from_hex(hex: &str) -> [u8; 48] {
    let mut out = [0u8; 48];
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("the crate writes hex");
    }
    out
}
