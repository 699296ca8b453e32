//! `pod.igvm` and `pod-snp.igvm`: the pod VM's kernel, initrd and command line as one IGVM
//! file that boots Linux without firmware.
//!
//! With no firmware, the file carries what firmware would hand the kernel (Linux's 64-bit boot
//! protocol, Documentation/arch/x86/boot.rst): the uncompressed kernel's segments at their
//! physical addresses (`elf`), the initrd above them, the command line, a zero page
//! (`struct boot_params`) with the bzImage's setup header, a GDT, identity page tables for
//! the low 4 GiB, and a boot CPU in 32-bit protected mode at a 187-byte stub (`STUB`) that
//! enters long mode. The one thing known
//! only at launch is the memory map (a pod's VM is sized from its resources): QEMU writes it
//! into an IGVM memory-map parameter area, and the stub turns that into the zero page's e820
//! table before it jumps to the kernel.
//!
//! Everything the file writes lies below 1 MiB (which Linux never hands to its allocator) or
//! in the kernel's and initrd's own ranges, which the kernel reserves.
//!
//! QEMU (10.2, the first with a native VP context) loads the native file on `pc`/`q35` without
//! BIOS: only the boot CPU gets a context; the kernel starts the others from the MP table
//! (`mp`) the stub picks for QEMU's vCPU count (an IGVM VP-count parameter). The SNP file
//! holds the same pages (page tables with the C-bit) plus a CPUID and a secrets page and a
//! VMSA; it is measured, never booted here (no SNP hardware).

use anyhow::{bail, ensure, Context, Result};
use igvm::snp_defs::{SevFeatures, SevSelector, SevVmsa};
use igvm::{Arch, IgvmDirectiveHeader, IgvmFile, IgvmInitializationHeader, IgvmPlatformHeader, IgvmRevision};
use igvm_defs::{
    IgvmNativeVpContextX64, IgvmPageDataFlags, IgvmPageDataType, IgvmPlatformType, SnpPolicy, IGVM_VHS_PARAMETER,
    IGVM_VHS_PARAMETER_INSERT, IGVM_VHS_SUPPORTED_PLATFORM,
};
use zerocopy::FromZeros;

mod elf;
mod mp;

const PAGE: u64 = 4096;

/// Guest-physical layout below 1 MiB (each one page unless noted).
const GDT: u64 = 0x1000;
/// PML4, then one PDPT, then four page directories of 2 MiB pages: 0..4 GiB identity-mapped.
const PML4: u64 = 0x2000;
const PDPT: u64 = 0x3000;
const PD: u64 = 0x4000;
const STUB_GPA: u64 = 0x8000;
/// IGVM memory-map parameter area: QEMU fills it with `IGVM_VHS_MEMORY_MAP_ENTRY`s.
const MEMORY_MAP: u64 = 0x9000;
const BOOT_PARAMS: u64 = 0xA000;
/// SNP only: the `cc_blob_sev_info` Linux finds through `boot_params.cc_blob_address`.
const CC_BLOB: u64 = 0xB000;
const CPUID_PAGE: u64 = 0xC000;
const SECRETS_PAGE: u64 = 0xD000;
/// IGVM VP-count parameter area: QEMU writes the number of vCPUs (u32) at its start.
const VP_COUNT: u64 = 0xE000;
const CMDLINE: u64 = 0x10000;
/// MP floating pointers, 16 bytes each, for 1..=`mp::MAX_CPUS` vCPUs; each names its own MP
/// configuration table (from `MP_TABLES` on). The stub copies the one for QEMU's vCPU count to
/// `MP_FLOATING_SCANNED`, the last KiB of base memory, where Linux looks for it (Intel MP spec
/// 1.4, 4.1; arch/x86/kernel/mpparse.c). No firmware means no ACPI MADT: without this table
/// the kernel would see one CPU.
const MP_FLOATING: u64 = 0x1F000;
const MP_TABLES: u64 = 0x20000;
const MP_FLOATING_SCANNED: u64 = 0x9FC00;
/// The stub's stack (it uses none; the kernel sets its own up) sits below the EBDA.
const STACK_TOP: u64 = 0x9F000;
/// GDT selectors: the stub's 32-bit code, then what the kernel's 64-bit entry expects
/// (`__BOOT_CS`, `__BOOT_DS`).
const START_CS: u16 = 0x08;
const BOOT_CS: u16 = 0x10;
const BOOT_DS: u16 = 0x18;

