//! The pod: one VM per sandbox, its agent connection and its shared directory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine;
use contrast_agent_protocol::{agent, AgentClient};
use contrast_config::{RuntimeClassConfig, ANNOTATION_POLICY};
use contrast_initdata::InitData;
use contrast_vmm::{LaunchInitData, LaunchRequest, PodVm};

use crate::error::ShimError;

/// Where the guest mounts the pod's shared directory (virtio-fs tag `contrast`).
pub const GUEST_SHARED: &str = "/run/contrast/shared";
/// Config file looked for next to the shim binary when the runtime options name none.
const CONFIG_NEXT_TO_BINARY: &str = "configuration.toml";
/// Last resort, documented in the README.
const DEFAULT_CONFIG: &str = "/etc/contrast/configuration.toml";
const MIB: i64 = 1024 * 1024;
/// Longest hostname the kernel takes (`HOST_NAME_MAX`, limits.h).
const HOSTNAME_MAX: usize = 64;

/// File in a container's bundle naming the runtime config its pod was started with (as
/// runc's shim keeps `options.json` there): `delete` reads it when the daemon is gone.
pub const BUNDLE_CONFIG_PATH_FILE: &str = "contrast-runtime-config";
/// The file in a container's bundle that names its pod's state dir, for `delete` after a
/// dead shim even when the runtime config no longer loads (moved, edited, uninstalled).
pub const BUNDLE_STATE_DIR_FILE: &str = "contrast-state-dir";

pub struct Pod {
    pub id: String,
    /// The runtime config the pod was started with.
    pub config_path: PathBuf,
    pub vm: PodVm,
    pub agent: AgentClient,
    /// Host directory the guest sees at [`GUEST_SHARED`].
    pub shared: PathBuf,
    /// The runtime config the pod was started with.
    pub config: RuntimeClassConfig,
    /// Hot-plugged layer disks per container.
    pub layers: crate::layers::LayerDisks,
    /// Containers created in this pod so far: names each one's directory in the share.
    instances: std::sync::atomic::AtomicU64,
    /// CRI `PortForward` into the guest (pods with a network namespace).
    port_forward: std::sync::Mutex<Option<contrast_vmm::port_forward::PortForward>>,
}

/// The runtime config: runtime options `ConfigPath`, else next to the binary, else the default.
pub fn resolve_config(config_path: Option<&str>) -> Result<(PathBuf, RuntimeClassConfig), ShimError> {
    let path = match config_path.filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join(CONFIG_NEXT_TO_BINARY)))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG)),
    };
    let config = RuntimeClassConfig::load(&path).map_err(ShimError::Config)?;
    Ok((path, config))
}

/// Records in `bundle` which runtime config the container's pod uses.
pub fn record_config_path(bundle: &Path, config_path: &Path) -> Result<(), ShimError> {
    let path = std::fs::canonicalize(config_path).unwrap_or_else(|_| config_path.to_owned());
    std::fs::write(bundle.join(BUNDLE_CONFIG_PATH_FILE), path.as_os_str().as_encoded_bytes()).map_err(|e| {
        ShimError::Io {
            what: format!("recording the runtime config path in the bundle {}", bundle.display()),
            source: e,
        }
    })
}

pub fn record_state_dir(bundle: &Path, state: &Path) -> Result<(), ShimError> {
    std::fs::write(bundle.join(BUNDLE_STATE_DIR_FILE), state.as_os_str().as_encoded_bytes()).map_err(|e| {
        ShimError::Io { what: format!("recording the pod's state dir in the bundle {}", bundle.display()), source: e }
    })
}

/// The pod state dir recorded in `bundle` at create, if any.
pub fn recorded_state_dir(bundle: &Path) -> Option<PathBuf> {
    let text = std::fs::read(bundle.join(BUNDLE_STATE_DIR_FILE)).ok()?;
    let path = PathBuf::from(std::ffi::OsString::from(String::from_utf8(text).ok()?));
    path.is_absolute().then_some(path)
}

