//! The pod sandbox inside the VM: its containers and their processes, and every operation
//! the agent API performs on them.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use contrast_agent_protocol::{agent, oci};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::watch;

use crate::error::Error;
use crate::reaper::Reaper;
use crate::runner::Request;
use crate::stdio::ProcessIo;
use crate::{cgroup, log, runner_client, spec, storage};

/// Per-container bundles (config.json, exec process files).
const BUNDLE_ROOT: &str = "/run/contrast/containers";
/// Console sockets on which libcontainer hands over pty masters.
const CONSOLE_ROOT: &str = "/run/contrast/console";
/// How long libcontainer gets to hand over a terminal.
const CONSOLE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long RemoveContainer waits for a killed container when the request names no timeout.
const DEFAULT_REMOVE_TIMEOUT: Duration = Duration::from_secs(10);
/// How often GetOOMEvent looks at the containers' memory.events.
const OOM_POLL_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Created,
    Running,
    Paused,
}

pub struct Process {
    pub pid: i32,
    pub io: ProcessIo,
    exit: watch::Receiver<Option<i32>>,
}

impl Process {
    pub fn exited(&self) -> Option<i32> {
        *self.exit.borrow()
    }

    pub async fn wait(&self) -> i32 {
        let mut rx = self.exit.clone();
        let status = match rx.wait_for(|s| s.is_some()).await {
            Ok(s) => s.unwrap_or(255),
            Err(_) => 255,
        };
        status
    }
}

pub struct Container {
    id: String,
    bundle: PathBuf,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    state: Mutex<State>,
    storages: Vec<PathBuf>,
}

impl Container {
    fn state(&self) -> State {
        *lock(&self.state)
    }