/// `struct boot_params` offsets (arch/x86/include/uapi/asm/bootparam.h).
mod zero_page {
    pub const CC_BLOB_ADDRESS: usize = 0x13C;
    pub const SETUP_HEADER: usize = 0x1F1;
    pub const E820_TABLE: u64 = 0x2D0;
    pub const E820_ENTRIES: u64 = 0x1E8;
    /// Setup header fields, as offsets into the bzImage and the zero page alike.
    pub const HEADER_END_JUMP: usize = 0x201;
    pub const HEADER_MAGIC: usize = 0x202;
    pub const VERSION: usize = 0x206;
    pub const TYPE_OF_LOADER: usize = 0x210;
    pub const RAMDISK_IMAGE: usize = 0x218;
    pub const RAMDISK_SIZE: usize = 0x21C;
    pub const CMD_LINE_PTR: usize = 0x228;
    pub const INITRD_ADDR_MAX: usize = 0x22C;
    pub const CMDLINE_SIZE: usize = 0x238;
    pub const XLOADFLAGS: usize = 0x236;
    /// `xloadflags`: the kernel has a 64-bit entry at load address + 0x200.
    pub const XLF_KERNEL_64: u16 = 1 << 0;
    /// `type_of_loader`: a boot loader without an assigned id.
    pub const LOADER_UNDEFINED: u8 = 0xFF;
}