/// The runtime config for `delete`: the one recorded in `bundle`, else where the shim looks
/// without runtime options.
pub fn recorded_config(bundle: &Path) -> Result<(PathBuf, RuntimeClassConfig), ShimError> {
    match std::fs::read_to_string(bundle.join(BUNDLE_CONFIG_PATH_FILE)) {
        Ok(path) => resolve_config(Some(path.trim_end_matches('\n'))),
        Err(_) => resolve_config(None),
    }
}

pub fn state_dir(config: &RuntimeClassConfig, namespace: &str, sandbox_id: &str) -> PathBuf {
    config.runtime.state_dir.join(namespace).join(sandbox_id)
}

/// What the sandbox's spec says about the pod VM.
pub struct PodSpec<'a> {
    pub annotations: &'a BTreeMap<String, String>,
    /// Added to the runtime class's default size (see [`crate::spec::pod_resources`]).
    pub resources: crate::spec::PodResources,
    /// The pod's hostname (CRI: the pause container's `hostname`), the VM's own.
    pub hostname: Option<&'a str>,
    /// The pod's network namespace (CNI's), whose interfaces become the VM's NICs.
    pub netns: Option<PathBuf>,
}

impl Pod {
    /// Confidential path (real or simulated binding): containers run verified image layers.
    pub fn confidential(&self) -> bool {
        self.config.confidential_path()
    }

    /// Boots the pod VM for a sandbox: sized from annotations and the pod's resources
    /// ([`PodSpec`]), its init data (policy) handed over as a disk and bound into the launch;
    /// the guest reads and checks it before it answers anything.
    pub async fn boot(
        config: &RuntimeClassConfig,
        config_path: &Path,
        namespace: &str,
        sandbox_id: &str,
        pod: PodSpec<'_>,
    ) -> Result<Pod, ShimError> {
        let PodSpec { annotations, resources, hostname, netns } = pod;
        let mut overrides = config.pod_overrides(annotations).map_err(|e| ShimError::InvalidArgument(e.to_string()))?;
        if let Some(limit) = resources.memory {
            let extra = u32::try_from((limit + MIB - 1) / MIB).unwrap_or(u32::MAX);
            overrides.memory_mib = overrides.memory_mib.saturating_add(extra);
        }
        if let Some(extra) = resources.vcpus {
            overrides.vcpus = overrides.vcpus.saturating_add(extra);
        }
        let q = &config.hypervisor.qemu;
        if overrides.memory_mib > q.default_maxmemory {
            return Err(ShimError::InvalidArgument(format!(
                "pod VM would need {} MiB (default {} MiB + the pod's limits), more than the {} MiB \
                 this runtime class allows (hypervisor.qemu.default_maxmemory)",
                overrides.memory_mib, q.default_memory, q.default_maxmemory
            )));
        }
        if overrides.vcpus > q.default_maxvcpus {
            return Err(ShimError::InvalidArgument(format!(
                "pod VM would need {} vCPUs (default {} + the pod's CPU limit), more than the {} this \
                 runtime class allows (hypervisor.qemu.default_maxvcpus)",
                overrides.vcpus, q.default_vcpus, q.default_maxvcpus
            )));
        }
        let init_data = pod_init_data(config, overrides.init_data.as_deref(), annotations)?;
        let state = state_dir(config, namespace, sandbox_id);
        let shared = state.join("shared");
        let use_share = config.hypervisor.qemu.shared_fs == contrast_config::SharedFs::VirtioFs;
        let started = std::time::Instant::now();
        let vm = PodVm::launch(LaunchRequest {
            id: sandbox_id,
            config,
            overrides: &overrides,
            state_dir: state,
            init_data,
            shared_dir: use_share.then(|| shared.clone()),
            netns,
        })
        .await
        .map_err(|e| ShimError::Vm(Box::new(e)))?;
        let qmp_ready = started.elapsed();
        let port_forward = Self::forward_ports(&vm).await;
        let hostname: String = hostname.unwrap_or(sandbox_id).chars().take(HOSTNAME_MAX).collect();
        match Self::connect(&vm, config, sandbox_id, &hostname, use_share).await {
            Ok(agent) => {
                // Phase timings, read by `make bench` from containerd's log.
                tracing::info!(
                    pod = sandbox_id,
                    qmp_ready_ms = qmp_ready.as_millis() as u64,
                    agent_ready_ms = started.elapsed().as_millis() as u64,
                    "pod VM ready"
                );
                Ok(Pod {
                    id: sandbox_id.to_owned(),
                    config_path: config_path.to_owned(),
                    vm,
                    agent,
                    shared,
                    config: config.clone(),
                    layers: Default::default(),
                    instances: Default::default(),
                    port_forward: std::sync::Mutex::new(port_forward),
                })
            }
            Err(e) => {
                vm.stop().await;
                Err(e)
            }
        }
    }

