//! On the confidential path (no host share) the files containerd bind-mounts into a CRI
//! container — `/etc/hosts`, `/etc/hostname`, `/etc/resolv.conf`, the pod's DNS and names —
//! are copied into the guest with kata's `CopyFile` and the container bind-mounts the copy,
//! as kata does without a shared file system. Each copy is judged by the guest's policy.
//! A Kubernetes `emptyDir` volume becomes a directory of the pod's own in the guest
//! ([`GUEST_VOLUME_DIR`], shared by the pod's containers that mount it; the agent makes
//! it). The files of configMap, secret, projected and downwardAPI volumes (kubelet writes
//! them, the pod only reads them) are copied to a directory per container and volume, and
//! kept up to date while the container lives ([`watch`]): kubelet changes them in place.
//! A `subPath` of such a volume (a file or a directory of it, which kubelet binds for the
//! container) is copied once, to a place of its own per container and mount: Kubernetes does
//! not update subPath mounts either.
//! Any other host bind mount cannot reach such a guest and is left out.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use contrast_agent_protocol::{agent, AgentClient, AgentError};
use oci_spec::runtime::Mount;

use crate::error::ShimError;

/// The guest directory copied files go to (kata's).
pub const GUEST_DIR: &str = "/run/kata-containers/shared/containers";
/// Mount destinations whose source is copied: what containerd's CRI writes per pod.
const COPIED: [&str; 3] = ["/etc/hosts", "/etc/hostname", "/etc/resolv.conf"];
/// The guest directory of the pod's `emptyDir` volumes, one directory per volume name.
pub const GUEST_VOLUME_DIR: &str = "/run/contrast/volumes";
/// Larger files are not configuration files; they are refused.
const MAX_SIZE: u64 = 64 * 1024;
/// kubelet's volume plugins whose files it writes for the pod to read ("atomic writer"
/// volumes): copied in, kept up to date.
const COPIED_VOLUME_PLUGINS: [&str; 4] =
    ["kubernetes.io~configmap", "kubernetes.io~secret", "kubernetes.io~projected", "kubernetes.io~downward-api"];
/// Largest file of such a volume (the agent's limit for a copied file).
const MAX_VOLUME_FILE: u64 = 1 << 20;
/// Largest such volume, all files together, and most files in it (Kubernetes keeps a
/// configMap or secret below 1 MiB; a projected volume combines a few).
const MAX_VOLUME_SIZE: u64 = 8 << 20;
const MAX_VOLUME_FILES: usize = 1024;
/// Deepest directory inside such a volume (a link back up would recurse forever).
const MAX_VOLUME_DEPTH: usize = 16;
/// Bytes per `CopyFile` request.
const CHUNK: usize = 256 * 1024;
/// Walks of a volume that kubelet changed under one (it removes the old files after an
/// update) before a sync gives up until the next interval.
const SYNC_ATTEMPTS: usize = 3;
/// How long a container's delete waits for its volume watcher's copy in flight.
const WATCH_STOP_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// A configMap, secret, projected or downwardAPI volume copied for one container.
#[derive(Debug)]
pub struct CopiedVolume {
    host: PathBuf,
    guest: String,
    /// What was copied: each file's path in the volume, and its host file as it was then.
    sent: BTreeMap<PathBuf, Stamp>,
    /// Whether the guest was told what the directory holds (which also makes it).
    listed: bool,
}

impl CopiedVolume {
    fn new(host: PathBuf, guest: String) -> Self {
        CopiedVolume { host, guest, sent: BTreeMap::new(), listed: false }
    }
}

/// A host file's identity and version: kubelet writes an update as new files.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    mode: u32,
}

impl Stamp {
    fn of(m: &std::fs::Metadata) -> Self {
        Stamp { dev: m.dev(), ino: m.ino(), size: m.size(), mtime: (m.mtime(), m.mtime_nsec()), mode: m.mode() }
    }
}