/// The stub the boot CPU starts in, in 32-bit protected mode without paging (what QEMU/KVM
/// accept as an SEV-SNP VMSA's starting state; the native file starts the same way so that
/// booting it here runs the very code the SNP file holds). It enters long mode, turns the
/// IGVM memory map (`rbx`) into the zero page's (`rsi`) e820 table, puts the MP floating
/// pointer for QEMU's vCPU count where Linux looks for one, and jumps to the kernel's 64-bit
/// entry. Assembled (GNU as) from:
/// ```text
///     .code32
///     mov  %cr4, %eax
///     or   $0x20, %eax            # CR4.PAE
///     mov  %eax, %cr4
///     mov  $0x2000, %eax          # PML4
///     mov  %eax, %cr3
///     mov  $0xc0000080, %ecx      # EFER
///     rdmsr
///     or   $0x100, %eax           # EFER.LME
///     wrmsr
///     mov  %cr0, %eax
///     or   $0x80000000, %eax      # CR0.PG: long mode
///     mov  %eax, %cr0
///     ljmp $0x10, $L64            # patched: STUB_GPA + 0x31
///     .code64
/// L64:
///     mov  %esi, %esi             # upper halves are undefined after the mode switch
///     mov  %ebx, %ebx
///     lea  0x2d0(%rsi), %rdi      # boot_params.e820_table
///     xor  %ecx, %ecx             # entries written
/// 1:  mov  8(%rbx), %rdx          # number_of_pages; 0 ends the map
///     test %rdx, %rdx
///     jz   3f
///     mov  (%rbx), %rax           # starting_gpa_page_number
///     shl  $12, %rax
///     mov  %rax, (%rdi)           # e820 addr
///     shl  $12, %rdx
///     mov  %rdx, 8(%rdi)          # e820 size
///     movzwl 16(%rbx), %eax       # entry_type: 0 memory, anything else reserved
///     mov  $1, %edx               # E820_TYPE_RAM
///     test %eax, %eax
///     jz   2f
///     mov  $2, %edx               # E820_TYPE_RESERVED
/// 2:  mov  %edx, 16(%rdi)         # e820 type
///     add  $24, %rbx              # sizeof(IGVM_VHS_MEMORY_MAP_ENTRY)
///     add  $20, %rdi              # sizeof(struct boot_e820_entry)
///     inc  %ecx
///     cmp  $128, %ecx             # E820_MAX_ENTRIES_ZEROPAGE
///     jb   1b
/// 3:  mov  %cl, 0x1e8(%rsi)       # boot_params.e820_entries
///     mov  $0xe000, %edx          # VP_COUNT: QEMU's vCPU count
///     mov  (%rdx), %eax
///     dec  %eax
///     cmp  $63, %eax              # 1..=MP_MAX_CPUS, else no MP table
///     ja   4f
///     shl  $4, %eax
///     add  $0x1f000, %eax         # MP_FLOATING[count - 1]
///     mov  (%rax), %rdx
///     mov  8(%rax), %rcx
///     mov  $0x9fc00, %edi         # MP_FLOATING_SCANNED
///     mov  %rdx, (%rdi)
///     mov  %rcx, 8(%rdi)
/// 4:  movabs $ENTRY, %rax         # patched: the vmlinux ELF entry (phys_startup_64)
///     jmp  *%rax
/// ```
const STUB: [u8; 0xBB] = [
    0x0f, 0x20, 0xe0, 0x83, 0xc8, 0x20, 0x0f, 0x22, 0xe0, 0xb8, 0x00, 0x20, 0x00, 0x00, 0x0f, 0x22, //
    0xd8, 0xb9, 0x80, 0x00, 0x00, 0xc0, 0x0f, 0x32, 0x0d, 0x00, 0x01, 0x00, 0x00, 0x0f, 0x30, 0x0f, //
    0x20, 0xc0, 0x0d, 0x00, 0x00, 0x00, 0x80, 0x0f, 0x22, 0xc0, 0xea, 0, 0, 0, 0, 0x10, //
    0x00, 0x89, 0xf6, 0x89, 0xdb, 0x48, 0x8d, 0xbe, 0xd0, 0x02, 0x00, 0x00, 0x31, 0xc9, 0x48, 0x8b, //
    0x53, 0x08, 0x48, 0x85, 0xd2, 0x74, 0x39, 0x48, 0x8b, 0x03, 0x48, 0xc1, 0xe0, 0x0c, 0x48, 0x89, //
    0x07, 0x48, 0xc1, 0xe2, 0x0c, 0x48, 0x89, 0x57, 0x08, 0x0f, 0xb7, 0x43, 0x10, 0xba, 0x01, 0x00, //
    0x00, 0x00, 0x85, 0xc0, 0x74, 0x05, 0xba, 0x02, 0x00, 0x00, 0x00, 0x89, 0x57, 0x10, 0x48, 0x83, //
    0xc3, 0x18, 0x48, 0x83, 0xc7, 0x14, 0xff, 0xc1, 0x81, 0xf9, 0x80, 0x00, 0x00, 0x00, 0x72, 0xbe, //
    0x88, 0x8e, 0xe8, 0x01, 0x00, 0x00, 0xba, 0x00, 0xe0, 0x00, 0x00, 0x8b, 0x02, 0xff, 0xc8, 0x83, //
    0xf8, 0x3f, 0x77, 0x1b, 0xc1, 0xe0, 0x04, 0x05, 0x00, 0xf0, 0x01, 0x00, 0x48, 0x8b, 0x10, 0x48, //
    0x8b, 0x48, 0x08, 0xbf, 0x00, 0xfc, 0x09, 0x00, 0x48, 0x89, 0x17, 0x48, 0x89, 0x4f, 0x08, 0x48, //
    0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xe0,
];
/// Where in `STUB` the far jump's 32-bit target goes, and where the 64-bit part starts.
const STUB_FAR_JUMP_OFFSET: usize = 0x2B;
const STUB_LONG_MODE: u64 = 0x31;
/// Where in `STUB` the kernel entry's 8 bytes go.
const STUB_ENTRY_OFFSET: usize = 0xB1;
/// What the stub was assembled with: the e820 offsets, the addresses, the selector.
const _: () = assert!(zero_page::E820_TABLE == 0x2d0 && zero_page::E820_ENTRIES == 0x1e8);
const _: () = assert!(PML4 == 0x2000 && BOOT_CS == 0x10 && VP_COUNT == 0xe000);
const _: () = assert!(MP_FLOATING == 0x1f000 && MP_FLOATING_SCANNED == 0x9fc00 && mp::MAX_CPUS == 64);

