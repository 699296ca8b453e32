//! TDX MRTD of a TD firmware image (TDVF, e.g. Debian's `OVMF.inteltdx.fd`), as QEMU loads it.
//!
//! QEMU reads the firmware's TDVF metadata and hands each section to KVM
//! (`KVM_TDX_INIT_MEM_REGION`); the TDX module measures into MRTD, one SHA-384 over all
//! records in order (Intel TDX module ABI, TDH.MEM.PAGE.ADD and TDH.MR.EXTEND):
//! - per 4 KiB page of a section not marked PAGE_AUG: a 128-byte record "MEM.PAGE.ADD" with
//!   the page's GPA (u64 little-endian) at byte 16;
//! - when the section is marked MR_EXTEND, right after that page's record, per 256-byte chunk
//!   of the page: a 128-byte record "MR.EXTEND" with the chunk's GPA at byte 16, then the
//!   chunk's 256 bytes.
//!
//! Page by page (add, then extend) is the order of upstream KVM with QEMU ≥ 9; older stacks
//! that added every page of a section before extending any give another MRTD.
//!
//! Where the metadata is: OVMF's GUIDed table at the end of the image (footer GUID 16 bytes
//! at `len - 0x30`, preceded by the table's u16 length; entries read backwards as
//! `data, u16 length, GUID`), entry [`TDX_METADATA_GUID`]: a u32, the descriptor's offset
//! from the end of the file. Descriptor: "TDVF", u32 length, u32 version, u32 section count,
//! then 32-byte sections (u32 data offset, u32 raw size, u64 GPA, u64 memory size, u32 type,
//! u32 attributes).

use sha2::{Digest, Sha384};

const PAGE: u64 = 4096;
const CHUNK: usize = 256;
const RECORD: usize = 128;
/// `96b582de-1fb2-45f7-baea-a366c55a082d`: OVMF's GUIDed table footer.
const TABLE_FOOTER_GUID: [u8; 16] = guid(0x96b5_82de, 0x1fb2, 0x45f7, [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d]);
/// `e47a6535-984a-4798-865e-4685a7bf8ec2`: the TDX metadata offset entry.
pub const TDX_METADATA_GUID: [u8; 16] =
    guid(0xe47a_6535, 0x984a, 0x4798, [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2]);
const ATTR_MR_EXTEND: u32 = 1 << 0;
const ATTR_PAGE_AUG: u32 = 1 << 1;
const SECTION_LEN: usize = 32;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("not a TD firmware image: {0}")]
    Format(String),
}

/// A GUID in its on-disk (mixed-endian) byte order.
const fn guid(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let (a, b, c) = (a.to_le_bytes(), b.to_le_bytes(), c.to_le_bytes());
    [a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]]
}

/// One TDVF metadata section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    pub data_offset: u32,
    pub raw_size: u32,
    pub gpa: u64,
    pub memory_size: u64,
    pub kind: u32,
    pub attributes: u32,
}

fn bad(what: impl Into<String>) -> Error {
    Error::Format(what.into())
}

fn u16_at(b: &[u8], off: usize) -> Result<u16, Error> {
    b.get(off..off + 2).map(|s| u16::from_le_bytes([s[0], s[1]])).ok_or_else(|| bad("truncated"))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32, Error> {
    b.get(off..off + 4).map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes"))).ok_or_else(|| bad("truncated"))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64, Error> {
    b.get(off..off + 8).map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes"))).ok_or_else(|| bad("truncated"))
}

/// The data of the GUIDed table entry `want`.
fn guided_entry<'a>(fw: &'a [u8], want: &[u8; 16]) -> Result<&'a [u8], Error> {
    let footer = fw.len().checked_sub(0x30).ok_or_else(|| bad("shorter than its footer"))?;
    if fw[footer..footer + 16] != TABLE_FOOTER_GUID {
        return Err(bad("no GUIDed table footer at the end"));
    }
    let table_len = usize::from(u16_at(fw, footer - 2)?);
    let table_end = footer + 16;
    let table_start = table_end.checked_sub(table_len).ok_or_else(|| bad("GUIDed table longer than the image"))?;
    // Entries end where the footer's own length field begins.
    let mut end = footer - 2;
    while end > table_start + 18 {
        let id = &fw[end - 16..end];
        let len = usize::from(u16_at(fw, end - 18)?);
        if len < 18 || len > end - table_start {
            return Err(bad("malformed GUIDed table entry"));
        }
        if id == want {
            return Ok(&fw[end - len..end - 18]);
        }
        end -= len;
    }
    Err(bad("no TDX metadata entry in the GUIDed table"))
}

