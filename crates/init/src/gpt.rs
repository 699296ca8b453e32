//! GUID partition tables (UEFI spec, chapter 5): the image builder writes one, the init reads it
//! to find the root and verity partitions by their unique GUIDs.

use std::fmt;
use std::str::FromStr;

pub const SECTOR: u64 = 512;
/// Partition entries in each table, of [`ENTRY_SIZE`] bytes: 32 sectors, the usual layout.
const ENTRIES: u64 = 128;
const ENTRY_SIZE: u64 = 128;
const ENTRY_SECTORS: u64 = ENTRIES * ENTRY_SIZE / SECTOR;
const HEADER_SIZE: usize = 92;
const SIGNATURE: &[u8; 8] = b"EFI PART";
const REVISION: u32 = 0x0001_0000;
/// Partitions start on 1 MiB boundaries.
const ALIGN_SECTORS: u64 = 2048;
/// Attribute bit 60: read-only (Discoverable Partitions Specification).
pub const FLAG_READ_ONLY: u64 = 1 << 60;

/// Discoverable Partitions Specification type GUIDs.
pub const ROOT_X86_64: Guid =
    Guid::from_fields(0x4f68_bce3, 0xe8cd, 0x4db1, [0x96, 0xe7, 0xfb, 0xca, 0xf9, 0x84, 0xb7, 0x09]);
pub const ROOT_VERITY_X86_64: Guid =
    Guid::from_fields(0x2c73_57ed, 0xebd2, 0x46d9, [0xae, 0xc1, 0x23, 0xd4, 0x37, 0xec, 0x2b, 0xf5]);

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("not a GPT disk (no \"EFI PART\" header at LBA 1)")]
    NoHeader,
    #[error("GPT header is corrupt: {0}")]
    Corrupt(&'static str),
    #[error("invalid GUID {0:?}")]
    BadGuid(String),
}

/// A GUID as the user writes it (`4f68bce3-e8cd-…`). On disk the first three fields are
/// little-endian ([`Guid::to_disk`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Guid([u8; 16]);

impl Guid {
    pub const fn from_fields(a: u32, b: u16, c: u16, d: [u8; 8]) -> Self {
        let a = a.to_be_bytes();
        let b = b.to_be_bytes();
        let c = c.to_be_bytes();
        Guid([a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6], d[7]])
    }

    /// The GUID whose text form is these 16 bytes in order (how the Discoverable Partitions
    /// Specification derives partition UUIDs from a root hash).
    pub const fn from_bytes(b: [u8; 16]) -> Self {
        Guid(b)
    }

    pub fn to_disk(self) -> [u8; 16] {
        let g = self.0;
        [g[3], g[2], g[1], g[0], g[5], g[4], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13], g[14], g[15]]
    }

    pub fn from_disk(d: &[u8]) -> Self {
        Guid([d[3], d[2], d[1], d[0], d[5], d[4], d[7], d[6], d[8], d[9], d[10], d[11], d[12], d[13], d[14], d[15]])
    }
}

impl fmt::Display for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, b) in self.0.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                f.write_str("-")?;
            }
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Guid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Guid {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        let bad = || Error::BadGuid(s.to_owned());
        let groups: Vec<&str> = s.split('-').collect();
        if groups.iter().map(|g| g.len()).collect::<Vec<_>>() != [8, 4, 4, 4, 12] {
            return Err(bad());
        }
        let hex: String = groups.concat();
        let mut out = [0u8; 16];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2).ok_or_else(bad)?, 16).map_err(|_| bad())?;
        }
        Ok(Guid(out))
    }
}

/// One partition to lay out: its identity and contents.
pub struct PartitionSpec<'a> {
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub name: &'a str,
    pub attributes: u64,
    pub data: &'a [u8],
}

/// A partition as found in a table (LBAs inclusive, 1-based index as Linux numbers them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    pub number: u32,
    pub type_guid: Guid,
    pub unique_guid: Guid,
    pub first_lba: u64,
    pub last_lba: u64,
    pub attributes: u64,
    pub name: String,
}

