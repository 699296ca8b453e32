//! Bootstrap: `start` (group containers of a pod onto one daemon), `delete` (clean up after a
//! daemon that is gone), and the daemon's lifetime.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::{spawn, ExitSignal, Shim};
use containerd_shim::{Config, Error, Flags, StartOpts};
use containerd_shim_protos::api::DeleteResponse;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;

use crate::pod;
use crate::service::TaskService;

/// Exit status reported for a task whose shim died (SIGKILL, as containerd's runc shim).
const DEAD_SHIM_STATUS: u32 = 128 + 9;
/// How long `<shim> delete` waits for a dead daemon's socket to stop answering once the
/// pod's processes are killed (a killed process holds its descriptors until it has exited);
/// containerd gives the whole cleanup 5 s.
const SOCKET_RELEASE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

pub struct ContrastShim {
    namespace: String,
    /// containerd's gRPC address.
    address: String,
    id: String,
    bundle: String,
    exit: Arc<ExitSignal>,
    /// The daemon's own socket (`unix:///run/containerd/s/<hash>`; empty outside the daemon).
    socket: String,
}

#[async_trait]
impl Shim for ContrastShim {
    type T = TaskService;

    async fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        ContrastShim {
            namespace: args.namespace.clone(),
            address: args.address.clone(),
            id: args.id.clone(),
            bundle: args.bundle.clone(),
            exit: Arc::new(ExitSignal::default()),
            socket: args.socket.clone(),
        }
    }

    /// Containers of one pod share the daemon of its sandbox: the socket is derived from the
    /// sandbox id (CRI annotation), so later containers get the running daemon's address.
    async fn start_shim(&mut self, opts: StartOpts) -> Result<String, Error> {
        // Before the crate's `spawn`, which would misparse a containerd 2.3 BootstrapParams.
        crate::bootstrap::StartInput::read_stdin()
            .map_err(|e| Error::InvalidArgument(format!("reading start's stdin: {e}")))?;
        let grouping = oci_spec::runtime::Spec::load("config.json")
            .map(|s| crate::spec::sandbox_id(&s, &opts.id))
            .unwrap_or_else(|_| opts.id.clone());
        let address = spawn(opts, &grouping, Vec::new()).await?;
        // containerd 1.6/1.7 reconnect after a restart through `<bundle>/address`.
        std::fs::write("address", &address)
            .map_err(|e| Error::Other(format!("writing the address file into the bundle: {e}")))?;
        Ok(address)
    }

    /// The daemon is gone: kill what it started for this pod and remove its traces.
    async fn delete_shim(&mut self) -> Result<DeleteResponse, Error> {
        let bundle = if self.bundle.is_empty() { std::path::PathBuf::from(".") } else { self.bundle.clone().into() };
        // The pod's state dir as recorded at create (`<root>/<namespace>/<sandbox id>`: the
        // last component says whether this task is the sandbox, config.json or not); from
        // the runtime config for a bundle of an older shim.
        let target = match pod::recorded_state_dir(&bundle) {
            Some(state) => {
                let sandbox = state.file_name().is_some_and(|n| n == self.id.as_str());
                Ok((state, sandbox))
            }
            None => {
                let sandbox = oci_spec::runtime::Spec::load(bundle.join("config.json"))
                    .map(|s| crate::spec::sandbox_id(&s, &self.id))
                    .unwrap_or_else(|_| self.id.clone());
                pod::recorded_config(&bundle)
                    .map(|(_, config)| (pod::state_dir(&config, &self.namespace, &sandbox), sandbox == self.id))
            }
        };
        match target {
            Ok((state, true)) => {
                // The socket first: whoever sees the state dir gone sees the socket gone.
                let kept = remove_dead_socket(&bundle);
                pod::cleanup_dead_pod(&state);
                // One that still answered may have been held by a process of the pod's,
                // which the cleanup just ended (and which may take a moment to be gone).
                if let Some(path) = kept {
                    let deadline = std::time::Instant::now() + SOCKET_RELEASE_WAIT;
                    while std::os::unix::net::UnixStream::connect(&path).is_ok() && std::time::Instant::now() < deadline
                    {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    if remove_unserved_socket(&path) {
                        tracing::warn!(socket = %path.display(), "delete: the shim socket answered until the pod's processes were gone; removed");
                    } else {
                        tracing::warn!(socket = %path.display(), holders = %socket_holders(&path), "delete: the shim socket is still served after the pod's cleanup; kept");
                    }
                }
            }
            Ok((state, false)) => crate::rootfs::unmount_all(&state.join("shared").join(&self.id)),
            Err(e) => {
                tracing::warn!(error = %e, "delete: no state dir recorded and no runtime config; nothing to clean")
            }
        }
        Ok(DeleteResponse {
            exit_status: DEAD_SHIM_STATUS,
            exited_at: Some(Timestamp::now()).into(),
            ..Default::default()
        })
    }

    /// Until the last task is gone; then the daemon removes its own socket. The crate removes
    /// it too, but only through `<bundle>/address`, read after its server stopped: when
    /// containerd saw the connection close first, ran `<shim> delete` (which keeps a socket
    /// that still answers) and removed the bundle, neither did, and one socket per such race
    /// stayed in /run/containerd/s (2 in 100 pods, ten at a time).
    async fn wait(&mut self) {
        // The crate calls this once its server serves the socket (it binds it only after
        // `create_task_service`), so the file at the path is this daemon's now.
        let path = socket_path(&self.socket);
        let identity = file_identity(path);
        self.exit.wait().await;
        if let Some(identity) = identity {
            remove_own_socket(path, identity);
        }
    }

    async fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        TaskService::new(&self.namespace, &self.address, publisher, self.exit.clone())
    }
}