/// The TDVF metadata sections, in their order in the image.
pub fn sections(fw: &[u8]) -> Result<Vec<Section>, Error> {
    let entry = guided_entry(fw, &TDX_METADATA_GUID)?;
    let from_end = u32_at(entry, 0)? as usize;
    let at = fw.len().checked_sub(from_end).ok_or_else(|| bad("TDX metadata offset outside the image"))?;
    if fw.get(at..at + 4) != Some(b"TDVF") {
        return Err(bad("TDX metadata has no TDVF signature"));
    }
    let count = u32_at(fw, at + 12)? as usize;
    (0..count)
        .map(|i| {
            let s = at + 16 + i * SECTION_LEN;
            Ok(Section {
                data_offset: u32_at(fw, s)?,
                raw_size: u32_at(fw, s + 4)?,
                gpa: u64_at(fw, s + 8)?,
                memory_size: u64_at(fw, s + 16)?,
                kind: u32_at(fw, s + 24)?,
                attributes: u32_at(fw, s + 28)?,
            })
        })
        .collect()
}

fn record(op: &[u8], gpa: u64) -> [u8; RECORD] {
    let mut r = [0u8; RECORD];
    r[..op.len()].copy_from_slice(op);
    r[16..24].copy_from_slice(&gpa.to_le_bytes());
    r
}