/// A whole disk image: protective MBR, primary table, the partitions on 1 MiB boundaries, backup
/// table. Deterministic in its inputs.
pub fn build_disk(disk_guid: Guid, parts: &[PartitionSpec<'_>]) -> Vec<u8> {
    let mut entries = vec![0u8; (ENTRIES * ENTRY_SIZE) as usize];
    let mut lba = ALIGN_SECTORS;
    let mut placed = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let sectors = (p.data.len() as u64).div_ceil(SECTOR).max(1);
        let e = &mut entries[i * ENTRY_SIZE as usize..(i + 1) * ENTRY_SIZE as usize];
        e[0..16].copy_from_slice(&p.type_guid.to_disk());
        e[16..32].copy_from_slice(&p.unique_guid.to_disk());
        e[32..40].copy_from_slice(&lba.to_le_bytes());
        e[40..48].copy_from_slice(&(lba + sectors - 1).to_le_bytes());
        e[48..56].copy_from_slice(&p.attributes.to_le_bytes());
        for (j, unit) in p.name.encode_utf16().take(36).enumerate() {
            e[56 + 2 * j..58 + 2 * j].copy_from_slice(&unit.to_le_bytes());
        }
        placed.push((lba, p.data));
        lba = (lba + sectors).div_ceil(ALIGN_SECTORS) * ALIGN_SECTORS;
    }
    let total = lba + ALIGN_SECTORS;
    let last_usable = total - 1 - ENTRY_SECTORS - 1;
    let mut disk = vec![0u8; (total * SECTOR) as usize];
    // Protective MBR: one partition of type 0xEE covering the disk.
    let mbr = &mut disk[446..462];
    mbr[1..4].copy_from_slice(&[0x00, 0x02, 0x00]);
    mbr[4] = 0xee;
    mbr[5..8].copy_from_slice(&[0xff, 0xff, 0xff]);
    mbr[8..12].copy_from_slice(&1u32.to_le_bytes());
    mbr[12..16].copy_from_slice(&u32::try_from(total - 1).unwrap_or(u32::MAX).to_le_bytes());
    disk[510] = 0x55;
    disk[511] = 0xaa;
    for (lba, data) in placed {
        let at = (lba * SECTOR) as usize;
        disk[at..at + data.len()].copy_from_slice(data);
    }
    let entries_crc = crc32fast::hash(&entries);
    let header = |my_lba: u64, alternate: u64, entries_lba: u64| {
        let mut h = [0u8; HEADER_SIZE];
        h[0..8].copy_from_slice(SIGNATURE);
        h[8..12].copy_from_slice(&REVISION.to_le_bytes());
        h[12..16].copy_from_slice(&(HEADER_SIZE as u32).to_le_bytes());
        h[24..32].copy_from_slice(&my_lba.to_le_bytes());
        h[32..40].copy_from_slice(&alternate.to_le_bytes());
        h[40..48].copy_from_slice(&(2 + ENTRY_SECTORS).to_le_bytes());
        h[48..56].copy_from_slice(&last_usable.to_le_bytes());
        h[56..72].copy_from_slice(&disk_guid.to_disk());
        h[72..80].copy_from_slice(&entries_lba.to_le_bytes());
        h[80..84].copy_from_slice(&(ENTRIES as u32).to_le_bytes());
        h[84..88].copy_from_slice(&(ENTRY_SIZE as u32).to_le_bytes());
        h[88..92].copy_from_slice(&entries_crc.to_le_bytes());
        let crc = crc32fast::hash(&h);
        h[16..20].copy_from_slice(&crc.to_le_bytes());
        h
    };
    let backup_entries = total - 1 - ENTRY_SECTORS;
    let primary = header(1, total - 1, 2);
    let backup = header(total - 1, 1, backup_entries);
    let put = |disk: &mut Vec<u8>, lba: u64, bytes: &[u8]| {
        let at = (lba * SECTOR) as usize;
        disk[at..at + bytes.len()].copy_from_slice(bytes);
    };
    put(&mut disk, 1, &primary);
    put(&mut disk, 2, &entries);
    put(&mut disk, backup_entries, &entries);
    put(&mut disk, total - 1, &backup);
    disk
}

/// Bytes [`parse`] needs from the start of a disk: MBR, header, entry array.
pub const TABLE_BYTES: usize = ((2 + ENTRY_SECTORS) * SECTOR) as usize;

