//! Launch measurements of the pod VM, computed from the files a node boots it from, so that a
//! verifier can compare an attestation report with reference values:
//! - SEV-SNP ([`snp`]): the launch digest of OVMF (AmdSev build) + kernel + initrd + command
//!   line with QEMU's `kernel-hashes=on`, per vCPU count and CPU model;
//! - TDX ([`tdx`]): MRTD, the measurement of the TD firmware (TDVF) as QEMU loads it.

pub mod snp;
pub mod tdx;

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
