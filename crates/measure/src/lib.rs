//! Launch measurements of the pod VM, computed from the files a node boots it from, so that a
//! verifier can compare an attestation report with reference values:
//! - SEV-SNP ([`snp`]): the launch digest of OVMF (AmdSev build) + kernel + initrd + command
//!   line with QEMU's `kernel-hashes=on`, per vCPU count and CPU model;
//! - SEV-SNP from an IGVM file ([`snp_igvm`]): the launch digest of the file's pages and VMSA;
//! - TDX ([`tdx`]): MRTD, the measurement of the TD firmware (TDVF) as QEMU loads it.

pub mod snp;
pub mod snp_igvm;
pub mod tdx;

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