/// The container's mounts for the guest: non-bind mounts as they are, the copied files and
/// volumes pointing at their guest copies (sent now), other bind mounts dropped (logged);
/// and the copied volumes, to keep up to date ([`watch`]).
pub async fn guest_mounts(
    agent: &AgentClient,
    container: &str,
    mounts: &[Mount],
) -> Result<(Vec<Mount>, Vec<CopiedVolume>), ShimError> {
    let mut out = Vec::new();
    let mut volumes = Vec::new();
    for m in mounts {
        if !crate::rootfs::is_bind(m) {
            out.push(m.clone());
            continue;
        }
        if let Some(volume) = m.source().as_deref().and_then(|s| kubelet_volume(s, &["kubernetes.io~empty-dir"])) {
            let mut guest = m.clone();
            guest.set_source(Some(format!("{GUEST_VOLUME_DIR}/{volume}").into()));
            out.push(guest);
            continue;
        }
        if let Some(name) = m.source().as_deref().and_then(|s| kubelet_volume(s, &COPIED_VOLUME_PLUGINS)) {
            let host = m.source().clone().expect("a source");
            let mut volume = CopiedVolume::new(host, format!("{GUEST_DIR}/{container}.volumes/{name}"));
            volume
                .sync(agent, None)
                .await
                .map_err(|e| e.in_mount(&format!("mount {}: volume {name}", m.destination().display())))?;
            let mut guest = m.clone();
            guest.set_source(Some(volume.guest.clone().into()));
            out.push(guest);
            volumes.push(volume);
            continue;
        }
        if let Some(index) = m.source().as_deref().and_then(kubelet_subpath) {
            let host = m.source().clone().expect("a source");
            let guest = format!("{GUEST_DIR}/{container}.subpaths/{index}");
            copy_subpath(agent, &host, &guest, m.destination()).await?;
            let mut copy = m.clone();
            copy.set_source(Some(guest.into()));
            out.push(copy);
            continue;
        }
        let destination = m.destination().to_string_lossy().into_owned();
        let Some(name) = COPIED.iter().find(|d| **d == destination).and_then(|d| d.rsplit('/').next()) else {
            tracing::info!(container, %destination, "host bind mount left out on the confidential path");
            continue;
        };
        let Some(source) = m.source().as_ref() else { continue };
        let meta = std::fs::metadata(source).map_err(|e| {
            ShimError::InvalidArgument(format!("mount {destination}: source {}: {e}", source.display()))
        })?;
        if !meta.is_file() || meta.len() > MAX_SIZE {
            return Err(ShimError::InvalidArgument(format!(
                "mount {destination}: source {} is not a regular file of at most {MAX_SIZE} bytes",
                source.display()
            )));
        }
        let data = std::fs::read(source).map_err(|e| {
            ShimError::InvalidArgument(format!("mount {destination}: reading {}: {e}", source.display()))
        })?;
        let guest = format!("{GUEST_DIR}/{container}-{name}");
        send_file(agent, &guest, &data, 0o644, 0, 0).await?;
        let mut copy = m.clone();
        copy.set_source(Some(guest.into()));
        out.push(copy);
    }
    Ok((out, volumes))
}

/// Tells the guest what a copied directory holds: kata's `CopyFile` of a directory, with the
/// paths of its files (relative to it, NUL-separated) as data. The agent makes the directory
/// and removes whatever else is below it (`crates/agent/src/copy_file.rs`).
async fn send_listing(agent: &AgentClient, path: &str, files: &BTreeSet<PathBuf>) -> Result<(), AgentError> {
    let names: Vec<String> = files.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let mut req = agent::CopyFileRequest::new();
    req.path = path.to_owned();
    req.data = names.join("\0").into_bytes();
    req.file_size = req.data.len() as i64;
    req.file_mode = 0o040_000 | 0o755;
    req.dir_mode = 0o755;
    agent.copy_file(&req).await.map(|_| ())
}

