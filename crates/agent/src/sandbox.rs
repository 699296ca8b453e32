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
/// How long an exited exec's output may stay unread before the exec is forgotten.
const EXEC_OUTPUT_GRACE: Duration = Duration::from_secs(30);
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
    /// Set when the process is reaped, which can be before its exit is told (a container's
    /// leftovers are killed in between, [`Sandbox::track`]).
    reaped: Arc<std::sync::atomic::AtomicBool>,
    /// Where the runner operation that created it spent its time.
    timing: runner_client::Timing,
}

impl Process {
    pub fn exited(&self) -> Option<i32> {
        *self.exit.borrow()
    }

    fn reaped(&self) -> bool {
        self.reaped.load(std::sync::atomic::Ordering::SeqCst)
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
    /// Its storages' upper and work directories (see [`storage::scratch_dirs`]).
    scratch: Vec<PathBuf>,
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
    /// Ids being created that the host asked to remove meanwhile (it gave up on the create):
    /// removed as soon as their create ends.
    doomed: std::collections::HashSet<String>,
    /// pid whose PID namespace is the sandbox's (the first container with its own).
    pidns_holder: Option<i32>,
    sandbox_id: Option<String>,
}

pub struct Sandbox {
    reaper: Arc<Reaper>,
    registry: Mutex<Registry>,
    /// OOM kills already reported, across GetOOMEvent calls.
    oom: Mutex<OomKills>,
    /// Wakes a waiting GetOOMEvent when a kill was queued.
    oom_queued: tokio::sync::Notify,
}

/// The `oom_kill` count of each container already reported: every kill is reported exactly
/// once, however many GetOOMEvent calls the shim makes (each call returns one event).
#[derive(Default)]
struct OomKills {
    reported: HashMap<String, u64>,
    /// Kills of containers removed before a GetOOMEvent call saw them (an OOM-killed
    /// container exits at once, and `ctr run --rm` removes it right after).
    pending: std::collections::VecDeque<String>,
}

impl OomKills {
    /// The next unreported kill: a removed container's first, else the first container
    /// whose count rose since it was last reported; that kill is now reported. A container
    /// seen for the first time started at zero kills.
    fn next(&mut self, counts: impl IntoIterator<Item = (String, u64)>) -> Option<String> {
        if let Some(id) = self.pending.pop_front() {
            return Some(id);
        }
        for (id, n) in counts {
            let reported = self.reported.entry(id.clone()).or_insert(0);
            if n > *reported {
                // One event per call: a second kill in the same interval is the next call's.
                *reported += 1;
                return Some(id);
            }
        }
        None
    }

    /// Queues the container's kills not reported yet (it has `n` in all); true if any.
    fn queue(&mut self, id: &str, n: u64) -> bool {
        let reported = self.reported.entry(id.to_owned()).or_insert(0);
        let new = n.saturating_sub(*reported);
        for _ in 0..new {
            self.pending.push_back(id.to_owned());
        }
        *reported = (*reported).max(n);
        new > 0
    }

    /// The container is being removed with `n` kills in all: the unreported ones stay
    /// queued for the next calls. Its count is kept (a poll that listed the container just
    /// before must not report its kills again) until [`OomKills::reset`].
    fn remove(&mut self, id: &str, n: u64) -> bool {
        self.queue(id, n)
    }