fn socket_path(address: &str) -> &std::path::Path {
    std::path::Path::new(address.trim().trim_start_matches("unix://"))
}

/// Device and inode of the socket file at `path`.
fn file_identity(path: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let m = std::fs::symlink_metadata(path).ok()?;
    m.file_type().is_socket().then(|| (m.dev(), m.ino()))
}

/// Removes the daemon's socket if it is still the one it bound (`identity`): a socket a
/// newer daemon bound at the same path (the same pod id started again) stays.
fn remove_own_socket(path: &std::path::Path, identity: (u64, u64)) {
    if file_identity(path) != Some(identity) {
        return;
    }
    match std::fs::remove_file(path) {
        Ok(()) => tracing::debug!(socket = %path.display(), "removed the daemon's socket"),
        Err(e) => tracing::warn!(socket = %path.display(), error = %e, "removing the daemon's socket"),
    }
}

/// Removes the socket of the pod's daemon named in `<bundle>/address` (written by `start`),
/// unless something still answers on it: the containerd-shim crate removes it only on an
/// orderly exit, so every SIGKILLed shim left one in `/run/containerd/s` (containerd's runc
/// shim removes it in `delete` too). Returns the path of a socket it kept.
fn remove_dead_socket(bundle: &std::path::Path) -> Option<std::path::PathBuf> {
    let address = std::fs::read_to_string(bundle.join("address")).ok()?;
    let path = socket_path(&address);
    if remove_unserved_socket(path) {
        return None;
    }
    tracing::info!(socket = %path.display(), "delete: the shim socket is still served; kept");
    Some(path.to_owned())
}

/// Removes the socket at `path` unless something accepts connections on it; whether it is
/// gone (or was never there).
fn remove_unserved_socket(path: &std::path::Path) -> bool {
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return false;
    }
    if file_identity(path).is_some() {
        match std::fs::remove_file(path) {
            Ok(()) => tracing::info!(socket = %path.display(), "delete: removed the dead shim's socket"),
            Err(e) => tracing::warn!(socket = %path.display(), error = %e, "delete: removing the dead shim's socket"),
        }
    }
    true
}

