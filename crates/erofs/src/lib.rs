//! OCI image layers as reproducible, verifiable block devices for the pod VM.
//!
//! A layer blob (gzip, zstd or plain tar, as the registry serves it) becomes an EROFS image
//! ([`writer`]) of its file tree ([`tree`], whiteouts in overlayfs form), followed by its
//! dm-verity hash area (`contrast-verity`, veritysetup's format). Everything is a function
//! of the blob's bytes: the node (which hands the device to the guest) and the policy
//! generator (which pins the root hash) compute the same image on any machine, and the
//! guest opens it only through dm-verity with the pinned root hash.

pub mod tree;
pub mod writer;

use std::io::Read;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("layer tar: {0}")]
    Tar(String),
    #[error("layer: not supported: {0}")]
    Unsupported(String),
    #[error("layer blob: {0}")]
    Decompress(String),
    #[error("layer dm-verity: {0}")]
    Verity(#[from] contrast_verity::Error),
}

/// A layer as the guest gets it.
pub struct LayerImage {
    /// EROFS image, then the dm-verity hash area (superblock + tree) from `hash_offset`.
    pub bytes: Vec<u8>,
    /// Where the hash area starts (= the EROFS image's size, a multiple of 4096).
    pub hash_offset: u64,
    pub data_blocks: u64,
    pub root_hash: [u8; 32],
    pub salt: Vec<u8>,
}

/// Decompresses a layer blob by its magic bytes (gzip, zstd, or an uncompressed tar).
pub fn decompress(blob: &[u8]) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    if blob.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(blob).read_to_end(&mut out).map_err(|e| Error::Decompress(e.to_string()))?;
    } else if blob.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        ruzstd::decoding::StreamingDecoder::new(blob)
            .map_err(|e| Error::Decompress(e.to_string()))?
            .read_to_end(&mut out)
            .map_err(|e| Error::Decompress(e.to_string()))?;
    } else {
        out = blob.to_vec();
    }
    Ok(out)
}

/// The layer image of `blob` (the bytes whose digest the image manifest names).
pub fn layer_image(blob: &[u8]) -> Result<LayerImage, Error> {
    let tar = decompress(blob)?;
    let tree = tree::Tree::from_tar(&tar[..])?;
    let digest = Sha256::digest(blob);
    let uuid: [u8; 16] = digest[..16].try_into().expect("16 bytes");
    let erofs = writer::write(&tree, uuid)?;
    // Salt and verity UUID from the blob's digest: reproducible, distinct per layer.
    let salt = Sha256::digest([b"contrast layer salt".as_slice(), &digest].concat()).to_vec();
    let formatted = contrast_verity::format(&erofs, &salt, uuid)?;
    let hash_offset = erofs.len() as u64;
    let mut bytes = erofs;
    bytes.extend_from_slice(&formatted.hash_area);
    Ok(LayerImage { bytes, hash_offset, data_blocks: formatted.data_blocks, root_hash: formatted.root_hash, salt })
}

#[cfg(test)]
mod tests;
