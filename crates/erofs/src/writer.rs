//! A [`Tree`] as an uncompressed EROFS image (Linux `fs/erofs/erofs_fs.h`), deterministically:
//! the same tree gives the same bytes.
//!
//! Layout: block 0 holds the superblock (at 1024); the metadata area starts at block 1
//! (`meta_blkaddr`): extended inodes (64 bytes, 32-byte aligned; nid = offset / 32 from the
//! area's start), each followed by its inline xattrs and, when it fits in the same block, its
//! data tail (FLAT_INLINE); otherwise the data is FLAT_PLAIN in whole blocks after the
//! metadata. Inodes are numbered breadth-first from the root, directory entries sorted
//! byte-wise with `.` and `..` among them, as the kernel's lookup needs.

use std::collections::VecDeque;

use crate::tree::{Kind, NodeId, Tree, ROOT};
use crate::Error;

pub const BLOCK: usize = 4096;
const SUPER_OFFSET: usize = 1024;
const MAGIC: u32 = 0xE0F5_E1E2;
const INODE_SIZE: usize = 64;
const DIRENT_SIZE: usize = 12;
const XATTR_HEADER: usize = 12;
const LAYOUT_FLAT_PLAIN: u16 = 0;
const LAYOUT_FLAT_INLINE: u16 = 2;
/// `i_format` bit 0: extended inode.
const EXTENDED: u16 = 1;
const NULL_ADDR: u32 = 0xFFFF_FFFF;

// EROFS_FT_*
const FT_REG: u8 = 1;
const FT_DIR: u8 = 2;
const FT_CHR: u8 = 3;
const FT_BLK: u8 = 4;
const FT_FIFO: u8 = 5;
const FT_SYMLINK: u8 = 7;

// S_IF*
const S_IFDIR: u16 = 0o040000;
const S_IFREG: u16 = 0o100000;
const S_IFLNK: u16 = 0o120000;
const S_IFCHR: u16 = 0o020000;
const S_IFBLK: u16 = 0o060000;
const S_IFIFO: u16 = 0o010000;

/// Per inode: where it sits and how its data is stored.
struct Placed {
    offset: usize,
    layout: u16,
    /// First data block (FLAT_PLAIN, or the full blocks of FLAT_INLINE).
    blkaddr: u32,
}

/// The inode's type bits and dirent type.
fn types(kind: &Kind) -> (u16, u8) {
    match kind {
        Kind::Dir(_) => (S_IFDIR, FT_DIR),
        Kind::File(_) => (S_IFREG, FT_REG),
        Kind::Symlink(_) => (S_IFLNK, FT_SYMLINK),
        Kind::CharDev(..) => (S_IFCHR, FT_CHR),
        Kind::BlockDev(..) => (S_IFBLK, FT_BLK),
        Kind::Fifo => (S_IFIFO, FT_FIFO),
    }
}

/// `(index, name suffix)` for an xattr name (erofs xattr name indexes).
fn xattr_index(name: &[u8]) -> Result<(u8, &[u8]), Error> {
    const PREFIXES: &[(&[u8], u8)] = &[
        (b"system.posix_acl_access", 2),
        (b"system.posix_acl_default", 3),
        (b"user.", 1),
        (b"trusted.", 4),
        (b"security.", 6),
    ];
    for (prefix, index) in PREFIXES {
        if let Some(rest) = name.strip_prefix(*prefix) {
            if (*index == 2 || *index == 3) && !rest.is_empty() {
                continue;
            }
            return Ok((*index, rest));
        }
    }
    Err(Error::Unsupported(format!("xattr {:?}", String::from_utf8_lossy(name))))
}

/// The inline xattr body (header + entries), empty without xattrs.
fn xattr_body(node: &crate::tree::Node) -> Result<Vec<u8>, Error> {
    if node.xattrs.is_empty() {
        return Ok(Vec::new());
    }
    let mut body = vec![0u8; XATTR_HEADER];
    for (name, value) in &node.xattrs {
        let (index, suffix) = xattr_index(name)?;
        let name_len =
            u8::try_from(suffix.len()).map_err(|_| Error::Unsupported("xattr name over 255 bytes".into()))?;
        let value_len = u16::try_from(value.len()).map_err(|_| Error::Unsupported("xattr value over 64 KiB".into()))?;
        body.push(name_len);
        body.push(index);
        body.extend_from_slice(&value_len.to_le_bytes());
        body.extend_from_slice(suffix);
        body.extend_from_slice(value);
        body.resize(body.len().next_multiple_of(4), 0);
    }
    Ok(body)
}