    /// containerd's `PortForward` connects to localhost in the pod's network namespace: steered
    /// into the guest ([`contrast_vmm::port_forward`]). Without it the pod still runs; the
    /// log says why port forwarding does not.
    async fn forward_ports(vm: &PodVm) -> Option<contrast_vmm::port_forward::PortForward> {
        let netns = &vm.network()?.netns;
        match contrast_vmm::port_forward::PortForward::start(netns, vm.vsock().clone(), vm.exited()).await {
            Ok(forward) => Some(forward),
            Err(e) => {
                tracing::warn!(error = %e, "no port forwarding for this pod");
                None
            }
        }
    }

    async fn connect(
        vm: &PodVm,
        config: &RuntimeClassConfig,
        sandbox_id: &str,
        hostname: &str,
        use_share: bool,
    ) -> Result<AgentClient, ShimError> {
        let stream = vm.dial_agent().await.map_err(|e| ShimError::AgentUnreachable(Box::new(e)))?;
        let agent = AgentClient::new(stream, config.request_timeout());
        if let Some(network) = vm.network() {
            crate::network::configure(&agent, network).await?;
        }
        let mut req = agent::CreateSandboxRequest::new();
        req.sandbox_id = sandbox_id.to_owned();
        req.hostname = hostname.to_owned();
        if use_share {
            let mut storage = agent::Storage::new();
            storage.driver = "virtio-fs".into();
            storage.source = contrast_vmm::qemu_args::SHARED_FS_TAG.into();
            storage.fstype = "virtiofs".into();
            storage.mount_point = GUEST_SHARED.into();
            req.storages = vec![storage];
        }
        agent.create_sandbox(&req).await.map_err(ShimError::from)?;
        Ok(agent)
    }

    /// Host directory of everything a container shares with the guest (under
    /// [`Pod::new_instance_dirs`]); unmounting it removes the container's share.
    pub fn container_dir(&self, id: &str) -> PathBuf {
        self.shared.join(id)
    }

    /// Host and guest paths of a new directory for one container instance, inside
    /// [`Pod::container_dir`]. The guest caches virtio-fs names and attributes for a second
    /// (virtiofsd `--cache=auto`): a container deleted and created again under its id within
    /// that second would see the old instance's rootfs and mounts at the same path.
    pub fn new_instance_dirs(&self, id: &str) -> (PathBuf, String) {
        let n = self.instances.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        (self.container_dir(id).join(n.to_string()), format!("{GUEST_SHARED}/{id}/{n}"))
    }

    /// Destroys the guest sandbox, unmounts everything shared, stops the VM. Idempotent.
    pub async fn teardown(&self) {
        let _ = self.agent.destroy_sandbox(&agent::DestroySandboxRequest::new()).await;
        // After the last agent request: a forwarded connection cut during its vsock handshake
        // can break vhost-device-vsock (crate::vsock), which would leave that request hanging.
        drop(self.port_forward.lock().unwrap_or_else(|p| p.into_inner()).take());
        crate::rootfs::unmount_all(&self.shared);
        let exit = self.vm.stop().await;
        tracing::info!(pod = %self.id, %exit, "pod VM stopped");
    }
}

