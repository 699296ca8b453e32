//! Init data: the per-pod document a confidential pod's launch is bound to.
//!
//! The format is the one Confidential Containers (kata, Contrast) use, so a document made
//! for them works unchanged:
//! - a TOML document: `version = "0.1.0"`, `algorithm = "sha256" | "sha384" | "sha512"`
//!   (also spelled `sha-256`, ...), and `[data]`, a map of file name → content
//!   (`policy.rego` among them);
//! - its digest is taken over the raw TOML bytes with that algorithm and bound into the
//!   launch: SNP `host-data` (32 bytes) and TDX `mrconfigid` (48 bytes), see
//!   [`InitData::host_data`] and [`InitData::mrconfigid`];
//! - the pod carries it in the annotation [`ANNOTATION`] as base64 of gzip of the TOML;
//! - the guest reads it from a read-only virtio-blk disk with serial [`DISK_SERIAL`]:
//!   magic [`DISK_MAGIC`] at 0, the gzip length as u64 little-endian at 8, the gzip bytes
//!   from 16, zeros up to a multiple of 512 bytes.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use base64::Engine;
use sha2::{Digest, Sha256, Sha384, Sha512};

/// Pod annotation holding the init data (kata: `io.katacontainers.config.hypervisor.cc_init_data`).
pub const ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";
/// Serial number of the init data disk; the guest finds the disk by it.
pub const DISK_SERIAL: &str = "initdata";
/// First eight bytes of the init data disk.
pub const DISK_MAGIC: &[u8; 8] = b"initdata";
/// Offset of the gzip'd document on the disk (magic + u64 length).
pub const DISK_HEADER_LEN: usize = 16;
/// The disk is padded to whole sectors.
pub const DISK_SECTOR: usize = 512;
/// Name of the agent policy in `[data]`.
pub const POLICY_FILE: &str = "policy.rego";
/// The only document version defined.
pub const VERSION: &str = "0.1.0";
/// Largest TOML document accepted after decompression (a gzip bomb stops here).
pub const MAX_DOCUMENT: usize = 16 << 20;
/// SNP `host-data` length (SEV-SNP ABI, `SNP_LAUNCH_FINISH` HOST_DATA).
pub const HOST_DATA_LEN: usize = 32;
/// TDX `mrconfigid` length (TDX module ABI, `TD_PARAMS.MRCONFIGID`).
pub const MRCONFIGID_LEN: usize = 48;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("init data is not base64: {0}")]
    Base64(String),
    #[error("init data is not gzip: {0}")]
    Gzip(String),
    #[error("init data is larger than {MAX_DOCUMENT} bytes once decompressed")]
    TooLarge,
    #[error("init data is not UTF-8 TOML")]
    NotUtf8,
    #[error("init data is not a valid document: {0}")]
    Toml(String),
    #[error("init data version {0:?} is not supported (only \"{VERSION}\")")]
    Version(String),
    #[error("init data algorithm {0:?} is not supported (sha256, sha384 or sha512)")]
    Algorithm(String),
    #[error("init data file name {0:?} is not a plain file name")]
    FileName(String),
    #[error("init data disk: {0}")]
    Disk(String),
}

/// Digest algorithm of an init data document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl Algorithm {
    fn parse(name: &str) -> Result<Self, Error> {
        match name {
            "sha256" | "sha-256" => Ok(Algorithm::Sha256),
            "sha384" | "sha-384" => Ok(Algorithm::Sha384),
            "sha512" | "sha-512" => Ok(Algorithm::Sha512),
            other => Err(Error::Algorithm(other.to_owned())),
        }
    }

    pub fn digest(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            Algorithm::Sha256 => Sha256::digest(bytes).to_vec(),
            Algorithm::Sha384 => Sha384::digest(bytes).to_vec(),
            Algorithm::Sha512 => Sha512::digest(bytes).to_vec(),
        }
    }
}

#[derive(serde::Deserialize)]
struct Document {
    version: String,
    algorithm: String,
    #[serde(default)]
    data: BTreeMap<String, String>,
}

/// A parsed init data document with the bytes its digest is taken over.
#[derive(Debug, Clone)]
pub struct InitData {
    toml: Vec<u8>,
    /// The gzip form as the pod gave it (kept so that the disk carries the pod's own bytes).
    gzip: Vec<u8>,
    pub algorithm: Algorithm,
    /// File name → content.
    pub data: BTreeMap<String, String>,
}

impl InitData {
    /// Parses a TOML document; `gzip` is its compressed form when the caller has one.
    fn from_parts(toml: Vec<u8>, gzip: Option<Vec<u8>>) -> Result<Self, Error> {
        let text = std::str::from_utf8(&toml).map_err(|_| Error::NotUtf8)?;
        let doc: Document = toml::from_str(text).map_err(|e| Error::Toml(e.message().to_owned()))?;
        if doc.version != VERSION {
            return Err(Error::Version(doc.version));
        }
        let algorithm = Algorithm::parse(&doc.algorithm)?;
        if let Some(bad) = doc.data.keys().find(|k| !is_plain_file_name(k)) {
            return Err(Error::FileName(bad.clone()));
        }
        let gzip = match gzip {
            Some(g) => g,
            None => gzip_bytes(&toml),
        };
        Ok(InitData { toml, gzip, algorithm, data: doc.data })
    }