/// Directory data: blocks of dirents + names, entries never crossing a block; the exact size
/// of the last block.
fn dir_data(entries: &[(Vec<u8>, u64, u8)]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let mut n = 0;
        let mut names = 0;
        while i + n < entries.len() && DIRENT_SIZE * (n + 1) + names + entries[i + n].0.len() <= BLOCK {
            names += entries[i + n].0.len();
            n += 1;
        }
        let block = &entries[i..i + n];
        let mut head = Vec::with_capacity(DIRENT_SIZE * n);
        let mut tail = Vec::with_capacity(names);
        for (name, nid, ft) in block {
            let nameoff = (DIRENT_SIZE * n + tail.len()) as u16;
            head.extend_from_slice(&nid.to_le_bytes());
            head.extend_from_slice(&nameoff.to_le_bytes());
            head.push(*ft);
            head.push(0);
            tail.extend_from_slice(name);
        }
        if !out.is_empty() {
            out.resize(out.len().next_multiple_of(BLOCK), 0);
        }
        out.extend_from_slice(&head);
        out.extend_from_slice(&tail);
        i += n;
    }
    out
}

/// `new_encode_dev` (include/linux/kdev_t.h).
fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// Writes the EROFS image of `tree`; `uuid` goes into the superblock.
pub fn write(tree: &Tree, uuid: [u8; 16]) -> Result<Vec<u8>, Error> {
    // Breadth-first order from the root: nids (root first, within u16) and parents.
    let mut order = Vec::with_capacity(tree.nodes.len());
    let mut parent = vec![ROOT; tree.nodes.len()];
    let mut seen = vec![false; tree.nodes.len()];
    let mut queue = VecDeque::from([ROOT]);
    seen[ROOT] = true;
    while let Some(id) = queue.pop_front() {
        order.push(id);
        if let Kind::Dir(children) = &tree.nodes[id].kind {
            for &child in children.values() {
                if !seen[child] {
                    seen[child] = true;
                    parent[child] = id;
                    queue.push_back(child);
                }
            }
        }
    }

    // Data of each inode except directories (whose dirents need nids): sizes are known now.
    // Directory data sizes depend only on names, so lay out with placeholder nids first.
    let dir_entries = |id: NodeId, nid_of: &dyn Fn(NodeId) -> u64| -> Vec<(Vec<u8>, u64, u8)> {
        let Kind::Dir(children) = &tree.nodes[id].kind else { return Vec::new() };
        let mut e: Vec<(Vec<u8>, u64, u8)> =
            children.iter().map(|(name, &c)| (name.clone(), nid_of(c), types(&tree.nodes[c].kind).1)).collect();
        e.push((b".".to_vec(), nid_of(id), FT_DIR));
        e.push((b"..".to_vec(), nid_of(parent[id]), FT_DIR));
        e.sort_by(|a, b| a.0.cmp(&b.0));
        e
    };
    let data_len = |id: NodeId| -> usize {
        match &tree.nodes[id].kind {
            Kind::Dir(_) => dir_data(&dir_entries(id, &|_| 0)).len(),
            Kind::File(d) | Kind::Symlink(d) => d.len(),
            _ => 0,
        }
    };
    let xattrs: Vec<Vec<u8>> = tree.nodes.iter().map(xattr_body).collect::<Result<_, _>>()?;

    // Metadata area: inode + xattrs (+ inline tail when it fits in the inode's block).
    let mut placed: Vec<Option<Placed>> = (0..tree.nodes.len()).map(|_| None).collect();
    let mut cursor = 0usize;
    let mut plain_blocks = 0usize;
    for &id in &order {
        let len = data_len(id);
        let head = INODE_SIZE + xattrs[id].len();
        let tail = len % BLOCK;
        let full = len / BLOCK;
        let inline = tail > 0 && head + tail <= BLOCK;
        let need = if inline { head + tail } else { head };
        if cursor % BLOCK + need > BLOCK {
            cursor = cursor.next_multiple_of(BLOCK);
        }
        let (layout, blocks) =
            if inline { (LAYOUT_FLAT_INLINE, full) } else { (LAYOUT_FLAT_PLAIN, len.div_ceil(BLOCK)) };
        placed[id] = Some(Placed { offset: cursor, layout, blkaddr: plain_blocks as u32 });
        plain_blocks += blocks;
        cursor = (cursor + need).next_multiple_of(32);
    }
    let meta_blocks = cursor.div_ceil(BLOCK).max(1);
    let meta_blkaddr = 1usize;
    let data_start = meta_blkaddr + meta_blocks;
    let total_blocks = data_start + plain_blocks;
    let nid = |id: NodeId| (placed[id].as_ref().expect("placed").offset / 32) as u64;
    if nid(ROOT) > u64::from(u16::MAX) {
        return Err(Error::Unsupported("root inode beyond nid 65535".into()));
    }

    let mut img = vec![0u8; total_blocks * BLOCK];
    for &id in &order {
        let node = &tree.nodes[id];
        let p = placed[id].as_ref().expect("placed");
        let data: std::borrow::Cow<'_, [u8]> = match &node.kind {
            Kind::Dir(_) => dir_data(&dir_entries(id, &nid)).into(),
            Kind::File(d) | Kind::Symlink(d) => d.as_slice().into(),
            _ => (&[][..]).into(),
        };
        let blocks_in_plain =
            if p.layout == LAYOUT_FLAT_INLINE { data.len() / BLOCK } else { data.len().div_ceil(BLOCK) };
        let blkaddr = if blocks_in_plain == 0 { NULL_ADDR } else { (data_start as u32) + p.blkaddr };
        let (ty, _) = types(&node.kind);
        let nlink = match &node.kind {
            Kind::Dir(children) => {
                2 + children.values().filter(|&&c| matches!(tree.nodes[c].kind, Kind::Dir(_))).count() as u32
            }
            _ => node.links.max(1),
        };
        let i_u = match node.kind {
            Kind::CharDev(ma, mi) | Kind::BlockDev(ma, mi) => encode_dev(ma, mi),
            Kind::Fifo => 0,
            _ if data.is_empty() => 0,
            _ => blkaddr,
        };
        let icount = if xattrs[id].is_empty() { 0 } else { ((xattrs[id].len() - XATTR_HEADER) / 4 + 1) as u16 };
        let at = meta_blkaddr * BLOCK + p.offset;
        let ino = &mut img[at..at + INODE_SIZE];
        ino[0..2].copy_from_slice(&(EXTENDED | (p.layout << 1)).to_le_bytes());
        ino[2..4].copy_from_slice(&icount.to_le_bytes());
        ino[4..6].copy_from_slice(&(ty | (node.mode & 0o7777)).to_le_bytes());
        ino[8..16].copy_from_slice(&(data.len() as u64).to_le_bytes());
        ino[16..20].copy_from_slice(&i_u.to_le_bytes());
        ino[20..24].copy_from_slice(&(nid(id) as u32).to_le_bytes());
        ino[24..28].copy_from_slice(&node.uid.to_le_bytes());
        ino[28..32].copy_from_slice(&node.gid.to_le_bytes());
        ino[32..40].copy_from_slice(&node.mtime.to_le_bytes());
        ino[44..48].copy_from_slice(&nlink.to_le_bytes());
        let x = at + INODE_SIZE;
        img[x..x + xattrs[id].len()].copy_from_slice(&xattrs[id]);
        let full = blocks_in_plain * BLOCK;
        if blocks_in_plain > 0 {
            let d = blkaddr as usize * BLOCK;
            let n = full.min(data.len());
            img[d..d + n].copy_from_slice(&data[..n]);
        }
        if p.layout == LAYOUT_FLAT_INLINE {
            let t = x + xattrs[id].len();
            img[t..t + data.len() - full].copy_from_slice(&data[full..]);
        }
    }

    let sb = &mut img[SUPER_OFFSET..SUPER_OFFSET + 128];
    sb[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    sb[12] = 12; // blkszbits
    sb[14..16].copy_from_slice(&(nid(ROOT) as u16).to_le_bytes());
    sb[16..24].copy_from_slice(&(order.len() as u64).to_le_bytes());
    sb[36..40].copy_from_slice(&(total_blocks as u32).to_le_bytes());
    sb[40..44].copy_from_slice(&(meta_blkaddr as u32).to_le_bytes());
    sb[48..64].copy_from_slice(&uuid);
    Ok(img)
}