    fn set_state(&self, s: State) {
        *lock(&self.state) = s;
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct Registry {
    containers: HashMap<String, Arc<Container>>,
    /// Ids being created: reserved so that a duplicate fails at once.
    creating: std::collections::HashSet<String>,
    /// pid whose PID namespace is the sandbox's (the first container with its own).
    pidns_holder: Option<i32>,
    sandbox_storages: Vec<PathBuf>,
    sandbox_id: Option<String>,
}

pub struct Sandbox {
    reaper: Arc<Reaper>,
    registry: Mutex<Registry>,
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.')
}

impl Sandbox {
    pub fn new(reaper: Arc<Reaper>) -> Self {
        Sandbox { reaper, registry: Mutex::new(Registry::default()) }
    }

    pub fn container(&self, id: &str) -> Result<Arc<Container>, Error> {
        lock(&self.registry).containers.get(id).cloned().ok_or_else(|| Error::NotFound(format!("container {id}")))
    }

    /// The process `exec_id` of container `id`; an empty exec id (or the container id) is
    /// the container's own process.
    pub fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>, Error> {
        let c = self.container(id)?;
        if exec_id.is_empty() || exec_id == id {
            return Ok(c.init.clone());
        }
        let execs = lock(&c.execs);
        execs.get(exec_id).cloned().ok_or_else(|| Error::NotFound(format!("process {exec_id} in container {id}")))
    }

    pub fn create_sandbox(&self, req: &agent::CreateSandboxRequest) -> Result<(), Error> {
        {
            let reg = lock(&self.registry);
            if reg.sandbox_id.is_some() {
                return Err(Error::AlreadyExists("sandbox".into()));
            }
        }
        let mounted = mount_all(&req.storages)?;
        if !req.hostname.is_empty() {
            if let Err(e) = nix::unistd::sethostname(&req.hostname) {
                mounted.iter().for_each(|p| storage::unmount(p));
                return Err(Error::InvalidArgument(format!("hostname {:?}: {e}", req.hostname)));
            }
        }
        let mut reg = lock(&self.registry);
        reg.sandbox_storages = mounted;
        reg.sandbox_id = Some(if req.sandbox_id.is_empty() { "sandbox".into() } else { req.sandbox_id.clone() });
        Ok(())
    }

    pub async fn destroy_sandbox(&self) -> Result<(), Error> {
        let ids: Vec<String> = lock(&self.registry).containers.keys().cloned().collect();
        for id in ids {
            if let Err(e) = self.remove_container(&id, DEFAULT_REMOVE_TIMEOUT).await {
                log!("destroy sandbox: removing {id}: {e}");
            }
        }
        let mut reg = lock(&self.registry);
        for p in reg.sandbox_storages.drain(..) {
            storage::unmount(&p);
        }
        reg.sandbox_id = None;
        Ok(())
    }

    pub async fn create_container(&self, req: &agent::CreateContainerRequest) -> Result<(), Error> {
        let id = req.container_id.clone();
        if !valid_id(&id) {
            return Err(Error::InvalidArgument(format!("container id {id:?} is not valid")));
        }
        {
            let mut reg = lock(&self.registry);
            if reg.containers.contains_key(&id) || !reg.creating.insert(id.clone()) {
                return Err(Error::AlreadyExists(format!("container {id}")));
            }
        }
        let result = self.create_reserved(&id, req).await;
        let mut reg = lock(&self.registry);
        reg.creating.remove(&id);
        let container = result?;
        reg.containers.insert(id, container);
        Ok(())
    }

    async fn create_reserved(&self, id: &str, req: &agent::CreateContainerRequest) -> Result<Arc<Container>, Error> {
        let oci_spec = req.OCI.as_ref().ok_or_else(|| Error::InvalidArgument("request has no OCI spec".into()))?;
        let converted = spec::convert(id, oci_spec).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mounted = mount_all(&req.storages)?;
        match self.create_with_storages(id, req, converted, mounted.clone()).await {
            Ok(c) => Ok(Arc::new(c)),
            Err(e) => {
                mounted.iter().for_each(|p| storage::unmount(p));
                Err(e)
            }
        }
    }

    async fn create_with_storages(
        &self,
        id: &str,
        req: &agent::CreateContainerRequest,
        converted: spec::Converted,
        storages: Vec<PathBuf>,
    ) -> Result<Container, Error> {
        let mut oci = converted.spec;
        let rootfs = oci.root().as_ref().map(|r| r.path().clone()).unwrap_or_default();
        if !rootfs.is_dir() {
            return Err(Error::InvalidArgument(format!("container rootfs {} does not exist", rootfs.display())));
        }
        let share_pidns = converted.join_sandbox_pidns || req.sandbox_pidns;
        let holder = lock(&self.registry).pidns_holder;
        if share_pidns {
            let Some(holder) = holder else {
                return Err(Error::FailedPrecondition("no sandbox PID namespace to share yet".into()));
            };
            join_pid_namespace(&mut oci, holder)?;
        }
        let bundle = Path::new(BUNDLE_ROOT).join(id);
        std::fs::create_dir_all(&bundle).map_err(|e| Error::Internal(format!("creating bundle: {e}")))?;
        let cleanup_bundle = || {
            let _ = std::fs::remove_dir_all(&bundle);
        };
        if let Err(e) = oci.save(bundle.join("config.json")) {
            cleanup_bundle();
            return Err(Error::Internal(format!("writing config.json: {e}")));
        }
        let terminal = oci.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
        let spawned = self
            .spawn(id, terminal, |console_socket, stdio| Request::Create {
                id: id.to_owned(),
                bundle: bundle.clone(),
                console_socket,
                stdio,
            })
            .await;
        let init = match spawned {
            Ok(p) => p,
            Err(e) => {
                cleanup_bundle();
                return Err(e);
            }
        };
        if !share_pidns && lock(&self.registry).pidns_holder.is_none() {
            lock(&self.registry).pidns_holder = Some(init.pid);
        }
        Ok(Container {
            id: id.to_owned(),
            bundle,
            init: Arc::new(init),
            execs: Mutex::new(HashMap::new()),
            state: Mutex::new(State::Created),
            storages,
        })
    }

    /// Runs a runner operation that creates a process, with pipes or a terminal.
    async fn spawn(
        &self,
        name: &str,
        terminal: bool,
        request: impl FnOnce(Option<PathBuf>, bool) -> Request,
    ) -> Result<Process, Error> {
        if terminal {
            std::fs::create_dir_all(CONSOLE_ROOT).map_err(|e| Error::Internal(format!("console dir: {e}")))?;
            let path = Path::new(CONSOLE_ROOT).join(format!("{name}.sock"));
            let _ = std::fs::remove_file(&path);
            let listener =
                tokio::net::UnixListener::bind(&path).map_err(|e| Error::Internal(format!("console socket: {e}")))?;
            let req = request(Some(path.clone()), false);
            let (outcome, master) =
                tokio::join!(runner_client::run(&self.reaper, &req, None), receive_master(&listener));
            let _ = std::fs::remove_file(&path);
            let outcome = outcome.map_err(Error::from)?;
            let master = match master {
                Ok(m) => m,
                Err(e) => {
                    let _ = kill(Pid::from_raw(outcome.pid), Signal::SIGKILL);
                    return Err(Error::Internal(format!("receiving the terminal: {e}")));
                }
            };
            let io = ProcessIo::pty(master).map_err(|e| Error::Internal(format!("terminal: {e}")))?;
            Ok(self.track(outcome, io))
        } else {
            let (io, child_ends) = ProcessIo::pipes().map_err(|e| Error::Internal(format!("pipes: {e}")))?;
            let req = request(None, true);
            let outcome = runner_client::run(&self.reaper, &req, Some(child_ends)).await?;
            Ok(self.track(outcome, io))
        }
    }

    fn track(&self, outcome: runner_client::Outcome, io: ProcessIo) -> Process {
        let (tx, rx) = watch::channel(None);
        let exited = self.reaper.watch_since(outcome.pid, outcome.since);
        tokio::spawn(async move {
            let status = exited.await.unwrap_or(255);
            let _ = tx.send(Some(status));
        });
        Process { pid: outcome.pid, io, exit: rx }
    }

    pub async fn start_container(&self, id: &str) -> Result<(), Error> {
        let c = self.container(id)?;
        if c.state() != State::Created {
            return Err(Error::FailedPrecondition(format!("container {id} is not in created state")));
        }
        runner_client::run(&self.reaper, &Request::Start { id: id.to_owned() }, None).await?;
        c.set_state(State::Running);
        Ok(())
    }

    pub async fn exec_process(&self, req: &agent::ExecProcessRequest) -> Result<(), Error> {
        let c = self.container(&req.container_id)?;
        if !valid_id(&req.exec_id) {
            return Err(Error::InvalidArgument(format!("exec id {:?} is not valid", req.exec_id)));
        }
        if c.state() != State::Running || c.init.exited().is_some() {
            return Err(Error::FailedPrecondition(format!("container {} is not running", c.id)));
        }
        if lock(&c.execs).contains_key(&req.exec_id) || req.exec_id == c.id {
            return Err(Error::AlreadyExists(format!("process {} in container {}", req.exec_id, c.id)));
        }
        let process = req.process.as_ref().ok_or_else(|| Error::InvalidArgument("request has no process".into()))?;
        let process = spec::convert_process(process).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let file = c.bundle.join(format!("exec-{}.json", req.exec_id));
        let text = serde_json::to_vec(&process).map_err(|e| Error::Internal(e.to_string()))?;
        std::fs::write(&file, text).map_err(|e| Error::Internal(format!("writing process.json: {e}")))?;
        let terminal = process.terminal().unwrap_or(false);
        let name = format!("{}-{}", c.id, req.exec_id);
        let spawned = self
            .spawn(&name, terminal, |console_socket, stdio| Request::Exec {
                container_id: c.id.clone(),
                process: file.clone(),
                console_socket,
                stdio,
            })
            .await;
        let _ = std::fs::remove_file(&file);
        lock(&c.execs).insert(req.exec_id.clone(), Arc::new(spawned?));
        Ok(())
    }

    pub fn signal_process(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), Error> {
        let p = self.process(id, exec_id)?;
        let sig = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| Error::InvalidArgument(format!("signal {signal} is not valid")))?;
        if p.exited().is_some() {
            return Ok(());
        }
        match kill(Pid::from_raw(p.pid), sig) {
            Ok(()) | Err(nix::errno::Errno::ESRCH) => Ok(()),
            Err(e) => Err(Error::Internal(format!("signalling pid {}: {e}", p.pid))),
        }
    }

    pub async fn remove_container(&self, id: &str, timeout: Duration) -> Result<(), Error> {
        let c = self.container(id)?;
        if c.init.exited().is_none() {
            if c.state() == State::Paused {
                let _ = cgroup::set_frozen(id, false).await;
            }
            for pid in cgroup::pids(id).into_iter().chain(std::iter::once(c.init.pid)) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if tokio::time::timeout(timeout, c.init.wait()).await.is_err() {
                return Err(Error::Internal(format!("container {id} did not exit within {timeout:?} after SIGKILL")));
            }
        }
        if let Err(e) = runner_client::run(&self.reaper, &Request::Delete { id: id.to_owned() }, None).await {
            log!("deleting container {id}: {e}");
        }
        let _ = std::fs::remove_dir_all(&c.bundle);
        for p in &c.storages {
            storage::unmount(p);
        }
        let mut reg = lock(&self.registry);
        reg.containers.remove(id);
        if reg.pidns_holder == Some(c.init.pid) {
            reg.pidns_holder = None;
        }
        Ok(())
    }

    pub async fn set_paused(&self, id: &str, paused: bool) -> Result<(), Error> {
        let c = self.container(id)?;
        let (from, to) = if paused { (State::Running, State::Paused) } else { (State::Paused, State::Running) };
        if c.state() != from {
            return Err(Error::FailedPrecondition(format!(
                "container {id} is not {}",
                if paused { "running" } else { "paused" }
            )));
        }
        cgroup::set_frozen(id, paused).await.map_err(|e| Error::Internal(format!("{e:#}")))?;
        c.set_state(to);
        Ok(())
    }

    pub fn stats(&self, id: &str) -> Result<agent::StatsContainerResponse, Error> {
        self.container(id)?;
        Ok(cgroup::stats(id))
    }

    pub fn update(&self, id: &str, resources: Option<&oci::LinuxResources>) -> Result<(), Error> {
        self.container(id)?;
        let Some(r) = resources else { return Ok(()) };
        cgroup::update(id, r).map_err(|e| Error::InvalidArgument(format!("{e:#}")))
    }

    /// Blocks until a container's OOM killer fires; returns that container's id.
    pub async fn next_oom_event(&self) -> String {
        let mut seen: HashMap<String, u64> = HashMap::new();
        loop {
            let ids: Vec<String> = lock(&self.registry).containers.keys().cloned().collect();
            for id in ids {
                let n = cgroup::oom_kills(&id);
                // A container seen for the first time started at zero kills.
                let before = seen.insert(id.clone(), n).unwrap_or(0);
                if n > before {
                    return id;
                }
            }
            tokio::time::sleep(OOM_POLL_INTERVAL).await;
        }
    }

    pub fn default_remove_timeout() -> Duration {
        DEFAULT_REMOVE_TIMEOUT
    }
}

/// Mounts every storage, or none: on a failure the ones already mounted are undone.
fn mount_all(storages: &[agent::Storage]) -> Result<Vec<PathBuf>, Error> {
    let mut mounted = Vec::new();
    for s in storages {
        match storage::mount_storage(s) {
            Ok(p) => mounted.push(p),
            Err(e) => {
                mounted.iter().for_each(|p| storage::unmount(p));
                return Err(Error::from(e));
            }
        }
    }
    Ok(mounted)
}

fn join_pid_namespace(oci: &mut libcontainer::oci_spec::runtime::Spec, holder: i32) -> Result<(), Error> {
    use libcontainer::oci_spec::runtime::{LinuxNamespaceBuilder, LinuxNamespaceType};
    let Some(linux) = oci.linux_mut() else { return Ok(()) };
    let mut nss = linux.namespaces().clone().unwrap_or_default();
    nss.retain(|n| n.typ() != LinuxNamespaceType::Pid);
    let ns = LinuxNamespaceBuilder::default()
        .typ(LinuxNamespaceType::Pid)
        .path(format!("/proc/{holder}/ns/pid"))
        .build()
        .map_err(|e| Error::Internal(e.to_string()))?;
    nss.push(ns);
    linux.set_namespaces(Some(nss));
    Ok(())
}

/// Accepts libcontainer's connection on the console socket and takes the pty master it sends.
async fn receive_master(listener: &tokio::net::UnixListener) -> std::io::Result<OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    let accept = async {
        let (stream, _) = listener.accept().await?;
        loop {
            stream.readable().await?;
            let res = stream.try_io(tokio::io::Interest::READABLE, || {
                let mut buf = [0u8; 4096];
                let mut iov = [std::io::IoSliceMut::new(&mut buf)];
                let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
                let msg = nix::sys::socket::recvmsg::<()>(
                    stream.as_raw_fd(),
                    &mut iov,
                    Some(&mut space),
                    nix::sys::socket::MsgFlags::MSG_CMSG_CLOEXEC,
                )
                .map_err(std::io::Error::from)?;
                for c in msg.cmsgs().map_err(std::io::Error::from)? {
                    if let nix::sys::socket::ControlMessageOwned::ScmRights(fds) = c {
                        if let Some(fd) = fds.first() {
                            // SAFETY: the kernel just installed this descriptor for us.
                            return Ok(Some(unsafe { OwnedFd::from_raw_fd(*fd) }));
                        }
                    }
                }
                Ok(None)
            });
            match res {
                Ok(Some(fd)) => return Ok(fd),
                Ok(None) => return Err(std::io::Error::other("console socket message carried no descriptor")),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    };
    tokio::time::timeout(CONSOLE_TIMEOUT, accept)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no terminal handed over"))?
}
