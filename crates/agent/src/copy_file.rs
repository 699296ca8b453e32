//! kata's `CopyFile`: small files the host hands a pod whose VM has no host share — on the
//! confidential path the files containerd bind-mounts into containers (`/etc/hosts`,
//! `/etc/hostname`, `/etc/resolv.conf`) and the files of Kubernetes' configMap, secret,
//! projected and downwardAPI volumes (a directory per container and volume), which a
//! container then bind-mounts from here.
//!
//! Only regular files below [`COPY_DIR`] are written (kata allows anything below `/run`; the
//! policy narrows it further). A file arrives in one or more chunks at increasing offsets
//! into a file of its own in [`PARTIAL_DIR`] (outside every directory a container binds, so
//! it can be no file of a volume), and is renamed into place with its mode and owner once
//! `file_size` bytes are there, so a container never sees half a file, nor an updated one
//! half written.
//!
//! kata's `CopyFile` of a directory makes it; here it also says what the directory holds,
//! and is taken only for a copied volume's or subPath's own directory
//! (`<id>.volumes/<name>`, `<id>.subpaths/<index>`): `data` lists the paths (relative to it,
//! NUL-separated) of the files it keeps, and every other file and directory below it goes
//! ([`keep_only`]). That is how a file kubelet removed from a volume (a key gone from a
//! configMap) leaves the container's copy, and how a volume with no files gets its
//! directory.
//!
//! A container's copies are `<id>-hosts`, `<id>-hostname`, `<id>-resolv.conf`, the
//! directory `<id>.volumes` (one directory per volume in it) and the directory
//! `<id>.subpaths` (a file or directory per subPath mount); they go when the container is
//! removed, when its create fails or is refused, and when the host removes an id the agent
//! has no container of ([`copies_named`]).

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use contrast_agent_protocol::agent;

use crate::error::Error;

/// Where copied files go (kata's directory for them).
pub const COPY_DIR: &str = "/run/kata-containers/shared/containers";
/// Where files being copied are written until complete (no container id begins with `.`).
const PARTIAL_DIR: &str = "/run/kata-containers/shared/containers/.partial";
/// The single files a container's copies may be: `<id>-<name>`.
const COPIED_NAMES: [&str; 3] = ["hosts", "hostname", "resolv.conf"];
/// Largest file taken: these are configuration files.
const MAX_FILE_SIZE: i64 = 1 << 20;
/// `S_IFMT` / `S_IFREG`: a mode with a file type must name a regular file.
const S_IFMT: u32 = 0o170_000;
const S_IFREG: u32 = 0o100_000;
const S_IFDIR: u32 = 0o040_000;

/// Checks `path` and answers it as a path below [`COPY_DIR`].
fn destination(path: &str) -> Result<PathBuf, Error> {
    let p = Path::new(path);
    let bad = |why: &str| Error::InvalidArgument(format!("CopyFile path {path:?} {why}"));
    if !p.is_absolute() {
        return Err(bad("is not absolute"));
    }
    // Checked on the string: `Path::components` silently drops `.` and doubled slashes.
    if path.split('/').skip(1).any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return Err(bad("is not canonical"));
    }
    match p.strip_prefix(COPY_DIR) {
        Ok(rest) if rest.to_str().is_some_and(|r| r.starts_with('.')) => Err(bad("names no container")),
        Ok(rest) if !rest.as_os_str().is_empty() => Ok(p.to_owned()),
        _ => Err(bad(&format!("is not below {COPY_DIR}"))),
    }
}

/// Where `path` is written until it is complete: a name of its own in [`PARTIAL_DIR`].
fn partial_path(path: &Path) -> PathBuf {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    path.hash(&mut h);
    Path::new(PARTIAL_DIR).join(format!("{:016x}", h.finish()))
}

