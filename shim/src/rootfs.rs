//! Container root filesystems and bind-mounted host files, mounted into the pod's shared
//! directory (served to the guest by virtiofsd) and unmounted on delete.

use std::path::{Path, PathBuf};

use containerd_shim_protos::api::Mount as RootfsMount;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Mount;

/// Mounts containerd's rootfs mounts (overlay, bind) at `target`; an empty list means the
/// bundle's own `rootfs/` directory, which is bind-mounted.
pub fn mount_rootfs(mounts: &[RootfsMount], bundle: &Path, target: &Path) -> Result<(), String> {
    std::fs::create_dir_all(target).map_err(|e| format!("creating {}: {e}", target.display()))?;
    if mounts.is_empty() {
        return bind(&bundle.join("rootfs"), target, false);
    }
    for m in mounts {
        let (flags, data) = split_options(&m.options);
        let kind = if m.type_.is_empty() { "none" } else { m.type_.as_str() };
        if kind == "bind" || flags.contains(MsFlags::MS_BIND) {
            bind(Path::new(&m.source), target, flags.contains(MsFlags::MS_RDONLY))?;
            continue;
        }
        mount(Some(m.source.as_str()), target, Some(kind), flags, (!data.is_empty()).then_some(data.as_str()))
            .map_err(|e| format!("mounting {kind} rootfs on {}: {e}", target.display()))?;
    }
    Ok(())
}

fn bind(source: &Path, target: &Path, readonly: bool) -> Result<(), String> {
    mount(Some(source), target, None::<&str>, MsFlags::MS_BIND | MsFlags::MS_REC, None::<&str>)
        .map_err(|e| format!("bind-mounting {} on {}: {e}", source.display(), target.display()))?;
    if readonly {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| format!("remounting {} read-only: {e}", target.display()))?;
    }
    Ok(())
}

/// A bind mount of a host path: type `bind`, or an option `bind`/`rbind` (runc's reading).
pub fn is_bind(m: &Mount) -> bool {
    m.typ().as_deref() == Some("bind")
        || m.options().as_ref().is_some_and(|o| o.iter().any(|x| x == "bind" || x == "rbind"))
}

/// Rewrites the spec's bind mounts of host paths: each source is bind-mounted under
/// `host_dir` (inside the shared directory) and the mount then points at `guest_dir`.
pub fn share_bind_mounts(mounts: &[Mount], host_dir: &Path, guest_dir: &str) -> Result<Vec<Mount>, String> {
    let mut out = Vec::new();
    for (i, m) in mounts.iter().enumerate() {
        let Some(source) = m.source().as_ref().filter(|_| is_bind(m)) else {
            out.push(m.clone());
            continue;
        };
        let target = host_dir.join(i.to_string());
        std::fs::create_dir_all(host_dir).map_err(|e| format!("creating {}: {e}", host_dir.display()))?;
        if source.is_dir() {
            std::fs::create_dir_all(&target).map_err(|e| e.to_string())?;
        } else {
            std::fs::write(&target, b"").map_err(|e| e.to_string())?;
        }
        bind(source, &target, false)?;
        let mut shared = m.clone();
        shared.set_source(Some(PathBuf::from(format!("{guest_dir}/{i}"))));
        out.push(shared);
    }
    Ok(out)
}

/// Unmounts everything mounted at or below `dir` (deepest first) and removes `dir`, unless a
/// mount is still there: removing through it would delete the files of whatever is mounted
/// (a host directory bound in read-write).
pub fn unmount_all(dir: &Path) {
    let mut points = mount_points_below(dir);
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for p in points {
        if let Err(e) = umount2(&p, MntFlags::MNT_DETACH) {
            tracing::warn!(mount = %p.display(), error = %e, "cannot unmount");
        }
    }
    let left = mount_points_below(dir);
    if !left.is_empty() {
        tracing::warn!(dir = %dir.display(), mounts = ?left, "still mounted below; left in place");
        return;
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot remove");
        }
    }
}

/// Mount points at or below `dir`, from this process's mountinfo.
fn mount_points_below(dir: &Path) -> Vec<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_octal(p)))
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// mountinfo writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape_octal(s: &str) -> std::ffi::OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| b[i] == b'\\' && (b'0'..=b'3').contains(&d[0]) && d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match octal {
            Some(d) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    std::ffi::OsString::from_vec(out)
}

fn split_options(options: &[String]) -> (MsFlags, String) {
    let mut flags = MsFlags::empty();
    let mut data = Vec::new();
    for o in options {
        match o.as_str() {
            "ro" => flags |= MsFlags::MS_RDONLY,
            "rw" | "defaults" => {}
            "bind" => flags |= MsFlags::MS_BIND,
            "rbind" => flags |= MsFlags::MS_BIND | MsFlags::MS_REC,
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
    fn mountinfo_escapes_are_read_back() {
        assert_eq!(unescape_octal(r"/a\040b\011c\012d\134e"), std::ffi::OsString::from("/a b\tc\nd\\e"));
        assert_eq!(unescape_octal(r"/x\777\04"), std::ffi::OsString::from(r"/x\777\04"), "not octal bytes: kept");
    }

    /// A directory whose mountinfo path needs escaping (a tab) is unmounted and removed; the
    /// host directory that was bound there keeps its files.
    #[test]
    fn unmount_all_removes_the_dir_and_never_what_was_mounted() {
        let host = tempfile::tempdir().expect("tempdir");
        std::fs::write(host.path().join("keep"), "host data").expect("write");
        let dir = tempfile::tempdir().expect("tempdir");
        let target = dir.path().join("c\t1").join("0/mounts/0");
        std::fs::create_dir_all(&target).expect("mkdir");
        bind(host.path(), &target, false).expect("bind (tests run as root)");
        let dir = dir.keep();
        unmount_all(&dir);
        assert!(!dir.exists(), "the dir is removed");
        assert_eq!(std::fs::read_to_string(host.path().join("keep")).expect("host file"), "host data");
    }
}
