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
    if kind != 0 && kind != S_IFREG {
        return Err(Error::InvalidArgument(format!(
            "CopyFile {}: only regular files are taken (mode {:o})",
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
}
