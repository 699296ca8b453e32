//! One pod VM: state dir, helpers, QEMU under supervision, QMP, agent dialing, orderly stop.
//! Every failure while launching undoes what was done: nothing stays behind.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use contrast_config::{Accel, PodOverrides, RuntimeClassConfig, SharedFs, VsockMode};
use tokio::net::UnixStream;
use tokio::process::Command;
use tokio::sync::watch;

use crate::helper::{self, Helper};
use crate::net::PodNetwork;
use crate::qemu_args::{
    BootSource, InitDataLaunch, NicDevice, QemuSpec, SnpParams, VsockDevice, HOST_DATA_LEN, MRCONFIGID_LEN,
};
use crate::qmp::{self, QmpClient};
use crate::supervisor::{LogFiles, Supervisor, VmExit};
use crate::tsc;
use crate::vsock::{self, VsockEndpoint};
use crate::AGENT_READY_VSOCK_PORT;

/// How long vhost-device-vsock gets to create its socket.
const HELPER_READY_TIMEOUT: Duration = Duration::from_secs(5);
/// Kernel parameters every pod VM gets: serial console (captured to `console.log`), power off
/// instead of reboot, and no reboot loop after a panic (QEMU runs with `-no-reboot`); a
/// kernel oops panics (so ends the VM) instead of leaving a half-alive guest; no timer test
/// that a busy host fails (contrast-image's `BASE_CMDLINE` says more).
const BASE_KERNEL_PARAMS: &str = "console=ttyS0 reboot=k panic=-1 oops=panic no_timer_check";
/// `sun_path` holds 108 bytes including the terminating NUL (linux/un.h).
const MAX_SOCKET_PATH: usize = 107;
/// Console lines quoted when the agent cannot be reached.
const DIAL_CONSOLE_LINES: usize = 5;
/// Guest CID of the VM behind its own vhost-device-vsock (every pod has its own instance).
const HYBRID_GUEST_CID: u32 = 3;
/// Pause after a failed accept of the agent's announcement (e.g. no free descriptor).
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(10);
/// Name of vhost-device-vsock's thread that serves the queues and host connections.
const VSOCK_WORKER_THREAD: &str = "vring_worker";

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create pod state dir {}", path.display())]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file of the pod's state dir (pid list, logs, init data disk) could not be written:
    /// the pod is not started, since cleanup without the shim needs the pid list.
    #[error("cannot write {} in the pod's state dir", path.display())]
    StateFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket path {} is longer than {MAX_SOCKET_PATH} bytes; use a shorter runtime.state_dir", path.display())]
    SocketPathTooLong { path: PathBuf },
    #[error("vhost-device-vsock not found on PATH; install it or set hypervisor.qemu.vhost_device_vsock_path")]
    VhostDeviceVsockMissing,
    #[error("virtiofsd not found on PATH; install it or set hypervisor.qemu.virtio_fs_daemon")]
    VirtiofsdMissing,
    #[error("a shared directory needs hypervisor.qemu.shared_fs = \"virtio-fs\"")]
    SharedFsDisabled,
    #[error(transparent)]
    Helper(#[from] helper::Error),
    #[error("cannot start QEMU ({})", path.display())]
    QemuSpawn {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Qmp(#[from] qmp::Error),
    #[error("QEMU is not running after start (status {0})")]
    NotRunning(String),
    #[error(transparent)]
    Vsock(#[from] vsock::Error),
    #[error("{source}{worker}; last console lines: {console}{vcpus}")]
    AgentUnreachable {
        source: Box<vsock::Error>,
        /// The serial console's tail: the guest may say why the agent never came up.
        console: String,
        /// Empty, or why vhost-device-vsock can no longer connect anything.
        worker: String,
        /// Empty, or each QEMU vCPU thread's scheduler state and CPU time: a guest spinning
        /// (running, its CPU time near the wait) reads differently from one whose vCPUs all
        /// sleep in HLT (waiting for an interrupt that did not come).
        vcpus: String,
    },
    #[error(transparent)]
    Network(#[from] crate::net::Error),
    #[error("hypervisor.qemu.kernel_params_file {}: {problem}", path.display())]
    KernelParamsFile { path: PathBuf, problem: String },
}

/// What a pod VM is launched from.
pub struct LaunchRequest<'a> {
    /// Pod (sandbox) id; names the VM.
    pub id: &'a str,
    pub config: &'a RuntimeClassConfig,
    pub overrides: &'a PodOverrides,
    /// Must not exist yet; created with mode 0700 and removed when the VM is stopped.
    pub state_dir: PathBuf,
    /// The pod's init data: its disk and the values bound into the launch.
    pub init_data: Option<LaunchInitData>,
    /// Host directory shared with the guest over virtio-fs (`shared_fs = "virtio-fs"` only).
    pub shared_dir: Option<PathBuf>,
    /// The pod's network namespace (CNI's): each interface in it becomes a guest NIC.
    pub netns: Option<PathBuf>,
}

/// A pod's init data as the VM gets it (built by the shim with crate `contrast-initdata`).
#[derive(Debug, Clone)]
pub struct LaunchInitData {
    /// The init data disk image, written to the state dir and attached read-only.
    pub disk_image: Vec<u8>,
    pub host_data: [u8; HOST_DATA_LEN],
    pub mrconfigid: [u8; MRCONFIGID_LEN],
    /// SIMULATION (`insecure` + `simulate_launch_binding`): passed through fw_cfg.
    pub simulated_host_data: Option<[u8; HOST_DATA_LEN]>,
}

pub struct PodVm {
    state_dir: PathBuf,
    supervisor: Supervisor,
    qmp: QmpClient,
    vsock: VsockEndpoint,
    /// vhost-device-vsock's pid (hybrid vsock only).
    vsock_helper: Option<u32>,
    /// Hybrid vsock: where the agent announces that it serves (see [`PodVm::dial`]). Kept
    /// for the VM's life: a first dial that fails leaves the next one waiting here too.
    agent_ready: Option<tokio::net::UnixListener>,
    /// Set once the agent has announced itself. Holds the announcing connection for the VM's
    /// life, so the host never closes a connection vhost-device-vsock may still write to.
    announced: tokio::sync::OnceCell<UnixStream>,
    accel: &'static str,
    dial_timeout: Duration,
    powerdown_timeout: Duration,
    /// Whether the guest has ACPI, through which `system_powerdown` reaches it. A VM booted
    /// from an IGVM file has no firmware and so no ACPI: stopping it goes straight to `quit`.
    power_button: bool,
    quit_timeout: Duration,
    stopped: std::sync::atomic::AtomicBool,
    /// The pod's interfaces joined to the VM's taps (see [`crate::net`]).
    network: Option<PodNetwork>,
}

/// How the host reaches the guest's vsock, as `start_helpers` set it up.
struct LaunchVsock {
    device: VsockDevice,
    endpoint: VsockEndpoint,
    /// Kernel vhost-vsock: the claimed CID's fd, inherited by QEMU.
    vhost: Option<vsock::VhostVsock>,
    /// Hybrid vsock: the listener for the agent's announcement.
    agent_ready: Option<tokio::net::UnixListener>,
}

struct Paths {
    qmp: PathBuf,
    debug_qmp: PathBuf,
    console: PathBuf,
    qemu_log: PathBuf,
    vhost_user: PathBuf,
    hybrid_uds: PathBuf,
    agent_ready: PathBuf,
    helper_log: PathBuf,
    virtiofsd: PathBuf,
    virtiofsd_log: PathBuf,
}

impl Paths {
    fn new(dir: &Path) -> Result<Self, Error> {
        let p = Paths {
            qmp: dir.join("qmp.sock"),
            debug_qmp: dir.join("qmp-debug.sock"),
            console: dir.join("console.log"),
            qemu_log: dir.join("qemu.log"),
            vhost_user: dir.join("vhost.sock"),
            hybrid_uds: dir.join("vm.vsock"),
            // vhost-device-vsock takes a guest connection to host port P to `<uds-path>_P`.
            agent_ready: dir.join(format!("vm.vsock_{AGENT_READY_VSOCK_PORT}")),
            helper_log: dir.join("vhost-device-vsock.log"),
            virtiofsd: dir.join("virtiofsd.sock"),
            virtiofsd_log: dir.join("virtiofsd.log"),
        };
        for s in [&p.qmp, &p.debug_qmp, &p.vhost_user, &p.hybrid_uds, &p.agent_ready, &p.virtiofsd] {
            if s.as_os_str().len() > MAX_SOCKET_PATH {
                return Err(Error::SocketPathTooLong { path: s.clone() });
            }
        }
        Ok(p)
    }
}

impl PodVm {
    /// Boots the pod VM: state dir, vsock helper, QEMU with QMP, running state confirmed.
    /// Does not wait for the agent: see [`PodVm::dial_agent`].
    pub async fn launch(req: LaunchRequest<'_>) -> Result<PodVm, Error> {
        let paths = Paths::new(&req.state_dir)?;
        if let Some(parent) = req.state_dir.parent() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o711)
                .create(parent)
                .map_err(|source| Error::StateDir { path: parent.to_owned(), source })?;
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&req.state_dir)
            .map_err(|source| Error::StateDir { path: req.state_dir.clone(), source })?;
        // The launching process (the shim daemon) first: a cleanup without it (containerd's
        // `<shim> delete` after the daemon stopped answering) ends it before its VM, so that
        // one alive but hung does not outlive its pod.
        let result = match record_pid(&req.state_dir, "owner", std::process::id()) {
            Ok(()) => Self::launch_in(&req, &paths).await,
            Err(e) => Err(e),
        };
        if result.is_err() {
            remove_state_dir(&req.state_dir);
        }
        result
    }

    async fn launch_in(req: &LaunchRequest<'_>, paths: &Paths) -> Result<PodVm, Error> {
        // The first of two TSC readings a TCG guest's `tsc_early_khz=` is measured between;
        // starting the helpers takes the time in between.
        let tsc_start = tsc::Sample::take();
        let q = &req.config.hypervisor.qemu;
        let use_vhost = match q.vsock_mode {
            VsockMode::Vhost => true,
            VsockMode::Hybrid => false,
            VsockMode::Auto => Path::new("/dev/vhost-vsock").exists(),
        };

        let mut helpers = Vec::new();
        let (vsock_device, endpoint, virtio_fs, vhost, agent_ready) =
            match Self::start_helpers(req, paths, use_vhost, &mut helpers).await {
                Ok(started) => started,
                Err(e) => {
                    for helper in &mut helpers {
                        helper.stop().await;
                    }
                    return Err(e);
                }
            };

        let mut network = match &req.netns {
            None => None,
            Some(netns) => match PodNetwork::attach(netns).await {
                Ok(n) => Some(n),
                Err(e) => {
                    for helper in &mut helpers {
                        helper.stop().await;
                    }
                    return Err(e.into());
                }
            },
        };
        let vsock = LaunchVsock { device: vsock_device, endpoint, vhost, agent_ready };
        let result = Self::launch_with(req, paths, helpers, vsock, virtio_fs, network.as_mut(), tsc_start).await;
        match result {
            Ok(mut vm) => {
                vm.network = network;
                Ok(vm)
            }
            Err(e) => {
                if let Some(n) = &network {
                    n.detach().await;
                }
                Err(e)
            }
        }
    }

    async fn launch_with(
        req: &LaunchRequest<'_>,
        paths: &Paths,
        helpers: Vec<Helper>,
        vsock: LaunchVsock,
        virtio_fs: Option<PathBuf>,
        network: Option<&mut PodNetwork>,
        tsc_start: Option<tsc::Sample>,
    ) -> Result<PodVm, Error> {
        let LaunchVsock { device: vsock_device, endpoint, vhost, agent_ready } = vsock;
        let q = &req.config.hypervisor.qemu;
        let kvm = match q.accel {
            Accel::Kvm => true,
            Accel::Tcg => false,
            Accel::Auto => q.platform != contrast_config::Platform::Insecure || kvm_usable(),
        };
        let use_vhost = matches!(vsock_device, VsockDevice::Vhost { .. });
        let vsock_helper = if use_vhost { None } else { helpers.first().map(Helper::pid) };
        // Tap fds, and a /dev/vhost-net fd per NIC where the host has one (the kernel then
        // moves the frames; without it QEMU's userspace virtio-net does).
        let (mut taps, mut nics): (Vec<OwnedFd>, Vec<NicDevice>) = (Vec::new(), Vec::new());
        if let Some(n) = network {
            let macs: Vec<_> = n.interfaces.iter().map(|i| (contrast_netlink::format_mac(&i.mac), i.mtu)).collect();
            for (tap, (mac, mtu)) in n.take_tap_fds().into_iter().zip(macs) {
                let vhost = crate::net::open_vhost_net();
                let vhost_fd = vhost.as_ref().map(AsRawFd::as_raw_fd);
                nics.push(NicDevice { tap_fd: tap.as_raw_fd(), vhost_fd, mac, mtu });
                taps.push(tap);
                taps.extend(vhost);
            }
        }

        let boot = match (&q.igvm, &q.kernel) {
            (Some(file), _) => BootSource::Igvm { file: file.clone() },
            (None, Some(kernel)) => {
                // Only TCG guests read the host's TSC as their own; KVM gives its guests the
                // rate (kvmclock), and a confidential guest's command line is measured.
                let tsc_khz = if kvm { None } else { host_tsc_khz(tsc_start).await };
                BootSource::Kernel {
                    firmware: q.firmware.clone(),
                    kernel: kernel.clone(),
                    initrd: q.initrd.clone(),
                    cmdline: kernel_cmdline(req.config, req.overrides, tsc_khz)?,
                }
            }
            // RuntimeClassConfig::parse guarantees one of them.
            (None, None) => unreachable!("validated config has kernel or igvm"),
        };
        let init_data = match &req.init_data {
            None => None,
            Some(init) => {
                let disk = req.state_dir.join("initdata.img");
                std::fs::write(&disk, &init.disk_image)
                    .map_err(|source| Error::StateFile { path: disk.clone(), source })?;
                Some(InitDataLaunch {
                    disk,
                    host_data: init.host_data,
                    mrconfigid: init.mrconfigid,
                    simulated_host_data: init.simulated_host_data,
                })
            }
        };
        let spec = QemuSpec {
            name: format!("contrast-{}", req.id),
            platform: q.platform,
            kvm,
            vcpus: req.overrides.vcpus,
            memory_mib: req.overrides.memory_mib,
            boot,
            root_disk: q.image.clone(),
            vsock: vsock_device,
            virtio_fs,
            qmp_socket: paths.qmp.clone(),
            debug_qmp_socket: q.debug_qmp.then(|| paths.debug_qmp.clone()),
            console_log: paths.console.clone(),
            cpu_model: req.config.cpu_model(kvm),
            scsi_controller: req.config.confidential_path(),
            nics,
            init_data,
            snp: SnpParams { cbitpos: q.cbitpos, reduced_phys_bits: q.reduced_phys_bits, policy: q.snp_guest_policy },
        };
        let accel = if kvm { "kvm" } else { "tcg" };
        tracing::info!(pod = req.id, platform = %q.platform, accel, "launching pod VM");

        let log = std::fs::File::create(&paths.qemu_log)
            .map_err(|source| Error::StateFile { path: paths.qemu_log.clone(), source })?;
        let log_err = log.try_clone().map_err(|source| Error::StateFile { path: paths.qemu_log.clone(), source })?;
        let mut cmd = Command::new(&q.path);
        cmd.args(spec.args()).stdin(Stdio::null()).stdout(log).stderr(log_err).kill_on_drop(true);
        // QEMU inherits the vhost-vsock fd and the taps under their numbers in this process.
        let inherited: Vec<i32> =
            vhost.iter().map(|v| v.fd.as_raw_fd()).chain(taps.iter().map(AsRawFd::as_raw_fd)).collect();
        // Under TCG every QEMU thread (its vCPUs above all) is CPU-bound emulation: as
        // SCHED_BATCH it does not preempt other work when it wakes, and with a slice of
        // TCG_SLICE (Linux >= 6.12 honours it; older kernels ignore it) pods booting side by
        // side switch less and share the caches better (docs/performance.md, "concurrency").
        // Tasks of the normal policy still preempt it when they wake. KVM vCPUs keep the
        // normal policy: they wait for interrupts a guest wants served promptly.
        let batch = !kvm;
        let attr = SchedAttr {
            size: std::mem::size_of::<SchedAttr>() as u32,
            policy: libc::SCHED_BATCH as u32,
            runtime: TCG_SLICE.as_nanos() as u64,
            ..SchedAttr::default()
        };
        // SAFETY: the closure only makes system calls (fcntl, sched_setattr,
        // sched_setscheduler), which are async-signal-safe, on fds that stay open in the
        // parent until spawn returns and on `attr`, which the closure owns.
        unsafe {
            cmd.pre_exec(move || {
                for &fd in &inherited {
                    let flags = libc::fcntl(fd, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                // The system calls, not libc's wrappers (musl's sched_setscheduler is a stub):
                // they set the forked thread's policy and slice, which exec and every thread
                // QEMU starts inherit. A kernel without sched_setattr gets the policy alone.
                if batch && libc::syscall(libc::SYS_sched_setattr, 0, &attr, 0) < 0 {
                    let param: libc::sched_param = std::mem::zeroed();
                    if libc::syscall(libc::SYS_sched_setscheduler, 0, libc::SCHED_BATCH, &param) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|source| Error::QemuSpawn { path: q.path.clone(), source })?;
        let recorded = record_pid(&req.state_dir, "qemu", child.id().unwrap_or_default());
        // QEMU holds its own copies of the vhost fd and the taps now.
        drop(vhost);
        drop(taps);
        let supervisor = Supervisor::start(
            child,
            helpers,
            LogFiles { console: paths.console.clone(), qemu_log: paths.qemu_log.clone() },
        );
        if let Err(e) = recorded {
            supervisor.kill().await;
            return Err(e);
        }

        let (connect_timeout, command_timeout) =
            (Duration::from_millis(q.qmp_timeout_ms), Duration::from_millis(q.qmp_command_timeout_ms));
        let qmp = match QmpClient::connect(&paths.qmp, connect_timeout, command_timeout, supervisor.exited()).await {
            Ok(qmp) => qmp,
            Err(e) => {
                supervisor.kill().await;
                return Err(e.into());
            }
        };
        match qmp.query_status().await {
            Ok(status) if status == "running" => {}
            Ok(status) => {
                supervisor.kill().await;
                return Err(Error::NotRunning(status));
            }
            Err(e) => {
                supervisor.kill().await;
                return Err(e.into());
            }
        }
        Ok(PodVm {
            state_dir: req.state_dir.clone(),
            supervisor,
            qmp,
            vsock: endpoint,
            vsock_helper,
            agent_ready,
            announced: tokio::sync::OnceCell::new(),
            accel,
            dial_timeout: req.config.dial_timeout(),
            powerdown_timeout: Duration::from_millis(q.powerdown_timeout_ms),
            power_button: q.igvm.is_none(),
            quit_timeout: Duration::from_millis(q.quit_timeout_ms),
            stopped: std::sync::atomic::AtomicBool::new(false),
            network: None,
        })
    }

    /// Starts vhost-device-vsock (hybrid) or claims a vhost CID, and virtiofsd when a
    /// directory is shared. Started helpers are pushed to `helpers` as they come up, so the
    /// caller can stop them if a later one fails.
    async fn start_helpers(
        req: &LaunchRequest<'_>,
        paths: &Paths,
        use_vhost: bool,
        helpers: &mut Vec<Helper>,
    ) -> Result<
        (VsockDevice, VsockEndpoint, Option<PathBuf>, Option<vsock::VhostVsock>, Option<tokio::net::UnixListener>),
        Error,
    > {
        let mut vhost: Option<vsock::VhostVsock> = None;
        let mut agent_ready = None;
        let q = &req.config.hypervisor.qemu;
        let (vsock_device, endpoint) = if use_vhost {
            let v = vsock::allocate_vhost_cid(seed_of(req.id))?;
            let device = VsockDevice::Vhost { guest_cid: v.cid, vhostfd: v.fd.as_raw_fd() };
            let endpoint = VsockEndpoint::Vhost { cid: v.cid };
            vhost = Some(v);
            (device, endpoint)
        } else {
            let program = match &q.vhost_device_vsock_path {
                Some(p) => p.clone(),
                None => find_on_path("vhost-device-vsock").ok_or(Error::VhostDeviceVsockMissing)?,
            };
            // Listening before the guest exists, so its announcement cannot come too early.
            agent_ready = Some(
                tokio::net::UnixListener::bind(&paths.agent_ready)
                    .map_err(|source| Error::StateFile { path: paths.agent_ready.clone(), source })?,
            );
            let vm_arg = format!(
                "guest-cid={HYBRID_GUEST_CID},socket={},uds-path={}",
                paths.vhost_user.display(),
                paths.hybrid_uds.display()
            );
            let helper = Helper::spawn(
                "vhost-device-vsock",
                &program,
                ["--vm", vm_arg.as_str()],
                paths.helper_log.clone(),
                &paths.vhost_user,
                HELPER_READY_TIMEOUT,
            )
            .await?;
            let pid = helper.pid();
            helpers.push(helper);
            record_pid(&req.state_dir, "vhost-device-vsock", pid)?;
            (
                VsockDevice::Hybrid { socket: paths.vhost_user.clone() },
                VsockEndpoint::Hybrid { uds: paths.hybrid_uds.clone() },
            )
        };

        let virtio_fs = match &req.shared_dir {
            None => None,
            Some(_) if q.shared_fs != SharedFs::VirtioFs => return Err(Error::SharedFsDisabled),
            Some(shared) => {
                std::fs::create_dir_all(shared).map_err(|source| Error::StateDir { path: shared.clone(), source })?;
                let program = match &q.virtio_fs_daemon {
                    Some(p) => p.clone(),
                    None => find_on_path("virtiofsd").ok_or(Error::VirtiofsdMissing)?,
                };
                let args: Vec<std::ffi::OsString> = vec![
                    format!("--socket-path={}", paths.virtiofsd.display()).into(),
                    format!("--shared-dir={}", shared.display()).into(),
                    // Names and attributes are cached for a second, file data until the
                    // file changes on the host (checked at open). `never` made every path
                    // step a round trip to virtiofsd: ~35 ms of a 125 ms container create
                    // under TCG. Each container instance gets a directory of its own in the
                    // share (the shim's `Pod::new_instance_dirs`), so a cached name never
                    // leads to an earlier instance's files.
                    "--cache=auto".into(),
                    "--announce-submounts".into(),
                    // Same mount namespace as the shim: container rootfs mounts made after
                    // start must be visible (a private namespace would not receive them).
                    "--sandbox=chroot".into(),
                ];
                let helper = Helper::spawn(
                    "virtiofsd",
                    &program,
                    args,
                    paths.virtiofsd_log.clone(),
                    &paths.virtiofsd,
                    HELPER_READY_TIMEOUT,
                )
                .await?;
                let pid = helper.pid();
                helpers.push(helper);
                record_pid(&req.state_dir, "virtiofsd", pid)?;
                Some(paths.virtiofsd.clone())
            }
        };

        Ok((vsock_device, endpoint, virtio_fs, vhost, agent_ready))
    }

    /// Connects to a guest vsock port within the configured dial timeout.
    ///
    /// With hybrid vsock the first dial waits until the agent announces that it serves (a
    /// connection from the guest to host port [`AGENT_READY_VSOCK_PORT`]): no host connection
    /// reaches vhost-device-vsock 0.3 before the guest has started the device, which ends its
    /// only worker thread (the pod's vsock would be dead for good), and none is made, refused
    /// and retried while the guest boots.
    pub async fn dial(&self, port: u32) -> Result<OwnedFd, Error> {
        let deadline = tokio::time::Instant::now() + self.dial_timeout;
        let result = async {
            if let Some(listener) = &self.agent_ready {
                self.announced.get_or_try_init(|| self.wait_announced(listener, deadline)).await?;
            }
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            self.vsock.dial(port, remaining, self.supervisor.exited()).await
        }
        .await;
        match result {
            Ok(fd) => Ok(fd),
            Err(vsock::Error::Timeout { port, last, .. }) => {
                let source = vsock::Error::Timeout { port, timeout: self.dial_timeout, last };
                Err(self.unreachable(source))
            }
            Err(e @ vsock::Error::NotAnnounced { .. }) => Err(self.unreachable(e)),
            Err(e) => Err(e.into()),
        }
    }

    /// Waits for the agent's announcement (see [`PodVm::dial`]), the VM's exit or `deadline`.
    async fn wait_announced(
        &self,
        listener: &tokio::net::UnixListener,
        deadline: tokio::time::Instant,
    ) -> Result<UnixStream, vsock::Error> {
        let mut exited = self.supervisor.exited();
        loop {
            if let Some(exit) = exited.borrow_and_update().clone() {
                return Err(vsock::Error::VmExited(exit));
            }
            tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok((stream, _)) => {
                        tracing::debug!("the agent announced itself");
                        return Ok(stream);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting the agent's announcement");
                        tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                    }
                },
                _ = tokio::time::sleep_until(deadline) => {
                    return Err(vsock::Error::NotAnnounced { timeout: self.dial_timeout });
                }
                _ = exited.changed() => {}
            }
        }
    }

    /// What the VM shows while a call to its agent goes unanswered: the console's last lines
    /// and each vCPU thread's state and CPU time (see [`Error::AgentUnreachable`]).
    pub fn hang_report(&self) -> String {
        format!("last console lines: {}{}", self.console_tail(), self.vcpu_summary())
    }

    fn console_tail(&self) -> String {
        let tail = crate::supervisor::tail(&self.state_dir.join("console.log"), DIAL_CONSOLE_LINES);
        tail.trim_end().replace('\n', " | ")
    }

    /// Empty, or "; QEMU's vCPU threads: CPU 0/TCG S 1.2 s, …".
    fn vcpu_summary(&self) -> String {
        match vcpu_threads(self.qemu_pid()) {
            threads if threads.is_empty() => String::new(),
            threads => format!("; QEMU's vCPU threads: {}", threads.join(", ")),
        }
    }

    fn unreachable(&self, source: vsock::Error) -> Error {
        let worker = match self.vsock_helper.map(vsock_worker_alive) {
            Some(Some(false)) => format!(
                "; vhost-device-vsock's {VSOCK_WORKER_THREAD} thread has ended, so no host connection can reach \
                 the guest any more (see {})",
                self.state_dir.join("vhost-device-vsock.log").display()
            ),
            _ => String::new(),
        };
        Error::AgentUnreachable {
            source: Box::new(source),
            console: self.console_tail(),
            worker,
            vcpus: self.vcpu_summary(),
        }
    }

    /// Connects to the agent (vsock port 1024).
    pub async fn dial_agent(&self) -> Result<OwnedFd, Error> {
        self.dial(crate::AGENT_VSOCK_PORT).await
    }

    pub fn qmp(&self) -> &QmpClient {
        &self.qmp
    }

    pub fn vsock(&self) -> &VsockEndpoint {
        &self.vsock
    }

    /// The pod's network as attached to this VM (none without a network namespace).
    pub fn network(&self) -> Option<&PodNetwork> {
        self.network.as_ref()
    }

    pub fn qemu_pid(&self) -> u32 {
        self.supervisor.pid()
    }

    pub fn accel(&self) -> &'static str {
        self.accel
    }

    pub fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    /// `Some(exit)` once QEMU has exited and its helpers are stopped.
    pub fn exited(&self) -> watch::Receiver<Option<VmExit>> {
        self.supervisor.exited()
    }

    /// Waits until QEMU exits (for whatever reason).
    pub async fn wait(&self) -> VmExit {
        self.supervisor.wait().await
    }

    /// Kills QEMU at once, for a guest or QEMU that no longer answers (an orderly stop would
    /// only wait out its deadlines); helpers follow. `stop` still removes the state dir.
    pub async fn kill(&self) -> VmExit {
        self.supervisor.kill().await
    }

    /// Orderly stop: ACPI power button, then `quit`, then SIGKILL, each after its deadline.
    /// Removes the state dir. Safe to call again and after QEMU already died.
    pub async fn stop(&self) -> VmExit {
        self.supervisor.expect_exit();
        let exit = self.shut_down().await;
        if let Some(n) = &self.network {
            n.detach().await;
        }
        remove_state_dir(&self.state_dir);
        self.stopped.store(true, std::sync::atomic::Ordering::SeqCst);
        exit
    }

    async fn shut_down(&self) -> VmExit {
        let exited = self.exited();
        if let Some(exit) = exited.borrow().clone() {
            return exit;
        }
        if self.power_button && self.qmp.system_powerdown().await.is_ok() {
            if let Ok(exit) = tokio::time::timeout(self.powerdown_timeout, self.wait()).await {
                return exit;
            }
            tracing::warn!(timeout = ?self.powerdown_timeout, "guest ignored the power button; sending quit");
        }
        if self.qmp.quit().await.is_ok() {
            if let Ok(exit) = tokio::time::timeout(self.quit_timeout, self.wait()).await {
                return exit;
            }
            tracing::warn!(timeout = ?self.quit_timeout, "QEMU ignored quit; killing it");
        }
        self.supervisor.kill().await
    }
}

impl Drop for PodVm {
    /// A VM dropped without `stop` is killed; its state dir is removed.
    fn drop(&mut self) {
        if !self.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            self.supervisor.expect_exit();
            if let Some(pid) = self.exited().borrow().is_none().then(|| self.supervisor.pid()) {
                tracing::warn!(pid, "pod VM dropped without stop; killing QEMU");
            }
            // The supervisor task kills QEMU (or its Child does on drop when the runtime ends).
            let _ = self.supervisor.request_kill();
            if let Some(n) = &self.network {
                n.detach_blocking();
            }
            remove_state_dir(&self.state_dir);
        }
    }
}

/// The host's TSC rate for a TCG guest (see [`crate::tsc`]), measured from `start` (the launch's
/// beginning) to now; when the helpers came up sooner than [`tsc::MIN_SPAN`], waits that long
/// once more.
/// `None`, logged, when the host's TSC cannot be read undisturbed: the guest then calibrates.
async fn host_tsc_khz(start: Option<tsc::Sample>) -> Option<u64> {
    let khz = async {
        let start = start?;
        if let Some(end) = tsc::Sample::take() {
            if let Some(khz) = start.khz_until(&end) {
                return Some(khz);
            }
        }
        tokio::time::sleep(tsc::MIN_SPAN).await;
        start.khz_until(&tsc::Sample::take()?)
    }
    .await;
    if khz.is_none() {
        tracing::warn!("cannot measure the host's TSC rate; the TCG guest calibrates its own");
    }
    khz
}

/// The scheduler slice of a TCG QEMU's threads: the most Linux grants (it clamps requests to
/// 0.1–100 ms). Ten pods starting at once on two cores finish sooner than with the default
/// slice of a few milliseconds (docs/performance.md, "concurrency").
const TCG_SLICE: Duration = Duration::from_millis(100);

/// `struct sched_attr` of sched_setattr(2), its first version (48 bytes); `runtime` is the
/// slice a task of a fair policy asks for.
#[repr(C)]
#[derive(Default)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

/// The image's command line (or the built-in base), `tsc_early_khz=` for a TCG guest, then the
/// config's and the pod's parameters (so that a runtime class or pod can still override it).
fn kernel_cmdline(
    config: &RuntimeClassConfig,
    overrides: &PodOverrides,
    tsc_khz: Option<u64>,
) -> Result<String, Error> {
    let base = match &config.hypervisor.qemu.kernel_params_file {
        None => BASE_KERNEL_PARAMS.to_owned(),
        Some(path) => {
            let bad = |problem: String| Error::KernelParamsFile { path: path.clone(), problem };
            let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
            let text = text.trim();
            if text.is_empty() || text.contains(['\n', '\0']) {
                return Err(bad("must hold one non-empty line".into()));
            }
            text.to_owned()
        }
    };
    let mut parts = vec![base];
    parts.extend(tsc_khz.map(|khz| format!("tsc_early_khz={khz}")));
    for extra in [config.hypervisor.qemu.kernel_params.trim(), overrides.extra_kernel_params.trim()] {
        if !extra.is_empty() {
            parts.push(extra.to_owned());
        }
    }
    if config.agent.kata.debug_console_enabled {
        parts.push("contrast.debug_console=1".into());
    }
    Ok(parts.join(" "))
}

/// Removes the state dir without ever descending into a mount point (a container rootfs
/// or a bind-mounted host file left mounted by mistake must not lose its contents).
/// Records a started process in the state dir's pid list (cleanup without this process,
/// containerd's `<shim> delete`, kills exactly what is listed there).
fn record_pid(state_dir: &Path, name: &str, pid: u32) -> Result<(), Error> {
    crate::pidfile::record(state_dir, name, pid)
        .map_err(|source| Error::StateFile { path: state_dir.join(crate::pidfile::PIDS_FILE), source })
}

fn remove_state_dir(dir: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else { return };
    // The pid list first, whatever else stays (a mount point left in place): a cleanup
    // without this process must not find it and kill it, or its processes, again.
    let _ = std::fs::remove_file(dir.join(crate::pidfile::PIDS_FILE));
    if let Err(e) = remove_same_device(dir, meta.dev()) {
        tracing::warn!(dir = %dir.display(), error = %e, "cannot remove pod state dir");
    }
}

fn remove_same_device(path: &Path, dev: u64) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.dev() != dev {
        return Err(std::io::Error::other(format!("{} is a mount point; left in place", path.display())));
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            remove_same_device(&entry?.path(), dev)?;
        }
        std::fs::remove_dir(path)
    } else {
        std::fs::remove_file(path)
    }
}