pub fn copy_file(req: &agent::CopyFileRequest) -> Result<(), Error> {
    let path = destination(&req.path)?;
    let kind = req.file_mode & S_IFMT;
    if kind == S_IFDIR {
        return keep_only(Path::new(COPY_DIR), &path, req);
    }
    if kind != 0 && kind != S_IFREG {
        return Err(Error::InvalidArgument(format!(
            "CopyFile {}: only regular files and a volume's own directory are taken (mode {:o})",
            req.path, req.file_mode
        )));
    }
    if !(0..=MAX_FILE_SIZE).contains(&req.file_size) {
        return Err(Error::InvalidArgument(format!(
            "CopyFile {}: size {} is not 0..={MAX_FILE_SIZE}",
            req.path, req.file_size
        )));
    }
    let end = req.offset.checked_add(req.data.len() as i64);
    if req.offset < 0 || end.is_none_or(|e| e > req.file_size) {
        return Err(Error::InvalidArgument(format!(
            "CopyFile {}: {} bytes at offset {} do not fit a file of {} bytes",
            req.path,
            req.data.len(),
            req.offset,
            req.file_size
        )));
    }
    let io = |what: &str, e: std::io::Error| Error::Internal(format!("CopyFile {}: {what}: {e}", req.path));
    let parent = path.parent().unwrap_or(Path::new(COPY_DIR));
    let dir_mode = permissions(req.dir_mode, 0o755);
    DirBuilder::new().recursive(true).mode(dir_mode).create(parent).map_err(|e| io("creating its directory", e))?;
    DirBuilder::new().recursive(true).mode(0o700).create(PARTIAL_DIR).map_err(|e| io("creating its directory", e))?;
    let part = partial_path(&path);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(req.offset == 0)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&part)
        .map_err(|e| io("opening", e))?;
    file.write_all_at(&req.data, req.offset as u64).map_err(|e| io("writing", e))?;
    if end == Some(req.file_size) {
        let mode = permissions(req.file_mode, 0o644);
        file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| io("setting its mode", e))?;
        let owner = |id: i32| (id >= 0).then_some(id as u32);
        std::os::unix::fs::fchown(&file, owner(req.uid), owner(req.gid)).map_err(|e| io("setting its owner", e))?;
        std::fs::rename(&part, &path).map_err(|e| io("moving it into place", e))?;
    }
    Ok(())
}

/// Makes a copied volume's or subPath's own directory and keeps in it only the files
/// `req.data` lists (relative paths, NUL-separated); every other entry below it goes, links
/// never followed, and directories left empty with them.
fn keep_only(base: &Path, path: &Path, req: &agent::CopyFileRequest) -> Result<(), Error> {
    let bad = |why: String| Error::InvalidArgument(format!("CopyFile {} (a directory): {why}", req.path));
    let own = path.strip_prefix(base).ok().and_then(|rest| {
        let parts: Vec<&str> = rest.to_str()?.split('/').collect();
        let [kind, name] = parts[..] else { return None };
        let owner = kind.strip_suffix(".volumes").or_else(|| kind.strip_suffix(".subpaths"))?;
        (!owner.is_empty() && !name.is_empty()).then_some(())
    });
    if own.is_none() {
        return Err(bad("only a copied volume's or subPath's own directory is taken".into()));
    }
    if req.data.len() as i64 > MAX_FILE_SIZE {
        return Err(bad(format!("a list of {} bytes, more than {MAX_FILE_SIZE}", req.data.len())));
    }
    let list = std::str::from_utf8(&req.data).map_err(|_| bad("the list is not UTF-8".into()))?;
    let mut keep = std::collections::HashSet::new();
    for entry in list.split('\0').filter(|e| !e.is_empty()) {
        if entry.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
            return Err(bad(format!("{entry:?} is not a canonical relative path")));
        }
        keep.insert(PathBuf::from(entry));
    }
    let io = |what: &str, e: std::io::Error| Error::Internal(format!("CopyFile {}: {what}: {e}", req.path));
    DirBuilder::new()
        .recursive(true)
        .mode(permissions(req.dir_mode, 0o755))
        .create(path)
        .map_err(|e| io("creating it", e))?;
    prune(path, Path::new(""), &keep).map_err(|e| io("removing what it no longer holds", e))?;
    Ok(())
}

/// Removes what is below `dir` (at `rel` in the copy) and not in `keep`; true if nothing is
/// left in it.
fn prune(dir: &Path, rel: &Path, keep: &std::collections::HashSet<PathBuf>) -> std::io::Result<bool> {
    let mut empty = true;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let (path, rel) = (entry.path(), rel.join(entry.file_name()));
        // The entry itself, never where a link points.
        if entry.file_type()?.is_dir() {
            if prune(&path, &rel, keep)? {
                std::fs::remove_dir(&path)?;
                continue;
            }
        } else if !keep.contains(&rel) {
            std::fs::remove_file(&path)?;
            continue;
        }
        empty = false;
    }
    Ok(empty)
}

