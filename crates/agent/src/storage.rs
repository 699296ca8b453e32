//! Storages named by `CreateSandbox` / `CreateContainer`: mounted before use, unmounted on
//! removal. What a storage asks for is decided from the request alone ([`plan`], no system
//! call), then carried out ([`mount_storage`]).

use std::path::{Component, Path, PathBuf};

use contrast_agent_protocol::agent::Storage;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::layers::LayerSpec;

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

/// A storage as it will be mounted.
#[derive(Debug, PartialEq, Eq)]
pub struct Planned {
    pub target: PathBuf,
    pub plan: Plan,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// A verified image layer (dm-verity over a hot-plugged disk, then EROFS).
    Layer(LayerSpec),
    /// One mount(2), after creating `dirs` (overlay upper and work dirs).
    Mount { fstype: &'static str, source: String, flags: MsFlags, data: String, dirs: Vec<PathBuf> },
}

/// The data options an overlay storage takes.
const OVERLAY_OPTIONS: [&str; 3] = ["lowerdir", "upperdir", "workdir"];

/// An absolute path that cannot climb out of where it points (`..`).
fn clean_absolute(p: &str) -> bool {
    p.starts_with('/') && !Path::new(p).components().any(|c| c == Component::ParentDir)
}

/// Decides what mounting `s` does; refuses a storage that names a place it must not.
pub fn plan(s: &Storage) -> Result<Planned, StorageError> {
    let invalid = |problem: &str| StorageError::Invalid { source_name: s.source.clone(), problem: problem.into() };
    if !clean_absolute(&s.mount_point) {
        return Err(invalid("mount_point must be an absolute path without `..`"));
    }
    let target = PathBuf::from(&s.mount_point);
    if s.driver == crate::layers::LAYER_DRIVER {
        let spec = LayerSpec::parse(s).map_err(|p| invalid(&p))?;
        return Ok(Planned { target, plan: Plan::Layer(spec) });
    }
    let (flags, data) = mount_options(&s.options).map_err(|p| invalid(&p))?;
    let mut dirs = Vec::new();
    let (fstype, source) = match s.driver.as_str() {
        "virtio-fs" => {
            if s.source.is_empty() {
                return Err(invalid("virtio-fs needs the device tag as source"));
            }
            ("virtiofs", s.source.clone())
        }
        // A guest directory or tmpfs the container sees as a volume.
        "local" | "ephemeral" => ("tmpfs", "tmpfs".to_owned()),
        // A container root from verified layers: `lowerdir=` their mount points, a
        // writable upper layer in guest memory (`upperdir=`, `workdir=` are created).
        "overlayfs" => {
            // lowerdir, upperdir and workdir once each and no other data: overlayfs takes the
            // last `lowerdir=` it is given, and the policy judges the options as a set.
            for key in OVERLAY_OPTIONS {
                let given = s.options.iter().filter(|o| o.split_once('=').is_some_and(|(k, _)| k == key)).count();
                if given != 1 {
                    return Err(invalid(&format!("overlay needs option {key}= exactly once (given {given} times)")));
                }
            }
            if let Some(other) = data
                .split(',')
                .find(|d| !d.is_empty() && !OVERLAY_OPTIONS.iter().any(|k| d.starts_with(&format!("{k}="))))
            {
                return Err(invalid(&format!(
                    "overlay option {other:?} is not allowed (only lowerdir=, upperdir=, workdir=)"
                )));
            }
            for o in &s.options {
                if let Some(dirs_) = o.strip_prefix("lowerdir=") {
                    if !dirs_.split(':').all(clean_absolute) {
                        return Err(invalid("lowerdir must be absolute paths without `..`"));
                    }
                }
                for key in ["upperdir=", "workdir="] {
                    if let Some(dir) = o.strip_prefix(key) {
                        if !clean_absolute(dir) {
                            return Err(invalid("upperdir/workdir must be absolute paths without `..`"));
                        }
                        dirs.push(PathBuf::from(dir));
                    }
                }
            }
            ("overlay", "overlay".to_owned())
        }
        other => return Err(StorageError::UnsupportedDriver(other.into())),
    };
    Ok(Planned { target, plan: Plan::Mount { fstype, source, flags, data, dirs } })
}

/// The directories mounting `storages` creates for a container's own writes (overlay upper
/// and work dirs): they go with the container, or the next container under its id would see
/// its files, and a restarting container would fill the guest's memory.
/// Only those below [`SCRATCH_ROOT`] (where the shim puts them): on the `insecure` path the
/// host may name any directory, which is not ours to remove.
pub fn scratch_dirs(storages: &[Storage]) -> Vec<PathBuf> {
    scratch_dirs_below(Path::new(SCRATCH_ROOT), storages)
}

/// Where a container's overlay upper and work directories are made.
const SCRATCH_ROOT: &str = "/run/contrast/upper";

fn scratch_dirs_below(root: &Path, storages: &[Storage]) -> Vec<PathBuf> {
    storages
        .iter()
        .filter_map(|s| plan(s).ok())
        .flat_map(|p| match p.plan {
            Plan::Mount { dirs, .. } => dirs,
            Plan::Layer(_) => Vec::new(),
        })
        .filter(|d| d.starts_with(root) && d != root)
        .collect()
}

/// Removes scratch directories (after their overlay is unmounted), and the directory that
/// held them once it is empty.
pub fn remove_scratch(dirs: &[PathBuf]) {
    for dir in dirs {
        crate::log_unless_gone(std::fs::remove_dir_all(dir), dir);
        if let Some(parent) = dir.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Mounts one storage; returns its mount point.
pub fn mount_storage(s: &Storage) -> Result<PathBuf, StorageError> {
    let Planned { target, plan } = plan(s)?;
    let invalid = |problem: String| StorageError::Invalid { source_name: s.source.clone(), problem };
    match plan {
        Plan::Layer(spec) => crate::layers::mount_layer(&spec, &target)?,
        Plan::Mount { fstype, source, flags, data, dirs } => {
            for dir in &dirs {
                // Another container's writes (the same id again): never under a new root.
                if std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some()) {
                    return Err(invalid(format!(
                        "{} is not empty: it holds an earlier container's files",
                        dir.display()
                    )));
                }
            }
            for dir in dirs.iter().chain([&target]) {
                std::fs::create_dir_all(dir).map_err(|e| invalid(format!("creating {}: {e}", dir.display())))?;
            }
            mount(Some(source.as_str()), &target, Some(fstype), flags, (!data.is_empty()).then_some(data.as_str()))
                .map_err(|errno| StorageError::Mount {
                    fstype: fstype.into(),
                    source_name: source,
                    target: target.clone(),
                    errno,
                })?;
        }
    }
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

/// Mount flags and the file system's own data from the storage's options. Each option is
/// one item: a comma inside one would smuggle in another (`workdir=/x,upperdir=/etc`).
fn mount_options(options: &[String]) -> Result<(MsFlags, String), String> {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        if o.contains(',') || o.contains('\0') {
            return Err(format!("option {o:?} holds a `,` or NUL: give each option as an item of its own"));
        }
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" | "" => {}
            "nosuid" => flags |= MsFlags::MS_NOSUID,
            "nodev" => flags |= MsFlags::MS_NODEV,
            "noexec" => flags |= MsFlags::MS_NOEXEC,
            other => data.push(other),
        }
    }
    Ok((flags, data.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(driver: &str, source: &str, options: &[&str], mount_point: &str) -> Storage {
        let mut s = Storage::new();
        s.driver = driver.into();
        s.source = source.into();
        s.options = options.iter().map(|o| o.to_string()).collect();
        s.mount_point = mount_point.into();
        s
    }

    #[test]
    fn options_split_into_flags_and_data() {
        let (flags, data) =
            mount_options(&["ro".into(), "nosuid".into(), "dax".into(), "size=10m".into()]).expect("ok");
        assert!(flags.contains(MsFlags::MS_RDONLY | MsFlags::MS_NOSUID));
        assert_eq!(data, "dax,size=10m");
    }

    #[test]
    fn unknown_driver_and_relative_mount_point_are_refused() {
        assert!(matches!(plan(&storage("nbd", "", &[], "/x")), Err(StorageError::UnsupportedDriver(_))));
        for bad in ["relative", "/a/../etc", "/..", "/a/.."] {
            let err = plan(&storage("virtio-fs", "tag", &[], bad)).expect_err(bad);
            assert!(matches!(err, StorageError::Invalid { .. }), "{bad}: {err}");
        }
        // `...` is a name, not a way up.
        assert!(plan(&storage("virtio-fs", "tag", &[], "/run/...")).is_ok());
    }

    #[test]
    fn an_earlier_containers_writes_are_refused_and_removed_with_it() {
        let dir = tempfile::tempdir().expect("dir");
        let (upper, work) = (dir.path().join("c/upper"), dir.path().join("c/work"));
        let options =
            ["lowerdir=/l".to_owned(), format!("upperdir={}", upper.display()), format!("workdir={}", work.display())];
        let options: Vec<&str> = options.iter().map(String::as_str).collect();
        let s = storage("overlayfs", "overlay", &options, &dir.path().join("rootfs").to_string_lossy());
        let scratch = scratch_dirs_below(dir.path(), std::slice::from_ref(&s));
        assert_eq!(scratch, [upper.clone(), work.clone()]);
        assert!(scratch_dirs(std::slice::from_ref(&s)).is_empty(), "not below the scratch root: not ours");
        std::fs::create_dir_all(&upper).expect("upper");
        std::fs::write(upper.join("secret"), "of the container before").expect("write");
        let err = mount_storage(&s).expect_err("a used upper dir").to_string();
        assert!(err.contains("is not empty: it holds an earlier container's files"), "{err}");
        remove_scratch(&scratch);
        assert!(!dir.path().join("c").exists(), "upper, work and their directory gone");
    }

    #[test]
    fn an_option_with_a_comma_cannot_smuggle_in_another() {
        let s = storage(
            "overlayfs",
            "overlay",
            &["lowerdir=/l", "workdir=/run/w,upperdir=/etc", "upperdir=/run/u"],
            "/run/c/rootfs",
        );
        let err = plan(&s).expect_err("smuggled upperdir");
        assert!(err.to_string().contains("give each option as an item of its own"), "{err}");
    }

    #[test]
    fn overlay_dirs_stay_absolute_and_are_created_first() {
        let s = storage("overlayfs", "overlay", &["lowerdir=/a:../b", "upperdir=/u", "workdir=/w"], "/r");
        assert!(plan(&s).expect_err("relative lower").to_string().contains("lowerdir"));
        let s = storage("overlayfs", "overlay", &["lowerdir=/a:/b", "upperdir=/u", "workdir=/w"], "/r");
        let Planned { target, plan: planned } = plan(&s).expect("valid overlay");
        assert_eq!(target, Path::new("/r"));
        let Plan::Mount { fstype, data, dirs, .. } = planned else { panic!("a mount") };
        assert_eq!((fstype, data.as_str()), ("overlay", "lowerdir=/a:/b,upperdir=/u,workdir=/w"));
        assert_eq!(dirs, [PathBuf::from("/u"), PathBuf::from("/w")]);
        // overlayfs would use the last lowerdir: a second one is refused, as are missing
        // dirs and data options beyond the three.
        let twice = ["lowerdir=/a", "lowerdir=/etc", "upperdir=/u", "workdir=/w"];
        let err = plan(&storage("overlayfs", "overlay", &twice, "/r")).expect_err("two lowerdirs").to_string();
        assert!(err.contains("lowerdir= exactly once (given 2 times)"), "{err}");
        let err =
            plan(&storage("overlayfs", "overlay", &["lowerdir=/a", "upperdir=/u"], "/r")).expect_err("no workdir");
        assert!(err.to_string().contains("workdir= exactly once (given 0 times)"), "{err}");
        let extra = ["lowerdir=/a", "upperdir=/u", "workdir=/w", "redirect_dir=on"];
        let err = plan(&storage("overlayfs", "overlay", &extra, "/r")).expect_err("other data").to_string();
        assert!(err.contains("\"redirect_dir=on\" is not allowed"), "{err}");
        assert!(
            plan(&storage("overlayfs", "overlay", &["ro", "lowerdir=/a", "upperdir=/u", "workdir=/w"], "/r")).is_ok()
        );
    }
}