/// Control register and EFER bits (Intel SDM vol. 3A, 2.5 and 2.2.1).
const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
/// AMD APM vol. 2, 15.35.9: a SEV-ES/SNP VMSA has EFER.SVME set.
const EFER_SVME: u64 = 1 << 12;
/// Page-table entry bits: present, writable, page size (2 MiB in a PD).
const PTE_P: u64 = 1 << 0;
const PTE_RW: u64 = 1 << 1;
const PTE_PS: u64 = 1 << 7;

/// What goes into the file.
pub struct BootFiles<'a> {
    pub bzimage: &'a [u8],
    /// The same kernel uncompressed: what the file loads (the bzImage gives the setup header).
    pub vmlinux: &'a [u8],
    pub initrd: &'a [u8],
    pub cmdline: &'a str,
}

/// The platform the file is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    /// No isolation: QEMU loads the pages and the native VP context.
    Native,
    /// SEV-SNP: page tables carry the C-bit at `cbitpos`; the guest policy is the launch's.
    Snp { cbitpos: u32, policy: u64 },
}

/// Where the kernel and initrd landed (for the reference values).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub kernel: u64,
    pub initrd: u64,
    pub entry: u64,
}

/// Builds the IGVM file for `platform`.
pub fn build(files: &BootFiles, platform: Platform) -> Result<(Vec<u8>, Placement)> {
    let kernel = Kernel::parse(files.bzimage)?;
    let vmlinux = elf::parse(files.vmlinux)?;
    ensure!(
        (files.cmdline.len() as u64) < MP_FLOATING - CMDLINE,
        "the command line is {} bytes; the IGVM layout has room for {}",
        files.cmdline.len(),
        MP_FLOATING - CMDLINE - 1
    );
    // cmdline_size counts the bytes before the terminating NUL (boot.rst).
    ensure!(
        files.cmdline.len() <= kernel.cmdline_size as usize,
        "the command line is {} bytes; the kernel takes at most {}",
        files.cmdline.len(),
        kernel.cmdline_size
    );
    let initrd_gpa = vmlinux.end().next_multiple_of(2 << 20);
    let initrd_end = initrd_gpa + files.initrd.len() as u64;
    ensure!(
        initrd_end <= u64::from(kernel.initrd_addr_max) + 1,
        "the initrd would end at {initrd_end:#x}, above the kernel's limit {:#x}",
        kernel.initrd_addr_max
    );
    let lowest = vmlinux.segments.iter().map(|s| s.paddr).min().unwrap_or(0);
    let placement = Placement { kernel: lowest, initrd: initrd_gpa, entry: vmlinux.entry };

    let mask = 1u32;
    let c_bit = match platform {
        Platform::Native => 0,
        Platform::Snp { cbitpos, .. } => {
            ensure!((32..=51).contains(&cbitpos), "SNP C-bit position {cbitpos} is outside 32..=51");
            1u64 << cbitpos
        }
    };
    let mut pages = Pages { mask, directives: Vec::new() };
    // The memory map first: QEMU fills the parameter area when it reaches the MemoryMap
    // directive and writes it into guest memory at ParameterInsert.
    pages.directives.push(IgvmDirectiveHeader::ParameterArea {
        number_of_bytes: PAGE,
        parameter_area_index: 0,
        initial_data: Vec::new(),
    });
    pages
        .directives
        .push(IgvmDirectiveHeader::MemoryMap(IGVM_VHS_PARAMETER { parameter_area_index: 0, byte_offset: 0 }));
    pages.directives.push(IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
        gpa: MEMORY_MAP,
        compatibility_mask: mask,
        parameter_area_index: 0,
    }));
    pages.directives.push(IgvmDirectiveHeader::ParameterArea {
        number_of_bytes: PAGE,
        parameter_area_index: 1,
        initial_data: Vec::new(),
    });
    pages.directives.push(IgvmDirectiveHeader::VpCount(IGVM_VHS_PARAMETER { parameter_area_index: 1, byte_offset: 0 }));
    pages.directives.push(IgvmDirectiveHeader::ParameterInsert(IGVM_VHS_PARAMETER_INSERT {
        gpa: VP_COUNT,
        compatibility_mask: mask,
        parameter_area_index: 1,
    }));

    pages.add(GDT, &gdt());
    pages.add(PML4, &page_tables(c_bit));
    let mut stub = STUB;
    stub[STUB_FAR_JUMP_OFFSET..][..4].copy_from_slice(&((STUB_GPA + STUB_LONG_MODE) as u32).to_le_bytes());
    stub[STUB_ENTRY_OFFSET..][..8].copy_from_slice(&placement.entry.to_le_bytes());
    pages.add(STUB_GPA, &stub);

    let mut cmdline = files.cmdline.as_bytes().to_vec();
    cmdline.push(0);
    let mut zero = kernel.zero_page(placement.initrd, files.initrd.len())?;
    if let Platform::Snp { .. } = platform {
        zero[zero_page::CC_BLOB_ADDRESS..][..4].copy_from_slice(&(CC_BLOB as u32).to_le_bytes());
        pages.add(CC_BLOB, &cc_blob());
        pages.special(CPUID_PAGE, IgvmPageDataType::CPUID_DATA);
        pages.special(SECRETS_PAGE, IgvmPageDataType::SECRETS);
    }
    pages.add(BOOT_PARAMS, &zero);
    pages.add(CMDLINE, &cmdline);
    let (floating, tables) = mp::tables(MP_TABLES);
    pages.add(MP_FLOATING, &floating);
    pages.add(MP_TABLES, &tables);
    for segment in &vmlinux.segments {
        // Up to memsz (bss): zeros, as pages without data; on SNP every page the kernel
        // owns must be part of the launch (validated), not only those with file data.
        let mut data = segment.data.to_vec();
        data.resize(usize::try_from(segment.memsz)?, 0);
        pages.add(segment.paddr, &data);
    }
    // The page the stub writes the MP floating pointer into (zeros until then).
    pages.add(MP_FLOATING_SCANNED & !(PAGE - 1), &[]);
    pages.add(placement.initrd, files.initrd);

    let regs = BootRegisters { rip: STUB_GPA, rsi: BOOT_PARAMS, rbx: MEMORY_MAP, rsp: STACK_TOP };
    let (platform_header, inits) = match platform {
        Platform::Native => {
            pages.directives.push(IgvmDirectiveHeader::X64NativeVpContext {
                compatibility_mask: mask,
                vp_index: 0,
                context: Box::new(regs.native()),
            });
            (supported_platform(IgvmPlatformType::NATIVE, mask), Vec::new())
        }
        Platform::Snp { policy, .. } => {
            pages.directives.push(IgvmDirectiveHeader::SnpVpContext {
                gpa: SNP_VMSA_GPA,
                compatibility_mask: mask,
                vp_index: 0,
                vmsa: Box::new(regs.snp_vmsa()),
            });
            let policy = IgvmInitializationHeader::GuestPolicy { policy, compatibility_mask: mask };
            (supported_platform(IgvmPlatformType::SEV_SNP, mask), vec![policy])
        }
    };
    let file = IgvmFile::new(
        IgvmRevision::V2 { arch: Arch::X64, page_size: PAGE as u32 },
        vec![platform_header],
        inits,
        pages.directives,
    )
    .context("assembling the IGVM file")?;
    let mut out = Vec::new();
    file.serialize(&mut out).context("serializing the IGVM file")?;
    Ok((out, placement))
}

