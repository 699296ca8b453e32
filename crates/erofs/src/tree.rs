//! A file tree in memory, built from an OCI layer tar the way an overlay lower layer needs it:
//! whiteouts `.wh.<name>` become character devices 0:0, `.wh..wh..opq` the xattr
//! `trusted.overlay.opaque=y` on its directory (OCI image spec, "Whiteouts"; overlayfs).
//! Parent directories a tar omits are created 0755 root:root with mtime 0, so the tree is a
//! function of the tar's bytes alone.

use std::collections::BTreeMap;
use std::io::Read;

use crate::Error;

/// Index of a node in [`Tree::nodes`].
pub type NodeId = usize;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Children by name (bytes, sorted).
    Dir(BTreeMap<Vec<u8>, NodeId>),
    File(Vec<u8>),
    Symlink(Vec<u8>),
    CharDev(u32, u32),
    BlockDev(u32, u32),
    Fifo,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub kind: Kind,
    /// Permission bits (incl. setuid/setgid/sticky), without the type.
    pub mode: u16,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    /// Full xattr name → value, sorted.
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Directory entries naming this node (hard links).
    pub links: u32,
}

pub const ROOT: NodeId = 0;
const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
const OPAQUE_XATTR: &[u8] = b"trusted.overlay.opaque";
const PAX_XATTR: &str = "SCHILY.xattr.";

#[derive(Debug, Clone)]
pub struct Tree {
    pub nodes: Vec<Node>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree { nodes: vec![dir_node(0o755, 0, 0, 0)] }
    }
}

fn dir_node(mode: u16, uid: u32, gid: u32, mtime: u64) -> Node {
    Node { kind: Kind::Dir(BTreeMap::new()), mode, uid, gid, mtime, xattrs: BTreeMap::new(), links: 1 }
}

