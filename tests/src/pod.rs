//! A pod VM with a guest sandbox and a busybox root filesystem shared over virtio-fs: what
//! the container tests, the demo and the benchmarks drive the agent through.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use contrast_agent_protocol::{agent, oci, AgentClient, AgentError};
use contrast_vmm::{LaunchRequest, PodVm};

use crate::TestConfig;

/// Where the guest mounts the shared directory (virtio-fs tag `contrast`).
pub const GUEST_SHARED: &str = "/run/contrast/shared";
/// Busybox applets linked into the test rootfs.
const APPLETS: &[&str] = &[
    "sh", "echo", "cat", "sleep", "stty", "ps", "ls", "true", "false", "seq", "head", "wc", "id", "hostname", "tr",
    "dd", "yes", "env", "kill",
];
/// Per-call deadline for agent requests in tests.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// Creates `<dir>/busybox/` with busybox-static and its applets; returns the rootfs path.
pub fn busybox_rootfs(dir: &Path) -> Result<PathBuf> {
    let root = dir.join("busybox");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc", "root"] {
        std::fs::create_dir_all(root.join(d)).with_context(|| format!("creating {d}"))?;
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).context("copying /bin/busybox (busybox-static)")?;
    for applet in APPLETS {
        let link = root.join("bin").join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
    std::fs::write(root.join("etc/group"), "root:x:0:\n")?;
    Ok(root)
}

pub fn mount(dest: &str, kind: &str, source: &str, options: &[&str]) -> oci::Mount {
    let mut m = oci::Mount::new();
    m.destination = dest.into();
    m.type_ = kind.into();
    m.source = source.into();
    m.options = options.iter().map(|o| o.to_string()).collect();
    m
}

