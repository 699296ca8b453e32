//! The writer against erofs-utils' own checker and extractor (`fsck.erofs`, Debian
//! erofs-utils): what it reads back is the tree we wrote.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::Command;

use super::*;

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_uid(1000);
    h.set_gid(1001);
    h.set_mtime(1_700_000_000);
    h.set_size(size);
    h
}

/// A layer with the shapes images have: nested dirs, a big file (several blocks plus a
/// tail), a file of exactly one block, empty files, symlinks, a hard link, a whiteout, an
/// opaque dir, a device, a FIFO, an xattr, and a directory with many entries (several blocks).
fn sample_tar() -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |path: &str, kind: tar::EntryType, mode: u32, data: &[u8], link: Option<&str>| {
        let mut h = header(kind, mode, data.len() as u64);
        if let Some(l) = link {
            h.set_link_name(l).expect("link");
        }
        b.append_data(&mut h, path, data).expect("append");
    };
    add("etc/", tar::EntryType::Directory, 0o755, b"", None);
    add("etc/passwd", tar::EntryType::Regular, 0o644, b"root:x:0:0:root:/root:/bin/sh\n", None);
    let big: Vec<u8> = (0..3 * 4096 + 123).map(|i| (i * 7 % 256) as u8).collect();
    add("usr/lib/big.bin", tar::EntryType::Regular, 0o4755, &big, None);
    add("usr/lib/block.bin", tar::EntryType::Regular, 0o600, &vec![0x5a; 4096], None);
    add("usr/lib/empty", tar::EntryType::Regular, 0o644, b"", None);
    add("usr/lib/link", tar::EntryType::Symlink, 0o777, b"", Some("big.bin"));
    add("usr/lib/hard", tar::EntryType::Link, 0o644, b"", Some("usr/lib/big.bin"));
    add("var/.wh.cache", tar::EntryType::Regular, 0o644, b"", None);
    add("opt/.wh..wh..opq", tar::EntryType::Regular, 0o644, b"", None);
    add("dev/null", tar::EntryType::Char, 0o666, b"", None);
    add("run/fifo", tar::EntryType::Fifo, 0o600, b"", None);
    for i in 0..400 {
        add(&format!("many/entry-with-a-long-name-{i:04}"), tar::EntryType::Regular, 0o644, b"x", None);
    }
    let mut h = header(tar::EntryType::Regular, 0o644, 5);
    b.append_pax_extensions([("SCHILY.xattr.user.note", &b"hello"[..])]).expect("pax");
    b.append_data(&mut h, "etc/noted", &b"noted"[..]).expect("append");
    b.into_inner().expect("tar")
}

fn fsck(image: &Path, extract: Option<&Path>) -> (bool, String) {
    let mut cmd = Command::new("fsck.erofs");
    if let Some(dir) = extract {
        cmd.arg(format!("--extract={}", dir.display()));
    }
    let out = cmd.arg(image).output().expect("fsck.erofs (erofs-utils) runs");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success() && !text.contains("<E>"), text)
}

#[test]
fn fsck_erofs_accepts_the_image_and_extracts_the_tree() {
    let tree = tree::Tree::from_tar(&sample_tar()[..]).expect("tree");
    let image = writer::write(&tree, [7; 16]).expect("image");
    assert_eq!(image.len() % writer::BLOCK, 0);
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("layer.erofs");
    std::fs::write(&path, &image).expect("write");
    let (ok, text) = fsck(&path, None);
    assert!(ok, "fsck.erofs: {text}");

    let out = dir.path().join("x");
    let (ok, text) = fsck(&path, Some(&out));
    assert!(ok, "fsck.erofs --extract: {text}");
    let big: Vec<u8> = (0..3 * 4096 + 123).map(|i| (i * 7 % 256) as u8).collect();
    assert_eq!(std::fs::read(out.join("usr/lib/big.bin")).expect("big"), big);
    assert_eq!(std::fs::read(out.join("usr/lib/block.bin")).expect("block"), vec![0x5a; 4096]);
    assert_eq!(std::fs::read(out.join("usr/lib/hard")).expect("hard"), big);
    assert_eq!(std::fs::read(out.join("etc/passwd")).expect("passwd"), b"root:x:0:0:root:/root:/bin/sh\n");
    assert_eq!(std::fs::read(out.join("usr/lib/empty")).expect("empty"), b"");
    assert_eq!(std::fs::read_link(out.join("usr/lib/link")).expect("link"), Path::new("big.bin"));
    let meta = std::fs::metadata(out.join("usr/lib/big.bin")).expect("meta");
    // fsck.erofs chowns after chmod, which clears setuid: the suid bit is checked in the
    // image itself below (dump.erofs).
    assert_eq!(meta.permissions().mode() & 0o777, 0o755);
    assert_eq!((meta.uid(), meta.gid()), (1000, 1001));
    assert_eq!(meta.mtime(), 1_700_000_000);
    let whiteout = std::fs::symlink_metadata(out.join("var/cache")).expect("whiteout");
    assert_eq!(whiteout.mode() & 0o170000, 0o020000, "whiteout is a char device");
    assert_eq!(whiteout.rdev(), 0);
    let names = std::fs::read_dir(out.join("many")).expect("many").count();
    assert_eq!(names, 400, "a directory over several blocks");
    assert_eq!(std::fs::read(out.join("etc/noted")).expect("noted"), b"noted");
}

