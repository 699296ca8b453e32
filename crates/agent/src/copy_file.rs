//! kata's `CopyFile`: small files the host hands a pod whose VM has no host share — on the
//! confidential path the files containerd bind-mounts into containers (`/etc/hosts`,
//! `/etc/hostname`, `/etc/resolv.conf`) and the files of Kubernetes' configMap, secret,
//! projected and downwardAPI volumes (a directory per container and volume), which a
//! container then bind-mounts from here.
//!
//! Only regular files below [`COPY_DIR`] are written (kata allows anything below `/run`; the
//! policy narrows it further). A file arrives in one or more chunks at increasing offsets
//! into `<path>~part` (a name no Kubernetes volume key can have), and is renamed into place
//! with its mode and owner once `file_size` bytes are there, so a container never sees half
//! a file, nor an updated one half written.

use std::fs::{DirBuilder, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use contrast_agent_protocol::agent;

use crate::error::Error;

/// Where copied files go (kata's directory for them).
pub const COPY_DIR: &str = "/run/kata-containers/shared/containers";
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
        Ok(rest) if !rest.as_os_str().is_empty() => Ok(p.to_owned()),
        _ => Err(bad(&format!("is not below {COPY_DIR}"))),
    }
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
    let dir_mode = if req.dir_mode == 0 { 0o755 } else { req.dir_mode & 0o7777 };
    DirBuilder::new().recursive(true).mode(dir_mode).create(parent).map_err(|e| io("creating its directory", e))?;
    let mut part = path.clone().into_os_string();
    part.push("~part");
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
        let mode = if req.file_mode & 0o7777 == 0 { 0o644 } else { req.file_mode & 0o7777 };
        file.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| io("setting its mode", e))?;
        let owner = |id: i32| (id >= 0).then_some(id as u32);
        std::os::unix::fs::fchown(&file, owner(req.uid), owner(req.gid)).map_err(|e| io("setting its owner", e))?;
        std::fs::rename(&part, &path).map_err(|e| io("moving it into place", e))?;
    }
    Ok(())
}

/// The copied files a container's bind mounts use: their sources, canonical and below
/// [`COPY_DIR`] as `CopyFile` takes them (nothing else is ever removed through this).
pub fn copies_in(spec: &libcontainer::oci_spec::runtime::Spec) -> Vec<PathBuf> {
    let is_bind = |m: &libcontainer::oci_spec::runtime::Mount| {
        m.typ().as_deref() == Some("bind") || m.options().iter().flatten().any(|o| o == "bind" || o == "rbind")
    };
    spec.mounts()
        .iter()
        .flatten()
        .filter(|m| is_bind(m))
        .filter_map(|m| m.source().as_ref()?.to_str())
        .filter_map(|source| destination(source).ok())
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
    fn only_canonical_paths_below_the_copy_dir() {
        let ok = "/run/kata-containers/shared/containers/abc-resolv.conf";
        assert_eq!(destination(ok).ok(), Some(PathBuf::from(ok)));
        for bad in [
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
    fn a_container_s_copies_are_its_canonical_bind_sources_below_the_copy_dir() {
        let spec: libcontainer::oci_spec::runtime::Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [
                { "destination": "/etc/hosts", "type": "bind", "source": format!("{COPY_DIR}/c-hosts") },
                { "destination": "/etc/resolv.conf", "source": format!("{COPY_DIR}/c-resolv.conf"), "options": ["rbind"] },
                { "destination": "/x", "type": "bind", "source": format!("{COPY_DIR}/../../contrast/x") },
                { "destination": "/y", "type": "tmpfs", "source": format!("{COPY_DIR}/c-hostname") },
                { "destination": "/z", "type": "bind", "source": "/run/contrast/z" },
            ],
        }))
        .expect("spec");
        let want = [format!("{COPY_DIR}/c-hosts"), format!("{COPY_DIR}/c-resolv.conf")].map(PathBuf::from);
        assert_eq!(copies_in(&spec), want);
    }

    #[test]
    fn copies_go_files_and_volume_directories_alike() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("c-hosts");
        std::fs::write(&file, "127.0.0.1 localhost\n").expect("file");
        let volume = dir.path().join("c-volume-config");
        std::fs::create_dir_all(volume.join("conf")).expect("volume");
        std::fs::write(volume.join("conf/app.yaml"), "a: 1\n").expect("key");
        let gone = dir.path().join("c-resolv.conf");
        remove(&[file.clone(), volume.clone(), gone]);
        assert!(!file.exists() && !volume.exists());
        assert!(dir.path().exists(), "nothing beside them");
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