/// The permission bits of a requested mode (`default` when it has none). Only these: a
/// setuid or setgid file of the node's making would run as its owner inside the container.
fn permissions(mode: u32, default: u32) -> u32 {
    match mode & 0o777 {
        0 => default,
        bits => bits,
    }
}

/// Everything copied in for container `id`: its copied files, its volume directory and its
/// subPath copies (by name: nothing of another container's, whatever a spec names).
pub fn copies_named(id: &str) -> Vec<PathBuf> {
    copies_named_in(Path::new(COPY_DIR), id)
}

fn copies_named_in(dir: &Path, id: &str) -> Vec<PathBuf> {
    if id.is_empty() || id.contains('/') || id.starts_with('.') {
        return Vec::new();
    }
    COPIED_NAMES
        .iter()
        .map(|n| format!("{id}-{n}"))
        .chain([format!("{id}.volumes"), format!("{id}.subpaths")])
        .map(|name| dir.join(name))
        .collect()
}

/// Removes copied files and volume directories (gone already is fine).
pub fn remove(copies: &[PathBuf]) {
    for path in copies {
        let result = match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
            Ok(_) => std::fs::remove_file(path),
            Err(e) => Err(e),
        };
        crate::log_unless_gone(result, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn setuid_setgid_and_sticky_bits_are_not_copied() {
        assert_eq!(permissions(0o100_4755, 0o644), 0o755, "setuid");
        assert_eq!(permissions(0o2755, 0o644), 0o755, "setgid");
        assert_eq!(permissions(0o1777, 0o755), 0o777, "sticky");
        assert_eq!(permissions(0o100_000, 0o644), 0o644, "no bits: the default");
        assert_eq!(permissions(0o4000, 0o644), 0o644, "only setuid: the default");
        assert_eq!(permissions(0o640, 0o644), 0o640);
    }

    #[test]
    fn only_canonical_paths_below_the_copy_dir() {
        let ok = "/run/kata-containers/shared/containers/abc-resolv.conf";
        assert_eq!(destination(ok).ok(), Some(PathBuf::from(ok)));
        for bad in [
            "/run/kata-containers/shared/containers/.partial/0123456789abcdef",
            "run/kata-containers/shared/containers/x",
            "/run/kata-containers/shared/containers",
            "/run/kata-containers/shared/containers/../../../etc/passwd",
            "/run/kata-containers/shared/containers/./x",
            "/run/kata-containers/shared//containers/x",
            "/etc/resolv.conf",
            "/run/kata-containers/shared/containersX/y",
        ] {
            assert!(matches!(destination(bad), Err(Error::InvalidArgument(_))), "{bad}");
        }
    }

    #[test]
    fn a_container_s_copies_are_its_own_names() {
        let want = ["c-hosts", "c-hostname", "c-resolv.conf", "c.volumes", "c.subpaths"]
            .map(|n| PathBuf::from(COPY_DIR).join(n));
        assert_eq!(copies_named("c"), want);
        for bad in ["", "../x", ".partial", "a/b"] {
            assert!(copies_named(bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn copies_go_files_volume_directories_and_subpaths_alike() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Container c's copies (no resolv.conf: gone already is fine), and those of "c-b" and "d".
        for name in ["c-hosts", "c-hostname", "c-b-hosts", "d-hosts"] {
            std::fs::write(dir.path().join(name), "127.0.0.1 localhost\n").expect("file");
        }
        for volume in ["c.volumes/config/conf", "c-b.volumes/config", "c.subpaths/1", "c-b.subpaths/0"] {
            std::fs::create_dir_all(dir.path().join(volume)).expect("volume");
        }
        std::fs::write(dir.path().join("c.volumes/config/conf/app.yaml"), "a: 1\n").expect("key");
        std::fs::write(dir.path().join("c.subpaths/0"), "a: 1\n").expect("a subPath file");
        remove(&copies_named_in(dir.path(), "c"));
        let mut left: Vec<_> = std::fs::read_dir(dir.path())
            .expect("dir")
            .flatten()
            .map(|e| e.file_name().into_string().expect("utf-8"))
            .collect();
        left.sort();
        assert_eq!(left, ["c-b-hosts", "c-b.subpaths", "c-b.volumes", "d-hosts"], "another container's stay");
    }

    #[test]
    fn sizes_offsets_and_kinds_are_checked_before_anything_is_written() {
        let mut req = agent::CopyFileRequest::new();
        req.path = format!("{COPY_DIR}/c-hosts");
        req.file_size = 4;
        req.data = b"12345".to_vec();
        assert!(matches!(copy_file(&req), Err(Error::InvalidArgument(m)) if m.contains("do not fit")));
        req.data = b"12".to_vec();
        req.offset = -1;
        assert!(matches!(copy_file(&req), Err(Error::InvalidArgument(_))));
        req.offset = 0;
        req.file_size = MAX_FILE_SIZE + 1;
        assert!(matches!(copy_file(&req), Err(Error::InvalidArgument(m)) if m.contains("size")));
        req.file_size = 2;
        req.file_mode = 0o120_777; // a symlink
        assert!(matches!(copy_file(&req), Err(Error::InvalidArgument(m)) if m.contains("regular files")));
    }

    fn listing(path: &str, files: &[&str]) -> agent::CopyFileRequest {
        let mut req = agent::CopyFileRequest::new();
        req.path = format!("{COPY_DIR}/{path}");
        req.file_mode = S_IFDIR | 0o755;
        req.data = files.join("\0").into_bytes();
        req.file_size = req.data.len() as i64;
        req
    }

    #[test]
    fn a_directory_is_taken_only_as_a_volume_s_or_subpath_s_own() {
        assert!(matches!(copy_file(&listing(".volumes/config", &[])), Err(Error::InvalidArgument(_))));
        for bad in ["c-hosts", "c.volumes", "c.volumes/config/sub", "c.other/config"] {
            let err = copy_file(&listing(bad, &[])).expect_err(bad);
            assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("own directory")), "{bad}: {err:?}");
        }
        for bad in ["../x", "/etc/passwd", "a//b", "./a", "a/.."] {
            let err = copy_file(&listing("c.volumes/config", &[bad])).expect_err(bad);
            assert!(matches!(&err, Error::InvalidArgument(m) if m.contains("canonical")), "{bad}: {err:?}");
        }
    }

    /// A volume's copy keeps what the list names; a key removed on the node goes, with a
    /// directory it leaves empty; a link is removed, never followed.
    #[test]
    fn a_listing_removes_what_it_does_not_name() {
        let base = tempfile::tempdir().expect("tempdir");
        let root = base.path().join("c.volumes/config");
        let outside = tempfile::tempdir().expect("tempdir");
        std::fs::write(outside.path().join("precious"), "x").expect("outside");
        for f in ["app.yaml", "old.yaml", "sub/kept", "sub/gone", "gone-dir/deeper/file"] {
            std::fs::create_dir_all(root.join(f).parent().expect("parent")).expect("dirs");
            std::fs::write(root.join(f), f).expect("file");
        }
        std::os::unix::fs::symlink(outside.path(), root.join("link")).expect("link");
        let req = listing("c.volumes/config", &["app.yaml", "sub/kept", "not-here-yet"]);
        keep_only(base.path(), &root, &req).expect("listing");
        let mut left: Vec<String> = walkdir(&root);
        left.sort();
        assert_eq!(left, ["app.yaml", "sub", "sub/kept"]);
        assert!(outside.path().join("precious").exists(), "a link's target is not touched");
        // An empty list for a directory not there yet makes it.
        let empty = base.path().join("c.subpaths/3");
        keep_only(base.path(), &empty, &listing("c.subpaths/3", &[])).expect("empty listing");
        assert!(empty.is_dir());
    }

    fn walkdir(root: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(root).expect("dir").flatten() {
            let name = e.file_name().into_string().expect("utf-8");
            if e.file_type().expect("type").is_dir() {
                out.extend(walkdir(&e.path()).into_iter().map(|n| format!("{name}/{n}")));
            }
            out.push(name);
        }
        out
    }
}
