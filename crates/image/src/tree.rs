//! A small file tree held in memory, written out either as a cpio archive (initrds) or as a
//! directory for `mkfs.erofs` (the root file system). Entries are kept in the order added.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{Context, Result};

use crate::cpio::CpioWriter;

pub enum Node {
    Dir,
    File { mode: u32, data: Vec<u8> },
    Symlink(String),
}

#[derive(Default)]
pub struct Tree {
    entries: Vec<(String, Node)>,
}

impl Tree {
    pub fn dir(&mut self, path: &str) {
        self.entries.push((path.to_owned(), Node::Dir));
    }

    pub fn file(&mut self, path: &str, mode: u32, data: Vec<u8>) {
        self.entries.push((path.to_owned(), Node::File { mode, data }));
    }

    pub fn symlink(&mut self, path: &str, target: &str) {
        self.entries.push((path.to_owned(), Node::Symlink(target.to_owned())));
    }

    /// A gzip'd newc cpio archive: reproducible (fixed metadata, gzip mtime 0, no file name).
    pub fn to_initrd(&self) -> Result<Vec<u8>> {
        let mut cpio = CpioWriter::new(Vec::new());
        for (path, node) in &self.entries {
            match node {
                Node::Dir => cpio.dir(path, 0o755)?,
                Node::File { mode, data } => cpio.file(path, *mode, data)?,
                Node::Symlink(target) => cpio.symlink(path, target)?,
            }
        }
        let raw = cpio.finish()?;
        let mut gz = flate2::GzBuilder::new().write(Vec::new(), flate2::Compression::new(6));
        gz.write_all(&raw)?;
        Ok(gz.finish()?)
    }

    /// Writes the tree under `root` (an empty directory).
    pub fn write_to(&self, root: &Path) -> Result<()> {
        for (path, node) in &self.entries {
            let at = root.join(path);
            match node {
                Node::Dir => std::fs::create_dir_all(&at),
                Node::File { mode, data } => std::fs::write(&at, data)
                    .and_then(|()| std::fs::set_permissions(&at, std::fs::Permissions::from_mode(*mode))),
                Node::Symlink(target) => std::os::unix::fs::symlink(target, &at),
            }
            .with_context(|| format!("writing {}", at.display()))?;
        }
        for (path, node) in &self.entries {
            if matches!(node, Node::Dir) {
                std::fs::set_permissions(root.join(path), std::fs::Permissions::from_mode(0o755))?;
            }
        }
        Ok(())
    }
}

impl Tree {
    /// Feeds every entry (path, kind, mode, contents) into `h`.
    pub fn digest_into(&self, h: &mut impl sha2::Digest) {
        for (path, node) in &self.entries {
            h.update(path.as_bytes());
            match node {
                Node::Dir => h.update(b"\0dir\0"),
                Node::File { mode, data } => {
                    h.update(mode.to_le_bytes());
                    h.update((data.len() as u64).to_le_bytes());
                    h.update(data);
                }
                Node::Symlink(target) => {
                    h.update(b"\0link\0");
                    h.update(target.as_bytes());
                }
            }
        }
    }
}