/// An OCI spec (kata protobuf form) like containerd's default: busybox rootfs in the shared
/// directory, new PID/mount/IPC/UTS namespaces, the usual /proc, /dev, /dev/pts, /sys mounts.
pub fn container_spec(rootfs: &str, args: &[&str], terminal: bool) -> oci::Spec {
    let mut process = oci::Process::new();
    process.Terminal = terminal;
    process.Args = args.iter().map(|a| a.to_string()).collect();
    process.Env = vec!["PATH=/bin".into(), "TERM=xterm".into(), "HOME=/root".into()];
    process.Cwd = "/".into();
    process.User = Some(oci::User::new()).into();
    let mut root = oci::Root::new();
    root.Path = rootfs.into();
    let mut linux = oci::Linux::new();
    for t in ["pid", "mount", "ipc", "uts"] {
        let mut ns = oci::LinuxNamespace::new();
        ns.Type = t.into();
        linux.Namespaces.push(ns);
    }
    linux.MaskedPaths = vec!["/proc/kcore".into(), "/proc/keys".into()];
    let mut spec = oci::Spec::new();
    spec.Version = "1.1.0".into();
    spec.Process = Some(process).into();
    spec.Root = Some(root).into();
    spec.Hostname = "pod".into();
    spec.Mounts = vec![
        mount("/proc", "proc", "proc", &["nosuid", "noexec", "nodev"]),
        mount("/dev", "tmpfs", "tmpfs", &["nosuid", "strictatime", "mode=755", "size=65536k"]),
        mount("/dev/pts", "devpts", "devpts", &["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]),
        mount("/dev/shm", "tmpfs", "shm", &["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]),
        mount("/sys", "sysfs", "sysfs", &["nosuid", "noexec", "nodev", "ro"]),
    ];
    spec.Linux = Some(linux).into();
    spec
}

pub fn create_request(id: &str, spec: oci::Spec) -> agent::CreateContainerRequest {
    let mut req = agent::CreateContainerRequest::new();
    req.container_id = id.into();
    req.exec_id = id.into();
    req.OCI = Some(spec).into();
    req
}

pub fn exec_request(id: &str, exec_id: &str, args: &[&str], terminal: bool) -> agent::ExecProcessRequest {
    let spec = container_spec("/", args, terminal);
    let mut req = agent::ExecProcessRequest::new();
    req.container_id = id.into();
    req.exec_id = exec_id.into();
    req.process = spec.Process;
    req
}

/// A running pod VM with its agent connection and guest sandbox.
pub struct TestPod {
    pub vm: PodVm,
    pub agent: AgentClient,
    /// Guest path of the busybox rootfs.
    pub rootfs: String,
    _scratch: tempfile::TempDir,
}

impl TestPod {
    /// Boots the image, shares a fresh busybox rootfs, creates the guest sandbox.
    pub async fn start(image: &Path, id: &str) -> Result<TestPod> {
        Self::start_inner(image, id, "", None, true).await
    }

    /// A pod on the confidential path's devices (simulated binding, no init data, so no
    /// policy): a virtio-scsi controller for image layers, no virtio-fs share.
    pub async fn start_layered(image: &Path, id: &str) -> Result<TestPod> {
        Self::start_inner(image, id, "simulate_launch_binding = true", None, false).await
    }

    /// QEMU's command line, one argument per line.
    pub fn vm_args(&self) -> String {
        std::fs::read(format!("/proc/{}/cmdline", self.vm.qemu_pid()))
            .map(|b| b.split(|&c| c == 0).map(|a| String::from_utf8_lossy(a).into_owned() + "\n").collect())
            .unwrap_or_default()
    }

    /// A pod with the pod's init data and a SIMULATED launch binding of it
    /// (`simulate_launch_binding`): the guest enforces the init data's policy from the start.
    /// No host share (the confidential path has none).
    pub async fn start_measured(image: &Path, id: &str, init_data: &contrast_initdata::InitData) -> Result<TestPod> {
        let launch = contrast_vmm::LaunchInitData {
            disk_image: init_data.to_disk(),
            host_data: init_data.host_data(),
            mrconfigid: init_data.mrconfigid(),
            simulated_host_data: Some(init_data.host_data()),
        };
        Self::start_inner(image, id, "simulate_launch_binding = true", Some(launch), false).await
    }

    async fn start_inner(
        image: &Path,
        id: &str,
        extra_config: &str,
        init_data: Option<contrast_vmm::LaunchInitData>,
        share: bool,
    ) -> Result<TestPod> {
        let scratch = tempfile::Builder::new().prefix("cp").tempdir()?;
        let shared = scratch.path().join("shared");
        busybox_rootfs(&shared)?;
        let mut config = TestConfig::new(image, &scratch.path().join("run"));
        config.extra = extra_config.into();
        if !share {
            config.shared_fs = "none";
        }
        let config = config.write_and_load(&scratch.path().join("configuration.toml"))?;
        let overrides = config.pod_overrides(&BTreeMap::new())?;
        let vm = PodVm::launch(LaunchRequest {
            id,
            config: &config,
            overrides: &overrides,
            state_dir: scratch.path().join("run/default").join(id),
            init_data,
            shared_dir: share.then_some(shared),
            netns: None,
        })
        .await?;
        let agent = AgentClient::new(vm.dial_agent().await?, REQUEST_TIMEOUT);
        let mut storage = agent::Storage::new();
        storage.driver = "virtio-fs".into();
        storage.source = contrast_vmm::qemu_args::SHARED_FS_TAG.into();
        storage.fstype = "virtiofs".into();
        storage.mount_point = GUEST_SHARED.into();
        let mut req = agent::CreateSandboxRequest::new();
        req.hostname = "pod".into();
        req.sandbox_id = id.into();
        if share {
            req.storages = vec![storage];
        }
        agent.create_sandbox(&req).await?;
        Ok(TestPod { vm, agent, rootfs: format!("{GUEST_SHARED}/busybox"), _scratch: scratch })
    }

    pub fn state_dir(&self) -> PathBuf {
        self.vm.state_dir().to_owned()
    }

    /// Creates and starts a container running `args`.
    pub async fn run(&self, id: &str, args: &[&str], terminal: bool) -> Result<(), AgentError> {
        self.agent.create_container(&create_request(id, container_spec(&self.rootfs, args, terminal))).await?;
        let mut start = agent::StartContainerRequest::new();
        start.container_id = id.into();
        self.agent.start_container(&start).await?;
        Ok(())
    }

    /// Reads stdout of a process until end of stream.
    pub async fn read_all_stdout(&self, id: &str, exec_id: &str) -> Result<Vec<u8>, AgentError> {
        self.read_all(id, exec_id, false).await
    }

    /// Reads stderr of a process until end of stream.
    pub async fn read_all_stderr(&self, id: &str, exec_id: &str) -> Result<Vec<u8>, AgentError> {
        self.read_all(id, exec_id, true).await
    }

    async fn read_all(&self, id: &str, exec_id: &str, stderr: bool) -> Result<Vec<u8>, AgentError> {
        let mut out = Vec::new();
        loop {
            let mut req = agent::ReadStreamRequest::new();
            req.container_id = id.into();
            req.exec_id = exec_id.into();
            req.len = 32 * 1024;
            let read = if stderr { self.agent.read_stderr(&req).await } else { self.agent.read_stdout(&req).await };
            match read {
                Ok(resp) => out.extend_from_slice(&resp.data),
                Err(e) if e.code == ttrpc::Code::OUT_OF_RANGE => return Ok(out),
                Err(e) => return Err(e),
            }
        }
    }

    pub async fn read_stdout(&self, id: &str, exec_id: &str) -> Result<Vec<u8>, AgentError> {
        let mut req = agent::ReadStreamRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.len = 32 * 1024;
        Ok(self.agent.read_stdout(&req).await?.data)
    }

    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<i32, AgentError> {
        let mut req = agent::WaitProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        Ok(self.agent.wait_process(&req).await?.status)
    }

    pub async fn signal(&self, id: &str, exec_id: &str, signal: u32) -> Result<(), AgentError> {
        let mut req = agent::SignalProcessRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        req.signal = signal;
        self.agent.signal_process(&req).await.map(|_| ())
    }

    pub async fn remove(&self, id: &str) -> Result<(), AgentError> {
        let mut req = agent::RemoveContainerRequest::new();
        req.container_id = id.into();
        self.agent.remove_container(&req).await.map(|_| ())
    }

    pub async fn stop(self) -> contrast_vmm::VmExit {
        let _ = self.agent.destroy_sandbox(&agent::DestroySandboxRequest::new()).await;
        self.vm.stop().await
    }
}
