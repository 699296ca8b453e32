//! SEV-SNP launch digest of an IGVM file: what the AMD secure processor computes when a VMM
//! (QEMU's `igvm-cfg` on `sev-snp-guest`) launches it.
//!
//! The digest chains one `PAGE_INFO` per page the VMM adds (SEV-SNP ABI spec 8.17,
//! SNP_LAUNCH_UPDATE): `digest = SHA-384(digest ‖ contents ‖ length ‖ page type ‖ IMI ‖
//! VMPL1..3 permissions ‖ reserved ‖ GPA)`, where `contents` is the SHA-384 of the page for
//! normal and VMSA pages and zero for the rest. Pages go in the file's directive order; VMSAs
//! last (KVM adds them at SNP_LAUNCH_FINISH), each at the fixed GPA `VMSA_GPA`.
//!
//! Held against coconut-svsm's `igvmmeasure` (see the golden test in `contrast-image`).

use igvm::{IgvmDirectiveHeader, IgvmFile, IgvmPlatformHeader};
use igvm_defs::{IgvmPageDataType, IgvmPlatformType, PAGE_SIZE_4K};
use sha2::{Digest, Sha384};
use zerocopy::IntoBytes;

/// Where every VMSA is measured (SEV-SNP ABI: the VMSA's GPA is recorded as all ones, page
/// aligned, bits above 51 clear).
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
const PAGE: usize = PAGE_SIZE_4K as usize;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("not a valid IGVM file")]
    Parse(#[source] igvm::Error),
    #[error("the IGVM file has no SEV-SNP platform")]
    NoSnpPlatform,
    #[error("the IGVM file has no SEV-SNP VMSA")]
    NoVmsa,
    #[error("directive {index}: {what} is not supported in a measured SNP file")]
    Unsupported { index: usize, what: &'static str },
}

/// SNP `PAGE_INFO.PAGE_TYPE` (SEV-SNP ABI spec, table 67; ZERO, 3, is not used: see above).
#[derive(Debug, Clone, Copy)]
#[repr(u8)]
enum PageType {
    Normal = 1,
    Vmsa = 2,
    Unmeasured = 4,
    Secrets = 5,
    Cpuid = 6,
}

/// The running launch digest.
struct LaunchDigest([u8; 48]);

impl LaunchDigest {
    fn update(&mut self, page_type: PageType, gpa: u64, contents: &[u8; 48]) {
        let mut info = [0u8; 0x70];
        info[..48].copy_from_slice(&self.0);
        info[48..96].copy_from_slice(contents);
        info[96..98].copy_from_slice(&0x70u16.to_le_bytes());
        info[98] = page_type as u8;
        // IMI 0, VMPL3/2/1 permissions 0, reserved 0.
        info[104..112].copy_from_slice(&gpa.to_le_bytes());
        self.0 = Sha384::digest(info).into();
    }

    fn measured(&mut self, page_type: PageType, gpa: u64, page: &[u8]) {
        let mut padded = [0u8; PAGE];
        padded[..page.len()].copy_from_slice(page);
        self.update(page_type, gpa, &Sha384::digest(padded).into());
    }

    fn unmeasured(&mut self, page_type: PageType, gpa: u64) {
        self.update(page_type, gpa, &[0; 48]);
    }
}

/// The 48-byte launch digest of an IGVM file's SNP platform.
pub fn launch_digest(file: &[u8]) -> Result<[u8; 48], Error> {
    let igvm = IgvmFile::new_from_binary(file, None).map_err(Error::Parse)?;
    let mask = igvm
        .platforms()
        .iter()
        .find_map(|p| match p {
            IgvmPlatformHeader::SupportedPlatform(p) if p.platform_type == IgvmPlatformType::SEV_SNP => {
                Some(p.compatibility_mask)
            }
            _ => None,
        })
        .ok_or(Error::NoSnpPlatform)?;
    let mut ld = LaunchDigest([0; 48]);
    let mut area_sizes = std::collections::HashMap::new();
    let mut vmsas = Vec::new();
    for (index, d) in igvm.directives().iter().enumerate() {
        match d {
            IgvmDirectiveHeader::PageData { gpa, compatibility_mask, flags, data_type, data }
                if compatibility_mask & mask != 0 =>
            {
                if flags.is_2mb_page() {
                    return Err(Error::Unsupported { index, what: "a 2 MiB page" });
                }
                if flags.unmeasured() {
                    ld.unmeasured(PageType::Unmeasured, *gpa);
                } else if *data_type == IgvmPageDataType::NORMAL {
                    // A page without data is a page of zeros, measured as such (QEMU adds it
                    // as a normal page; igvmmeasure without --native-zero agrees).
                    ld.measured(PageType::Normal, *gpa, data);
                } else if *data_type == IgvmPageDataType::SECRETS {
                    ld.unmeasured(PageType::Secrets, *gpa);
                } else if *data_type == IgvmPageDataType::CPUID_DATA || *data_type == IgvmPageDataType::CPUID_XF {
                    ld.unmeasured(PageType::Cpuid, *gpa);
                } else {
                    return Err(Error::Unsupported { index, what: "a page data type" });
                }
            }
            IgvmDirectiveHeader::ParameterArea { number_of_bytes, parameter_area_index, .. } => {
                area_sizes.insert(*parameter_area_index, *number_of_bytes);
            }
            IgvmDirectiveHeader::ParameterInsert(p) if p.compatibility_mask & mask != 0 => {
                let size = area_sizes.get(&p.parameter_area_index).copied().unwrap_or(0);
                for offset in (0..size).step_by(PAGE) {
                    ld.unmeasured(PageType::Unmeasured, p.gpa + offset);
                }
            }
            IgvmDirectiveHeader::SnpVpContext { compatibility_mask, vmsa, .. } if compatibility_mask & mask != 0 => {
                vmsas.push(vmsa.as_bytes().to_vec());
            }
            IgvmDirectiveHeader::RequiredMemory { compatibility_mask, .. } if compatibility_mask & mask != 0 => {
                return Err(Error::Unsupported { index, what: "required memory" });
            }
            _ => {}
        }
    }
    if vmsas.is_empty() {
        return Err(Error::NoVmsa);
    }
    for vmsa in &vmsas {
        ld.measured(PageType::Vmsa, VMSA_GPA, vmsa);
    }
    Ok(ld.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One PAGE_INFO by hand: the layout the ABI spec gives, byte by byte.
    #[test]
    fn page_info_is_laid_out_as_the_abi_spec_says() {
        let mut ld = LaunchDigest([7; 48]);
        ld.update(PageType::Secrets, 0x1234_5000, &[9; 48]);
        let mut info = Vec::new();
        info.extend_from_slice(&[7; 48]);
        info.extend_from_slice(&[9; 48]);
        info.extend_from_slice(&[0x70, 0x00, 5, 0, 0, 0, 0, 0]);
        info.extend_from_slice(&0x1234_5000u64.to_le_bytes());
        assert_eq!(info.len(), 0x70);
        assert_eq!(ld.0, <[u8; 48]>::from(Sha384::digest(&info)));
    }

    #[test]
    fn a_file_that_is_not_igvm_is_refused() {
        assert!(matches!(launch_digest(b"not an igvm file"), Err(Error::Parse(_))));
    }
}
