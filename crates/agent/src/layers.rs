//! Container image layers the host hands over as read-only SCSI disks (storage driver
//! [`LAYER_DRIVER`]): each is an EROFS image with its dm-verity hash area appended
//! (crate `contrast-erofs`), opened only through dm-verity with the root hash the storage
//! names — which the policy compared with the value the init data pins for that layer —
//! and read in full once before it is mounted, so a changed byte fails the container's
//! create with the layer's name instead of an I/O error later.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use contrast_agent_protocol::agent::Storage;
use nix::mount::{mount, MsFlags};

use crate::storage::StorageError;

/// Storage driver of a verified image layer.
pub const LAYER_DRIVER: &str = "contrast.layer";
/// How long a hot-plugged disk may take to appear.
const DEVICE_WAIT: Duration = Duration::from_secs(20);
const BLOCK: u64 = 4096;
const READ_CHUNK: usize = 1 << 20;
/// The largest layer: 2^40 blocks of 4 KiB (4 PiB), far beyond any image and far from
/// overflowing a byte count.
const MAX_DATA_BLOCKS: u64 = 1 << 40;

/// The options of a layer storage, each `key=value`.
const LAYER_OPTIONS: [&str; 4] = ["digest", "root_hash", "salt", "data_blocks"];

/// What a layer storage says (options `key=value`).
#[derive(Debug, PartialEq, Eq)]
pub struct LayerSpec {
    pub digest: String,
    pub root_hash: String,
    pub salt: String,
    pub data_blocks: u64,
    /// SCSI target and LUN of the disk (`source` "target:lun").
    pub target: u32,
    pub lun: u32,
}

impl LayerSpec {
    pub fn parse(s: &Storage) -> Result<Self, String> {
        // Each of the four options exactly once and nothing else: the policy judges the
        // options as a set, and a second `root_hash=` must not be the one used.
        for o in &s.options {
            let key = o.split_once('=').map_or(o.as_str(), |(k, _)| k);
            if !LAYER_OPTIONS.contains(&key) {
                return Err(format!("option {o:?} is not one of {}", LAYER_OPTIONS.join("=, ") + "="));
            }
            if s.options.iter().filter(|x| x.split_once('=').is_some_and(|(k, _)| k == key)).count() > 1 {
                return Err(format!("option {key}= is given more than once"));
            }
        }
        let get = |key: &str| {
            s.options
                .iter()
                .find_map(|o| o.strip_prefix(key)?.strip_prefix('='))
                .map(str::to_owned)
                .ok_or_else(|| format!("option {key}= missing"))
        };
        let hex = |v: &str, len: Option<usize>| {
            v.bytes().all(|b| b.is_ascii_hexdigit()) && len.is_none_or(|l| v.len() == l) && v.len().is_multiple_of(2)
        };
        let digest = get("digest")?;
        if !digest.strip_prefix("sha256:").is_some_and(|h| hex(h, Some(64))) {
            return Err(format!("digest {digest:?} is not sha256:<64 hex>"));
        }
        let root_hash = get("root_hash")?;
        if !hex(&root_hash, Some(64)) {
            return Err("root_hash is not 64 hex digits".into());
        }
        let salt = get("salt")?;
        if !hex(&salt, None) {
            return Err("salt is not hex".into());
        }
        let data_blocks: u64 = get("data_blocks")?.parse().map_err(|_| "data_blocks is not a number".to_owned())?;
        // The device's size in bytes and the hash area's offset must fit their fields.
        if !(1..=MAX_DATA_BLOCKS).contains(&data_blocks) {
            return Err(format!("data_blocks {data_blocks} is not within 1..={MAX_DATA_BLOCKS}"));
        }
        let (t, l) = s.source.split_once(':').ok_or("source is not target:lun")?;
        let target = t.parse().map_err(|_| "source target is not a number".to_owned())?;
        let lun = l.parse().map_err(|_| "source lun is not a number".to_owned())?;
        Ok(LayerSpec { digest, root_hash, salt, data_blocks, target, lun })
    }
}

/// The device-mapper name of the layer mounted at `mount_point`.
pub fn dm_name(mount_point: &Path) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    mount_point.hash(&mut h);
    format!("contrast-layer-{:016x}", h.finish())
}

