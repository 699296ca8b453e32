//! Container root filesystems on the confidential path: the host is an untrusted transport.
//!
//! The node already pulled the image; its layer blobs are in containerd's content store. Each
//! blob becomes the EROFS + dm-verity image `contrast-erofs` builds — a function of the blob's
//! bytes alone, so the policy generator pins the same root hash from the registry's or
//! archive's copy — cached per layer digest, and is hot-plugged read-only over virtio-scsi.
//! The guest opens every layer through dm-verity with the root hash the storage names, and
//! the policy allows the storages only when they are the image's pinned layers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use contrast_agent_protocol::agent;
use contrast_erofs::LayerImage;
use contrast_initdata::hex;

use crate::error::ShimError;

/// CRI annotation naming the image a container was created from.
pub const IMAGE_NAME_ANNOTATION: &str = "io.kubernetes.cri.image-name";
/// The guest's own pause: the sandbox container of a confidential pod runs no image.
pub const GUEST_PAUSE_ROOT: &str = "/run/contrast/pause";
pub const GUEST_PAUSE_ARGS: &[&str] = &["/pause"];
/// Largest layer blob read from containerd.
const MAX_LAYER: usize = 8 << 30;
/// virtio-scsi targets of a pod (target 0 is left unused).
const MAX_TARGET: u32 = 255;

/// The layer disks of each container of a pod, and the SCSI targets free for new ones.
#[derive(Default)]
pub struct LayerDisks {
    inner: Mutex<Targets>,
}

#[derive(Default)]
struct Targets {
    /// Targets up to this one have been handed out at least once.
    highest: u32,
    /// Targets whose disk was unplugged, oldest first.
    freed: std::collections::VecDeque<u32>,
    disks: HashMap<String, Vec<u32>>,
}

impl LayerDisks {
    /// A target no disk is on. Fresh ones first: a target freed a moment ago may still be
    /// known to the guest, whose removal of the old disk runs on after the unplug. Freed ones
    /// (oldest first) once all 255 have been used, so restarts over a pod's life never run out.
    fn next_target(&self) -> Result<u32, ShimError> {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if g.highest < MAX_TARGET {
            g.highest += 1;
            return Ok(g.highest);
        }
        g.freed.pop_front().ok_or_else(|| {
            ShimError::FailedPrecondition(format!(
                "this pod has {MAX_TARGET} layer disks attached, the most it can have; remove containers or recreate the pod"
            ))
        })
    }

    fn record(&self, container: &str, target: u32) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.disks.entry(container.to_owned()).or_default().push(target);
    }

    /// One of `container`'s disks, still recorded.
    fn first(&self, container: &str) -> Option<u32> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.disks.get(container).and_then(|t| t.first().copied())
    }

    /// `target` no longer belongs to `container`; `unplugged`: its disk is gone, so the
    /// target can take another (else it is never given out again).
    fn release(&self, container: &str, target: u32, unplugged: bool) {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(targets) = g.disks.get_mut(container) {
            targets.retain(|t| *t != target);
            if targets.is_empty() {
                g.disks.remove(container);
            }
        }
        if unplugged {
            g.freed.push_back(target);
        }
    }
}

fn disk_name(target: u32) -> String {
    format!("layer{target}")
}

/// Where a layer's image is cached, and its verity parameters.
struct Cached {
    path: PathBuf,
    root_hash: String,
    salt: String,
    data_blocks: u64,
}

/// The cached image of layer `digest`, built from the blob containerd holds when missing.
async fn cached_layer(
    client: &mut contrast_containerd_client::Client,
    cache: &Path,
    digest: &str,
) -> Result<Cached, ShimError> {
    let name = digest.strip_prefix("sha256:").filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
    let name = name.ok_or_else(|| ShimError::FailedPrecondition(format!("layer {digest}: not a sha256 digest")))?;
    let (img, meta) = (cache.join(format!("{name}.img")), cache.join(format!("{name}.json")));
    if let Ok(text) = std::fs::read_to_string(&meta) {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if let (Some(r), Some(s), Some(d)) = (v["root_hash"].as_str(), v["salt"].as_str(), v["data_blocks"].as_u64()) {
            if img.is_file() {
                return Ok(Cached { path: img, root_hash: r.into(), salt: s.into(), data_blocks: d });
            }
        }
    }
    let blob = client
        .read_blob(digest, MAX_LAYER)
        .await
        .map_err(|e| ShimError::FailedPrecondition(format!("layer {digest}: {e}")))?;
    // Converting and writing the image (both in proportion to the layer) run off the shim's
    // single-threaded runtime, which would otherwise answer nothing meanwhile.
    let (name, cache_dir, img_path, meta_path) = (name.to_owned(), cache.to_owned(), img.clone(), meta.clone());
    let converted = tokio::task::spawn_blocking(move || {
        let image = contrast_erofs::layer_image(&blob).map_err(|e| e.to_string())?;
        Ok::<_, String>(write_cache(&cache_dir, &name, &img_path, &meta_path, &image).map(|()| image))
    })
    .await
    .map_err(|e| ShimError::Internal(format!("layer {digest}: {e}")))?;
    let image = converted
        .map_err(|e| ShimError::FailedPrecondition(format!("layer {digest} cannot be carried to the guest: {e}")))?
        .map_err(|e| ShimError::Io { what: format!("caching layer {digest} in {}", cache.display()), source: e })?;
    Ok(Cached { path: img, root_hash: hex(&image.root_hash), salt: hex(&image.salt), data_blocks: image.data_blocks })
}