/// Where the VMSA page of the boot CPU goes (IGVM's SNP VP context GPA; the launch digest
/// measures every VMSA at the same fixed address regardless).
pub const SNP_VMSA_GPA: u64 = 0xFFFF_FFFF_F000;

/// The SNP guest policy the SNP file asks for: SMT allowed, ABI 0.0, bit 17 reserved-one
/// (SEV-SNP ABI spec, 4.3), no debugging, no migration agent. The same default the runtime
/// class config uses (`snp_guest_policy`).
pub const SNP_POLICY: u64 = 0x30000;
const _: () = assert!(SnpPolicy::new().with_smt(1).with_reserved_must_be_one(1).into_bits() == SNP_POLICY);

fn supported_platform(platform_type: IgvmPlatformType, mask: u32) -> IgvmPlatformHeader {
    IgvmPlatformHeader::SupportedPlatform(IGVM_VHS_SUPPORTED_PLATFORM {
        compatibility_mask: mask,
        highest_vtl: 0,
        platform_type,
        platform_version: 1,
        shared_gpa_boundary: 0,
    })
}

/// Page data directives, 4 KiB each. A page of zeros goes without data: QEMU fills it with
/// zeros, and an SNP launch measures it as a normal page of zeros (`snp_igvm`).
struct Pages {
    mask: u32,
    directives: Vec<IgvmDirectiveHeader>,
}