/// Sends `data` to the guest as the regular file `path` with `mode` and owner, in requests
/// of at most [`CHUNK`] bytes (the agent renames it into place once whole).
async fn send_file(
    agent: &AgentClient,
    path: &str,
    data: &[u8],
    mode: u32,
    uid: u32,
    gid: u32,
) -> Result<(), contrast_agent_protocol::AgentError> {
    let mut offset = 0;
    loop {
        let end = (offset + CHUNK).min(data.len());
        let mut req = agent::CopyFileRequest::new();
        req.path = path.to_owned();
        req.file_size = data.len() as i64;
        req.file_mode = 0o100_000 | mode;
        req.dir_mode = 0o755;
        req.uid = uid as i32;
        req.gid = gid as i32;
        req.offset = offset as i64;
        req.data = data[offset..end].to_vec();
        agent.copy_file(&req).await?;
        offset = end;
        if offset == data.len() {
            return Ok(());
        }
    }
}

/// The volume name of a kubelet volume directory of one of `plugins`
/// (`<kubelet root>/pods/<pod uid>/volumes/<plugin>/<name>`).
fn kubelet_volume<'a>(source: &'a Path, plugins: &[&str]) -> Option<&'a str> {
    let name = source.file_name()?.to_str()?;
    let plugin = source.parent()?;
    // Whether the name is a volume name (a DNS label) the agent or the policy decides.
    let known = plugins.iter().any(|p| plugin.file_name() == Some(std::ffi::OsStr::new(p)));
    (known && plugin.parent()?.file_name()? == "volumes").then_some(name)
}

/// The mount index of a kubelet subPath bind of a volume of [`COPIED_VOLUME_PLUGINS`]
/// (`<kubelet root>/pods/<pod uid>/volume-subpaths/<volume>/<container>/<index>`, the pod's
/// `volumes/<plugin>/<volume>` one of those).
fn kubelet_subpath(source: &Path) -> Option<&str> {
    let index = source.file_name()?.to_str()?;
    let volume = source.parent()?.parent()?;
    let subpaths = volume.parent()?;
    let pod = subpaths.parent()?;
    if index.is_empty() || !index.bytes().all(|b| b.is_ascii_digit()) || subpaths.file_name()? != "volume-subpaths" {
        return None;
    }
    let volume = volume.file_name()?;
    COPIED_VOLUME_PLUGINS.iter().any(|p| pod.join("volumes").join(p).join(volume).is_dir()).then_some(index)
}

/// Copies a subPath of a kubelet-written volume (a file, or a directory with the files below
/// it) to `guest`, once. The guest's own refusal keeps its code (a policy denial stays
/// PermissionDenied); what is wrong on the host is InvalidArgument.
async fn copy_subpath(agent: &AgentClient, host: &Path, guest: &str, destination: &Path) -> Result<(), ShimError> {
    let bad = |why: String| {
        ShimError::InvalidArgument(format!("mount {}: subPath {}: {why}", destination.display(), host.display()))
    };
    let path = host.to_owned();
    let read = tokio::task::spawn_blocking(move || -> std::io::Result<(std::fs::Metadata, Option<Vec<u8>>)> {
        let file = std::fs::File::open(&path)?;
        let meta = file.metadata()?;
        if !meta.is_file() || meta.len() > MAX_VOLUME_FILE {
            return Ok((meta, None));
        }
        // At most one byte past the limit: a file that grew since is refused, not read whole.
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(file, MAX_VOLUME_FILE + 1), &mut data)?;
        Ok((meta, Some(data)))
    });
    let (meta, data) = read.await.map_err(|e| bad(e.to_string()))?.map_err(|e| bad(e.to_string()))?;
    if meta.is_dir() {
        // An empty one (kubelet makes it for a key the volume does not have) is mounted
        // empty, as runc would.
        let mut copy = CopiedVolume::new(host.to_owned(), guest.to_owned());
        let what = format!("mount {}: subPath {}", destination.display(), host.display());
        copy.sync(agent, None).await.map_err(|e| e.in_mount(&what))?;
        return Ok(());
    }
    match data {
        Some(data) if data.len() as u64 <= MAX_VOLUME_FILE => {
            Ok(send_file(agent, guest, &data, meta.mode() & 0o7777, meta.uid(), meta.gid()).await?)
        }
        _ if meta.is_file() => Err(bad(format!("a file of {} bytes, more than {MAX_VOLUME_FILE}", meta.len()))),
        _ => Err(bad(format!("neither a file nor a directory ({:?})", meta.file_type()))),
    }
}