/// Writes image then metadata, each through a temporary file and a rename (several shims may
/// build the same layer at once; the bytes are the same).
fn write_cache(cache: &Path, name: &str, img: &Path, meta: &Path, image: &LayerImage) -> std::io::Result<()> {
    std::fs::create_dir_all(cache)?;
    remove_abandoned_temporaries(cache);
    // One name per write, not per process: two creates of one shim can convert the same
    // layer at once (off the runtime thread), and must not write into each other's file.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = cache.join(format!(".{name}-{n}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, &image.bytes)?;
    std::fs::rename(&tmp, img)?;
    let m = serde_json::json!({
        "root_hash": hex(&image.root_hash), "salt": hex(&image.salt), "data_blocks": image.data_blocks,
    });
    std::fs::write(&tmp, m.to_string())?;
    std::fs::rename(&tmp, meta)
}

/// Removes the temporary files of shims that died while writing (`.<name>.<pid>.tmp` of a pid
/// no process has, untouched for [`ABANDONED_AFTER`] — a shim in another pid namespace sharing
/// the cache may be writing one), which nothing else would ever remove; a live shim's stay.
const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(600);

fn remove_abandoned_temporaries(cache: &Path) {
    let Ok(entries) = std::fs::read_dir(cache) else { return };
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(pid) = file
            .to_str()
            .filter(|f| f.starts_with('.'))
            .and_then(|f| f.strip_suffix(".tmp"))
            .and_then(|f| f.rsplit_once('.'))
            .and_then(|(_, pid)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        let idle = entry.metadata().and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
        if !Path::new(&format!("/proc/{pid}")).exists() && idle.is_some_and(|i| i >= ABANDONED_AFTER) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// The storages (layers, then the overlay) and guest root path of container `id` from
/// `image`, with its layer disks hot-plugged into the pod's VM.
pub async fn container_rootfs(
    pod: &crate::pod::Pod,
    containerd: &Path,
    namespace: &str,
    cache: &Path,
    id: &str,
    image: &str,
) -> Result<(Vec<agent::Storage>, String), ShimError> {
    let unavailable = |e: contrast_containerd_client::Error| {
        ShimError::FailedPrecondition(format!("image {image} for container {id}: {e}"))
    };
    let mut client = contrast_containerd_client::Client::connect(containerd, namespace).await.map_err(unavailable)?;
    let layers = client.image_layers(image).await.map_err(unavailable)?;
    let mut storages = Vec::new();
    let mut lower = Vec::new();
    for (i, layer) in layers.iter().enumerate() {
        let cached = cached_layer(&mut client, cache, &layer.digest).await?;
        let target = pod.layers.next_target()?;
        // A failed attach may leave half a disk on the target (its block node): not reused.
        pod.vm
            .qmp()
            .attach_scsi_disk(&disk_name(target), &cached.path, target)
            .await
            .map_err(|e| ShimError::Vm(Box::new(contrast_vmm::Error::Qmp(e))))?;
        pod.layers.record(id, target);
        let mut s = agent::Storage::new();
        s.driver = "contrast.layer".into();
        s.source = format!("{target}:0");
        s.fstype = "erofs".into();
        s.options = vec![
            format!("digest={}", layer.digest),
            format!("root_hash={}", cached.root_hash),
            format!("salt={}", cached.salt),
            format!("data_blocks={}", cached.data_blocks),
        ];
        s.mount_point = format!("/run/contrast/layers/{id}/{i}");
        lower.insert(0, s.mount_point.clone());
        storages.push(s);
    }
    let rootfs = format!("/run/contrast/rootfs/{id}");
    let mut overlay = agent::Storage::new();
    overlay.driver = "overlayfs".into();
    overlay.source = "overlay".into();
    overlay.fstype = "overlay".into();
    overlay.options = vec![
        format!("lowerdir={}", lower.join(":")),
        format!("upperdir=/run/contrast/upper/{id}/upper"),
        format!("workdir=/run/contrast/upper/{id}/work"),
    ];
    overlay.mount_point = rootfs.clone();
    storages.push(overlay);
    Ok((storages, rootfs))
}

/// After the guest refused a layer (its dm-verity check failed, so the node's cached image is
/// not what the blob gives), drops that layer's cache entry: the next container rebuilds it
/// from containerd's blob instead of failing forever.
pub fn forget_refused_layer(cache: &Path, guest_error: &str) {
    let Some(rest) = guest_error.split("layer sha256:").nth(1) else { return };
    let hex: String = rest.chars().take_while(char::is_ascii_hexdigit).collect();
    if hex.len() != 64 || !guest_error.contains("does not match its pinned root hash") {
        return;
    }
    for ext in ["json", "img"] {
        let _ = std::fs::remove_file(cache.join(format!("{hex}.{ext}")));
    }
    tracing::warn!(layer = %hex, "the guest refused this layer's cached image; it is rebuilt on next use");
}

/// Unplugs the layer disks of container `id` (after the guest released them). Each stays
/// recorded until its own unplug is over, so a delete cut short by its caller's deadline
/// leaves the rest to the next delete or the pod's end, not to nobody.
pub async fn detach(pod: &crate::pod::Pod, id: &str) {
    while let Some(target) = pod.layers.first(id) {
        let disk = disk_name(target);
        match pod.vm.qmp().detach_scsi_disk(&disk).await {
            Ok(()) => pod.layers.release(id, target, true),
            // Possibly still plugged: its target is not given out again.
            Err(e) => {
                tracing::warn!(disk, error = %e, "cannot unplug a layer disk");
                pod.layers.release(id, target, false);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporaries_of_dead_shims_go_and_live_ones_stay() {
        let cache = tempfile::tempdir().expect("tempdir");
        let dead = std::process::Command::new("true").spawn().expect("true");
        let dead_pid = dead.id();
        let _ = dead.wait_with_output();
        let files = [
            format!(".abc.{dead_pid}.tmp"),
            format!(".abc.{}.tmp", std::process::id()),
            "abc.img".to_owned(),
            format!("abc.{dead_pid}.tmp"),
        ];
        let old = std::time::SystemTime::now() - ABANDONED_AFTER;
        for f in &files {
            let file = std::fs::File::create(cache.path().join(f)).expect("create");
            file.set_modified(old).expect("mtime");
        }
        let fresh = format!(".def.{dead_pid}.tmp");
        std::fs::write(cache.path().join(&fresh), "x").expect("write");
        remove_abandoned_temporaries(cache.path());
        let left: Vec<bool> = files.iter().map(|f| cache.path().join(f).exists()).collect();
        assert_eq!(left, [false, true, true, true]);
        assert!(cache.path().join(&fresh).exists(), "one written just now stays (another pid namespace?)");
    }

    /// A pod whose containers restart keeps getting targets: fresh ones first, then the
    /// unplugged ones, oldest first; none while all are attached.
    #[test]
    fn scsi_targets_are_reused_once_all_were_used() {
        let disks = LayerDisks::default();
        for want in 1..=MAX_TARGET {
            assert_eq!(disks.next_target().expect("a fresh target"), want);
            disks.record(&format!("c{}", want % 3), want);
        }
        assert!(disks.next_target().is_err(), "all attached");
        let mut freed = Vec::new();
        while let Some(t) = disks.first("c1") {
            disks.release("c1", t, true);
            freed.push(t);
        }
        assert_eq!(freed.len(), 85);
        assert_eq!(disks.next_target().expect("a freed target"), freed[0]);
        assert_eq!(disks.next_target().expect("a freed target"), freed[1]);
        // A disk that may still be plugged leaves its container but is not given out again.
        let t = disks.first("c2").expect("c2 has disks");
        disks.release("c2", t, false);
        assert_ne!(disks.first("c2"), Some(t));
        assert!(disks.inner.lock().expect("lock").freed.iter().all(|f| *f != t));
    }

    #[test]
    fn a_refused_layer_leaves_the_cache() {
        let dir = tempfile::tempdir().expect("tempdir");
        let hex = "ab".repeat(32);
        for ext in ["img", "json"] {
            std::fs::write(dir.path().join(format!("{hex}.{ext}")), "x").expect("write");
        }
        forget_refused_layer(dir.path(), &format!("storage `layer sha256:{hex}`: something else"));
        assert!(dir.path().join(format!("{hex}.img")).exists(), "only a verity refusal drops it");
        forget_refused_layer(
            dir.path(),
            &format!("INVALID_ARGUMENT: storage `layer sha256:{hex}`: does not match its pinned root hash cd"),
        );
        assert!(!dir.path().join(format!("{hex}.img")).exists());
        assert!(!dir.path().join(format!("{hex}.json")).exists());
    }
}
