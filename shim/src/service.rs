//! containerd's Task service (v2) for one pod: every call is forwarded to the pod VM's agent.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::MessageDyn;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use contrast_agent_protocol::{agent, oci};

use crate::error::ShimError;
use crate::events::{self, EventQueue};
use crate::io::Streams;
use crate::pod::{self, Pod};
use crate::task_state::{StateCell, Transition};
use crate::{rootfs, spec};

type TResult<T> = ttrpc::Result<T>;

/// Exit status reported for tasks whose VM died (kata uses the same).
pub const VM_DIED_STATUS: u32 = 255;
/// How long an agent call that failed on a broken connection waits for the VM's exit to be
/// recorded before the failure counts (QEMU's death reaches the agent connection first).
const VM_EXIT_GRACE: std::time::Duration = std::time::Duration::from_secs(2);
/// How long `Shutdown` waits for queued events to reach containerd before the daemon exits.
const EVENT_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
/// The one signal a process cannot refuse.
const SIGKILL: u32 = 9;
/// Exit status of a process that could not be started (shell: "cannot execute").
const START_FAILED_STATUS: u32 = 126;

struct Proc {
    exec_id: String,
    terminal: bool,
    stdin: String,
    stdout: String,
    stderr: String,
    /// Exec processes: the process spec until Start.
    spec: Mutex<Option<oci::Process>>,
    /// Status and exit in one: see [`crate::task_state`].
    state: StateCell,
    streams: tokio::sync::Mutex<Option<Streams>>,
    /// Held shared by every Kill in flight; its TaskExit waits for them (see `watch_exit`).
    kills: tokio::sync::RwLock<()>,
}

impl Proc {
    fn new(exec_id: &str, terminal: bool, stdin: &str, stdout: &str, stderr: &str) -> Arc<Proc> {
        Arc::new(Proc {
            exec_id: exec_id.into(),
            terminal,
            stdin: stdin.into(),
            stdout: stdout.into(),
            stderr: stderr.into(),
            spec: Mutex::new(None),
            state: StateCell::default(),
            streams: tokio::sync::Mutex::new(None),
            kills: tokio::sync::RwLock::new(()),
        })
    }

    fn status(&self) -> Status {
        self.state.get().status()
    }

    fn exited(&self) -> Option<(u32, Timestamp)> {
        self.state.get().exit()
    }

    /// Records the exit once; returns false when it was already recorded.
    fn record_exit(&self, status: u32) -> bool {
        self.state.record_exit(status)
    }

    /// Applies a lifecycle step the guest has already taken; refused when the process exited
    /// meanwhile (its VM died), which the caller reports instead of reviving it.
    fn advance(&self, id: &str, t: Transition) -> Result<(), ShimError> {
        self.state.apply(t).map(drop).map_err(|e| ShimError::FailedPrecondition(format!("{id}: {e}")))
    }
}

/// A confidential container's guest spec, storages and copied volumes.
struct ConfidentialContainer {
    oci: contrast_agent_protocol::oci::Spec,
    storages: Vec<agent::Storage>,
    volumes: Vec<crate::copied_files::CopiedVolume>,
}

struct Ctr {
    id: String,
    bundle: String,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
    /// Keeps the container's copied volumes up to date (confidential path), until delete.
    volume_watch: Mutex<Option<crate::copied_files::VolumeWatch>>,
    /// Held by the container's delete: containerd's retry can meet an abandoned create's own
    /// delete still running, and the second waits, then finds the container gone.
    deleting: tokio::sync::Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Inner {
    namespace: String,
    events: EventQueue,
    exit: Arc<ExitSignal>,
    /// containerd's gRPC socket (the image layers of confidential pods are read there).
    containerd: String,
    pod: tokio::sync::Mutex<Option<Arc<Pod>>>,
    ctrs: Mutex<HashMap<String, Arc<Ctr>>>,
    /// Set, under the pod lock, by the `Shutdown` that ends the daemon: a `Create` that was
    /// waiting for that lock must not boot a VM in a process about to exit.
    shutting_down: std::sync::atomic::AtomicBool,
    /// `Create`s that have a pod (booted or found, under the pod lock) and have not yet
    /// recorded their container or failed: the pod is theirs too, though `ctrs` does not show
    /// it yet. Raised only under the pod lock; the pod is ended only under that lock with
    /// `ctrs` empty and this zero.
    creating: std::sync::atomic::AtomicUsize,
}

/// One `Create` counted in [`Inner::creating`] until it is dropped.
struct Creating<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> Creating<'a> {
    /// Call with the pod lock held.
    fn start(count: &'a std::sync::atomic::AtomicUsize) -> Self {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Creating(count)
    }
}

impl Drop for Creating<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[derive(Clone)]
pub struct TaskService(Arc<Inner>);

impl TaskService {
    pub fn new(namespace: &str, containerd: &str, publisher: RemotePublisher, exit: Arc<ExitSignal>) -> Self {
        TaskService(Arc::new(Inner {
            namespace: namespace.into(),
            events: EventQueue::start(events::Containerd { publisher, namespace: namespace.into() }),
            exit,
            containerd: containerd.into(),
            pod: tokio::sync::Mutex::new(None),
            ctrs: Mutex::new(HashMap::new()),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            creating: std::sync::atomic::AtomicUsize::new(0),
        }))
    }
}

impl Inner {
    /// containerd's `Shutdown`: with no task left and none being created, the pod is torn
    /// down and the daemon exits. Decided under the pod lock, which a `Create` holds while it
    /// boots or finds the pod's VM: a create either got the pod first (and counts in
    /// `creating` until its container is recorded, so the daemon stays; containerd shuts it
    /// down again after that task's delete or failed create) or finds the daemon shutting
    /// down and boots nothing. Whether the daemon is exiting.
    async fn shutdown(&self) -> bool {
        let mut pod = self.pod.lock().await;
        if !self.unused() {
            return false;
        }
        self.shutting_down.store(true, std::sync::atomic::Ordering::SeqCst);
        if let Some(pod) = pod.take() {
            pod.teardown().await;
        }
        drop(pod);
        self.events.flush(EVENT_FLUSH_TIMEOUT).await;
        self.exit.signal();
        true
    }