/// On `snp`/`tdx`: whether this node can run the platform at all (KVM with the vendor's
/// SNP/TDX switch on, `/dev/sev`, QEMU's confidential-guest object, vsock, boot files),
/// refused with every missing piece named before a VM boot is spent on it. `insecure` runs
/// anywhere (TCG without KVM) and is not probed.
pub fn node_can_run(config: &RuntimeClassConfig) -> Result<(), ShimError> {
    let q = &config.hypervisor.qemu;
    if q.platform == contrast_config::Platform::Insecure {
        return Ok(());
    }
    let mut boot_files = Vec::new();
    for (what, path) in [
        ("kernel", &q.kernel),
        ("initrd", &q.initrd),
        ("root disk", &q.image),
        ("firmware", &q.firmware),
        ("igvm", &q.igvm),
    ] {
        if let Some(p) = path {
            boot_files.push((what, p.clone()));
        }
    }
    let probe = contrast_node_check::Probe {
        root: Path::new("/"),
        qemu_objects: contrast_node_check::qemu_objects(&q.path),
        boot_files,
        igvm: q.igvm.is_some(),
    };
    let report = contrast_node_check::check(&q.platform.to_string(), &probe);
    if report.ready() {
        return Ok(());
    }
    let missing: Vec<String> =
        report.items.iter().filter(|i| !i.ok).map(|i| format!("{}: {}", i.name, i.detail)).collect();
    Err(ShimError::FailedPrecondition(format!(
        "this node cannot run platform {} (`contrast-node-installer check --platform {}` says the same): {}",
        q.platform,
        q.platform,
        missing.join("; ")
    )))
}

/// The pod's init data: the `cc_init_data` annotation, else the policy annotation wrapped
/// into a document (so that a bare policy is measured the same way), else none. On the
/// confidential path a pod without init data is refused here: its guest would deny it all.
fn pod_init_data(
    config: &RuntimeClassConfig,
    annotated: Option<&str>,
    annotations: &BTreeMap<String, String>,
) -> Result<Option<LaunchInitData>, ShimError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| ShimError::InvalidArgument(format!("annotation {what}: {e}"));
    let init_data = match (annotated, annotations.get(ANNOTATION_POLICY)) {
        (Some(_), Some(_)) => {
            return Err(ShimError::InvalidArgument(format!(
                "annotations {} and {ANNOTATION_POLICY} both given; put the policy into the init data as {}",
                contrast_initdata::ANNOTATION,
                contrast_initdata::POLICY_FILE
            )))
        }
        (Some(value), None) => {
            Some(InitData::from_annotation(value).map_err(|e| bad(contrast_initdata::ANNOTATION, &e))?)
        }
        (None, Some(b64)) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| bad(ANNOTATION_POLICY, &format!("not base64: {e}")))?;
            let rego = String::from_utf8(bytes).map_err(|_| bad(ANNOTATION_POLICY, &"policy is not UTF-8"))?;
            Some(InitData::wrap_policy(&rego))
        }
        (None, None) => None,
    };
    let q = &config.hypervisor.qemu;
    let Some(init_data) = init_data else {
        if config.confidential_path() {
            return Err(ShimError::InvalidArgument(format!(
                "platform {}{} needs the pod's init data (annotation {}, or a policy in {ANNOTATION_POLICY}): \
                 its guest enforces nothing else",
                q.platform,
                if q.simulate_launch_binding { " (simulated launch binding)" } else { "" },
                contrast_initdata::ANNOTATION
            )));
        }
        return Ok(None);
    };
    let host_data = init_data.host_data();
    let simulated_host_data = q.simulate_launch_binding.then(|| {
        let mut value = host_data;
        if q.simulate_binding_mismatch {
            value[0] ^= 0x01;
            tracing::warn!("SIMULATION: binding a value that does not match the init data (simulate_binding_mismatch)");
        }
        tracing::warn!(
            host_data = %contrast_initdata::hex(&value),
            "SIMULATED launch binding through fw_cfg: this pod is NOT confidential (insecure platform)"
        );
        value
    });
    Ok(Some(LaunchInitData {
        disk_image: init_data.to_disk(),
        host_data,
        mrconfigid: init_data.mrconfigid(),
        simulated_host_data,
    }))
}