/// The files of a kubelet-written volume as a container sees them: each path below the
/// volume (kubelet's own `..data` and `..<timestamp>` entries left out, its symlinks
/// followed, never out of the volume) with the host file it resolves to.
fn volume_files(root: &Path) -> Result<BTreeMap<PathBuf, (PathBuf, std::fs::Metadata)>, String> {
    fn walk(
        root: &Path,
        dir: &Path,
        rel: &Path,
        out: &mut BTreeMap<PathBuf, (PathBuf, std::fs::Metadata)>,
        total: &mut u64,
    ) -> Result<(), String> {
        if rel.components().count() > MAX_VOLUME_DEPTH {
            return Err(format!("{} is deeper than {MAX_VOLUME_DEPTH} directories", dir.display()));
        }
        let entries = std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|e| format!("reading {}: {e}", dir.display()))?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("..") {
                continue;
            }
            let path = entry.path();
            let resolved = std::fs::canonicalize(&path).map_err(|e| format!("{}: {e}", path.display()))?;
            if !resolved.starts_with(root) {
                return Err(format!("{} leads out of the volume", path.display()));
            }
            let meta = std::fs::metadata(&resolved).map_err(|e| format!("{}: {e}", resolved.display()))?;
            let rel = rel.join(&name);
            if meta.is_dir() {
                walk(root, &resolved, &rel, out, total)?;
            } else if meta.is_file() {
                if meta.len() > MAX_VOLUME_FILE {
                    return Err(format!("{} is larger than {MAX_VOLUME_FILE} bytes", path.display()));
                }
                *total += meta.len();
                out.insert(rel, (resolved, meta));
                if *total > MAX_VOLUME_SIZE || out.len() > MAX_VOLUME_FILES {
                    return Err(format!("more than {MAX_VOLUME_FILES} files or {MAX_VOLUME_SIZE} bytes"));
                }
            } else {
                return Err(format!("{} is neither a file nor a directory", path.display()));
            }
        }
        Ok(())
    }
    let root = std::fs::canonicalize(root).map_err(|e| format!("{}: {e}", root.display()))?;
    let mut out = BTreeMap::new();
    walk(&root, &root, Path::new(""), &mut out, &mut 0)?;
    Ok(out)
}

/// A file of a volume that changed since the last sync: its path in the volume, its host
/// file's version, mode and owner, and its bytes.
struct Changed {
    rel: PathBuf,
    stamp: Stamp,
    meta: std::fs::Metadata,
    data: Vec<u8>,
}

/// The files of the volume at `host` that are not as `sent` has them, read, and the paths of
/// all its files. Kubelet removes an update's old files once it has switched to the new
/// ones: a file gone between the walk and its read means walking again.
fn changed_files(host: &Path, sent: &BTreeMap<PathBuf, Stamp>) -> Result<(Vec<Changed>, BTreeSet<PathBuf>), String> {
    let mut attempt = 0;
    'walk: loop {
        attempt += 1;
        let mut changed = Vec::new();
        let files = volume_files(host)?;
        let present: BTreeSet<PathBuf> = files.keys().cloned().collect();
        for (rel, (file, meta)) in files {
            let stamp = Stamp::of(&meta);
            if sent.get(&rel) == Some(&stamp) {
                continue;
            }
            match std::fs::read(&file) {
                Ok(data) => changed.push(Changed { rel, stamp, meta, data }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && attempt < SYNC_ATTEMPTS => continue 'walk,
                Err(e) => return Err(format!("reading {}: {e}", file.display())),
            }
        }
        return Ok((changed, present));
    }
}