    /// A container is created under `id`: its count starts at zero.
    fn reset(&mut self, id: &str) {
        self.reported.remove(id);
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && !id.starts_with('.')
}

impl Sandbox {
    pub fn new(reaper: Arc<Reaper>) -> Self {
        Sandbox {
            reaper,
            registry: Mutex::new(Registry::default()),
            oom: Mutex::new(OomKills::default()),
            oom_queued: tokio::sync::Notify::new(),
        }
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

    /// An exec whose exit has been reported goes once the host has read its output to the
    /// end (or after [`EXEC_OUTPUT_GRACE`], for output nobody reads or a child of it still
    /// holds): its record and descriptors no longer stay until the container is removed
    /// (exec probes would exhaust the agent's descriptors), and its id is free again.
    pub fn forget_exec(&self, id: &str, exec_id: &str, p: Arc<Process>) {
        let Ok(c) = self.container(id) else { return };
        let exec_id = exec_id.to_owned();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(EXEC_OUTPUT_GRACE, p.io.drained()).await;
            let mut execs = lock(&c.execs);
            if execs.get(&exec_id).is_some_and(|q| Arc::ptr_eq(q, &p)) {
                execs.remove(&exec_id);
            }
        });
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
                mounted.iter().rev().for_each(|p| storage::unmount(p));
                return Err(Error::InvalidArgument(format!("hostname {:?}: {e}", req.hostname)));
            }
        }
        let mut reg = lock(&self.registry);
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
        // The pod's shared directory (virtio-fs) stays mounted: the VM ends next, and
        // unmounting it right after containers were killed shuts its superblock down under
        // their file releases still on their way to virtiofsd — the 6.12 guest kernel then
        // warns "Busy inodes after unmount" and faults in `fuse_release_end` (docs/reliability.md).
        lock(&self.registry).sandbox_id = None;
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
        // A new container under a reused id starts again at zero kills.
        lock(&self.oom).reset(&id);
        let result = self.create_reserved(&id, req).await;
        if result.is_err() {
            // What the host copied in for it goes with it (a create retried under new ids
            // would otherwise fill the guest's memory).
            crate::copy_file::remove(&crate::copy_file::copies_named(&id));
        }
        let mut reg = lock(&self.registry);
        reg.creating.remove(&id);
        let container = result?;
        reg.containers.insert(id, container);
        Ok(())
    }

    /// Whether a remove came for `id` while it was being created and gave up waiting (the
    /// create's caller removes it then).
    pub fn take_doomed(&self, id: &str) -> bool {
        lock(&self.registry).doomed.remove(id)
    }

    /// What the host copied in for a container that never came to be (a create the policy
    /// refused, or that failed on the host before it reached the agent): it goes, unless a
    /// container of that id exists or is being created.
    pub fn discard_copies(&self, id: &str) {
        if !valid_id(id) {
            return;
        }
        {
            let mut reg = lock(&self.registry);
            if reg.containers.contains_key(id) || !reg.creating.insert(id.to_owned()) {
                return;
            }
        }
        crate::copy_file::remove(&crate::copy_file::copies_named(id));
        lock(&self.registry).creating.remove(id);
    }

    async fn create_reserved(&self, id: &str, req: &agent::CreateContainerRequest) -> Result<Arc<Container>, Error> {
        let started = crate::uptime();
        let oci_spec = req.OCI.as_ref().ok_or_else(|| Error::InvalidArgument("request has no OCI spec".into()))?;
        let converted = spec::convert(id, oci_spec).map_err(|e| Error::InvalidArgument(e.to_string()))?;
        let mounted = mount_all(&req.storages)?;
        let prepared = crate::uptime();
        match self.create_with_storages(id, req, converted, mounted.clone()).await {
            Ok(c) => {
                // Per step, on the console: what the first container of a pod waits for.
                let t = c.init.timing;
                crate::log!(
                    "created {id}: spec+storages {:.1} ms, bundle {:.1} ms, {t}, total {:.1} ms",
                    (prepared - started) * 1e3,
                    (t.spawn - prepared) * 1e3,
                    (crate::uptime() - started) * 1e3
                );
                Ok(Arc::new(c))
            }
            Err(e) => {
                mounted.iter().rev().for_each(|p| storage::unmount(p));
                storage::remove_scratch(&storage::scratch_dirs(&req.storages));
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
        // The pod's network/ipc/uts namespaces are the VM's: their sysctls are the VM's too.
        for (key, value) in &converted.pod_sysctls {
            let path = spec::sysctl_path(key).map_err(|e| Error::InvalidArgument(e.to_string()))?;
            std::fs::write(&path, value)
                .map_err(|e| Error::InvalidArgument(format!("sysctl {key}={value:?} in the pod VM: {e}")))?;
        }
        let share_pidns = converted.join_sandbox_pidns || req.sandbox_pidns;
        let holder = lock(&self.registry).pidns_holder;
        if share_pidns {
            let Some(holder) = holder else {
                return Err(Error::FailedPrecondition("no sandbox PID namespace to share yet".into()));
            };
            join_pid_namespace(&mut oci, holder)?;
        }
        // In a PID namespace it does not own — the pod's, or the VM's own (CRI `hostPID`) —
        // nothing ends what the container's init leaves when it exits (runc's shim likewise
        // ends such a container's processes then).
        let own_pidns = !share_pidns && owns_pid_namespace(&oci);
        let bundle = Path::new(BUNDLE_ROOT).join(id);
        std::fs::create_dir_all(&bundle).map_err(|e| Error::Internal(format!("creating bundle: {e}")))?;
        let cleanup_bundle = || {
            let _ = std::fs::remove_dir_all(&bundle);
        };
        if let Err(e) = oci.save(bundle.join("config.json")) {
            cleanup_bundle();
            return Err(Error::Internal(format!("writing config.json: {e}")));
        }
        if let Err(e) = crate::volumes::prepare(&oci) {
            cleanup_bundle();
            return Err(e);
        }
        let terminal = oci.process().as_ref().and_then(|p| p.terminal()).unwrap_or(false);
        let spawned = self
            .spawn(id, terminal, (!own_pidns).then_some(id), |console_socket, stdio| Request::Create {
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
            scratch: storage::scratch_dirs(&req.storages),
        })
    }

    /// Runs a runner operation that creates a process, with pipes or a terminal. With
    /// `leftovers`, what is still in that container's cgroup when the process exits is
    /// killed before the exit is told ([`Sandbox::track`]).
    async fn spawn(
        &self,
        name: &str,
        terminal: bool,
        leftovers: Option<&str>,
        request: impl FnOnce(Option<PathBuf>, bool) -> Request,
    ) -> Result<Process, Error> {
        if terminal {
            std::fs::create_dir_all(CONSOLE_ROOT).map_err(|e| Error::Internal(format!("console dir: {e}")))?;
            let path = console_socket_path(name);
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
            Ok(self.track(outcome, io, leftovers.map(str::to_owned)))
        } else {
            let (io, child_ends) = ProcessIo::pipes().map_err(|e| Error::Internal(format!("pipes: {e}")))?;
            let req = request(None, true);
            let outcome = runner_client::run(&self.reaper, &req, Some(child_ends)).await?;
            Ok(self.track(outcome, io, leftovers.map(str::to_owned)))
        }
    }

    /// Watches a process for its exit. A container init in a PID namespace it does not own
    /// (the pod's) takes nothing with it when it exits: a child it left keeps running and
    /// keeps the output open, and the host would see the container running for as long as
    /// that child lives. As runc's shim does for such a container, what is left in its cgroup
    /// (`leftovers`) is killed first.
    fn track(&self, outcome: runner_client::Outcome, io: ProcessIo, leftovers: Option<String>) -> Process {
        let (tx, rx) = watch::channel(None);
        let exited = self.reaper.watch_since(outcome.pid, outcome.since);
        let reaped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reaped_ = reaped.clone();
        tokio::spawn(async move {
            let status = exited.await.unwrap_or(255);
            reaped_.store(true, std::sync::atomic::Ordering::SeqCst);
            if let Some(id) = leftovers.filter(|id| !cgroup::pids(id).is_empty()) {
                log!("container {id}: its init exited; ending what it left in the pod's PID namespace");
                signal_cgroup(&id, Signal::SIGKILL).await;
            }
            let _ = tx.send(Some(status));
        });
        Process { pid: outcome.pid, io, exit: rx, reaped, timing: outcome.timing }
    }

    pub async fn start_container(&self, id: &str) -> Result<(), Error> {
        let c = self.container(id)?;
        if c.state() != State::Created {
            return Err(Error::FailedPrecondition(format!("container {id} is not in created state")));
        }
        let outcome = runner_client::run(&self.reaper, &Request::Start { id: id.to_owned() }, None).await?;
        crate::log!("started {id}: {}", outcome.timing);
        c.set_state(State::Running);
        Ok(())
    }

    pub async fn exec_process(&self, req: &agent::ExecProcessRequest) -> Result<(), Error> {
        let c = self.container(&req.container_id)?;
        if !valid_id(&req.exec_id) {
            return Err(Error::InvalidArgument(format!("exec id {:?} is not valid", req.exec_id)));
        }
        if c.state() != State::Running || c.init.reaped() {
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
            .spawn(&name, terminal, None, |console_socket, stdio| Request::Exec {
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

    /// Signals a process with kata-agent's conventions (kata-containers
    /// `src/agent/src/rpc.rs`, `do_signal_process`):
    /// - SIGTERM to a container's init that installed no handler for it becomes SIGKILL (the
    ///   kernel drops unhandled signals to a PID-namespace init, so SIGTERM would do nothing);
    /// - an empty exec id also signals every other process in the container's cgroup, frozen
    ///   meanwhile: that is how `Kill` with `all` arrives (kata's runtime sends an empty exec
    ///   id for it), and how a container in the pod's shared PID namespace is stopped.
    pub async fn signal_process(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), Error> {
        self.container(id)?;
        let p = self.process(id, exec_id)?;
        let mut sig = i32::try_from(signal)
            .ok()
            .and_then(|s| Signal::try_from(s).ok())
            .ok_or_else(|| Error::InvalidArgument(format!("signal {signal} is not valid")))?;
        let init = exec_id.is_empty() || exec_id == id;
        if init && sig == Signal::SIGTERM {
            let status = std::fs::read_to_string(format!("/proc/{}/status", p.pid)).unwrap_or_default();
            if !signal_caught(&status, Signal::SIGTERM) {
                sig = Signal::SIGKILL;
            }
        }
        if !p.reaped() {
            match kill(Pid::from_raw(p.pid), sig) {
                Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                Err(e) => return Err(Error::Internal(format!("signalling pid {}: {e}", p.pid))),
            }
        }
        if exec_id.is_empty() {
            signal_cgroup(id, sig).await;
        }
        Ok(())
    }

    /// The container's processes (guest pids), for `ListProcesses`.
    pub fn pids(&self, id: &str) -> Result<Vec<i32>, Error> {
        self.container(id)?;
        Ok(cgroup::pids(id))
    }

    pub async fn remove_container(&self, id: &str, timeout: Duration) -> Result<(), Error> {
        // A create of this id still running (the host gave up waiting for it): wait for it;
        // if it outlasts the wait, it is marked and removed as soon as it ends
        // ([`Sandbox::take_doomed`]), never left behind because it was not there yet.
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            {
                let mut reg = lock(&self.registry);
                if !reg.creating.contains(id) {
                    reg.doomed.remove(id);
                    break;
                }
                reg.doomed.insert(id.to_owned());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(Error::Unavailable(format!(
                    "container {id} is still being created; it is removed as soon as its create ends"
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let c = match self.container(id) {
            Ok(c) => c,
            Err(e) => {
                // The host ends a create that failed before it reached us this way.
                self.discard_copies(id);
                return Err(e);
            }
        };
        if c.state() == State::Paused {
            let _ = cgroup::set_frozen(id, false).await;
        }
        let deadline = tokio::time::Instant::now() + timeout;
        if c.init.exited().is_none() {
            // Its pid only while it is not reaped: the number is free again after that.
            let init = (!c.init.reaped()).then_some(c.init.pid);
            for pid in cgroup::pids(id).into_iter().chain(init) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if tokio::time::timeout_at(deadline, c.init.wait()).await.is_err() {
                return Err(Error::Internal(format!("container {id} did not exit within {timeout:?} after SIGKILL")));
            }
        }
        // Anything still in its cgroup (an exec's children, or what is still dying) goes
        // before the cgroup and the mounts it may use do; what outlasts the timeout is
        // logged, and the removal goes on.
        if !cgroup::pids(id).is_empty() {
            signal_cgroup(id, Signal::SIGKILL).await;
        }
        if !cgroup::wait_empty(id, deadline).await {
            log!("container {id}: processes left in its cgroup {timeout:?} after SIGKILL: {:?}", cgroup::pids(id));
        }
        // Before the cgroup goes: a kill no GetOOMEvent has seen yet is still reported.
        let kills = cgroup::oom_kills(id);
        if let Err(e) = runner_client::run(&self.reaper, &Request::Delete { id: id.to_owned() }, None).await {
            log!("deleting container {id}: {e}");
        }
        let _ = std::fs::remove_dir_all(&c.bundle);
        // Its copies of the pod's hosts, hostname, resolv.conf and volumes go with it: a
        // container restarted again and again would otherwise fill the guest's memory.
        crate::copy_file::remove(&crate::copy_file::copies_named(id));
        // Last mounted first: an overlay before the layers under it.
        for p in c.storages.iter().rev() {
            storage::unmount(p);
        }
        storage::remove_scratch(&c.scratch);
        {
            let mut reg = lock(&self.registry);
            reg.containers.remove(id);
            if reg.pidns_holder == Some(c.init.pid) {
                reg.pidns_holder = None;
            }
        }
        if lock(&self.oom).remove(id, kills) {
            self.oom_queued.notify_one();
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
        loop {
            let ids: Vec<String> = lock(&self.registry).containers.keys().cloned().collect();
            let counts: Vec<(String, u64)> = ids.into_iter().map(|id| (id.clone(), cgroup::oom_kills(&id))).collect();
            if let Some(id) = lock(&self.oom).next(counts) {
                log!("container {id}: out-of-memory kill (oom_kill count {})", cgroup::oom_kills(&id));
                return id;
            }
            tokio::select! {
                _ = tokio::time::sleep(OOM_POLL_INTERVAL) => {}
                _ = self.oom_queued.notified() => {}
            }
        }
    }

    /// Queues the OOM kills of a container whose init just exited (before its exit status
    /// is answered) and wakes GetOOMEvent.
    pub fn note_oom_kills(&self, id: &str) {
        if lock(&self.oom).queue(id, cgroup::oom_kills(id)) {
            self.oom_queued.notify_one();
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
                mounted.iter().rev().for_each(|p| storage::unmount(p));
                return Err(Error::from(e));
            }
        }
    }
    Ok(mounted)
}

/// Whether the spec gives the container a new PID namespace of its own.
fn owns_pid_namespace(oci: &libcontainer::oci_spec::runtime::Spec) -> bool {
    use libcontainer::oci_spec::runtime::LinuxNamespaceType;
    let namespaces = oci.linux().as_ref().and_then(|l| l.namespaces().as_ref());
    namespaces.is_some_and(|nss| nss.iter().any(|n| n.typ() == LinuxNamespaceType::Pid && n.path().is_none()))
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

/// A console socket for the process `name` (`<container>-<exec>`: two 64-hex CRI ids are
/// 129 bytes, more than a unix socket path holds — `sun_path` is 108 bytes with its NUL, so
/// every exec with a terminal into a CRI container failed). Numbered instead, unique for the
/// agent's lifetime; the name is only for the reader of a directory listing.
fn console_socket_path(name: &str) -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let short: String = name.chars().take(12).collect();
    Path::new(CONSOLE_ROOT).join(format!("{n}-{short}.sock"))
}

/// Sends `sig` to every process in a container's cgroup, frozen meanwhile so that no
/// process forks past the signal. A cgroup frozen already (a paused container, or another
/// signal's freeze) stays as it is: only a freeze of this call's own is undone, also one
/// that did not complete in time.
async fn signal_cgroup(id: &str, sig: Signal) {
    let ours = !cgroup::freeze_requested(id);
    if ours {
        if let Err(e) = cgroup::set_frozen(id, true).await {
            log!("freezing container {id} to signal it: {e:#}");
        }
    }
    for pid in cgroup::pids(id) {
        let _ = kill(Pid::from_raw(pid), sig);
    }
    if ours {
        if let Err(e) = cgroup::set_frozen(id, false).await {
            log!("thawing container {id} after signalling it: {e:#}");
        }
    }
}

/// Whether `/proc/<pid>/status` text says the process catches `sig` (`SigCgt`, a hex mask
/// with bit `sig - 1` set; proc(5)).
fn signal_caught(status: &str, sig: Signal) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1u64 << (sig as i32 - 1)) != 0)
}

#[cfg(test)]
mod tests {
    use nix::sys::signal::Signal;

    use super::{signal_caught, OomKills};

    /// A remove of an id whose create is still running waits for that create (the host
    /// gave up waiting for it and removes what it may have made), then acts on its outcome.
    #[tokio::test]
    async fn remove_waits_for_a_create_of_the_same_id() {
        let sandbox = std::sync::Arc::new(super::Sandbox::new(crate::reaper::Reaper::new()));
        let id = "contrast-unit-remove-waits";
        super::lock(&sandbox.registry).creating.insert(id.to_owned());
        let remove = tokio::spawn({
            let sandbox = sandbox.clone();
            async move { sandbox.remove_container(id, std::time::Duration::from_secs(5)).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!remove.is_finished(), "the remove waits while the create runs");
        // The create ends (failed here: nothing was made), and the remove goes on.
        super::lock(&sandbox.registry).creating.remove(id);
        let result = tokio::time::timeout(std::time::Duration::from_secs(2), remove).await.expect("in time");
        assert!(matches!(result.expect("task"), Err(crate::error::Error::NotFound(_))));
        assert!(!sandbox.take_doomed(id), "a remove that saw the create end leaves no mark");

        // A create that outlasts the remove's wait: the remove fails as unavailable and marks
        // the id, which the create's caller then removes.
        super::lock(&sandbox.registry).creating.insert(id.to_owned());
        let err =
            sandbox.remove_container(id, std::time::Duration::from_millis(100)).await.expect_err("still creating");
        assert!(matches!(&err, crate::error::Error::Unavailable(m) if m.contains("still being created")), "{err}");
        assert!(sandbox.take_doomed(id), "marked for removal when its create ends");
    }

    #[test]
    fn console_sockets_fit_a_unix_socket_path_for_cri_ids() {
        let id = "85c7d39c08ef5b5fb3e3e4a95b5e4de3c1bf5b1307094cee0b34f6e5bcc6d0ef";
        let a = super::console_socket_path(&format!("{id}-{id}"));
        let b = super::console_socket_path(&format!("{id}-{id}"));
        assert_ne!(a, b, "unique per process");
        // sun_path: 108 bytes including the terminating NUL (linux/un.h).
        assert!(a.as_os_str().len() < 108, "{}", a.display());
    }

    #[test]
    fn sigcgt_mask_is_read_per_signal() {
        // A shell with a TERM trap: SIGTERM is bit 14, SIGINT bit 1, SIGCHLD bit 16.
        let status = "Name:\tsh\nSigBlk:\t0000000000000000\nSigIgn:\t0000000000000004\nSigCgt:\t0000000000014002\n";
        assert!(signal_caught(status, Signal::SIGTERM));
        assert!(signal_caught(status, Signal::SIGINT));
        assert!(signal_caught(status, Signal::SIGCHLD));
        assert!(!signal_caught(status, Signal::SIGHUP));
        // `sleep` as a container init catches nothing: SIGTERM must become SIGKILL.
        assert!(!signal_caught("SigCgt:\t0000000000000000\n", Signal::SIGTERM));
        assert!(!signal_caught("no such line", Signal::SIGTERM));
    }

    fn counts(list: &[(&str, u64)]) -> Vec<(String, u64)> {
        list.iter().map(|(id, n)| ((*id).to_owned(), *n)).collect()
    }

    #[test]
    fn each_oom_kill_is_reported_exactly_once() {
        let mut oom = OomKills::default();
        assert_eq!(oom.next(counts(&[("a", 0), ("b", 0)])), None);
        // b is killed once: one event, then nothing however often the shim asks again.
        assert_eq!(oom.next(counts(&[("a", 0), ("b", 1)])).as_deref(), Some("b"));
        for _ in 0..5 {
            assert_eq!(oom.next(counts(&[("a", 0), ("b", 1)])), None);
        }
        // Two more kills of b between calls: two events, one per call.
        assert_eq!(oom.next(counts(&[("a", 0), ("b", 3)])).as_deref(), Some("b"));
        assert_eq!(oom.next(counts(&[("a", 0), ("b", 3)])).as_deref(), Some("b"));
        assert_eq!(oom.next(counts(&[("a", 0), ("b", 3)])), None);
    }

    #[test]
    fn a_container_first_seen_after_its_kill_is_reported() {
        let mut oom = OomKills::default();
        assert_eq!(oom.next(counts(&[("late", 1)])).as_deref(), Some("late"));
        assert_eq!(oom.next(counts(&[("late", 1)])), None);
        oom.remove("late", 1);
        // A poll that listed it just before its removal does not report it again.
        assert_eq!(oom.next(counts(&[("late", 1)])), None);
        // A new container under the same id starts again at zero.
        oom.reset("late");
        assert_eq!(oom.next(counts(&[("late", 0)])), None);
        assert_eq!(oom.next(counts(&[("late", 1)])).as_deref(), Some("late"));
    }

    #[test]
    fn a_kill_queued_at_exit_is_reported_once_and_not_again_at_removal() {
        let mut oom = OomKills::default();
        assert!(oom.queue("c", 1));
        assert!(!oom.queue("c", 1), "the same kill is queued once");
        assert_eq!(oom.next(counts(&[("c", 1)])).as_deref(), Some("c"));
        assert_eq!(oom.next(counts(&[("c", 1)])), None);
        oom.remove("c", 1);
        assert_eq!(oom.next(counts(&[])), None);
    }

    #[test]
    fn a_kill_of_a_container_removed_before_anyone_asked_is_still_reported_once() {
        let mut oom = OomKills::default();
        assert_eq!(oom.next(counts(&[("gone", 0), ("other", 0)])), None);
        // Killed and removed between two polls (`ctr run --rm`).
        oom.remove("gone", 1);
        assert_eq!(oom.next(counts(&[("other", 0)])).as_deref(), Some("gone"));
        assert_eq!(oom.next(counts(&[("other", 0)])), None);
        // Removed with its one kill already reported: nothing more.
        assert_eq!(oom.next(counts(&[("other", 1)])).as_deref(), Some("other"));
        oom.remove("other", 1);
        assert_eq!(oom.next(counts(&[])), None);
    }
}
