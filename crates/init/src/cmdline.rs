//! The kernel command line words that name the verity-protected root, in systemd's spelling:
//! `roothash=<hex>`, `systemd.verity_root_data=PARTUUID=<guid>`,
//! `systemd.verity_root_hash=PARTUUID=<guid>`.

use crate::gpt::Guid;

const ROOT_HASH: &str = "roothash=";
const DATA: &str = "systemd.verity_root_data=PARTUUID=";
const HASH: &str = "systemd.verity_root_hash=PARTUUID=";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityRoot {
    pub root_hash: Vec<u8>,
    pub data_partition: Guid,
    pub hash_partition: Guid,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    #[error("kernel command line has no {0}")]
    Missing(&'static str),
    #[error("kernel command line: {0}")]
    Invalid(String),
}

impl VerityRoot {
    /// The words for this root, as the image builder puts them on the command line.
    pub fn to_cmdline(&self) -> String {
        let hex: String = self.root_hash.iter().map(|b| format!("{b:02x}")).collect();
        format!("{ROOT_HASH}{hex} {DATA}{} {HASH}{}", self.data_partition, self.hash_partition)
    }

    pub fn parse(cmdline: &str) -> Result<Self, Error> {
        let find = |prefix: &'static str| {
            let mut values = cmdline.split_whitespace().filter_map(|w| w.strip_prefix(prefix));
            let v = values.next().ok_or(Error::Missing(prefix))?;
            if values.next().is_some() {
                return Err(Error::Invalid(format!("{prefix} given twice")));
            }
            Ok(v)
        };
        let hex = find(ROOT_HASH)?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Error::Invalid(format!("{ROOT_HASH}{hex:?} is not a SHA-256 digest in hex")));
        }
        let root_hash = (0..32).map(|i| u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).unwrap_or(0)).collect();
        let guid = |prefix| find(prefix)?.parse::<Guid>().map_err(|e| Error::Invalid(format!("{prefix}: {e}")));
        Ok(VerityRoot { root_hash, data_partition: guid(DATA)?, hash_partition: guid(HASH)? })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_errors() {
        let root = VerityRoot {
            root_hash: (0u8..32).collect(),
            data_partition: Guid::from_bytes([1; 16]),
            hash_partition: Guid::from_bytes([2; 16]),
        };
        let line = format!("console=ttyS0 {} quiet", root.to_cmdline());
        assert_eq!(VerityRoot::parse(&line), Ok(root.clone()));
        assert_eq!(VerityRoot::parse("console=ttyS0"), Err(Error::Missing(ROOT_HASH)));
        let short = line.replace("roothash=00", "roothash=");
        assert!(matches!(VerityRoot::parse(&short), Err(Error::Invalid(m)) if m.contains("SHA-256")));
        let twice = format!("{line} roothash={}", "ab".repeat(32));
        assert!(matches!(VerityRoot::parse(&twice), Err(Error::Invalid(m)) if m.contains("twice")));
        let no_hash_part = line.replace(HASH, "x");
        assert_eq!(VerityRoot::parse(&no_hash_part), Err(Error::Missing(HASH)));
    }
}
