use super::*;

use igvm::IgvmFile;

/// A bzImage with a boot-protocol 2.15 setup header and `code` as its protected-mode part
/// (which the IGVM file does not load: it takes the setup header only).
fn bzimage(code: &[u8]) -> Vec<u8> {
    let mut image = vec![0u8; 2 * 512];
    image[0x1F1] = 1; // setup_sects
    image[zero_page::HEADER_END_JUMP] = 0x6A; // header ends at 0x26C
    image[zero_page::HEADER_MAGIC..][..4].copy_from_slice(b"HdrS");
    image[zero_page::VERSION..][..2].copy_from_slice(&0x20Fu16.to_le_bytes());
    image[zero_page::INITRD_ADDR_MAX..][..4].copy_from_slice(&0x7FFF_FFFFu32.to_le_bytes());
    image[zero_page::XLOADFLAGS..][..2].copy_from_slice(&zero_page::XLF_KERNEL_64.to_le_bytes());
    image[zero_page::CMDLINE_SIZE..][..4].copy_from_slice(&2047u32.to_le_bytes());
    image.extend_from_slice(code);
    image
}

/// An x86-64 ELF64 `vmlinux` with one PT_LOAD segment of `code` at 16 MiB (plus `bss`
/// bytes of zeros in memory), entered at 16 MiB + 0x40.
fn vmlinux(code: &[u8], bss: u64) -> Vec<u8> {
    let mut elf = vec![0u8; 64 + 56];
    elf[..4].copy_from_slice(b"\x7fELF");
    (elf[4], elf[5], elf[6]) = (2, 1, 1);
    elf[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    elf[0x12..0x14].copy_from_slice(&62u16.to_le_bytes());
    elf[0x18..0x20].copy_from_slice(&0x100_0040u64.to_le_bytes());
    elf[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
    elf[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
    elf[0x38..0x3A].copy_from_slice(&1u16.to_le_bytes());
    let ph = 64;
    elf[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes());
    elf[ph + 0x08..ph + 0x10].copy_from_slice(&120u64.to_le_bytes());
    elf[ph + 0x18..ph + 0x20].copy_from_slice(&0x100_0000u64.to_le_bytes());
    elf[ph + 0x20..ph + 0x28].copy_from_slice(&(code.len() as u64).to_le_bytes());
    elf[ph + 0x28..ph + 0x30].copy_from_slice(&(code.len() as u64 + bss).to_le_bytes());
    elf.extend_from_slice(code);
    elf
}

struct Inputs {
    bzimage: Vec<u8>,
    vmlinux: Vec<u8>,
}

/// A kernel whose uncompressed code is `code`.
fn kernel(code: &[u8]) -> Inputs {
    Inputs { bzimage: bzimage(b"compressed payload"), vmlinux: vmlinux(code, 0x30_0000) }
}

fn files<'a>(kernel: &'a Inputs, initrd: &'a [u8], cmdline: &'a str) -> BootFiles<'a> {
    BootFiles { bzimage: &kernel.bzimage, vmlinux: &kernel.vmlinux, initrd, cmdline }
}

/// The page data the file puts at `gpa`.
fn page_at(file: &IgvmFile, gpa: u64) -> Vec<u8> {
    file.directives()
        .iter()
        .find_map(|d| match d {
            IgvmDirectiveHeader::PageData { gpa: g, data, .. } if *g == gpa => Some(data.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no page at {gpa:#x}"))
}

#[test]
fn native_file_loads_kernel_initrd_and_command_line_where_the_zero_page_says() {
    let mut code = vec![0xAA; 5000];
    code.extend_from_slice(&[0; 4096]);
    let kernel = kernel(&code);
    let (bytes, placement) =
        build(&files(&kernel, &[0xBB; 10], "console=ttyS0 roothash=ab"), Platform::Native).unwrap();
    let file = IgvmFile::new_from_binary(&bytes, None).unwrap();

    assert_eq!(placement.kernel, 0x100_0000);
    assert_eq!(placement.entry, 0x100_0040);
    // Above the kernel's end (its bss included), 2 MiB aligned.
    assert_eq!(placement.initrd, 0x140_0000);
    // A page of zeros goes without data; so do the pages up to the segment's memsz (bss),
    // and the page the stub writes the MP floating pointer into.
    assert!(page_at(&file, placement.kernel + 2 * PAGE).is_empty());
    assert!(page_at(&file, placement.kernel + 3 * PAGE + 0x30_0000 - PAGE).is_empty());
    assert!(page_at(&file, 0x9F000).is_empty());
    assert_eq!(&page_at(&file, placement.kernel)[..4], &[0xAA; 4]);
    assert_eq!(page_at(&file, placement.kernel + PAGE)[..5000 - 4096], [0xAA; 904]);
    assert_eq!(
        &page_at(&file, placement.initrd)[..11],
        &[0xBB, 0xBB, 0xBB, 0xBB, 0xBB, 0xBB, 0xBB, 0xBB, 0xBB, 0xBB, 0]
    );

    let zero = page_at(&file, BOOT_PARAMS);
    let u32_at = |o: usize| u32::from_le_bytes(zero[o..o + 4].try_into().unwrap());
    assert_eq!(&zero[zero_page::HEADER_MAGIC..][..4], b"HdrS");
    assert_eq!(zero[zero_page::TYPE_OF_LOADER], 0xFF);
    assert_eq!(u64::from(u32_at(zero_page::RAMDISK_IMAGE)), placement.initrd);
    assert_eq!(u32_at(zero_page::RAMDISK_SIZE), 10);
    assert_eq!(u64::from(u32_at(zero_page::CMD_LINE_PTR)), CMDLINE);
    assert_eq!(&page_at(&file, CMDLINE)[..26], b"console=ttyS0 roothash=ab\0");

    let stub = page_at(&file, STUB_GPA);
    assert_eq!(&stub[STUB_ENTRY_OFFSET..][..8], &0x100_0040u64.to_le_bytes());
    assert_eq!(stub[STUB_FAR_JUMP_OFFSET - 1], 0xEA, "ljmp ptr16:32");
    assert_eq!(&stub[STUB_FAR_JUMP_OFFSET..][..6], &[0x31, 0x80, 0, 0, 0x10, 0]);

    let context = file
        .directives()
        .iter()
        .find_map(|d| match d {
            IgvmDirectiveHeader::X64NativeVpContext { context, .. } => Some(context.clone()),
            _ => None,
        })
        .expect("a native VP context");
    assert_eq!((context.rip, context.rsi, context.rbx), (STUB_GPA, BOOT_PARAMS, MEMORY_MAP));
    // Protected mode, paging off: the stub builds long mode.
    assert_eq!((context.cr0, context.cr3, context.efer, context.code_selector), (0x31, 0, 0, START_CS));
    assert!(file.directives().iter().any(|d| matches!(d, IgvmDirectiveHeader::MemoryMap(_))));
}

#[test]
fn page_tables_identity_map_four_gib_with_the_c_bit_where_asked() {
    let t = page_tables(1 << 51);
    let entry = |table: u64, i: u64| {
        let at = (table - PML4 + i * 8) as usize;
        u64::from_le_bytes(t[at..at + 8].try_into().unwrap())
    };
    assert_eq!(entry(PML4, 0), PDPT | 1 << 51 | 3);
    assert_eq!(entry(PDPT, 3), (PD + 3 * PAGE) | 1 << 51 | 3);
    assert_eq!(entry(PD + 3 * PAGE, 511), (0xFFE0_0000 | 1 << 51 | 0x83));
    assert_eq!(entry(PD, 0), 1 << 51 | 0x83);
    assert_eq!(page_tables(0)[..8], (PDPT | 3).to_le_bytes());
}

#[test]
fn what_the_kernel_cannot_take_is_refused() {
    let good = kernel(&[1; 100]);
    let long = "x".repeat(2048);
    let err = build(&files(&good, &[], &long), Platform::Native).unwrap_err();
    assert!(err.to_string().contains("at most 2047"), "{err}");
    build(&files(&good, &[], &long[1..]), Platform::Native).expect("2047 bytes fit: cmdline_size excludes the NUL");

    let mut high = Inputs { bzimage: good.bzimage.clone(), vmlinux: good.vmlinux.clone() };
    high.vmlinux[64 + 0x28..64 + 0x30].copy_from_slice(&(1u64 << 32).to_le_bytes());
    let err = build(&files(&high, &[], ""), Platform::Native).unwrap_err();
    assert!(err.to_string().contains("below 4 GiB"), "{err}");

    let garbage = Inputs { bzimage: b"MZ not a kernel at all".to_vec(), vmlinux: good.vmlinux.clone() };
    let err = build(&files(&garbage, &[], ""), Platform::Native).unwrap_err();
    assert!(err.to_string().contains("not a bzImage"), "{err}");

    let mut old = Inputs { bzimage: good.bzimage.clone(), vmlinux: good.vmlinux.clone() };
    old.bzimage[zero_page::XLOADFLAGS] = 0;
    let err = build(&files(&old, &[], ""), Platform::Native).unwrap_err();
    assert!(err.to_string().contains("64-bit entry"), "{err}");

    let not_elf = Inputs { bzimage: good.bzimage.clone(), vmlinux: good.bzimage.clone() };
    let err = build(&files(&not_elf, &[], ""), Platform::Native).unwrap_err();
    assert!(err.to_string().contains("not an ELF"), "{err}");

    let mut outside = Inputs { bzimage: good.bzimage.clone(), vmlinux: good.vmlinux.clone() };
    outside.vmlinux[0x18..0x20].copy_from_slice(&0x200_0000u64.to_le_bytes());
    let err = build(&files(&outside, &[], ""), Platform::Native).unwrap_err();
    assert!(err.to_string().contains("not in a loaded segment"), "{err}");

    let err = build(&files(&good, &[], ""), Platform::Snp { cbitpos: 60, policy: SNP_POLICY }).unwrap_err();
    assert!(err.to_string().contains("C-bit"), "{err}");
}

#[test]
fn snp_digest_covers_kernel_initrd_and_command_line() {
    let kernel = kernel(&[0x11; 9000]);
    let snp = Platform::Snp { cbitpos: 51, policy: SNP_POLICY };
    let digest = |k: &Inputs, i: &[u8], c: &str| {
        let (bytes, _) = build(&files(k, i, c), snp).unwrap();
        contrast_measure::snp_igvm::launch_digest(&bytes).unwrap()
    };
    let base = digest(&kernel, b"initrd", "roothash=ab");
    assert_eq!(base, digest(&kernel, b"initrd", "roothash=ab"), "the same inputs measure the same");
    let mut k = Inputs { bzimage: kernel.bzimage.clone(), vmlinux: kernel.vmlinux.clone() };
    *k.vmlinux.last_mut().unwrap() ^= 1;
    assert_ne!(base, digest(&k, b"initrd", "roothash=ab"), "a kernel byte");
    assert_ne!(base, digest(&kernel, b"initrD", "roothash=ab"), "an initrd byte");
    assert_ne!(base, digest(&kernel, b"initrd", "roothash=ac"), "a command line byte");
    // The native file has no SNP platform to measure.
    let (native, _) = build(&files(&kernel, b"initrd", "roothash=ab"), Platform::Native).unwrap();
    assert!(contrast_measure::snp_igvm::launch_digest(&native).is_err());
}

/// The SNP file of fixed synthetic inputs, for the golden test.
fn golden_snp_file() -> Vec<u8> {
    let mut code: Vec<u8> = (0..20_000u32).map(|i| (i * 7 % 251) as u8).collect();
    code.extend_from_slice(&[0; 8192]);
    let kernel = kernel(&code);
    let initrd: Vec<u8> = (0..6000u32).map(|i| (i % 13) as u8).collect();
    let boot = files(&kernel, &initrd, "console=ttyS0 roothash=0123456789abcdef");
    build(&boot, Platform::Snp { cbitpos: 51, policy: SNP_POLICY }).unwrap().0
}

/// Our SNP launch digest (`contrast_measure::snp_igvm`) against an independent computation:
/// coconut-svsm's `igvmmeasure` (github.com/coconut-svsm/svsm, tools/igvmmeasure), run by hand
/// on the file `golden_snp_file()` builds, with `--check-kvm` (the file also meets QEMU/KVM's
/// rules for an SNP launch). The golden file records the tool's commit, the command, the
/// file's SHA-256 and the digest it printed. A change to the file's layout changes the SHA-256:
/// write the file with `CONTRAST_WRITE_GOLDEN_IGVM=<path>`, run igvmmeasure on it again, and
/// update the golden file.
#[test]
fn snp_digest_matches_igvmmeasure() {
    use sha2::{Digest, Sha256};
    let file = golden_snp_file();
    if let Some(path) = std::env::var_os("CONTRAST_WRITE_GOLDEN_IGVM") {
        std::fs::write(path, &file).unwrap();
    }
    let golden = include_str!("igvmmeasure.golden");
    let field = |name: &str| {
        golden
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .unwrap_or_else(|| panic!("{name} in igvmmeasure.golden"))
            .trim()
            .to_owned()
    };
    let sha: String = Sha256::digest(&file).iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sha, field("file sha256:"), "the golden file changed: re-run igvmmeasure (see this test's doc)");
    let ours: String =
        contrast_measure::snp_igvm::launch_digest(&file).unwrap().iter().map(|b| format!("{b:02X}")).collect();
    assert_eq!(ours, field("Launch Digest:"));
}