#[test]
fn dump_erofs_sees_the_opaque_xattr() {
    let tree = tree::Tree::from_tar(&sample_tar()[..]).expect("tree");
    let image = writer::write(&tree, [7; 16]).expect("image");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("layer.erofs");
    std::fs::write(&path, &image).expect("write");
    let out = Command::new("dump.erofs").args(["--path=/opt"]).arg(&path).output().expect("dump.erofs");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("Xattr size: 32"), "opaque xattr inline: {text}");
    let out = Command::new("dump.erofs").args(["--path=/usr/lib/big.bin"]).arg(&path).output().expect("dump.erofs");
    let text = String::from_utf8_lossy(&out.stdout);
    // dump.erofs prints only the permission bits; read i_mode from the inode itself.
    let nid: usize =
        text.split("NID: ").nth(1).and_then(|r| r.split_whitespace().next()).expect("nid").parse().expect("n");
    let at = writer::BLOCK + nid * 32 + 4;
    assert_eq!(u16::from_le_bytes([image[at], image[at + 1]]), 0o104755, "setuid kept: {text}");
}

#[test]
fn same_blob_same_bytes_and_a_changed_byte_changes_the_root_hash() {
    let tar = sample_tar();
    let a = layer_image(&tar).expect("layer");
    let b = layer_image(&tar).expect("layer");
    assert_eq!(a.bytes, b.bytes, "deterministic");
    assert_eq!(a.root_hash, b.root_hash);
    assert_eq!(a.hash_offset % 4096, 0);
    let (data, hash) = a.bytes.split_at(a.hash_offset as usize);
    contrast_verity::verify(data, hash, &a.root_hash).expect("verity holds");
    let mut changed = tar.clone();
    let at = changed.windows(4).position(|w| w == b"root").expect("passwd text");
    changed[at] = b'R';
    assert_ne!(layer_image(&changed).expect("layer").root_hash, a.root_hash);
    // gzip'd, the same tree gives the same EROFS image (the salt follows the blob).
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, &tar).expect("gzip");
    let g = layer_image(&gz.finish().expect("gzip")).expect("layer");
    assert_eq!(g.bytes[..g.hash_offset as usize].len(), data.len());
}

#[test]
fn what_the_transport_cannot_carry_is_named() {
    // An xattr namespace EROFS has no index for.
    let mut b = tar::Builder::new(Vec::new());
    b.append_pax_extensions([("SCHILY.xattr.system.odd", &b"1"[..])]).expect("pax");
    let mut h = header(tar::EntryType::Regular, 0o644, 1);
    b.append_data(&mut h, "f", &b"x"[..]).expect("append");
    let err = layer_image(&b.into_inner().expect("tar")).err().expect("refused");
    assert!(err.to_string().contains("not supported: xattr \"system.odd\""), "{err}");
    // A tar entry that is no file system object (here an unknown type byte).
    let mut b = tar::Builder::new(Vec::new());
    let mut h = header(tar::EntryType::new(b'Q'), 0o644, 0);
    b.append_data(&mut h, "odd", &b""[..]).expect("append");
    let err = layer_image(&b.into_inner().expect("tar")).err().expect("refused");
    assert!(err.to_string().starts_with("layer tar: unsupported tar entry type"), "{err}");
    // Not a layer at all.
    assert!(layer_image(&[0x1f, 0x8b, 0, 0]).is_err(), "broken gzip");
}