/// The processes holding the listening socket bound at `path`, as `pid (comm)` (for the log).
fn socket_holders(path: &std::path::Path) -> String {
    // Each network namespace has its own table: the holder may be in another one than this
    // process (a path reaches a socket across namespaces).
    let mut seen = std::collections::HashSet::new();
    let mut inodes = Vec::new();
    // (per thread: a thread may have entered another one)
    let tasks = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .flat_map(|p| std::fs::read_dir(p.path().join("task")).into_iter().flatten().flatten().map(|t| t.path()));
    for task in tasks {
        let Ok(ns) = std::fs::read_link(task.join("ns/net")) else { continue };
        if seen.insert(ns) {
            let table = std::fs::read_to_string(task.join("net/unix")).unwrap_or_default();
            inodes.extend(listening_inodes(&table, path));
        }
    }
    if inodes.is_empty() {
        return format!("none: no listening socket at this path in any of {} network namespaces", seen.len());
    }
    let mut holders = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let holds = std::fs::read_dir(entry.path().join("fd")).into_iter().flatten().flatten().any(|fd| {
            std::fs::read_link(fd.path())
                .is_ok_and(|l| inodes.iter().any(|i| l.as_os_str() == format!("socket:[{i}]").as_str()))
        });
        if holds {
            let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
            holders.push(format!("{pid} ({})", comm.trim()));
        }
    }
    if holders.is_empty() {
        format!("none found holding socket inode(s) {}", inodes.join(", "))
    } else {
        holders.join(", ")
    }
}

/// Inodes of the listening sockets bound at `path`, from `/proc/net/unix`'s text.
fn listening_inodes(table: &str, path: &std::path::Path) -> Vec<String> {
    const LISTENING: &str = "01";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode Path
            (f.len() == 8 && f[5] == LISTENING && std::path::Path::new(f[7]) == path).then(|| f[6].to_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daemon_removes_its_own_socket_but_not_a_successor_s() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        let address = format!("unix://{}", path.display());
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let identity = file_identity(socket_path(&address)).expect("a socket");
        remove_own_socket(&path, identity);
        assert!(!path.exists(), "its own socket is removed, bundle or not");
        drop(listener);

        // Another daemon bound the same path since: its socket stays.
        let _first = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let identity = file_identity(&path).expect("a socket");
        std::fs::remove_file(&path).expect("rm");
        let _second = std::os::unix::net::UnixListener::bind(&path).expect("bind again");
        remove_own_socket(&path, identity);
        assert!(path.exists(), "a newer daemon's socket is kept");
        // Not a socket: nothing to identify.
        assert_eq!(file_identity(dir.path()), None);
    }

    #[test]
    fn a_served_socket_is_kept_and_its_holder_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        assert!(!remove_unserved_socket(&path), "a socket that answers stays");
        assert!(path.exists());
        let me = format!("{} (", std::process::id());
        assert!(socket_holders(&path).contains(&me), "{}", socket_holders(&path));
        drop(listener);
        assert!(remove_unserved_socket(&path), "a dead one goes");
        assert!(!path.exists());
        assert!(remove_unserved_socket(&path), "and nothing there is gone too");
    }

    /// A listener bound by a thread in a network namespace of its own (tests run as root).
    #[test]
    fn a_holder_in_another_network_namespace_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        let (bound, done) = (std::sync::mpsc::channel(), std::sync::mpsc::channel::<()>());
        let at = path.clone();
        let thread = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare (root)");
            let listener = std::os::unix::net::UnixListener::bind(&at).expect("bind");
            bound.0.send(()).expect("send");
            let _ = done.1.recv();
            drop(listener);
        });
        bound.1.recv().expect("bound");
        let holders = socket_holders(&path);
        let _ = done.0.send(());
        thread.join().expect("thread");
        assert!(holders.contains(&format!("{} (", std::process::id())), "{holders}");
    }

    #[test]
    fn listening_sockets_are_found_by_path() {
        let table = "Num       RefCount Protocol Flags    Type St Inode Path\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 4242 /run/containerd/s/abc\n\
            0000000000000000: 00000003 00000000 00000000 0001 03 4343 /run/containerd/s/abc\n\
            0000000000000000: 00000002 00000000 00010000 0001 01 4444 /run/containerd/s/other\n\
            0000000000000000: 00000002 00000000 00000000 0002 01 4545\n";
        assert_eq!(listening_inodes(table, std::path::Path::new("/run/containerd/s/abc")), ["4242"]);
        assert!(listening_inodes(table, std::path::Path::new("/nope")).is_empty());
    }
}