    /// Parses a TOML document.
    pub fn from_toml(toml: Vec<u8>) -> Result<Self, Error> {
        Self::from_parts(toml, None)
    }

    /// Decodes the annotation value: base64 of gzip of the TOML document.
    pub fn from_annotation(value: &str) -> Result<Self, Error> {
        let gzip =
            base64::engine::general_purpose::STANDARD.decode(value.trim()).map_err(|e| Error::Base64(e.to_string()))?;
        Self::from_gzip(gzip)
    }

    fn from_gzip(gzip: Vec<u8>) -> Result<Self, Error> {
        let mut toml = Vec::new();
        flate2::read::GzDecoder::new(&gzip[..])
            .take(MAX_DOCUMENT as u64 + 1)
            .read_to_end(&mut toml)
            .map_err(|e| Error::Gzip(e.to_string()))?;
        if toml.len() > MAX_DOCUMENT {
            return Err(Error::TooLarge);
        }
        Self::from_parts(toml, Some(gzip))
    }

    /// The init data document the shim makes for a pod that only gives a policy
    /// (`io.katacontainers.config.agent.policy`): sha256, the policy as `policy.rego`.
    pub fn wrap_policy(rego: &str) -> Self {
        let toml = format!(
            "version = \"{VERSION}\"\nalgorithm = \"sha256\"\n\n[data]\n\"{POLICY_FILE}\" = {}\n",
            toml_basic_string(rego)
        );
        Self::from_toml(toml.into_bytes()).expect("a document we escaped ourselves parses")
    }

    /// The annotation value: base64 of the gzip form.
    pub fn annotation(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.gzip)
    }

    /// The bytes the digest is taken over.
    pub fn toml(&self) -> &[u8] {
        &self.toml
    }

    pub fn policy(&self) -> Option<&str> {
        self.data.get(POLICY_FILE).map(String::as_str)
    }

    /// Digest of the TOML bytes with the document's algorithm (32, 48 or 64 bytes).
    pub fn digest(&self) -> Vec<u8> {
        self.algorithm.digest(&self.toml)
    }

    /// SNP `host-data`: the digest cut to 32 bytes (sha256 as is, longer digests truncated).
    pub fn host_data(&self) -> [u8; HOST_DATA_LEN] {
        let mut out = [0u8; HOST_DATA_LEN];
        out.copy_from_slice(&self.digest()[..HOST_DATA_LEN]);
        out
    }

    /// TDX `mrconfigid`: the digest in 48 bytes (sha256 zero-padded, sha384 as is, sha512
    /// truncated).
    pub fn mrconfigid(&self) -> [u8; MRCONFIGID_LEN] {
        let digest = self.digest();
        let mut out = [0u8; MRCONFIGID_LEN];
        let n = digest.len().min(MRCONFIGID_LEN);
        out[..n].copy_from_slice(&digest[..n]);
        out
    }

    /// The init data disk image.
    pub fn to_disk(&self) -> Vec<u8> {
        let mut disk = Vec::with_capacity(DISK_HEADER_LEN + self.gzip.len() + DISK_SECTOR);
        disk.extend_from_slice(DISK_MAGIC);
        disk.extend_from_slice(&(self.gzip.len() as u64).to_le_bytes());
        disk.extend_from_slice(&self.gzip);
        disk.resize(disk.len().div_ceil(DISK_SECTOR) * DISK_SECTOR, 0);
        disk
    }

    /// Reads an init data disk image (or its first bytes: anything past the gzip is ignored).
    pub fn from_disk(disk: &[u8]) -> Result<Self, Error> {
        if disk.len() < DISK_HEADER_LEN {
            return Err(Error::Disk(format!("{} bytes, shorter than its header", disk.len())));
        }
        if &disk[..8] != DISK_MAGIC {
            return Err(Error::Disk(format!("bad magic {:02x?} (want \"initdata\")", &disk[..8])));
        }
        let len = u64::from_le_bytes(disk[8..16].try_into().expect("8 bytes"));
        let end = usize::try_from(len)
            .ok()
            .and_then(|l| l.checked_add(DISK_HEADER_LEN))
            .filter(|&end| end <= disk.len())
            .ok_or_else(|| Error::Disk(format!("length {len} runs past the disk's {} bytes", disk.len())))?;
        Self::from_gzip(disk[DISK_HEADER_LEN..end].to_vec())
    }
}

/// A `[data]` key the guest may write as a file: one path component, no dot names.
fn is_plain_file_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/') && !name.contains('\0')
}

fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    // GzEncoder writes no file name and mtime 0: the same document gives the same bytes.
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(data).expect("writing to a Vec");
    enc.finish().expect("writing to a Vec")
}

/// `s` as a TOML basic string (TOML 1.0, "Basic strings": `"`, `\` and control characters
/// escaped).
fn toml_basic_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Lower-case hex.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests;