impl Pages {
    /// `data` from `gpa` on, page by page; no data at all stands for one page of zeros.
    fn add(&mut self, gpa: u64, data: &[u8]) {
        let zero_page = [0u8; 0];
        let chunks: Vec<&[u8]> =
            if data.is_empty() { vec![&zero_page[..]] } else { data.chunks(PAGE as usize).collect() };
        for (i, chunk) in chunks.into_iter().enumerate() {
            let mut page = chunk.to_vec();
            if page.iter().all(|b| *b == 0) {
                page.clear();
            } else {
                page.resize(PAGE as usize, 0);
            }
            self.directives.push(IgvmDirectiveHeader::PageData {
                gpa: gpa + i as u64 * PAGE,
                compatibility_mask: self.mask,
                flags: IgvmPageDataFlags::new(),
                data_type: IgvmPageDataType::NORMAL,
                data: page,
            });
        }
    }

    /// A page the platform fills (SNP CPUID or secrets page).
    fn special(&mut self, gpa: u64, data_type: IgvmPageDataType) {
        self.directives.push(IgvmDirectiveHeader::PageData {
            gpa,
            compatibility_mask: self.mask,
            flags: IgvmPageDataFlags::new(),
            data_type,
            data: Vec::new(),
        });
    }
}

/// The bzImage fields the loader needs: its setup header (for the zero page) and limits.
struct Kernel<'a> {
    /// The setup header as the bzImage carries it (offsets `SETUP_HEADER..end`).
    header: &'a [u8],
    cmdline_size: u32,
    initrd_addr_max: u32,
}

