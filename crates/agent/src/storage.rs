//! Storages named by `CreateSandbox` / `CreateContainer`: mounted before use, unmounted on
//! removal.

use std::path::{Path, PathBuf};

use contrast_agent_protocol::agent::Storage;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error(
        "storage driver `{0}` is not supported (supported: virtio-fs, local, ephemeral, contrast.layer, overlayfs)"
    )]
    UnsupportedDriver(String),
    #[error("storage `{source_name}`: {problem}")]
    Invalid { source_name: String, problem: String },
    #[error("mounting {fstype} `{source_name}` on {}: {errno}", target.display())]
    Mount { fstype: String, source_name: String, target: PathBuf, errno: nix::errno::Errno },
}

/// Mounts one storage; returns its mount point.
pub fn mount_storage(s: &Storage) -> Result<PathBuf, StorageError> {
    let invalid = |problem: &str| StorageError::Invalid { source_name: s.source.clone(), problem: problem.into() };
    if !s.mount_point.starts_with('/') || s.mount_point.contains("/../") || s.mount_point.ends_with("/..") {
        return Err(invalid("mount_point must be an absolute path without `..`"));
    }
    let target = PathBuf::from(&s.mount_point);
    if s.driver == crate::layers::LAYER_DRIVER {
        crate::layers::mount_layer(s, &target)?;
        return Ok(target);
    }
    let (fstype, source) = match s.driver.as_str() {
        "virtio-fs" => {
            if s.source.is_empty() {
                return Err(invalid("virtio-fs needs the device tag as source"));
            }
            ("virtiofs", s.source.as_str())
        }
        // A guest directory or tmpfs the container sees as a volume.
        "local" | "ephemeral" => ("tmpfs", "tmpfs"),
        // A container root from verified layers: `lowerdir=` their mount points, a
        // writable upper layer in guest memory (`upperdir=`, `workdir=` are created).
        "overlayfs" => {
            for o in &s.options {
                for key in ["upperdir=", "workdir="] {
                    if let Some(dir) = o.strip_prefix(key) {
                        if !dir.starts_with('/') || dir.contains("..") {
                            return Err(invalid("upperdir/workdir must be absolute paths without `..`"));
                        }
                        std::fs::create_dir_all(dir).map_err(|e| invalid(&format!("creating {dir}: {e}")))?;
                    }
                }
            }
            ("overlay", "overlay")
        }
        other => return Err(StorageError::UnsupportedDriver(other.into())),
    };
    std::fs::create_dir_all(&target).map_err(|e| invalid(&format!("creating the mount point: {e}")))?;
    let (flags, data) = mount_options(&s.options);
    mount(Some(source), &target, Some(fstype), flags, (!data.is_empty()).then_some(data.as_str())).map_err(
        |errno| StorageError::Mount {
            fstype: fstype.into(),
            source_name: source.into(),
            target: target.clone(),
            errno,
        },
    )?;
    Ok(target)
}

/// Unmounts (lazily, so a busy mount cannot block removal) and removes the mount point.
pub fn unmount(target: &Path) {
    if let Err(e) = umount2(target, MntFlags::MNT_DETACH) {
        crate::log!("unmounting {}: {e}", target.display());
    }
    let _ = std::fs::remove_dir(target);
    crate::layers::close_layer(target);
}

fn mount_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            other => data.push(other),
        }
    }
    (flags, data.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) = mount_options(&["ro".into(), "nosuid".into(), "dax".into(), "size=10m".into()]);
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(data, "dax,size=10m");
    }

    #[test]
    fn unknown_driver_and_relative_mount_point_are_refused() {
        let mut s = Storage::new();
        s.driver = "nbd".into();
        s.mount_point = "/x".into();
        assert!(matches!(mount_storage(&s), Err(StorageError::UnsupportedDriver(_))));
        s.driver = "virtio-fs".into();
        s.source = "tag".into();
        s.mount_point = "relative".into();
        assert!(matches!(mount_storage(&s), Err(StorageError::Invalid { .. })));
    }
}
