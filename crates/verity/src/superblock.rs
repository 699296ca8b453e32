//! The verity superblock cryptsetup writes at the start of the hash area
//! (cryptsetup `lib/verity/verity.c`, `struct verity_sb`, little-endian, 512 bytes).

use crate::{Error, BLOCK_SIZE};

pub const SUPERBLOCK_SIZE: usize = 512;
const SIGNATURE: &[u8; 8] = b"verity\0\0";
const VERSION: u32 = 1;
/// hash_type 1: "normal" dm-verity (0 is the Chrome OS variant that appends the salt).
const HASH_TYPE_NORMAL: u32 = 1;
const ALGORITHM: &[u8] = b"sha256";
// Field offsets in `struct verity_sb`.
const OFF_VERSION: usize = 8;
const OFF_HASH_TYPE: usize = 12;
const OFF_UUID: usize = 16;
const OFF_ALGORITHM: usize = 32;
const OFF_DATA_BLOCK_SIZE: usize = 64;
const OFF_HASH_BLOCK_SIZE: usize = 68;
const OFF_DATA_BLOCKS: usize = 72;
const OFF_SALT_SIZE: usize = 80;
const OFF_SALT: usize = 88;
const MAX_SALT: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: [u8; 16],
    pub data_blocks: u64,
    pub salt: Vec<u8>,
}

impl Superblock {
    pub fn to_bytes(&self) -> [u8; SUPERBLOCK_SIZE] {
        let mut b = [0u8; SUPERBLOCK_SIZE];
        b[..8].copy_from_slice(SIGNATURE);
        b[OFF_VERSION..OFF_VERSION + 4].copy_from_slice(&VERSION.to_le_bytes());
        b[OFF_HASH_TYPE..OFF_HASH_TYPE + 4].copy_from_slice(&HASH_TYPE_NORMAL.to_le_bytes());
        b[OFF_UUID..OFF_UUID + 16].copy_from_slice(&self.uuid);
        b[OFF_ALGORITHM..OFF_ALGORITHM + ALGORITHM.len()].copy_from_slice(ALGORITHM);
        b[OFF_DATA_BLOCK_SIZE..OFF_DATA_BLOCK_SIZE + 4].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        b[OFF_HASH_BLOCK_SIZE..OFF_HASH_BLOCK_SIZE + 4].copy_from_slice(&(BLOCK_SIZE as u32).to_le_bytes());
        b[OFF_DATA_BLOCKS..OFF_DATA_BLOCKS + 8].copy_from_slice(&self.data_blocks.to_le_bytes());
        b[OFF_SALT_SIZE..OFF_SALT_SIZE + 2].copy_from_slice(&(self.salt.len() as u16).to_le_bytes());
        b[OFF_SALT..OFF_SALT + self.salt.len()].copy_from_slice(&self.salt);
        b
    }

    pub fn parse(b: &[u8]) -> Result<Self, Error> {
        let bad = |m: &str| Error::BadSuperblock(m.into());
        let b = b.get(..SUPERBLOCK_SIZE).ok_or_else(|| bad("shorter than 512 bytes"))?;
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        if &b[..8] != SIGNATURE {
            return Err(bad("no `verity` signature"));
        }
        if u32_at(OFF_VERSION) != VERSION || u32_at(OFF_HASH_TYPE) != HASH_TYPE_NORMAL {
            return Err(bad("not version 1 / hash type 1"));
        }
        if &b[OFF_ALGORITHM..OFF_ALGORITHM + ALGORITHM.len() + 1] != b"sha256\0" {
            return Err(bad("hash algorithm is not sha256"));
        }
        if u32_at(OFF_DATA_BLOCK_SIZE) as usize != BLOCK_SIZE || u32_at(OFF_HASH_BLOCK_SIZE) as usize != BLOCK_SIZE {
            return Err(bad("block sizes are not 4096"));
        }
        let salt_size = u16::from_le_bytes([b[OFF_SALT_SIZE], b[OFF_SALT_SIZE + 1]]) as usize;
        if salt_size > MAX_SALT {
            return Err(bad("salt size over 256"));
        }
        let mut data_blocks = [0u8; 8];
        data_blocks.copy_from_slice(&b[OFF_DATA_BLOCKS..OFF_DATA_BLOCKS + 8]);
        let mut uuid = [0u8; 16];
        uuid.copy_from_slice(&b[OFF_UUID..OFF_UUID + 16]);
        Ok(Superblock {
            uuid,
            data_blocks: u64::from_le_bytes(data_blocks),
            salt: b[OFF_SALT..OFF_SALT + salt_size].to_vec(),
        })
    }
}