/// Opens and mounts one layer storage at its mount point.
pub fn mount_layer(spec: &LayerSpec, target: &Path) -> Result<(), StorageError> {
    let bad = |problem: String| StorageError::Invalid { source_name: format!("layer {}", spec.digest), problem };
    let disk = wait_for_disk(spec.target, spec.lun)
        .ok_or_else(|| bad(format!("no disk at SCSI {}:{} after {DEVICE_WAIT:?}", spec.target, spec.lun)))?;
    let (major, minor) = dev_numbers(&disk).map_err(|e| bad(format!("{}: {e}", disk.display())))?;
    // One disk: the EROFS data, then the hash area whose first block is the superblock.
    let hash_start = spec.data_blocks + 1;
    let params = format!(
        "1 {major}:{minor} {major}:{minor} {BLOCK} {BLOCK} {} {hash_start} sha256 {} {}",
        spec.data_blocks,
        spec.root_hash,
        if spec.salt.is_empty() { "-" } else { &spec.salt }
    );
    let name = dm_name(target);
    let control = contrast_init::dm::Control::open().map_err(|e| bad(e.to_string()))?;
    let table =
        contrast_init::dm::Target { sectors: spec.data_blocks * (BLOCK / 512), target: "verity", params: &params };
    let (dm_major, dm_minor) = control.create(&name, "", &table, true).map_err(|e| bad(e.to_string()))?;
    let undo = |e: StorageError| {
        let _ = control.remove(&name);
        e
    };
    let dev = PathBuf::from(format!("/dev/dm-{dm_minor}"));
    if dm_major == 0 || !dev.exists() {
        return Err(undo(bad(format!("device-mapper device {} did not appear", dev.display()))));
    }
    read_all(&dev, spec.data_blocks * BLOCK)
        .map_err(|e| undo(bad(format!("does not match its pinned root hash {} (dm-verity: {e})", spec.root_hash))))?;
    std::fs::create_dir_all(target).map_err(|e| undo(bad(format!("creating {}: {e}", target.display()))))?;
    mount(Some(&dev), target, Some("erofs"), MsFlags::MS_RDONLY | MsFlags::MS_NODEV, None::<&str>).map_err(
        |errno| {
            undo(StorageError::Mount {
                fstype: "erofs".into(),
                source_name: spec.digest.clone(),
                target: target.into(),
                errno,
            })
        },
    )?;
    crate::log!("layer {} verified and mounted at {}", spec.digest, target.display());
    Ok(())
}