/// `accel = "auto"`: KVM only where it can run the guest (the readiness check's probe).
fn kvm_usable() -> bool {
    contrast_node_check::kvm_usable(Path::new("/")).0
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

fn seed_of(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3))
}

/// Whether process `pid` still has vhost-device-vsock's queue worker thread; `None` when its
/// threads cannot be listed (the process is gone).
fn vsock_worker_alive(pid: u32) -> Option<bool> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    Some(
        tasks
            .flatten()
            .any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == VSOCK_WORKER_THREAD)),
    )
}

/// Each vCPU thread of the QEMU process `pid` (named `CPU <n>/TCG` or `CPU <n>/KVM` with
/// `debug-threads=on`) as "<name> <state> <CPU seconds>", from `/proc/<pid>/task/*/stat`
/// (state R running, S sleeping, ...; user + system time).
fn vcpu_threads(pid: u32) -> Vec<String> {
    // SAFETY: sysconf has no preconditions.
    let ticks = match unsafe { libc::sysconf(libc::_SC_CLK_TCK) } {
        t if t > 0 => t as f64,
        _ => 100.0,
    };
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out: Vec<String> = tasks
        .flatten()
        .filter_map(|t| {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            // "<tid> (<comm>) <state> ..." — the name may hold spaces, so split at the last ')'.
            let (head, rest) = stat.rsplit_once(')')?;
            let name = head.split_once('(')?.1;
            if !name.starts_with("CPU ") {
                return None;
            }
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // After the name: state is field 3 of stat(5), utime 14 and stime 15.
            let (state, utime, stime) = (fields.first()?, fields.get(11)?, fields.get(12)?);
            let cpu = (utime.parse::<f64>().ok()? + stime.parse::<f64>().ok()?) / ticks;
            Some(format!("{name} {state} {cpu:.1} s"))
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_threads_are_read_with_state_and_cpu_time() {
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        let vcpu = std::thread::Builder::new()
            .name("CPU 0/TCG".into())
            .spawn(move || {
                let _ = ready_tx.send(());
                let _ = stop_rx.recv();
            })
            .expect("thread");
        ready_rx.recv().expect("thread started");
        let threads = vcpu_threads(std::process::id());
        let _ = stop_tx.send(());
        vcpu.join().expect("join");
        assert_eq!(threads.len(), 1, "only the thread named like a vCPU: {threads:?}");
        let fields: Vec<&str> = threads[0].split(' ').collect();
        assert_eq!(fields[..2], ["CPU", "0/TCG"], "{threads:?}");
        assert!(["S", "R"].contains(&fields[2]), "{threads:?}");
        assert!(fields[3].parse::<f64>().is_ok() && fields[4] == "s", "{threads:?}");
        assert!(vcpu_threads(u32::MAX).is_empty(), "no such process: nothing");
    }

    #[test]
    fn worker_thread_is_found_by_name() {
        let me = std::process::id();
        assert_eq!(vsock_worker_alive(me), Some(false));
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
        // The thread names itself when it starts, before running this closure.
        let worker = std::thread::Builder::new()
            .name(VSOCK_WORKER_THREAD.into())
            .spawn(move || {
                let _ = ready_tx.send(());
                let _ = stop_rx.recv();
            })
            .expect("spawn");
        ready_rx.recv().expect("worker started");
        assert_eq!(vsock_worker_alive(me), Some(true));
        drop(stop_tx);
        worker.join().expect("join");
        // join returns when the thread's futex is cleared, a moment before the kernel drops
        // its /proc/<pid>/task entry: give it that moment.
        let gone = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            vsock_worker_alive(me) == Some(false)
        });
        assert!(gone, "worker thread still listed after join");
        assert_eq!(vsock_worker_alive(u32::MAX), None);
    }

    #[test]
    fn kernel_cmdline_joins_base_config_and_pod_params() {
        let text = r#"
[hypervisor.qemu]
platform = "insecure"
path = "/q"
kernel = "/k"
kernel_params = "quiet"
[agent.kata]
debug_console_enabled = true
"#;
        let config = RuntimeClassConfig::parse(text, Path::new("t.toml")).expect("valid");
        let overrides =
            PodOverrides { vcpus: 1, memory_mib: 512, extra_kernel_params: "foo=1".into(), init_data: None };
        assert_eq!(
            kernel_cmdline(&config, &overrides, None).unwrap(),
            "console=ttyS0 reboot=k panic=-1 oops=panic no_timer_check quiet foo=1 contrast.debug_console=1"
        );
    }

    #[test]
    fn kernel_params_file_replaces_the_base() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cmdline");
        std::fs::write(&file, "console=hvc0 roothash=ab\n").unwrap();
        let text = format!(
            "[hypervisor.qemu]\nplatform = \"insecure\"\npath = \"/q\"\nkernel = \"/k\"\nkernel_params_file = {file:?}\nkernel_params = \"quiet\"\n",
        );
        let config = RuntimeClassConfig::parse(&text, Path::new("t.toml")).expect("valid");
        let overrides = PodOverrides { vcpus: 1, memory_mib: 512, extra_kernel_params: String::new(), init_data: None };
        assert_eq!(kernel_cmdline(&config, &overrides, None).unwrap(), "console=hvc0 roothash=ab quiet");
        // A TCG guest's TSC rate comes after the image's line, before the config's parameters.
        assert_eq!(
            kernel_cmdline(&config, &overrides, Some(2_596_150)).unwrap(),
            "console=hvc0 roothash=ab tsc_early_khz=2596150 quiet"
        );
        std::fs::write(&file, "a\nb\n").unwrap();
        let err = kernel_cmdline(&config, &overrides, None).unwrap_err().to_string();
        assert!(err.contains("kernel_params_file") && err.contains("one non-empty line"), "{err}");
        std::fs::remove_file(&file).unwrap();
        let err = kernel_cmdline(&config, &overrides, None).unwrap_err().to_string();
        assert!(err.contains("No such file"), "{err}");
    }

    #[test]
    fn state_dir_removal_removes_plain_trees() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("pod");
        std::fs::create_dir_all(state.join("a/b")).expect("mkdir");
        std::fs::write(state.join("a/b/f"), "x").expect("write");
        remove_state_dir(&state);
        assert!(!state.exists());
    }

    /// A mount point left in the state dir stays, and so does the dir; the pid list goes all
    /// the same, so a later `<shim> delete` kills nothing of this process's (tests run as root).
    #[test]
    fn state_dir_removal_drops_the_pid_list_even_when_a_mount_stays() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("pod");
        std::fs::create_dir_all(&state).expect("mkdir");
        crate::pidfile::record(&state, "owner", std::process::id()).expect("record");
        // Several mount points, so that one comes before the list whatever the dir's order.
        let held: Vec<_> = (0..8).map(|i| state.join(format!("m{i}"))).collect();
        for m in &held {
            std::fs::create_dir(m).expect("mkdir");
            nix::mount::mount(Some("tmpfs"), m, Some("tmpfs"), nix::mount::MsFlags::empty(), None::<&str>)
                .expect("tmpfs (tests run as root)");
        }
        remove_state_dir(&state);
        let pids_left = state.join(crate::pidfile::PIDS_FILE).exists();
        let held_left = held.iter().all(|m| m.exists());
        for m in &held {
            nix::mount::umount(m).expect("umount");
        }
        assert_eq!((pids_left, held_left), (false, true));
    }

    #[test]
    fn overlong_state_dir_is_refused() {
        let long = PathBuf::from(format!("/run/{}", "x".repeat(100)));
        assert!(matches!(Paths::new(&long), Err(Error::SocketPathTooLong { .. })));
        assert!(Paths::new(Path::new("/run/contrast/k8s.io/abc")).is_ok());
    }
}