impl CopiedVolume {
    /// If kubelet removed a file (a key gone from a configMap), or the directory has no files
    /// that would make it in the guest, first tells the guest what the directory holds
    /// ([`send_listing`]); then copies every file that changed on the host since the last
    /// sync (all of them the first time). Stops between requests once `stop` is set.
    async fn sync(
        &mut self,
        agent: &AgentClient,
        stop: Option<&tokio::sync::watch::Receiver<bool>>,
    ) -> Result<usize, SyncError> {
        let (host, sent) = (self.host.clone(), self.sent.clone());
        let (changed, present) = tokio::task::spawn_blocking(move || changed_files(&host, &sent))
            .await
            .map_err(|e| SyncError::Host(format!("walking the volume: {e}")))?
            .map_err(SyncError::Host)?;
        let stopped = || stop.is_some_and(|s| *s.borrow());
        // First what went: a file that became a directory (or the reverse) must be gone
        // before what replaces it is copied.
        match listing_needed(&self.sent, &present, self.listed) {
            Listing::None => {}
            _ if stopped() => return Ok(0),
            need => {
                let listed = send_listing(agent, &self.guest, &present).await;
                match listed {
                    Ok(()) => self.listed = true,
                    // A policy generated before the guest took such a listing: removed
                    // files stay, as they did then; the copies go on.
                    Err(e) if need == Listing::Removed && e.code == ttrpc::Code::PERMISSION_DENIED => {
                        tracing::warn!(volume = %self.guest, error = %e.message, "the pod's policy does not allow removing files from a copied volume; they stay");
                    }
                    Err(e) => {
                        let message = format!("telling the guest what the directory holds: {}", e.message);
                        return Err(SyncError::Guest(AgentError { message, ..e }));
                    }
                }
                self.sent.retain(|rel, _| present.contains(rel));
            }
        }
        let mut copied = 0;
        for f in changed {
            if stopped() {
                break;
            }
            let path = format!("{}/{}", self.guest, f.rel.display());
            send_file(agent, &path, &f.data, f.meta.mode() & 0o7777, f.meta.uid(), f.meta.gid()).await.map_err(
                |e| {
                    SyncError::Guest(AgentError { message: format!("copying {}: {}", f.rel.display(), e.message), ..e })
                },
            )?;
            self.sent.insert(f.rel, f.stamp);
            copied += 1;
        }
        Ok(copied)
    }
}

/// Why a sync tells the guest what a copied directory holds.
#[derive(Debug, PartialEq, Eq)]
enum Listing {
    None,
    /// Files copied before are gone on the host.
    Removed,
    /// The directory has no files (and so nothing that would make it in the guest), and the
    /// guest has not been told yet.
    Empty,
}

fn listing_needed(sent: &BTreeMap<PathBuf, Stamp>, present: &BTreeSet<PathBuf>, listed: bool) -> Listing {
    if sent.keys().any(|rel| !present.contains(rel)) {
        Listing::Removed
    } else if present.is_empty() && sent.is_empty() && !listed {
        Listing::Empty
    } else {
        Listing::None
    }
}

/// Why a volume's copy failed: something on the host (its files), or the guest's answer,
/// whose code (a policy denial's PermissionDenied) the create keeps.
#[derive(Debug, thiserror::Error)]
enum SyncError {
    #[error("{0}")]
    Host(String),
    #[error("{0}")]
    Guest(AgentError),
}

impl SyncError {
    /// The error a create answers, `what` (the mount) before the cause.
    fn in_mount(self, what: &str) -> ShimError {
        match self {
            SyncError::Host(why) => ShimError::InvalidArgument(format!("{what}: {why}")),
            SyncError::Guest(e) => ShimError::Agent(AgentError { message: format!("{what}: {}", e.message), ..e }),
        }
    }
}