    /// No container and none being created: nothing needs the pod. Meaningful under the pod
    /// lock only.
    fn unused(&self) -> bool {
        lock(&self.ctrs).is_empty() && self.creating.load(std::sync::atomic::Ordering::SeqCst) == 0
    }

    /// Ends the pod if nothing needs it any more (after a delete or a failed create).
    async fn end_pod_if_unused(&self) {
        let mut slot = self.pod.lock().await;
        if self.unused() {
            if let Some(pod) = slot.take() {
                pod.teardown().await;
            }
        }
    }

    /// Queues an event for containerd (never waits; see [`crate::events`]).
    fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        self.events.send(topic, event);
    }

    fn ctr(&self, id: &str) -> Result<Arc<Ctr>, ShimError> {
        lock(&self.ctrs).get(id).cloned().ok_or_else(|| ShimError::NotFound(format!("container {id}")))
    }

    fn proc(&self, id: &str, exec_id: &str) -> Result<(Arc<Ctr>, Arc<Proc>), ShimError> {
        let c = self.ctr(id)?;
        if exec_id.is_empty() {
            let p = c.init.clone();
            return Ok((c, p));
        }
        let p = lock(&c.execs).get(exec_id).cloned().ok_or_else(|| ShimError::NotFound(format!("exec {exec_id}")))?;
        Ok((c, p))
    }

    async fn pod(&self) -> Result<Arc<Pod>, ShimError> {
        self.pod.lock().await.clone().ok_or_else(|| ShimError::FailedPrecondition("pod VM is not running".into()))
    }

    /// [`explain`] with this shim's pod. Only an agent's error needs the pod: any other is
    /// answered at once, not after a boot that holds the pod lock.
    async fn explain(&self, e: ShimError) -> ShimError {
        if !matches!(e, ShimError::Agent(_)) {
            return e;
        }
        explain(self.pod().await.ok(), e).await
    }

    fn task_pid(&self, pod: &Pod) -> u32 {
        pod.vm.qemu_pid()
    }

    /// Waits for a started process to exit in the guest, drains its output, publishes TaskExit.
    fn watch_exit(self: &Arc<Self>, pod: Arc<Pod>, ctr: Arc<Ctr>, proc_: Arc<Proc>) {
        let inner = self.clone();
        tokio::spawn(async move {
            let mut req = agent::WaitProcessRequest::new();
            req.container_id = ctr.id.clone();
            req.exec_id = proc_.exec_id.clone();
            let status = match pod.agent.wait_process(&req).await {
                Ok(r) => r.status as u32,
                Err(e) => {
                    tracing::warn!(container = %ctr.id, error = %e, "wait failed");
                    VM_DIED_STATUS
                }
            };
            if let Some(streams) = proc_.streams.lock().await.as_mut() {
                // Nothing reads stdin any more; and a child left holding the output (a
                // terminal exec's background job) must not keep the pump waiting with it.
                streams.stop_stdin();
                streams.drain().await;
            }
            if proc_.record_exit(status) {
                // The guest can report the exit before it answers the signal that caused it.
                // On the exit event containerd 1.6 deletes the task and closes the task's
                // connection, and a Kill answer still on its way is lost: kubelet's
                // StopPodSandbox failed with "ttrpc: closed". Kills in flight answer first
                // (they return as soon as the exit is recorded).
                drop(proc_.kills.write().await);
                inner.publish_exit(&ctr, &proc_, inner.task_pid(&pod));
            }
        });
    }

    fn publish_exit(&self, ctr: &Ctr, proc_: &Proc, pid: u32) {
        let Some((status, at)) = proc_.exited() else { return };
        let event = ev::TaskExit {
            container_id: ctr.id.clone(),
            id: if proc_.exec_id.is_empty() { ctr.id.clone() } else { proc_.exec_id.clone() },
            pid,
            exit_status: status,
            exited_at: Some(at).into(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event));
    }

    /// Forwards the guest's OOM kills as TaskOOM events for as long as the pod runs.
    fn watch_oom(self: &Arc<Self>, pod: Arc<Pod>) {
        let inner = self.clone();
        tokio::spawn(async move {
            // Ends with an error once the VM or the connection is gone.
            while let Ok(event) = pod.agent.get_oom_event().await {
                tracing::warn!(container = %event.container_id, "out of memory kill in the guest");
                let e = ev::TaskOOM { container_id: event.container_id, ..Default::default() };
                inner.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(e));
            }
        });
    }

    /// QEMU died: every process that has not exited gets status 255.
    fn watch_vm(self: &Arc<Self>, pod: Arc<Pod>) {
        let inner = self.clone();
        let mut exited = pod.vm.exited();
        tokio::spawn(async move {
            let Ok(exit) = exited.wait_for(|e| e.is_some()).await.map(|e| e.clone()) else { return };
            // An expected exit with tasks left is the shim ending a pod whose agent stopped
            // answering (see `kill`); after a teardown there are none.
            if !exit.as_ref().is_some_and(|e| e.expected) {
                tracing::error!(pod = %pod.id, exit = ?exit, "pod VM died; failing its tasks");
            }
            let ctrs: Vec<Arc<Ctr>> = lock(&inner.ctrs).values().cloned().collect();
            for c in ctrs {
                let procs: Vec<Arc<Proc>> =
                    std::iter::once(c.init.clone()).chain(lock(&c.execs).values().cloned()).collect();
                for p in procs {
                    if p.status() != Status::CREATED || p.exec_id.is_empty() {
                        if let Some(s) = p.streams.lock().await.as_mut() {
                            s.abort();
                        }
                        if p.record_exit(VM_DIED_STATUS) {
                            inner.publish_exit(&c, &p, inner.task_pid(&pod));
                        }
                    }
                }
            }
        });
    }

    async fn create(self: &Arc<Self>, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse, ShimError> {
        let started = std::time::Instant::now();
        let result = self.create_inner(req).await;
        // Phase timing, read by `make bench` from containerd's log.
        tracing::info!(create_ms = started.elapsed().as_millis() as u64, ok = result.is_ok(), "create done");
        result
    }

    async fn create_inner(self: &Arc<Self>, req: api::CreateTaskRequest) -> Result<api::CreateTaskResponse, ShimError> {
        if lock(&self.ctrs).contains_key(&req.id) {
            return Err(ShimError::AlreadyExists(format!("container {}", req.id)));
        }
        let bundle = PathBuf::from(&req.bundle);
        let spec = oci_spec::runtime::Spec::load(bundle.join("config.json"))
            .map_err(|e| ShimError::InvalidArgument(format!("bundle config.json: {e}")))?;
        // Pod input the guest could never honour is refused before a VM is booted for it.
        spec::refuse_host_propagation(&spec).map_err(ShimError::InvalidArgument)?;
        spec::refuse_host_devices(&spec).map_err(ShimError::InvalidArgument)?;
        let sandbox_id = spec::sandbox_id(&spec, &req.id);
        let mut pod_guard = self.pod.lock().await;
        if self.shutting_down.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(ShimError::FailedPrecondition(format!(
                "container {}: the shim of pod {sandbox_id} is shutting down (its last task was deleted)",
                req.id
            )));
        }
        let creating = Creating::start(&self.creating);
        let pod = match pod_guard.as_ref() {
            Some(p) => {
                pod::record_config_path(&bundle, &p.config_path)?;
                pod::record_state_dir(&bundle, p.vm.state_dir())?;
                p.clone()
            }
            None => {
                let config_path = runtime_config_path(req.options.as_ref());
                let (config_path, config) = pod::resolve_config(config_path.as_deref())?;
                // Before anything is started: `delete` after a SIGKILLed shim finds the pod
                // through this even when the config is not where it would look by itself.
                pod::record_config_path(&bundle, &config_path)?;
                pod::record_state_dir(&bundle, &pod::state_dir(&config, &self.namespace, &sandbox_id))?;
                let annotations: BTreeMap<String, String> =
                    spec.annotations().clone().unwrap_or_default().into_iter().collect();
                let sizing = pod::PodSpec {
                    annotations: &annotations,
                    resources: spec::pod_resources(&spec).map_err(ShimError::InvalidArgument)?,
                    hostname: spec.hostname().as_deref().filter(|h| !h.is_empty()),
                    netns: spec::pod_network_namespace(&spec).map_err(ShimError::InvalidArgument)?,
                };
                if let Some(netns) = &sizing.netns {
                    spec::refuse_node_network_namespace(netns).map_err(ShimError::InvalidArgument)?;
                }
                pod::node_can_run(&config)?;
                let pod = Arc::new(Pod::boot(&config, &config_path, &self.namespace, &sandbox_id, sizing).await?);
                self.watch_vm(pod.clone());
                self.watch_oom(pod.clone());
                *pod_guard = Some(pod.clone());
                pod
            }
        };
        drop(pod_guard);
        let result = match self.create_in_pod(&pod, &req, &spec).await {
            Ok(r) => Ok(r),
            Err(e) => Err(explain(Some(pod.clone()), e).await),
        };
        drop(creating);
        if result.is_err() {
            // A pod booted for this container only: nothing must stay behind.
            self.end_pod_if_unused().await;
        }
        result
    }

    /// The guest spec and storages of a container on the confidential path: the sandbox
    /// runs the guest's own pause; any other container its image's verified layers. Host
    /// bind mounts cannot reach such a guest (no host share): the pod's hosts, hostname and
    /// resolv.conf and its configMap, secret, projected and downwardAPI volumes (and subPaths
    /// of them) are copied in ([`crate::copied_files`]), emptyDirs are the guest's own, any
    /// other is left out.
    async fn confidential_container(
        &self,
        pod: &Arc<Pod>,
        id: &str,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<ConfidentialContainer, ShimError> {
        let annotations = spec.annotations().clone().unwrap_or_default();
        let (mounts, volumes) =
            crate::copied_files::guest_mounts(&pod.agent, id, spec.mounts().as_deref().unwrap_or_default()).await?;
        if annotations.get("io.kubernetes.cri.container-type").map(String::as_str) == Some("sandbox") {
            let mut oci =
                spec::convert(spec, crate::layers::GUEST_PAUSE_ROOT, &mounts).map_err(ShimError::InvalidArgument)?;
            if let Some(p) = oci.Process.as_mut() {
                p.Args = crate::layers::GUEST_PAUSE_ARGS.iter().map(|a| a.to_string()).collect();
            }
            return Ok(ConfidentialContainer { oci, storages: Vec::new(), volumes });
        }
        let image = annotations.get(crate::layers::IMAGE_NAME_ANNOTATION).ok_or_else(|| {
            ShimError::FailedPrecondition(format!(
                "container {id}: a confidential pod's containers run verified image layers, and this one names no image \
                 ({} annotation; CRI sets it, `ctr run` does not)",
                crate::layers::IMAGE_NAME_ANNOTATION
            ))
        })?;
        let config = &pod.config;
        let result = crate::layers::container_rootfs(
            pod,
            std::path::Path::new(&self.containerd),
            &self.namespace,
            &config.runtime.layer_cache_dir,
            id,
            image,
        )
        .await;
        let (storages, rootfs) = match result {
            Ok(r) => r,
            Err(e) => {
                crate::layers::detach(pod, id).await;
                return Err(e);
            }
        };
        match spec::convert(spec, &rootfs, &mounts) {
            Ok(oci) => Ok(ConfidentialContainer { oci, storages, volumes }),
            Err(e) => {
                crate::layers::detach(pod, id).await;
                Err(ShimError::InvalidArgument(e))
            }
        }
    }

    async fn create_in_pod(
        self: &Arc<Self>,
        pod: &Arc<Pod>,
        req: &api::CreateTaskRequest,
        spec: &oci_spec::runtime::Spec,
    ) -> Result<api::CreateTaskResponse, ShimError> {
        let (host_dir, guest_dir) = pod.new_instance_dirs(&req.id);
        let undo_share = || rootfs::unmount_all(&pod.container_dir(&req.id));
        let mut creq = agent::CreateContainerRequest::new();
        let mut volumes = Vec::new();
        if pod.confidential() {
            let c = match self.confidential_container(pod, &req.id, spec).await {
                Ok(c) => c,
                Err(e) => {
                    // Files copied in for it before the failure go: the agent removes what
                    // was copied for an id it has no container of.
                    remove_in_guest(pod, &req.id, "discarding the copies of a failed create").await;
                    return Err(e);
                }
            };
            creq.OCI = Some(c.oci).into();
            creq.storages = c.storages;
            volumes = c.volumes;
        } else {
            let host_rootfs = host_dir.join("rootfs");
            rootfs::mount_rootfs(&req.rootfs, std::path::Path::new(&req.bundle), &host_rootfs).map_err(|e| {
                undo_share();
                ShimError::InvalidArgument(e)
            })?;
            let mounts = rootfs::share_bind_mounts(
                spec.mounts().as_deref().unwrap_or_default(),
                &host_dir.join("mounts"),
                &format!("{guest_dir}/mounts"),
            )
            .map_err(|e| {
                undo_share();
                ShimError::InvalidArgument(e)
            })?;
            let oci = spec::convert(spec, &format!("{guest_dir}/rootfs"), &mounts).map_err(|e| {
                undo_share();
                ShimError::InvalidArgument(e)
            })?;
            creq.OCI = Some(oci).into();
        }
        let undo = || async {
            undo_share();
            crate::layers::detach(pod, &req.id).await;
        };
        creq.container_id = req.id.clone();
        creq.exec_id = req.id.clone();
        creq.sandbox_pidns = spec::shares_pod_pid_namespace(spec);
        let agent_started = std::time::Instant::now();
        if let Err(e) = pod.agent.create_container(&creq).await {
            // No answer in time: the guest may still finish the create (it runs its creates to
            // their end, waits for one before removing its id, and removes it when it ends if
            // the wait runs out).
            let timed_out = matches!(e.code, ttrpc::Code::DEADLINE_EXCEEDED | ttrpc::Code::UNAVAILABLE);
            let released = !timed_out || remove_in_guest(pod, &req.id, "removing a create that timed out").await;
            if released {
                undo().await;
            } else {
                // The guest may still have its layers mounted: its disks stay plugged (and
                // their targets taken) until the pod ends, rather than pulled from under it.
                undo_share();
            }
            if pod.confidential() {
                crate::layers::forget_refused_layer(&pod.config.runtime.layer_cache_dir, &e.to_string());
            }
            return Err(e.into());
        }
        tracing::info!(guest_create_ms = agent_started.elapsed().as_millis() as u64, "container created in the guest");
        let init = Proc::new("", req.terminal, &req.stdin, &req.stdout, &req.stderr);
        let streams = match Streams::start(
            &pod.agent,
            &self.namespace,
            &req.id,
            "",
            &req.stdin,
            &req.stdout,
            &req.stderr,
            req.terminal,
        )
        .await
        {
            Ok(streams) => streams,
            Err(e) => {
                // The guest has the container already: it goes with the rest.
                remove_in_guest(pod, &req.id, "removing the container after its stdio failed").await;
                undo().await;
                return Err(ShimError::Io { what: "opening stdio FIFOs".into(), source: e });
            }
        };
        *init.streams.lock().await = Some(streams);
        let volume_watch = (!volumes.is_empty()).then(|| {
            let interval = std::time::Duration::from_millis(pod.config.runtime.volume_sync_interval_ms);
            crate::copied_files::watch(pod.agent.clone(), req.id.clone(), volumes, interval)
        });
        let ctr = Arc::new(Ctr {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            init,
            execs: Mutex::new(HashMap::new()),
            volume_watch: Mutex::new(volume_watch),
            deleting: tokio::sync::Mutex::new(()),
        });
        lock(&self.ctrs).insert(req.id.clone(), ctr);
        let pid = self.task_pid(pod);
        let event = ev::TaskCreate {
            container_id: req.id.clone(),
            bundle: req.bundle.clone(),
            rootfs: req.rootfs.clone(),
            io: Some(ev::TaskIO {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
                ..Default::default()
            })
            .into(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(event));
        Ok(api::CreateTaskResponse { pid, ..Default::default() })
    }

    async fn start(self: &Arc<Self>, req: api::StartRequest) -> Result<api::StartResponse, ShimError> {
        let (ctr, p) = self.proc(&req.id, &req.exec_id)?;
        let pod = self.pod().await?;
        if p.status() != Status::CREATED {
            return Err(ShimError::FailedPrecondition(format!("{} is not in created state", req.id)));
        }
        if req.exec_id.is_empty() {
            let mut sreq = agent::StartContainerRequest::new();
            sreq.container_id = req.id.clone();
            pod.agent.start_container(&sreq).await?;
        } else {
            let process = lock(&p.spec).take().ok_or_else(|| ShimError::Internal("exec has no process".into()))?;
            let mut ereq = agent::ExecProcessRequest::new();
            ereq.container_id = req.id.clone();
            ereq.exec_id = req.exec_id.clone();
            ereq.process = Some(process).into();
            pod.agent.exec_process(&ereq).await?;
            let streams = Streams::start(
                &pod.agent,
                &self.namespace,
                &req.id,
                &req.exec_id,
                &p.stdin,
                &p.stdout,
                &p.stderr,
                p.terminal,
            )
            .await;
            let streams = match streams {
                Ok(streams) => streams,
                Err(e) => {
                    // The guest runs the process already: it does not outlive the failed start.
                    stop_guest_exec(&pod.agent, &req.id, &req.exec_id).await;
                    return Err(ShimError::Io { what: "opening stdio FIFOs".into(), source: e });
                }
            };
            *p.streams.lock().await = Some(streams);
        }
        // The VM may have died while the guest started it: then it stays STOPPED (255).
        p.advance(&req.id, Transition::Start)?;
        self.watch_exit(pod.clone(), ctr.clone(), p.clone());
        let pid = self.task_pid(&pod);
        if req.exec_id.is_empty() {
            let e = ev::TaskStart { container_id: req.id.clone(), pid, ..Default::default() };
            self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(e));
        } else {
            let e = ev::TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            };
            self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(e));
        }
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    async fn delete(self: &Arc<Self>, req: api::DeleteRequest) -> Result<api::DeleteResponse, ShimError> {
        let (ctr, p) = self.proc(&req.id, &req.exec_id)?;
        let pod = self.pod().await.ok();
        let pid = pod.as_ref().map_or(0, |p| self.task_pid(p));
        if p.status() == Status::RUNNING || p.status() == Status::PAUSED {
            return Err(ShimError::FailedPrecondition(format!("{} is still running; kill it first", req.id)));
        }
        let (status, at) = p.exited().unwrap_or((0, Timestamp::now()));
        if !req.exec_id.is_empty() {
            lock(&ctr.execs).remove(&req.exec_id);
            if let Some(s) = p.streams.lock().await.as_mut() {
                s.abort();
            }
            return Ok(api::DeleteResponse {
                pid,
                exit_status: status,
                exited_at: Some(at).into(),
                ..Default::default()
            });
        }
        let _deleting = ctr.deleting.lock().await;
        if !lock(&self.ctrs).get(&req.id).is_some_and(|c| Arc::ptr_eq(c, &ctr)) {
            return Err(ShimError::NotFound(format!("container {} (deleted meanwhile)", req.id)));
        }
        if let Some(s) = p.streams.lock().await.as_mut() {
            s.abort();
        }
        let watch = lock(&ctr.volume_watch).take();
        if let Some(w) = watch {
            w.stop().await;
        }
        if let Some(pod) = &pod {
            let mut rreq = agent::RemoveContainerRequest::new();
            rreq.container_id = req.id.clone();
            if let Err(e) = pod.agent.remove_container(&rreq).await {
                // The agent's connection can break a moment before QEMU is reaped: a dead
                // VM has nothing left to remove.
                if !e.is_unknown_container() && !vm_gone(pod).await {
                    return Err(e.into());
                }
            }
            rootfs::unmount_all(&pod.container_dir(&req.id));
            crate::layers::detach(pod, &req.id).await;
        }
        lock(&self.ctrs).remove(&req.id);
        let e = ev::TaskDelete {
            container_id: req.id.clone(),
            id: req.id.clone(),
            pid,
            exit_status: status,
            exited_at: Some(at.clone()).into(),
            ..Default::default()
        };
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(e));
        if lock(&self.ctrs).is_empty() {
            self.end_pod_if_unused().await;
        }
        Ok(api::DeleteResponse { pid, exit_status: status, exited_at: Some(at).into(), ..Default::default() })
    }

    async fn kill(&self, req: api::KillRequest) -> Result<(), ShimError> {
        let (_, p) = self.proc(&req.id, &req.exec_id)?;
        let _in_flight = p.kills.read().await;
        if p.exited().is_some() {
            return Ok(());
        }
        let pod = self.pod().await?;
        let mut kreq = agent::SignalProcessRequest::new();
        kreq.container_id = req.id.clone();
        // kata's convention: an empty exec id signals every process of the container, so
        // `all` (for the init) is sent as such (kata runtime, `signalProcess`).
        kreq.exec_id = if req.all { String::new() } else { req.exec_id.clone() };
        kreq.signal = req.signal;
        let answer = tokio::select! {
            answer = pod.agent.signal_process(&kreq) => answer,
            // Exited meanwhile (most often of this very signal): nothing is left to signal,
            // and the exit's TaskExit waits for this answer.
            _ = p.state.wait_exit() => {
                tracing::debug!(container = %req.id, exec = %req.exec_id, "exited before the agent answered the signal");
                return Ok(());
            }
        };
        match answer {
            Ok(_) => Ok(()),
            Err(e) if e.is_unknown_container() => Ok(()),
            // The process ended while the signal was on its way: its exit can reach containerd,
            // which deletes the pod's last task and so stops the VM, before the agent's answer
            // to this signal does. A process that has exited needs no signal (runc's shim says
            // the same), and neither does one whose VM is gone.
            Err(e)
                if lost_to_an_exit(&e, p.exited().is_some())
                    || (e.code == ttrpc::Code::UNAVAILABLE && vm_gone(&pod).await) =>
            {
                tracing::info!(container = %req.id, error = %e, "signal not answered: the process or its VM has ended");
                Ok(())
            }
            // SIGKILL cannot be refused. An agent that does not even answer it within the
            // request timeout (guest frozen, QEMU hung) has lost the pod: ending the VM ends
            // every process in it (status 255), and delete can clean up.
            Err(e) if req.signal == SIGKILL && e.code == ttrpc::Code::DEADLINE_EXCEEDED => {
                tracing::error!(container = %req.id, error = %e, "the agent does not answer SIGKILL; killing the pod VM");
                let exit = pod.vm.kill().await;
                tracing::info!(pod = %pod.id, %exit, "pod VM killed");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Kills an exec the guest started and reaps it there, so that the agent forgets it.
async fn stop_guest_exec(agent: &contrast_agent_protocol::AgentClient, id: &str, exec_id: &str) {
    let mut sreq = agent::SignalProcessRequest::new();
    sreq.container_id = id.into();
    sreq.exec_id = exec_id.into();
    sreq.signal = SIGKILL;
    if let Err(e) = agent.signal_process(&sreq).await {
        tracing::warn!(container = %id, exec = %exec_id, error = %e, "killing the exec after its stdio failed");
        return;
    }
    let mut wreq = agent::WaitProcessRequest::new();
    wreq.container_id = id.into();
    wreq.exec_id = exec_id.into();
    if let Err(e) = agent.wait_process(&wreq).await {
        tracing::warn!(container = %id, exec = %exec_id, error = %e, "reaping the exec after its stdio failed");
    }
}

/// Whether a failed signal lost a race with the process's own exit: the connection broke
/// (the VM is stopping because that exit deleted the pod's last task) and the exit is
/// recorded by now.
fn lost_to_an_exit(e: &contrast_agent_protocol::AgentError, exited: bool) -> bool {
    exited && e.code == ttrpc::Code::UNAVAILABLE
}

/// An agent call that failed on a broken connection because the VM died says so, with the
/// VM's end (status, console), instead of the transport's "early eof". One that got no answer
/// in time keeps its code and adds what the running VM shows (console, vCPU threads): a
/// guest spinning reads differently from one halted waiting for an interrupt.
async fn explain(pod: Option<Arc<Pod>>, e: ShimError) -> ShimError {
    let ShimError::Agent(a) = &e else { return e };
    let Some(pod) = pod else { return e };
    if a.code == ttrpc::Code::DEADLINE_EXCEEDED && pod.vm.exited().borrow().is_none() {
        let message = format!("{}; the pod VM is running: {}", a.message, pod.vm.hang_report());
        return ShimError::Agent(contrast_agent_protocol::AgentError { message, ..a.clone() });
    }
    if a.code != ttrpc::Code::UNAVAILABLE {
        return e;
    }
    if !vm_gone(&pod).await {
        return e;
    }
    let exit = pod.vm.exited().borrow().clone();
    match exit {
        Some(exit) => ShimError::VmGone { method: a.method, exit: exit.to_string() },
        None => e,
    }
}

/// An agent call's result, its error explained as by [`explain`].
async fn explained<T>(pod: &Arc<Pod>, r: Result<T, contrast_agent_protocol::AgentError>) -> Result<T, ShimError> {
    match r {
        Ok(v) => Ok(v),
        Err(e) => Err(explain(Some(pod.clone()), ShimError::from(e)).await),
    }
}

/// Whether the pod's VM has exited, waiting [`VM_EXIT_GRACE`] for its supervisor to notice.
async fn vm_gone(pod: &Pod) -> bool {
    let mut exited = pod.vm.exited();
    let gone = matches!(tokio::time::timeout(VM_EXIT_GRACE, exited.wait_for(|e| e.is_some())).await, Ok(Ok(_)));
    gone
}

/// `runtimeoptions.v1.Options.config_path` (field 2) from the task's options, if any.
fn runtime_config_path(options: Option<&Any>) -> Option<String> {
    let any = options?;
    let mut input = protobuf::CodedInputStream::from_bytes(&any.value);
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        let (field, wire) = (tag >> 3, tag & 7);
        if field == 2 && wire == 2 {
            return input.read_string().ok();
        }
        if input.skip_field(protobuf::rt::WireType::new(wire).unwrap_or(protobuf::rt::WireType::Varint)).is_err() {
            return None;
        }
    }
    None
}

/// Removes container `id` from the guest after a create of it failed: whether the guest has
/// none now (removed, or never there). A failure is logged as `what`.
async fn remove_in_guest(pod: &Pod, id: &str, what: &str) -> bool {
    let mut req = agent::RemoveContainerRequest::new();
    req.container_id = id.to_owned();
    match pod.agent.remove_container(&req).await {
        Ok(_) => true,
        Err(e) if e.is_unknown_container() => true,
        Err(e) => {
            tracing::warn!(container = %id, error = %e, "{what}");
            false
        }
    }
}

/// Runs a handler's work in a task of its own, to its end. The ttrpc server drops a
/// handler at its request's deadline (containerd passes its context's: CRI's StartContainer,
/// 10 s for the delete after an exit, 3 s for Shutdown), and a create, start or delete cut
/// off at an await left a container half set up or half torn down: its share mounted and
/// layer disks attached with no record, a process running in the guest that the shim still
/// had as created, disks unplugged from nobody's list.
async fn to_the_end<T: Send + 'static>(
    work: impl std::future::Future<Output = TResult<T>> + Send + 'static,
) -> TResult<T> {
    tokio::spawn(work).await.unwrap_or_else(|e| Err(ShimError::Internal(format!("request handler: {e}")).into()))
}

/// Set when a handler is dropped before its work's answer reached it ([`CallerGone::here`]
/// disarms it).
struct CallerGone(Option<Arc<std::sync::atomic::AtomicBool>>);

impl CallerGone {
    fn here(mut self) {
        self.0 = None;
    }
}

impl Drop for CallerGone {
    fn drop(&mut self) {
        if let Some(gone) = &self.0 {
            gone.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

impl Inner {
    /// A `Create` that ended after containerd stopped waiting for it: containerd counts the
    /// task as never created (its cleanup `Delete` found nothing yet, its `Shutdown` was
    /// refused while the create ran), so nobody would ever delete it or end the daemon. A
    /// created task is deleted here, and the daemon ends if that leaves it nothing.
    async fn abandoned_create(self: &Arc<Self>, id: &str, created: bool) {
        tracing::warn!(id, created, "containerd gave up on this create before it ended; undoing it");
        if created {
            let req = api::DeleteRequest { id: id.to_owned(), ..Default::default() };
            if let Err(e) = self.delete(req).await {
                tracing::warn!(id, error = %e, "deleting the abandoned task");
            }
        }
        self.shutdown().await;
    }
}

#[async_trait]
impl Task for TaskService {
    async fn create(&self, _: &TtrpcContext, req: api::CreateTaskRequest) -> TResult<api::CreateTaskResponse> {
        tracing::info!(id = %req.id, "create");
        let inner = self.0.clone();
        let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let caller = CallerGone(Some(gone.clone()));
        let result = to_the_end(async move {
            let id = req.id.clone();
            let result = inner.create(req).await;
            if gone.load(std::sync::atomic::Ordering::SeqCst) {
                inner.abandoned_create(&id, result.is_ok()).await;
            }
            Ok(result?)
        })
        .await;
        caller.here();
        result
    }

    async fn start(&self, _: &TtrpcContext, req: api::StartRequest) -> TResult<api::StartResponse> {
        let inner = self.0.clone();
        to_the_end(async move {
            let started = std::time::Instant::now();
            match inner.start(req.clone()).await {
                Ok(resp) => {
                    tracing::info!(start_ms = started.elapsed().as_millis() as u64, "start done");
                    Ok(resp)
                }
                Err(e) => {
                    // containerd waits on a process before starting it; a process that cannot
                    // start must count as exited or that Wait never returns.
                    if let Ok((_, p)) = inner.proc(&req.id, &req.exec_id) {
                        if p.status() == Status::CREATED {
                            p.record_exit(START_FAILED_STATUS);
                        }
                    }
                    Err(inner.explain(e).await.into())
                }
            }
        })
        .await
    }

    async fn delete(&self, _: &TtrpcContext, req: api::DeleteRequest) -> TResult<api::DeleteResponse> {
        let inner = self.0.clone();
        to_the_end(async move {
            match inner.delete(req).await {
                Ok(r) => Ok(r),
                Err(e) => Err(inner.explain(e).await.into()),
            }
        })
        .await
    }

    async fn kill(&self, _: &TtrpcContext, req: api::KillRequest) -> TResult<api::Empty> {
        match self.0.kill(req).await {
            Ok(()) => Ok(api::Empty::new()),
            Err(e) => Err(self.0.explain(e).await.into()),
        }
    }

    async fn wait(&self, _: &TtrpcContext, req: api::WaitRequest) -> TResult<api::WaitResponse> {
        let (_, p) = self.0.proc(&req.id, &req.exec_id)?;
        let (status, at) = p.state.wait_exit().await;
        Ok(api::WaitResponse { exit_status: status, exited_at: Some(at).into(), ..Default::default() })
    }

    async fn state(&self, _: &TtrpcContext, req: api::StateRequest) -> TResult<api::StateResponse> {
        let (c, p) = self.0.proc(&req.id, &req.exec_id)?;
        let pid = match self.0.pod().await {
            Ok(pod) => self.0.task_pid(&pod),
            Err(_) => 0,
        };
        let (exit_status, exited_at) = p.exited().map_or((0, None), |(s, t)| (s, Some(t)));
        Ok(api::StateResponse {
            // The process's own id: an exec is named by its exec id (as runc's shim does).
            id: if req.exec_id.is_empty() { req.id.clone() } else { req.exec_id.clone() },
            bundle: c.bundle.clone(),
            pid,
            status: p.status().into(),
            stdin: p.stdin.clone(),
            stdout: p.stdout.clone(),
            stderr: p.stderr.clone(),
            terminal: p.terminal,
            exit_status,
            exited_at: exited_at.into(),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    /// The container's processes as guest pids (`ListProcesses`, format `json`). When the
    /// guest cannot tell (VM gone, policy denies it), the task pid: containerd 1.7+ takes an
    /// empty list for a task it does not know as a leaked shim.
    async fn pids(&self, _: &TtrpcContext, req: api::PidsRequest) -> TResult<api::PidsResponse> {
        self.0.ctr(&req.id)?;
        let pod = self.0.pod().await?;
        let mut lreq = agent::ListProcessesRequest::new();
        lreq.container_id = req.id.clone();
        lreq.format = "json".into();
        let guest = match pod.agent.list_processes(&lreq).await {
            Ok(resp) => serde_json::from_slice::<Vec<u32>>(&resp.process_list).unwrap_or_default(),
            Err(e) => {
                tracing::debug!(container = %req.id, error = %e, "guest process list unavailable");
                Vec::new()
            }
        };
        let pids = if guest.is_empty() { vec![self.0.task_pid(&pod)] } else { guest };
        let processes = pids.into_iter().map(|pid| api::ProcessInfo { pid, ..Default::default() }).collect();
        Ok(api::PidsResponse { processes, ..Default::default() })
    }

    async fn pause(&self, _: &TtrpcContext, req: api::PauseRequest) -> TResult<api::Empty> {
        let (_, p) = self.0.proc(&req.id, "")?;
        let pod = self.0.pod().await?;
        let mut preq = agent::PauseContainerRequest::new();
        preq.container_id = req.id.clone();
        explained(&pod, pod.agent.pause_container(&preq).await).await?;
        p.advance(&req.id, Transition::Pause)?;
        let e = ev::TaskPaused { container_id: req.id.clone(), ..Default::default() };
        self.0.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(e));
        Ok(api::Empty::new())
    }

    async fn resume(&self, _: &TtrpcContext, req: api::ResumeRequest) -> TResult<api::Empty> {
        let (_, p) = self.0.proc(&req.id, "")?;
        let pod = self.0.pod().await?;
        let mut rreq = agent::ResumeContainerRequest::new();
        rreq.container_id = req.id.clone();
        explained(&pod, pod.agent.resume_container(&rreq).await).await?;
        p.advance(&req.id, Transition::Resume)?;
        let e = ev::TaskResumed { container_id: req.id.clone(), ..Default::default() };
        self.0.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(e));
        Ok(api::Empty::new())
    }

    async fn checkpoint(&self, _: &TtrpcContext, _: api::CheckpointTaskRequest) -> TResult<api::Empty> {
        Err(ttrpc::Error::RpcStatus(ttrpc::get_status(
            ttrpc::Code::UNIMPLEMENTED,
            "checkpoint is not supported for confidential pods",
        )))
    }

    async fn exec(&self, _: &TtrpcContext, req: api::ExecProcessRequest) -> TResult<api::Empty> {
        let c = self.0.ctr(&req.id)?;
        if lock(&c.execs).contains_key(&req.exec_id) {
            return Err(ShimError::AlreadyExists(format!("exec {}", req.exec_id)).into());
        }
        let process: oci_spec::runtime::Process = serde_json::from_slice(&req.spec.value)
            .map_err(|e| ShimError::InvalidArgument(format!("exec process spec: {e}")))?;
        let p = Proc::new(&req.exec_id, req.terminal, &req.stdin, &req.stdout, &req.stderr);
        *lock(&p.spec) = Some(spec::process(&process));
        lock(&c.execs).insert(req.exec_id.clone(), p);
        let e = ev::TaskExecAdded { container_id: req.id.clone(), exec_id: req.exec_id.clone(), ..Default::default() };
        self.0.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(e));
        Ok(api::Empty::new())
    }

    async fn resize_pty(&self, _: &TtrpcContext, req: api::ResizePtyRequest) -> TResult<api::Empty> {
        self.0.proc(&req.id, &req.exec_id)?;
        let pod = self.0.pod().await?;
        let mut r = agent::TtyWinResizeRequest::new();
        r.container_id = req.id.clone();
        r.exec_id = req.exec_id.clone();
        r.row = req.height;
        r.column = req.width;
        explained(&pod, pod.agent.tty_win_resize(&r).await).await?;
        Ok(api::Empty::new())
    }

    async fn close_io(&self, _: &TtrpcContext, req: api::CloseIORequest) -> TResult<api::Empty> {
        let (_, p) = self.0.proc(&req.id, &req.exec_id)?;
        if req.stdin {
            let pod = self.0.pod().await?;
            if let Some(s) = p.streams.lock().await.as_mut() {
                s.close_stdin(&pod.agent, &req.id, &req.exec_id).await;
            }
        }
        Ok(api::Empty::new())
    }

    async fn update(&self, _: &TtrpcContext, req: api::UpdateTaskRequest) -> TResult<api::Empty> {
        self.0.ctr(&req.id)?;
        let pod = self.0.pod().await?;
        let resources: oci_spec::runtime::LinuxResources = serde_json::from_slice(&req.resources.value)
            .map_err(|e| ShimError::InvalidArgument(format!("resources: {e}")))?;
        let mut u = agent::UpdateContainerRequest::new();
        u.container_id = req.id.clone();
        u.resources = Some(spec::resources(&resources)).into();
        explained(&pod, pod.agent.update_container(&u).await).await?;
        Ok(api::Empty::new())
    }

    async fn stats(&self, _: &TtrpcContext, req: api::StatsRequest) -> TResult<api::StatsResponse> {
        self.0.ctr(&req.id)?;
        let pod = self.0.pod().await?;
        let mut s = agent::StatsContainerRequest::new();
        s.container_id = req.id.clone();
        let stats = explained(&pod, pod.agent.stats_container(&s).await).await?;
        let any = crate::metrics::to_any(&stats).map_err(|e| ShimError::Internal(e.to_string()))?;
        Ok(api::StatsResponse { stats: Some(any).into(), ..Default::default() })
    }

    async fn connect(&self, _: &TtrpcContext, _: api::ConnectRequest) -> TResult<api::ConnectResponse> {
        let task_pid = match self.0.pod().await {
            Ok(pod) => self.0.task_pid(&pod),
            Err(_) => 0,
        };
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    async fn shutdown(&self, _: &TtrpcContext, _: api::ShutdownRequest) -> TResult<api::Empty> {
        let inner = self.0.clone();
        to_the_end(async move {
            inner.shutdown().await;
            Ok(api::Empty::new())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use contrast_agent_protocol::AgentError;
    use std::time::Duration;

    fn err(code: ttrpc::Code) -> AgentError {
        AgentError { method: "signal_process", code, message: "socket err: early eof".into() }
    }

    struct Discard;

    #[async_trait]
    impl events::EventSink for Discard {
        async fn publish(&self, _: &'static str, _: Box<dyn MessageDyn>) -> Result<(), String> {
            Ok(())
        }
    }

    /// A handler dropped at its deadline does not cut its work off, and knows it was left.
    #[tokio::test]
    async fn work_outlives_a_dropped_handler() {
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handler = {
            let done = done.clone();
            let caller = CallerGone(Some(gone.clone()));
            async move {
                let r = to_the_end(async move {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    done.store(true, std::sync::atomic::Ordering::SeqCst);
                    Ok(())
                })
                .await;
                caller.here();
                r
            }
        };
        assert!(tokio::time::timeout(Duration::from_millis(10), handler).await.is_err(), "the deadline passes");
        assert!(gone.load(std::sync::atomic::Ordering::SeqCst), "the work learns its caller is gone");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(done.load(std::sync::atomic::Ordering::SeqCst), "the work ran to its end");
        // A caller that got its answer is not gone.
        let here = Arc::new(std::sync::atomic::AtomicBool::new(false));
        CallerGone(Some(here.clone())).here();
        assert!(!here.load(std::sync::atomic::Ordering::SeqCst));
    }

    fn daemon() -> Arc<Inner> {
        Arc::new(Inner {
            namespace: "test".into(),
            events: EventQueue::start(Discard),
            exit: Arc::new(ExitSignal::default()),
            containerd: String::new(),
            pod: tokio::sync::Mutex::new(None),
            ctrs: Mutex::new(HashMap::new()),
            shutting_down: std::sync::atomic::AtomicBool::new(false),
            creating: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// containerd's Shutdown of a daemon with no task, then a Create that was already on its
    /// way: refused before anything is booted or written for it.
    #[tokio::test]
    async fn a_create_after_the_last_shutdown_boots_nothing() {
        let d = daemon();
        assert!(d.shutdown().await, "no task left: the daemon exits");
        let bundle = tempfile::tempdir().expect("bundle");
        let spec = serde_json::to_vec(&oci_spec::runtime::Spec::default()).expect("spec");
        std::fs::write(bundle.path().join("config.json"), spec).expect("config.json");
        let req = api::CreateTaskRequest {
            id: "c".into(),
            bundle: bundle.path().to_string_lossy().into_owned(),
            ..Default::default()
        };
        let err = d.create(req).await.expect_err("a create into an exiting daemon");
        assert!(matches!(&err, ShimError::FailedPrecondition(m) if m.contains("shutting down")), "{err:?}");
        assert!(d.pod.lock().await.is_none(), "no pod");
        let files: Vec<_> =
            std::fs::read_dir(bundle.path()).expect("bundle").flatten().map(|e| e.file_name()).collect();
        assert_eq!(files, ["config.json"], "nothing recorded in the bundle");
    }

    /// A Shutdown while a Create has its pod but has not recorded its container yet (the
    /// pod lock is free then): the daemon stays, and ends once that create is over.
    #[tokio::test]
    async fn a_shutdown_during_a_create_leaves_the_create_its_pod() {
        let d = daemon();
        let creating = Creating::start(&d.creating);
        assert!(!d.shutdown().await, "a create in flight: the daemon stays");
        assert!(!d.shutting_down.load(std::sync::atomic::Ordering::SeqCst), "a later create is not refused");
        drop(creating);
        assert!(d.shutdown().await, "the create is over and no task is left: the daemon exits");
    }

    #[test]
    fn a_broken_connection_after_the_exit_is_not_a_kill_failure() {
        assert!(lost_to_an_exit(&err(ttrpc::Code::UNAVAILABLE), true));
    }

    #[test]
    fn a_kill_failure_of_a_live_process_or_a_refusal_is_reported() {
        assert!(!lost_to_an_exit(&err(ttrpc::Code::UNAVAILABLE), false), "still running: the signal was lost");
        assert!(!lost_to_an_exit(&err(ttrpc::Code::PERMISSION_DENIED), true), "the policy's answer stands");
        assert!(!lost_to_an_exit(&err(ttrpc::Code::DEADLINE_EXCEEDED), true));
    }
}