/// The used entries of the primary table in the first [`TABLE_BYTES`] of a disk, after checking
/// signature and both checksums.
pub fn parse(head: &[u8]) -> Result<Vec<Partition>, Error> {
    let h = head.get(SECTOR as usize..SECTOR as usize + HEADER_SIZE).ok_or(Error::NoHeader)?;
    if &h[0..8] != SIGNATURE {
        return Err(Error::NoHeader);
    }
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let u64_at = |b: &[u8], i: usize| {
        let mut a = [0u8; 8];
        a.copy_from_slice(&b[i..i + 8]);
        u64::from_le_bytes(a)
    };
    if u32_at(h, 12) as usize != HEADER_SIZE {
        return Err(Error::Corrupt("unexpected header size"));
    }
    let mut zeroed = [0u8; HEADER_SIZE];
    zeroed.copy_from_slice(h);
    zeroed[16..20].fill(0);
    if crc32fast::hash(&zeroed) != u32_at(h, 16) {
        return Err(Error::Corrupt("header checksum mismatch"));
    }
    let (entries_lba, count, size) = (u64_at(h, 72), u64::from(u32_at(h, 80)), u64::from(u32_at(h, 84)));
    if size < 128 || count * size > ENTRIES * ENTRY_SIZE * 4 {
        return Err(Error::Corrupt("unsupported entry array"));
    }
    let start = (entries_lba * SECTOR) as usize;
    let array = head.get(start..start + (count * size) as usize).ok_or(Error::Corrupt("entry array out of range"))?;
    if crc32fast::hash(array) != u32_at(h, 88) {
        return Err(Error::Corrupt("entry array checksum mismatch"));
    }
    let mut out = Vec::new();
    for (i, e) in array.chunks_exact(size as usize).enumerate() {
        if e[0..16].iter().all(|b| *b == 0) {
            continue;
        }
        let units: Vec<u16> =
            e[56..128].chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).take_while(|u| *u != 0).collect();
        out.push(Partition {
            number: i as u32 + 1,
            type_guid: Guid::from_disk(&e[0..16]),
            unique_guid: Guid::from_disk(&e[16..32]),
            first_lba: u64_at(e, 32),
            last_lba: u64_at(e, 40),
            attributes: u64_at(e, 48),
            name: String::from_utf16_lossy(&units),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_text_and_disk_forms() {
        assert_eq!(ROOT_X86_64.to_string(), "4f68bce3-e8cd-4db1-96e7-fbcaf984b709");
        assert_eq!(ROOT_VERITY_X86_64.to_string(), "2c7357ed-ebd2-46d9-aec1-23d437ec2bf5");
        let g: Guid = "4f68bce3-e8cd-4db1-96e7-fbcaf984b709".parse().unwrap();
        assert_eq!(g, ROOT_X86_64);
        assert_eq!(&g.to_disk()[..4], &[0xe3, 0xbc, 0x68, 0x4f]);
        assert_eq!(Guid::from_disk(&g.to_disk()), g);
        assert!("4f68bce3-e8cd-4db1-96e7-fbcaf984b70".parse::<Guid>().is_err());
        assert!("4f68bce3e8cd-4db1-96e7-fbcaf984b7090".parse::<Guid>().is_err());
        assert!("4f68bce3-e8cd-4db1-96e7-fbcaf984b7zz".parse::<Guid>().is_err());
    }

    fn sample() -> Vec<u8> {
        let root = vec![0xaa; 5000];
        let hash = vec![0xbb; 4096];
        build_disk(
            Guid::from_bytes([7; 16]),
            &[
                PartitionSpec {
                    type_guid: ROOT_X86_64,
                    unique_guid: Guid::from_bytes([1; 16]),
                    name: "root-x86-64",
                    attributes: FLAG_READ_ONLY,
                    data: &root,
                },
                PartitionSpec {
                    type_guid: ROOT_VERITY_X86_64,
                    unique_guid: Guid::from_bytes([2; 16]),
                    name: "root-x86-64-verity",
                    attributes: FLAG_READ_ONLY,
                    data: &hash,
                },
            ],
        )
    }

    #[test]
    fn build_then_parse_round_trips() {
        let disk = sample();
        let parts = parse(&disk[..TABLE_BYTES]).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].number, 1);
        assert_eq!(parts[0].type_guid, ROOT_X86_64);
        assert_eq!(parts[0].name, "root-x86-64");
        assert_eq!(parts[0].first_lba, 2048);
        assert_eq!(parts[0].last_lba, 2048 + 10 - 1);
        assert_eq!(parts[1].first_lba, 4096);
        assert_eq!(parts[1].unique_guid, Guid::from_bytes([2; 16]));
        assert_eq!(&disk[2048 * 512..2048 * 512 + 5000], &[0xaa; 5000][..]);
        assert_eq!(&disk[4096 * 512..4096 * 512 + 4096], &[0xbb; 4096][..]);
        // The backup header sits in the last sector and points back at the primary.
        let last = &disk[disk.len() - 512..];
        assert_eq!(&last[0..8], SIGNATURE);
        assert_eq!(disk.len() % (1 << 20), 0);
    }

    #[test]
    fn corruption_is_detected() {
        let mut disk = sample();
        disk[2 * 512 + 20] ^= 1;
        assert_eq!(parse(&disk[..TABLE_BYTES]), Err(Error::Corrupt("entry array checksum mismatch")));
        let mut disk = sample();
        disk[512 + 40] ^= 1;
        assert_eq!(parse(&disk[..TABLE_BYTES]), Err(Error::Corrupt("header checksum mismatch")));
        assert_eq!(parse(&[0u8; TABLE_BYTES]), Err(Error::NoHeader));
    }
}