impl<'a> Kernel<'a> {
    fn parse(image: &'a [u8]) -> Result<Self> {
        let u16_at = |o: usize| image.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
        let u32_at = |o: usize| image.get(o..o + 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
        if image.get(zero_page::HEADER_MAGIC..zero_page::HEADER_MAGIC + 4) != Some(b"HdrS") {
            bail!("not a bzImage (no HdrS setup header)");
        }
        let version = u16_at(zero_page::VERSION).context("short setup header")?;
        ensure!(version >= 0x20C, "boot protocol {version:#x} predates the 64-bit entry (2.12)");
        let xloadflags = u16_at(zero_page::XLOADFLAGS).context("short setup header")?;
        ensure!(xloadflags & zero_page::XLF_KERNEL_64 != 0, "the kernel has no 64-bit entry point");
        let header_end = zero_page::HEADER_END_JUMP + 1 + usize::from(image[zero_page::HEADER_END_JUMP]);
        ensure!(image.len() >= header_end, "truncated bzImage");
        Ok(Kernel {
            header: &image[zero_page::SETUP_HEADER..header_end],
            cmdline_size: u32_at(zero_page::CMDLINE_SIZE).context("short setup header")?,
            initrd_addr_max: u32_at(zero_page::INITRD_ADDR_MAX).context("short setup header")?,
        })
    }

    /// The zero page: the setup header, where the loader put the initrd and the command
    /// line, and who loaded it. The e820 table is the stub's to fill.
    fn zero_page(&self, initrd: u64, initrd_len: usize) -> Result<Vec<u8>> {
        let mut zero = vec![0u8; PAGE as usize];
        zero[zero_page::SETUP_HEADER..][..self.header.len()].copy_from_slice(self.header);
        zero[zero_page::TYPE_OF_LOADER] = zero_page::LOADER_UNDEFINED;
        let put32 = |zero: &mut Vec<u8>, at: usize, v: u64| -> Result<()> {
            let v = u32::try_from(v).context("a boot address above 4 GiB")?;
            zero[at..at + 4].copy_from_slice(&v.to_le_bytes());
            Ok(())
        };
        put32(&mut zero, zero_page::RAMDISK_IMAGE, initrd)?;
        put32(&mut zero, zero_page::RAMDISK_SIZE, initrd_len as u64)?;
        put32(&mut zero, zero_page::CMD_LINE_PTR, CMDLINE)?;
        Ok(zero)
    }
}

/// Null, 32-bit code at `START_CS` (the stub's first part), 64-bit code at `BOOT_CS`, flat
/// data at `BOOT_DS` (Intel SDM vol. 3A, 3.4.5).
fn gdt() -> Vec<u8> {
    let code32: u64 = 0x00CF_9B00_0000_FFFF;
    let code64: u64 = 0x00AF_9B00_0000_FFFF;
    let data: u64 = 0x00CF_9300_0000_FFFF;
    [0u64, code32, code64, data].iter().flat_map(|d| d.to_le_bytes()).collect()
}
const _: () = assert!(START_CS == 8 && BOOT_CS == 2 * 8 && BOOT_DS == 3 * 8);

/// PML4 → one PDPT → four PDs of 2 MiB pages: 0..4 GiB identity, `c_bit` in every entry.
fn page_tables(c_bit: u64) -> Vec<u8> {
    let mut t = vec![0u8; 6 * PAGE as usize];
    let mut put = |table: u64, index: u64, entry: u64| {
        let at = (table - PML4 + index * 8) as usize;
        t[at..at + 8].copy_from_slice(&entry.to_le_bytes());
    };
    put(PML4, 0, PDPT | c_bit | PTE_P | PTE_RW);
    for gib in 0..4 {
        put(PDPT, gib, (PD + gib * PAGE) | c_bit | PTE_P | PTE_RW);
        for i in 0..512 {
            let addr = (gib << 30) | (i << 21);
            put(PD + gib * PAGE, i, addr | c_bit | PTE_P | PTE_RW | PTE_PS);
        }
    }
    t
}
const _: () = assert!(PD + 4 * PAGE == STUB_GPA && PDPT == PML4 + PAGE);

/// `struct cc_blob_sev_info` (arch/x86/include/asm/sev.h): where the SNP secrets and CPUID
/// pages are, for a kernel started without firmware.
fn cc_blob() -> Vec<u8> {
    const MAGIC: u32 = 0x4544_4d41; // "AMDE"
    let mut b = Vec::with_capacity(40);
    b.extend_from_slice(&MAGIC.to_le_bytes());
    b.extend_from_slice(&0u16.to_le_bytes()); // version
    b.extend_from_slice(&0u16.to_le_bytes()); // reserved
    b.extend_from_slice(&SECRETS_PAGE.to_le_bytes());
    b.extend_from_slice(&(PAGE as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b.extend_from_slice(&CPUID_PAGE.to_le_bytes());
    b.extend_from_slice(&(PAGE as u32).to_le_bytes());
    b.extend_from_slice(&0u32.to_le_bytes());
    b
}

/// The boot CPU's state: 32-bit protected mode, paging off, flat segments, `rip` at the stub
/// (which builds long mode itself: KVM launches SNP VMSAs only in real or protected mode).
struct BootRegisters {
    rip: u64,
    rsi: u64,
    rbx: u64,
    rsp: u64,
}

/// CR0 at the start: PE, ET, NE (the value `igvmmeasure --check-kvm` accepts for SNP).
const CR0: u64 = CR0_PE | CR0_ET | CR0_NE;
const RFLAGS_RESERVED: u64 = 1 << 1;

impl BootRegisters {
    fn native(&self) -> IgvmNativeVpContextX64 {
        let mut c = IgvmNativeVpContextX64::new_zeroed();
        c.rip = self.rip;
        c.rsi = self.rsi;
        c.rbx = self.rbx;
        c.rsp = self.rsp;
        c.rflags = RFLAGS_RESERVED;
        c.gdtr_base = GDT;
        c.gdtr_limit = 4 * 8 - 1;
        // Attributes in VMX layout (access byte, then AVL/L/DB/G in bits 12..15), as QEMU's
        // IGVM loader reads them: flat 32-bit code and data.
        c.code_selector = START_CS;
        c.code_attributes = 0xC09B;
        c.code_limit = 0xFFFF_FFFF;
        c.data_selector = BOOT_DS;
        c.data_attributes = 0xC093;
        c.data_limit = 0xFFFF_FFFF;
        c.cr0 = CR0;
        c
    }

    /// The VMSA (AMD APM vol. 2, table B-4); segment attributes in SVM's compressed layout.
    fn snp_vmsa(&self) -> SevVmsa {
        let mut v = SevVmsa::new_zeroed();
        let seg = |selector: u16, attrib: u16| SevSelector { selector, attrib, limit: 0xFFFF_FFFF, base: 0 };
        v.cs = seg(START_CS, 0xC9B);
        let data = seg(BOOT_DS, 0xC93);
        (v.ds, v.es, v.fs, v.gs, v.ss) = (data, data, data, data, data);
        v.gdtr = SevSelector { selector: 0, attrib: 0, limit: 4 * 8 - 1, base: GDT };
        v.ldtr = SevSelector { selector: 0, attrib: 0x82, limit: 0xFFFF, base: 0 };
        v.tr = SevSelector { selector: 0, attrib: 0x8B, limit: 0xFFFF, base: 0 };
        v.idtr = SevSelector { selector: 0, attrib: 0, limit: 0xFFFF, base: 0 };
        v.efer = EFER_SVME;
        v.cr0 = CR0;
        v.rflags = RFLAGS_RESERVED;
        v.rip = self.rip;
        v.rsi = self.rsi;
        v.rbx = self.rbx;
        v.rsp = self.rsp;
        v.dr6 = 0xFFFF_0FF0;
        v.dr7 = 0x400;
        // Power-on values: PAT (Intel SDM 11.12.4), XCR0 x87 only, MXCSR, x87 control word.
        v.pat = 0x0007_0406_0007_0406;
        v.xcr0 = 1;
        v.mxcsr = 0x1F80;
        v.x87_fcw = 0x37F;
        v.sev_features = SevFeatures::new().with_snp(true);
        v
    }
}

#[cfg(test)]
mod tests;
