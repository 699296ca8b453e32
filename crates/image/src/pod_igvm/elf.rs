//! The uncompressed kernel (`vmlinux`, ELF64) as the IGVM file loads it: each `PT_LOAD`
//! segment at its physical address, entered at the ELF entry (`phys_startup_64`, the 64-bit
//! boot protocol's entry of an uncompressed kernel). Loading it uncompressed spares the guest
//! the bzImage's self-decompression (a second under TCG).

use anyhow::{bail, ensure, Context, Result};

/// ELF64 header and program header fields (System V gABI, "ELF Header" / "Program Header").
const EI_CLASS_64: u8 = 2;
const EI_DATA_LE: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PHDR_SIZE: usize = 56;

/// One loadable segment: `data` at `paddr`, zeros up to `memsz`.
pub struct Segment<'a> {
    pub paddr: u64,
    pub data: &'a [u8],
    pub memsz: u64,
}

pub struct Vmlinux<'a> {
    pub entry: u64,
    pub segments: Vec<Segment<'a>>,
}

impl Vmlinux<'_> {
    /// First byte past the highest segment (where the kernel image, bss included, ends).
    pub fn end(&self) -> u64 {
        // parse() checked that every segment ends below 4 GiB.
        self.segments.iter().map(|s| s.paddr + s.memsz).max().unwrap_or(0)
    }
}

pub fn parse(elf: &[u8]) -> Result<Vmlinux<'_>> {
    let get =
        |at: usize, len: usize| at.checked_add(len).and_then(|end| elf.get(at..end)).context("truncated ELF file");
    let u16_at = |at: usize| get(at, 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let u32_at = |at: usize| get(at, 4).map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let u64_at = |at: usize| get(at, 8).map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    if get(0, 4)? != b"\x7fELF" {
        bail!("vmlinux is not an ELF file");
    }
    ensure!(get(4, 1)?[0] == EI_CLASS_64 && get(5, 1)?[0] == EI_DATA_LE, "vmlinux is not little-endian ELF64");
    ensure!(u16_at(0x12)? == EM_X86_64, "vmlinux is not an x86-64 kernel");
    let entry = u64_at(0x18)?;
    let phoff = usize::try_from(u64_at(0x20)?)?;
    ensure!(usize::from(u16_at(0x36)?) == PHDR_SIZE, "unexpected ELF program header size");
    let mut segments = Vec::new();
    for i in 0..usize::from(u16_at(0x38)?) {
        let ph = phoff.checked_add(i * PHDR_SIZE).context("ELF program headers out of range")?;
        if u32_at(ph)? != PT_LOAD {
            continue;
        }
        let offset = usize::try_from(u64_at(ph + 0x08)?)?;
        let paddr = u64_at(ph + 0x18)?;
        let filesz = usize::try_from(u64_at(ph + 0x20)?)?;
        let memsz = u64_at(ph + 0x28)?;
        ensure!(paddr >= 1 << 20, "segment {i} loads below 1 MiB ({paddr:#x})");
        // The boot page tables map 0..4 GiB, and the initrd goes above the kernel.
        ensure!(
            paddr.checked_add(memsz).is_some_and(|end| end <= 1 << 32),
            "segment {i} ({paddr:#x} + {memsz:#x}) does not end below 4 GiB"
        );
        ensure!(memsz >= filesz as u64, "segment {i} is larger in the file than in memory");
        segments.push(Segment { paddr, data: get(offset, filesz)?, memsz });
    }
    ensure!(!segments.is_empty(), "vmlinux has no loadable segment");
    ensure!(
        segments.iter().any(|s| (s.paddr..s.paddr + s.data.len() as u64).contains(&entry)),
        "the entry point {entry:#x} is not in a loaded segment"
    );
    Ok(Vmlinux { entry, segments })
}