/// Cleanup without a daemon (`delete` bootstrap): kill the processes recorded in the state
/// dir (pid + start time, so a reused pid is never hit), then — as a fallback for anything
/// started but not yet recorded — any process naming the pod's state dir on its command
/// line; unmount; remove the state dir.
pub fn cleanup_dead_pod(state: &Path) {
    let killed = contrast_vmm::pidfile::kill_recorded(state);
    tracing::info!(dir = %state.display(), ?killed, "cleaned up a pod whose shim is gone");
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for pid in entries.flatten().filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok()) {
            let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            // Whole path components: pod `b1`'s cleanup must not kill pod `b10`'s VM.
            if contrast_vmm::pidfile::cmdline_names_dir(&raw, state) && pid != std::process::id() as i32 {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
    }
    // Removes the state dir too, never through a mount left in it.
    crate::rootfs::unmount_all(state);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> RuntimeClassConfig {
        let text = format!(
            "[hypervisor.qemu]\nplatform = \"insecure\"\npath = \"/q\"\nkernel = \"/k\"\n\
             enable_annotations = [\"cc_init_data\"]\n{extra}\n"
        );
        RuntimeClassConfig::parse(&text, Path::new("t.toml")).expect("valid")
    }

    #[test]
    fn host_and_agent_agree_on_the_vsock_ports() {
        // Two constants each side: the vmm crate does not link the agent protocol.
        assert_eq!(contrast_vmm::AGENT_VSOCK_PORT, contrast_agent_protocol::AGENT_VSOCK_PORT);
        assert_eq!(contrast_vmm::AGENT_READY_VSOCK_PORT, contrast_agent_protocol::AGENT_READY_VSOCK_PORT);
        assert_eq!(
            contrast_vmm::port_forward::PORT_FORWARD_VSOCK_PORT,
            contrast_agent_protocol::PORT_FORWARD_VSOCK_PORT
        );
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn a_bare_policy_is_wrapped_and_measured_like_init_data() {
        let b64 = base64::engine::general_purpose::STANDARD;
        let rego = "package agent_policy\ndefault CreateSandboxRequest := true\n";
        let a = annotations(&[(ANNOTATION_POLICY, &b64.encode(rego))]);
        let got = pod_init_data(&config(""), None, &a).expect("ok").expect("init data");
        let want = InitData::wrap_policy(rego);
        assert_eq!(got.host_data, want.host_data());
        assert_eq!(got.mrconfigid, want.mrconfigid());
        assert_eq!(got.disk_image, want.to_disk());
        assert_eq!(got.simulated_host_data, None, "no simulation configured");
        assert_eq!(InitData::from_disk(&got.disk_image).expect("disk").policy(), Some(rego));
    }

    #[test]
    fn simulation_binds_the_digest_or_a_mismatch_and_needs_init_data() {
        let value = {
            use std::io::Write;
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(
                b"version = \"0.1.0\"\nalgorithm = \"sha512\"\n[data]\n\"policy.rego\" = \"package agent_policy\"\n",
            )
            .expect("gzip");
            base64::engine::general_purpose::STANDARD.encode(gz.finish().expect("gzip"))
        };
        let sim = config("simulate_launch_binding = true");
        let got = pod_init_data(&sim, Some(&value), &BTreeMap::new()).expect("ok").expect("init data");
        assert_eq!(got.simulated_host_data, Some(got.host_data));
        let off = config("simulate_launch_binding = true\nsimulate_binding_mismatch = true");
        let got = pod_init_data(&off, Some(&value), &BTreeMap::new()).expect("ok").expect("init data");
        assert_ne!(got.simulated_host_data, Some(got.host_data));
        let err = pod_init_data(&sim, None, &BTreeMap::new()).expect_err("no init data");
        assert!(err.to_string().contains("needs the pod's init data"), "{err}");
        assert!(pod_init_data(&config(""), None, &BTreeMap::new()).expect("plain").is_none());
    }

    #[test]
    fn bad_or_ambiguous_init_data_is_invalid_argument() {
        let both = annotations(&[(ANNOTATION_POLICY, "cGFja2FnZSB4")]);
        let err = pod_init_data(&config(""), Some("x"), &both).expect_err("both");
        assert!(matches!(&err, ShimError::InvalidArgument(m) if m.contains("both given")), "{err}");
        let err = pod_init_data(&config(""), Some("!!"), &BTreeMap::new()).expect_err("not base64");
        assert!(matches!(&err, ShimError::InvalidArgument(m) if m.contains("cc_init_data")), "{err}");
        let err = pod_init_data(&config(""), None, &annotations(&[(ANNOTATION_POLICY, "%%")])).expect_err("bad");
        assert!(matches!(&err, ShimError::InvalidArgument(m) if m.contains("not base64")), "{err}");
    }
}