/// MRTD of the firmware image (48 bytes).
pub fn mrtd(fw: &[u8]) -> Result<[u8; 48], Error> {
    let mut h = Sha384::new();
    for s in sections(fw)? {
        if s.memory_size % PAGE != 0 || s.gpa % PAGE != 0 {
            return Err(bad(format!("section at {:#x} is not page-aligned", s.gpa)));
        }
        if s.attributes & ATTR_PAGE_AUG != 0 {
            continue;
        }
        let data = fw
            .get(s.data_offset as usize..s.data_offset as usize + s.raw_size as usize)
            .ok_or_else(|| bad(format!("section at {:#x}: data outside the image", s.gpa)))?;
        for page in 0..s.memory_size / PAGE {
            let gpa = s.gpa + page * PAGE;
            h.update(record(b"MEM.PAGE.ADD", gpa));
            if s.attributes & ATTR_MR_EXTEND == 0 {
                continue;
            }
            for chunk in 0..(PAGE as usize / CHUNK) {
                h.update(record(b"MR.EXTEND", gpa + (chunk * CHUNK) as u64));
                let from = page as usize * PAGE as usize + chunk * CHUNK;
                let mut bytes = [0u8; CHUNK];
                if from < data.len() {
                    let n = CHUNK.min(data.len() - from);
                    bytes[..n].copy_from_slice(&data[from..from + n]);
                }
                h.update(bytes);
            }
        }
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic image: one extended section (2 pages of data), one added-only section, one
    /// PAGE_AUG section, the descriptor, and the GUIDed table at the end.
    fn image() -> Vec<u8> {
        let mut fw = vec![0u8; 0x10000];
        for (i, b) in fw[0x1000..0x3000].iter_mut().enumerate() {
            *b = (i % 251) as u8;
        }
        let desc = 0x8000;
        fw[desc..desc + 4].copy_from_slice(b"TDVF");
        fw[desc + 12..desc + 16].copy_from_slice(&3u32.to_le_bytes());
        let sections: [(u32, u32, u64, u64, u32, u32); 3] = [
            (0x1000, 0x2000, 0xffff_0000, 0x2000, 0, ATTR_MR_EXTEND),
            (0, 0, 0x80_0000, 0x1000, 3, 0),
            (0, 0, 0x90_0000, 0x4000, 4, ATTR_PAGE_AUG),
        ];
        for (i, (off, raw, gpa, size, kind, attr)) in sections.iter().enumerate() {
            let s = desc + 16 + i * 32;
            fw[s..s + 4].copy_from_slice(&off.to_le_bytes());
            fw[s + 4..s + 8].copy_from_slice(&raw.to_le_bytes());
            fw[s + 8..s + 16].copy_from_slice(&gpa.to_le_bytes());
            fw[s + 16..s + 24].copy_from_slice(&size.to_le_bytes());
            fw[s + 24..s + 28].copy_from_slice(&kind.to_le_bytes());
            fw[s + 28..s + 32].copy_from_slice(&attr.to_le_bytes());
        }
        // GUIDed table: [offset u32][len u16][TDX GUID] [table len u16][footer GUID] + 0x20.
        let n = fw.len();
        let footer = n - 0x30;
        fw[footer..footer + 16].copy_from_slice(&TABLE_FOOTER_GUID);
        let entry_end = footer - 2;
        fw[entry_end - 16..entry_end].copy_from_slice(&TDX_METADATA_GUID);
        fw[entry_end - 18..entry_end - 16].copy_from_slice(&22u16.to_le_bytes());
        fw[entry_end - 22..entry_end - 18].copy_from_slice(&((n - desc) as u32).to_le_bytes());
        fw[footer - 2..footer].copy_from_slice(&(22u16 + 18).to_le_bytes());
        fw
    }

    #[test]
    fn sections_are_found_through_the_guided_table() {
        let s = sections(&image()).expect("parses");
        assert_eq!(s.len(), 3);
        assert_eq!(
            s[0],
            Section {
                data_offset: 0x1000,
                raw_size: 0x2000,
                gpa: 0xffff_0000,
                memory_size: 0x2000,
                kind: 0,
                attributes: 1
            }
        );
        assert_eq!(s[2].attributes, ATTR_PAGE_AUG);
    }

    #[test]
    fn mrtd_is_the_record_sequence() {
        let fw = image();
        // The same records, built by hand in the documented order.
        let mut h = Sha384::new();
        for page in 0..2u64 {
            let gpa = 0xffff_0000 + page * 0x1000;
            let mut add = [0u8; 128];
            add[..12].copy_from_slice(b"MEM.PAGE.ADD");
            add[16..24].copy_from_slice(&gpa.to_le_bytes());
            h.update(add);
            for c in 0..16u64 {
                let mut ext = [0u8; 128];
                ext[..9].copy_from_slice(b"MR.EXTEND");
                ext[16..24].copy_from_slice(&(gpa + c * 256).to_le_bytes());
                h.update(ext);
                let from = 0x1000 + (page * 0x1000 + c * 256) as usize;
                h.update(&fw[from..from + 256]);
            }
        }
        let mut add = [0u8; 128];
        add[..12].copy_from_slice(b"MEM.PAGE.ADD");
        add[16..24].copy_from_slice(&0x80_0000u64.to_le_bytes());
        h.update(add);
        let want: [u8; 48] = h.finalize().into();
        assert_eq!(mrtd(&fw), Ok(want));
        let mut changed = fw.clone();
        changed[0x2345] ^= 1;
        assert_ne!(mrtd(&changed), Ok(want), "extended bytes are measured");
    }

    #[test]
    fn images_without_metadata_are_refused() {
        assert!(mrtd(&[0u8; 0x1000]).is_err());
        assert!(mrtd(&[]).is_err());
        let mut fw = image();
        fw[0x8000] = b'X';
        assert!(matches!(mrtd(&fw), Err(Error::Format(m)) if m.contains("TDVF")));
    }
}
