//! dm-verity hash tree, format version 1 (the kernel's `Documentation/admin-guide/device-mapper/
//! verity.rst`, cryptsetup's on-disk superblock): SHA-256, salt prepended to every hashed
//! block, 4 KiB data and hash blocks, levels stored from the top (closest to the root) down.
//! `format` produces the same hash area and root hash as `veritysetup format` for the same
//! data, salt and UUID; `verify` checks data against a hash area and a root hash.

mod superblock;

use sha2::{Digest, Sha256};

pub use superblock::{Superblock, SUPERBLOCK_SIZE};

/// Block size for data and hashes (veritysetup's default).
pub const BLOCK_SIZE: usize = 4096;
/// SHA-256 digest size.
const DIGEST_SIZE: usize = 32;
/// Digests per hash block: the digest size rounded up to a power of two divides the block.
const HASHES_PER_BLOCK: usize = BLOCK_SIZE / DIGEST_SIZE;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("salt is {0} bytes; at most 256 fit the superblock")]
    SaltTooLong(usize),
    #[error("data is empty: nothing to protect")]
    Empty,
    #[error("hash area is not a verity superblock: {0}")]
    BadSuperblock(String),
    #[error("hash area too short: {have} bytes, the tree needs {need}")]
    HashAreaTooShort { have: usize, need: usize },
    #[error("data block {0} does not match its hash")]
    DataMismatch(u64),
    #[error("hash block {0} (level {1}) does not match its parent")]
    HashMismatch(u64, usize),
    #[error("root hash does not match")]
    RootMismatch,
}

/// A formatted hash area and its root hash.
pub struct Formatted {
    /// Superblock (padded to one block) followed by the tree, as veritysetup writes it.
    pub hash_area: Vec<u8>,
    pub root_hash: [u8; DIGEST_SIZE],
    pub data_blocks: u64,
}

fn hash(salt: &[u8], block: &[u8]) -> [u8; DIGEST_SIZE] {
    let mut h = Sha256::new();
    h.update(salt);
    h.update(block);
    h.finalize().into()
}

/// Blocks of each tree level, bottom (level 0, hashing data) first; empty for one data block.
fn level_sizes(data_blocks: u64) -> Vec<u64> {
    let per = HASHES_PER_BLOCK as u64;
    let mut sizes = Vec::new();
    let mut n = data_blocks;
    while n > 1 {
        n = n.div_ceil(per);
        sizes.push(n);
    }
    sizes
}

/// Hashes `blocks` (each `BLOCK_SIZE` bytes) into hash blocks of one level.
fn hash_level(salt: &[u8], blocks: &[u8]) -> Vec<u8> {
    let count = blocks.len() / BLOCK_SIZE;
    let mut out = vec![0u8; count.div_ceil(HASHES_PER_BLOCK) * BLOCK_SIZE];
    for (i, block) in blocks.chunks_exact(BLOCK_SIZE).enumerate() {
        out[i * DIGEST_SIZE..(i + 1) * DIGEST_SIZE].copy_from_slice(&hash(salt, block));
    }
    out
}

/// Formats `data` (only whole blocks are protected, as veritysetup does).
pub fn format(data: &[u8], salt: &[u8], uuid: [u8; 16]) -> Result<Formatted, Error> {
    if salt.len() > 256 {
        return Err(Error::SaltTooLong(salt.len()));
    }
    let data_blocks = (data.len() / BLOCK_SIZE) as u64;
    if data_blocks == 0 {
        return Err(Error::Empty);
    }
    let protected = &data[..data_blocks as usize * BLOCK_SIZE];
    // Bottom-up: level 0 hashes the data, each level above hashes the one below.
    let mut levels: Vec<Vec<u8>> = Vec::new();
    let mut below: &[u8] = protected;
    for _ in level_sizes(data_blocks) {
        levels.push(hash_level(salt, below));
        below = levels.last().map(Vec::as_slice).unwrap_or_default();
    }
    let top: &[u8] = levels.last().map_or(protected, |l| &l[..BLOCK_SIZE]);
    let root_hash = hash(salt, top);
    let sb = Superblock { uuid, data_blocks, salt: salt.to_vec() };
    let mut hash_area = sb.to_bytes().to_vec();
    hash_area.resize(BLOCK_SIZE, 0);
    for level in levels.iter().rev() {
        hash_area.extend_from_slice(level);
    }
    Ok(Formatted { hash_area, root_hash, data_blocks })
}

/// Verifies `data` against a hash area written by [`format`] or veritysetup.
pub fn verify(data: &[u8], hash_area: &[u8], root_hash: &[u8]) -> Result<(), Error> {
    let sb = Superblock::parse(hash_area)?;
    let data_blocks = sb.data_blocks;
    let need = data_blocks as usize * BLOCK_SIZE;
    if data.len() < need {
        return Err(Error::DataMismatch(data.len() as u64 / BLOCK_SIZE as u64));
    }
    let sizes = level_sizes(data_blocks);
    // Offsets of each level in the hash area: top level first, after the superblock block.
    let mut offsets = vec![0usize; sizes.len()];
    let mut pos = BLOCK_SIZE;
    for i in (0..sizes.len()).rev() {
        offsets[i] = pos;
        pos += sizes[i] as usize * BLOCK_SIZE;
    }
    if hash_area.len() < pos {
        return Err(Error::HashAreaTooShort { have: hash_area.len(), need: pos });
    }
    let level = |i: usize| &hash_area[offsets[i]..offsets[i] + sizes[i] as usize * BLOCK_SIZE];
    let top: &[u8] = if sizes.is_empty() { &data[..BLOCK_SIZE] } else { &level(sizes.len() - 1)[..BLOCK_SIZE] };
    if hash(&sb.salt, top)[..] != *root_hash {
        return Err(Error::RootMismatch);
    }
    for i in (0..sizes.len()).rev() {
        let children: &[u8] = if i == 0 { &data[..need] } else { level(i - 1) };
        let parents = level(i);
        for (n, block) in children.chunks_exact(BLOCK_SIZE).enumerate() {
            if parents[n * DIGEST_SIZE..(n + 1) * DIGEST_SIZE] != hash(&sb.salt, block) {
                return Err(if i == 0 { Error::DataMismatch(n as u64) } else { Error::HashMismatch(n as u64, i - 1) });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