/// The path's components, without `.`, empty parts or a leading `/`; `..` is refused.
fn components(path: &[u8]) -> Result<Vec<Vec<u8>>, Error> {
    let mut out = Vec::new();
    for c in path.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(Error::Tar(format!("path {:?} leaves the layer", String::from_utf8_lossy(path)))),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

impl Tree {
    /// Reads an uncompressed layer tar.
    pub fn from_tar(reader: impl Read) -> Result<Tree, Error> {
        let mut tree = Tree::default();
        let mut archive = tar::Archive::new(reader);
        let entries = archive.entries().map_err(|e| Error::Tar(e.to_string()))?;
        for entry in entries {
            let mut entry = entry.map_err(|e| Error::Tar(e.to_string()))?;
            tree.add_entry(&mut entry)?;
        }
        Ok(tree)
    }

    fn add_entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), Error> {
        let path = entry.path_bytes().into_owned();
        let parts = components(&path)?;
        let header = entry.header().clone();
        let mode = (header.mode().map_err(|e| Error::Tar(e.to_string()))? & 0o7777) as u16;
        let uid = header.uid().map_err(|e| Error::Tar(e.to_string()))? as u32;
        let gid = header.gid().map_err(|e| Error::Tar(e.to_string()))? as u32;
        let mtime = header.mtime().map_err(|e| Error::Tar(e.to_string()))?;
        let kind = header.entry_type();
        let mut xattrs = BTreeMap::new();
        if let Some(exts) = entry.pax_extensions().map_err(|e| Error::Tar(e.to_string()))? {
            for ext in exts {
                let ext = ext.map_err(|e| Error::Tar(e.to_string()))?;
                if let Some(name) = ext.key_bytes().strip_prefix(PAX_XATTR.as_bytes()) {
                    xattrs.insert(name.to_vec(), ext.value_bytes().to_vec());
                }
            }
        }
        let Some((name, dirs)) = parts.split_last() else {
            // The layer's root itself: take its attributes.
            let root = &mut self.nodes[ROOT];
            (root.mode, root.uid, root.gid, root.mtime, root.xattrs) = (mode, uid, gid, mtime, xattrs);
            return Ok(());
        };
        let parent = self.mkdir_p(dirs)?;
        if name.as_slice() == OPAQUE_MARKER {
            self.nodes[parent].xattrs.insert(OPAQUE_XATTR.to_vec(), b"y".to_vec());
            return Ok(());
        }
        if let Some(hidden) = name.strip_prefix(WHITEOUT_PREFIX) {
            let node = Node { kind: Kind::CharDev(0, 0), mode: 0, uid: 0, gid: 0, mtime, xattrs, links: 1 };
            return self.insert(parent, hidden.to_vec(), node);
        }
        let node_kind = match kind {
            tar::EntryType::Directory => {
                if let Some(&existing) = self.children(parent).get(name) {
                    if matches!(self.nodes[existing].kind, Kind::Dir(_)) {
                        // A directory again (e.g. after its children): update its attributes.
                        let n = &mut self.nodes[existing];
                        (n.mode, n.uid, n.gid, n.mtime, n.xattrs) = (mode, uid, gid, mtime, xattrs);
                        return Ok(());
                    }
                }
                Kind::Dir(BTreeMap::new())
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut data = Vec::with_capacity(entry.size() as usize);
                entry.read_to_end(&mut data).map_err(|e| Error::Tar(e.to_string()))?;
                Kind::File(data)
            }
            tar::EntryType::Symlink => {
                let target = entry.link_name_bytes().ok_or_else(|| Error::Tar("symlink without a target".into()))?;
                Kind::Symlink(target.into_owned())
            }
            tar::EntryType::Link => {
                let target = entry.link_name_bytes().ok_or_else(|| Error::Tar("hard link without a target".into()))?;
                let id = self.lookup(&components(&target)?).ok_or_else(|| {
                    Error::Tar(format!("hard link to {:?}, which the layer lacks", String::from_utf8_lossy(&target)))
                })?;
                if matches!(self.nodes[id].kind, Kind::Dir(_)) {
                    return Err(Error::Tar("hard link to a directory".into()));
                }
                self.remove(parent, name);
                self.nodes[id].links += 1;
                self.dir_mut(parent).insert(name.clone(), id);
                return Ok(());
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                let major = header.device_major().ok().flatten().unwrap_or(0);
                let minor = header.device_minor().ok().flatten().unwrap_or(0);
                if kind == tar::EntryType::Char {
                    Kind::CharDev(major, minor)
                } else {
                    Kind::BlockDev(major, minor)
                }
            }
            tar::EntryType::Fifo => Kind::Fifo,
            // PAX/GNU extension headers are consumed by the tar reader; anything else is not
            // a file system object.
            other => return Err(Error::Tar(format!("unsupported tar entry type {other:?}"))),
        };
        self.insert(parent, name.clone(), Node { kind: node_kind, mode, uid, gid, mtime, xattrs, links: 1 })
    }

    fn children(&self, dir: NodeId) -> &BTreeMap<Vec<u8>, NodeId> {
        match &self.nodes[dir].kind {
            Kind::Dir(c) => c,
            _ => unreachable!("callers pass directories"),
        }
    }

    fn dir_mut(&mut self, dir: NodeId) -> &mut BTreeMap<Vec<u8>, NodeId> {
        match &mut self.nodes[dir].kind {
            Kind::Dir(c) => c,
            _ => unreachable!("callers pass directories"),
        }
    }

    fn lookup(&self, parts: &[Vec<u8>]) -> Option<NodeId> {
        let mut at = ROOT;
        for p in parts {
            match &self.nodes[at].kind {
                Kind::Dir(c) => at = *c.get(p)?,
                _ => return None,
            }
        }
        Some(at)
    }

    /// The directory `parts`, creating what is missing (0755 root:root, mtime 0).
    fn mkdir_p(&mut self, parts: &[Vec<u8>]) -> Result<NodeId, Error> {
        let mut at = ROOT;
        for p in parts {
            at = match self.children(at).get(p) {
                Some(&id) if matches!(self.nodes[id].kind, Kind::Dir(_)) => id,
                Some(_) => {
                    return Err(Error::Tar(format!(
                        "{:?} is used as a directory but is not one",
                        String::from_utf8_lossy(p)
                    )))
                }
                None => {
                    self.nodes.push(dir_node(0o755, 0, 0, 0));
                    let id = self.nodes.len() - 1;
                    self.dir_mut(at).insert(p.clone(), id);
                    id
                }
            };
        }
        Ok(at)
    }

    fn remove(&mut self, parent: NodeId, name: &[u8]) {
        if let Some(old) = self.dir_mut(parent).remove(name) {
            self.nodes[old].links = self.nodes[old].links.saturating_sub(1);
        }
    }

    /// A later entry for the same path replaces the earlier one (tar semantics).
    fn insert(&mut self, parent: NodeId, name: Vec<u8>, node: Node) -> Result<(), Error> {
        self.remove(parent, &name);
        self.nodes.push(node);
        let id = self.nodes.len() - 1;
        self.dir_mut(parent).insert(name, id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, data, link) in entries {
            let mut h = tar::Header::new_ustar();
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(1_700_000_000);
            h.set_size(data.len() as u64);
            if !link.is_empty() {
                h.set_link_name(link).expect("link");
            }
            b.append_data(&mut h, path, *data).expect("append");
        }
        b.into_inner().expect("tar")
    }

    #[test]
    fn whiteouts_opaque_dirs_hard_links_and_implicit_parents() {
        use tar::EntryType as T;
        let t = Tree::from_tar(
            &tar_of(&[
                ("a/b/file", T::Regular, b"one", ""),
                ("a/b/file", T::Regular, b"two", ""),
                ("a/.wh.gone", T::Regular, b"", ""),
                ("a/b/.wh..wh..opq", T::Regular, b"", ""),
                ("a/hard", T::Link, b"", "a/b/file"),
                ("a/sym", T::Symlink, b"", "b/file"),
            ])[..],
        )
        .expect("tree");
        let a = t.lookup(&[b"a".to_vec()]).expect("a");
        assert_eq!(t.nodes[a].mtime, 0, "implicit parent");
        let file = t.lookup(&[b"a".to_vec(), b"b".to_vec(), b"file".to_vec()]).expect("file");
        assert_eq!(t.nodes[file].kind, Kind::File(b"two".to_vec()), "later entry wins");
        assert_eq!(t.nodes[file].links, 2);
        assert_eq!(t.lookup(&[b"a".to_vec(), b"hard".to_vec()]), Some(file));
        let gone = t.lookup(&[b"a".to_vec(), b"gone".to_vec()]).expect("whiteout");
        assert_eq!(t.nodes[gone].kind, Kind::CharDev(0, 0));
        let b = t.lookup(&[b"a".to_vec(), b"b".to_vec()]).expect("b");
        assert_eq!(t.nodes[b].xattrs.get(&b"trusted.overlay.opaque"[..]).map(Vec::as_slice), Some(&b"y"[..]));
        // A path leaving the layer (written past the tar crate's own check).
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..4].copy_from_slice(b"../x");
        h.set_entry_type(T::Regular);
        h.set_size(0);
        h.set_cksum();
        let mut raw = h.as_bytes().to_vec();
        raw.resize(512 * 3, 0);
        assert!(Tree::from_tar(&raw[..]).is_err());
    }
}