/// The task that keeps a container's copied volumes up to date (ended when dropped).
pub struct VolumeWatch {
    stop: tokio::sync::watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl VolumeWatch {
    /// Ends the task, after the copy in flight (the container's removal in the guest must
    /// not race a copy that would make its directory again), cancelled after
    /// [`WATCH_STOP_TIMEOUT`].
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        let Some(task) = self.task.take() else { return };
        let abort = task.abort_handle();
        if tokio::time::timeout(WATCH_STOP_TIMEOUT, task).await.is_err() {
            abort.abort();
        }
    }
}

impl Drop for VolumeWatch {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Keeps a container's copied volumes up to date every `interval` until stopped (the
/// container's delete). A failed sync is logged once and tried again at the next interval:
/// a service account token that stopped being renewed would cut the pod off its API
/// server an hour later.
pub fn watch(
    agent: AgentClient,
    container: String,
    mut volumes: Vec<CopiedVolume>,
    interval: std::time::Duration,
) -> VolumeWatch {
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(async move {
        let mut failing = vec![false; volumes.len()];
        loop {
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = stopped.changed() => return,
            }
            for (v, failing) in volumes.iter_mut().zip(&mut failing) {
                let volume = v.host.display().to_string();
                match v.sync(&agent, Some(&stopped)).await {
                    Ok(n) => {
                        if n > 0 || *failing {
                            tracing::info!(%container, %volume, files = n, "volume up to date in the guest");
                        }
                        *failing = false;
                    }
                    Err(e) if !*failing => {
                        tracing::warn!(%container, %volume, error = %e, "volume not updated in the guest; trying again");
                        *failing = true;
                    }
                    Err(_) => {}
                }
                if *stopped.borrow() {
                    return;
                }
            }
        }
    });
    VolumeWatch { stop, task: Some(task) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_volume_copy_the_guest_refuses_keeps_its_code() {
        let denied = AgentError {
            method: "copy_file",
            code: ttrpc::Code::PERMISSION_DENIED,
            message: "copying a: CopyFileRequest is blocked by policy".into(),
        };
        match SyncError::Guest(denied).in_mount("mount /etc/app: volume settings") {
            ShimError::Agent(e) => {
                assert_eq!(e.code, ttrpc::Code::PERMISSION_DENIED);
                assert_eq!(
                    e.message,
                    "mount /etc/app: volume settings: copying a: CopyFileRequest is blocked by policy"
                );
            }
            other => panic!("{other:?}"),
        }
        let host = SyncError::Host("walking the volume: permission denied".into()).in_mount("mount /etc/app");
        assert!(
            matches!(&host, ShimError::InvalidArgument(m) if m == "mount /etc/app: walking the volume: permission denied")
        );
    }

    #[test]
    fn kubelet_empty_dirs_by_their_path() {
        fn volume(p: &str) -> Option<&str> {
            kubelet_volume(std::path::Path::new(p), &["kubernetes.io~empty-dir"])
        }
        assert_eq!(volume("/var/lib/kubelet/pods/0c1d/volumes/kubernetes.io~empty-dir/cache"), Some("cache"));
        assert_eq!(volume("/var/lib/kubelet/pods/0c1d/volumes/kubernetes.io~secret/token"), None);
        assert_eq!(volume("/var/lib/kubelet/pods/0c1d/volumes/kubernetes.io~empty-dir"), None);
        assert_eq!(volume("/tmp/kubernetes.io~empty-dir/cache"), None);
        assert_eq!(volume("/var/lib/kubelet/pods/0c1d/volumes/kubernetes.io~empty-dir/../x"), None);
        fn copied(p: &str) -> Option<&str> {
            kubelet_volume(std::path::Path::new(p), &COPIED_VOLUME_PLUGINS)
        }
        assert_eq!(
            copied("/var/lib/kubelet/pods/0c1d/volumes/kubernetes.io~projected/kube-api-access-x7k2p"),
            Some("kube-api-access-x7k2p")
        );
        assert_eq!(copied("/var/lib/kubelet/pods/0c1d/volumes/kubernetes.io~configmap/config"), Some("config"));
        assert_eq!(copied("/var/lib/kubelet/pods/0c1d/volumes/kubernetes.io~empty-dir/cache"), None);
        assert_eq!(copied("/var/lib/kubelet/pods/0c1d/volume-subpaths/config/app/0"), None);
    }

    #[test]
    fn kubelet_subpaths_of_copied_volumes_by_their_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pod = dir.path().join("pods/0c1d");
        std::fs::create_dir_all(pod.join("volumes/kubernetes.io~configmap/config")).expect("configMap");
        std::fs::create_dir_all(pod.join("volumes/kubernetes.io~empty-dir/cache")).expect("emptyDir");
        let subpath = |rel: &str| {
            let p = pod.join(rel);
            kubelet_subpath(&p).map(str::to_owned)
        };
        assert_eq!(subpath("volume-subpaths/config/app/2").as_deref(), Some("2"));
        assert_eq!(subpath("volume-subpaths/cache/app/0"), None, "an emptyDir's: the guest's own");
        assert_eq!(subpath("volume-subpaths/other/app/0"), None, "no such volume");
        assert_eq!(subpath("volume-subpaths/config/app/x"), None, "no index");
        assert_eq!(subpath("volumes/kubernetes.io~configmap/config"), None);
    }