/// Removes the layer's dm-verity device after its mount point was unmounted.
pub fn close_layer(target: &Path) {
    let name = dm_name(target);
    if let Ok(control) = contrast_init::dm::Control::open() {
        // Lazy unmounts may still hold the device a moment.
        for _ in 0..50 {
            match control.remove(&name) {
                Ok(()) => return,
                Err(contrast_init::dm::Error::Ioctl { source, .. }) if source.raw_os_error() == Some(libc::ENXIO) => {
                    return
                }
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        }
        crate::log!("layer device {name} still busy; left in place");
    }
}

/// `/dev/<sdX>` of the SCSI disk at target:lun, waiting for the hot-plugged disk to appear.
fn wait_for_disk(target: u32, lun: u32) -> Option<PathBuf> {
    let deadline = Instant::now() + DEVICE_WAIT;
    loop {
        // A hot-plugged disk shows in sysfs before the kernel has read its capacity and made
        // it openable (opening it then fails with ENXIO): wait for both.
        if let Some(dev) = find_disk(Path::new("/sys/bus/scsi/devices"), Path::new("/dev"), target, lun) {
            if disk_ready(&dev) {
                return Some(dev);
            }
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether the disk has a size and opens.
fn disk_ready(dev: &Path) -> bool {
    let Some(name) = dev.file_name().and_then(|n| n.to_str()) else { return false };
    let size = std::fs::read_to_string(format!("/sys/block/{name}/size"));
    size.ok().and_then(|s| s.trim().parse::<u64>().ok()).is_some_and(|s| s > 0) && std::fs::File::open(dev).is_ok()
}

/// The disk at `<host>:0:<target>:<lun>` in `devices` (sysfs), when its node is in `dev`.
fn find_disk(devices: &Path, dev: &Path, target: u32, lun: u32) -> Option<PathBuf> {
    let suffix = format!(":0:{target}:{lun}");
    std::fs::read_dir(devices).ok()?.flatten().find_map(|e| {
        let name = e.file_name().into_string().ok()?;
        if !name.ends_with(&suffix) || name.matches(':').count() != 3 {
            return None;
        }
        let block = std::fs::read_dir(e.path().join("block")).ok()?.flatten().next()?;
        Some(dev.join(block.file_name())).filter(|d| d.exists())
    })
}

fn dev_numbers(dev: &Path) -> std::io::Result<(u32, u32)> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(dev)?.rdev();
    Ok((nix::sys::stat::major(rdev) as u32, nix::sys::stat::minor(rdev) as u32))
}

/// Reads `len` bytes of `dev`: dm-verity checks every block on the way.
fn read_all(dev: &Path, len: u64) -> std::io::Result<()> {
    use std::io::Read;
    let mut f = std::fs::File::open(dev)?;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut left = len;
    while left > 0 {
        let n = f.read(&mut buf[..READ_CHUNK.min(left as usize)])?;
        if n == 0 {
            return Err(std::io::Error::other(format!("device ends {left} bytes early")));
        }
        left -= n as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storage(source: &str, options: &[&str]) -> Storage {
        let mut s = Storage::new();
        s.driver = LAYER_DRIVER.into();
        s.source = source.into();
        s.options = options.iter().map(|o| o.to_string()).collect();
        s
    }

    #[test]
    fn layer_options_are_parsed_strictly() {
        let d = format!("digest=sha256:{}", "ab".repeat(32));
        let r = format!("root_hash={}", "cd".repeat(32));
        let ok = storage("0:3", &[&d, &r, "salt=0011", "data_blocks=12"]);
        let spec = LayerSpec::parse(&ok).expect("valid");
        assert_eq!((spec.target, spec.lun, spec.data_blocks), (0, 3, 12));
        assert!(LayerSpec::parse(&storage("3", &[&d, &r, "salt=", "data_blocks=1"])).is_err());
        assert!(LayerSpec::parse(&storage("0:3", &["digest=md5:x", &r, "salt=", "data_blocks=1"])).is_err());
        assert!(LayerSpec::parse(&storage("0:3", &[&d, "root_hash=zz", "salt=", "data_blocks=1"])).is_err());
        assert!(LayerSpec::parse(&storage("0:3", &[&d, &r, "data_blocks=1"])).is_err(), "salt missing");
        // A second root hash in front of the pinned one (the policy sees both in the set).
        let other = format!("root_hash={}", "ee".repeat(32));
        let twice = LayerSpec::parse(&storage("0:3", &[&d, &other, &r, "salt=00", "data_blocks=1"]));
        assert!(twice.is_err_and(|e| e.contains("more than once")));
        let extra = LayerSpec::parse(&storage("0:3", &[&d, &r, "salt=00", "data_blocks=1", "ro"]));
        assert!(extra.is_err_and(|e| e.contains("\"ro\" is not one of")));
    }

    #[test]
    fn scsi_disks_are_found_by_target_and_lun() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (sys, dev) = (dir.path().join("sys"), dir.path().join("dev"));
        std::fs::create_dir_all(sys.join("0:0:2:0/block/sdb")).expect("mkdir");
        std::fs::create_dir_all(sys.join("0:0:12:0/block/sdc")).expect("mkdir");
        std::fs::create_dir_all(sys.join("host0")).expect("mkdir");
        std::fs::create_dir_all(&dev).expect("mkdir");
        assert_eq!(find_disk(&sys, &dev, 2, 0), None, "no node yet");
        std::fs::write(dev.join("sdb"), "").expect("node");
        assert_eq!(find_disk(&sys, &dev, 2, 0), Some(dev.join("sdb")));
        assert_eq!(find_disk(&sys, &dev, 1, 0), None);
        assert_ne!(dm_name(Path::new("/run/a")), dm_name(Path::new("/run/b")));
    }
}