    #[test]
    fn a_listing_is_sent_for_removed_files_and_once_for_an_empty_directory() {
        let stamp = Stamp { dev: 1, ino: 2, size: 3, mtime: (4, 5), mode: 0o644 };
        let sent = |names: &[&str]| names.iter().map(|n| (PathBuf::from(n), stamp.clone())).collect::<BTreeMap<_, _>>();
        let present = |names: &[&str]| names.iter().map(PathBuf::from).collect::<BTreeSet<_>>();
        assert_eq!(listing_needed(&sent(&["a", "b"]), &present(&["a", "b", "c"]), false), Listing::None, "an addition");
        assert_eq!(listing_needed(&sent(&["a", "b"]), &present(&["a"]), true), Listing::Removed);
        // A file that became a directory: the file's path is gone.
        assert_eq!(listing_needed(&sent(&["a"]), &present(&["a/b"]), false), Listing::Removed);
        assert_eq!(listing_needed(&sent(&[]), &present(&[]), false), Listing::Empty);
        assert_eq!(listing_needed(&sent(&[]), &present(&[]), true), Listing::None, "told once");
        assert_eq!(listing_needed(&sent(&[]), &present(&["a"]), false), Listing::None, "its file makes it");
    }

    #[test]
    fn a_volume_is_the_files_its_keys_lead_to() {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("volumes/kubernetes.io~configmap/config");
        contrast_tests::images::kubelet_volume(
            &root,
            "..2026_12_05_12_00_00.1",
            &[("app.yaml", "a: 1\n"), ("conf/extra.ini", "x=1\n")],
        );
        let files = volume_files(&root).expect("files");
        let rel: Vec<_> = files.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(rel, ["app.yaml", "conf/extra.ini"], "kubelet's own entries left out, links followed");
        let first = Stamp::of(&files[Path::new("app.yaml")].1);

        contrast_tests::images::kubelet_volume(
            &root,
            "..2026_12_05_12_01_00.2",
            &[("app.yaml", "a: 2\n"), ("conf/extra.ini", "x=1\n")],
        );
        let files = volume_files(&root).expect("files");
        let (host, meta) = &files[Path::new("app.yaml")];
        assert_ne!(Stamp::of(meta), first, "an update is seen as a changed file");
        assert_eq!(std::fs::read_to_string(host).expect("read"), "a: 2\n");

        std::os::unix::fs::symlink("/etc", root.join("escape")).expect("link");
        let err = volume_files(&root).expect_err("a link out of the volume");
        assert!(err.contains("leads out of the volume"), "{err}");
    }
}
