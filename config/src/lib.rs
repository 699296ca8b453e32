//! The runtime-class configuration file (TOML) and per-pod annotation overrides.
//!
//! Key names follow kata-containers' `configuration.toml` where the meaning is the same
//! (`[hypervisor.qemu]`, `[agent.kata]`); keys kata does not have are ours and documented
//! in `packaging/config/*.toml`.

mod annotations;
mod error;

use std::collections::BTreeMap;
use std::fmt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use annotations::{PodOverrides, ANNOTATION_HYPERVISOR_PREFIX, ANNOTATION_POLICY};
pub use error::Error;

/// vCPU model of SNP pods unless configured: the reference values carry digests for it.
pub const DEFAULT_SNP_CPU_MODEL: &str = "EPYC-v4";

/// Smallest VM memory we accept in MiB; below this the guest kernel cannot boot.
pub const MIN_MEMORY_MIB: u32 = 128;
/// The longest any configured timeout may be: longer is a typo, and larger values would
/// overflow the deadlines computed from them.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// Bound of TCG's translated-code cache per VM in MiB (`-accel tcg,tb-size=`), where QEMU
/// emulates the CPU (no KVM: the `insecure` platform on a development machine). QEMU's own
/// default lets it grow to 1 GiB per VM; the RuntimeClass overhead reserves this bound. A pod
/// VM's boot alone translates ~55 MiB (64 MiB filled within 4 s of start and was flushed).
pub const TCG_TB_SIZE_MIB: u32 = 128;

/// Confidential-computing platform a runtime class targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// AMD SEV-SNP.
    Snp,
    /// Intel TDX.
    Tdx,
    /// Plain VM without memory encryption: development and CI only.
    Insecure,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Platform::Snp => "snp",
            Platform::Tdx => "tdx",
            Platform::Insecure => "insecure",
        })
    }
}

/// How the host reaches the guest's vsock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VsockMode {
    /// `vhost` when `/dev/vhost-vsock` exists, else `hybrid`.
    #[default]
    Auto,
    /// Kernel vhost-vsock (`vhost-vsock-pci`), dialed with AF_VSOCK.
    Vhost,
    /// vhost-user-vsock through `vhost-device-vsock`, dialed as a unix socket.
    Hybrid,
}

/// How container root filesystems reach the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum SharedFs {
    #[serde(rename = "virtio-fs")]
    VirtioFs,
    #[default]
    #[serde(rename = "none")]
    None,
}

/// QEMU accelerator choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    #[default]
    Auto,
    Kvm,
    Tcg,
}

/// The whole runtime-class configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeClassConfig {
    pub hypervisor: HypervisorSection,
    #[serde(default)]
    pub agent: AgentSection,
    #[serde(default)]
    pub runtime: RuntimeSection,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HypervisorSection {
    pub qemu: QemuConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSection {
    #[serde(default)]
    pub kata: AgentConfig,
}

/// Most vCPUs a VM booted from the pod image's IGVM file can use (the MP tables it carries).
pub const IGVM_MAX_VCPUS: u32 = 64;

/// `[hypervisor.qemu]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QemuConfig {
    pub platform: Platform,
    /// QEMU binary.
    pub path: PathBuf,
    /// OVMF (SNP) / TDVF (TDX) firmware; required for confidential platforms without IGVM.
    #[serde(default)]
    pub firmware: Option<PathBuf>,
    #[serde(default)]
    pub kernel: Option<PathBuf>,
    #[serde(default)]
    pub initrd: Option<PathBuf>,
    /// IGVM file holding firmware, kernel, initrd and command line.
    #[serde(default)]
    pub igvm: Option<PathBuf>,
    /// Root disk image (read-only, dm-verity protected).
    #[serde(default)]
    pub image: Option<PathBuf>,
    /// Kernel parameters on the command line before `kernel_params`.
    #[serde(default)]
    pub kernel_params: String,
    /// File holding the image's own command line (the `cmdline` the image builder writes, with
    /// `roothash=`). When set it replaces the built-in base parameters; `kernel_params` and pod
    /// annotations are appended to it.
    #[serde(default)]
    pub kernel_params_file: Option<PathBuf>,
    #[serde(default = "defaults::vcpus")]
    pub default_vcpus: u32,
    #[serde(default = "defaults::max_vcpus")]
    pub default_maxvcpus: u32,
    /// MiB.
    #[serde(default = "defaults::memory")]
    pub default_memory: u32,
    /// MiB; the largest a pod may ask for through annotations or container limits.
    #[serde(default = "defaults::max_memory")]
    pub default_maxmemory: u32,
    #[serde(default)]
    pub vsock_mode: VsockMode,
    /// QEMU accelerator: `auto` (KVM when `/dev/kvm` is usable, else TCG; always KVM on
    /// confidential platforms), `kvm` or `tcg`.
    #[serde(default)]
    pub accel: Accel,
    /// `vhost-device-vsock` binary for hybrid vsock; looked up on `PATH` when unset.
    #[serde(default)]
    pub vhost_device_vsock_path: Option<PathBuf>,
    /// `virtio-fs` shares container root filesystems from the host (insecure platform only:
    /// confidential guests must not run host-provided files unverified); `none` shares nothing.
    #[serde(default)]
    pub shared_fs: SharedFs,
    /// virtiofsd binary; looked up on `PATH` when unset (kata: `virtio_fs_daemon`).
    #[serde(default)]
    pub virtio_fs_daemon: Option<PathBuf>,
    /// Annotation names (the part after `io.katacontainers.config.hypervisor.`) a pod may set.
    #[serde(default)]
    pub enable_annotations: Vec<String>,
    /// SIMULATION, `insecure` only: pods follow the confidential path (init data required
    /// and handed over as a disk, no `SetPolicy` shortcut, the guest checks the init data
    /// against a launch binding, container images as verified layers, no host share) with
    /// the binding passed through QEMU `fw_cfg` instead of SNP/TDX hardware. Not
    /// confidential: the host sets both sides.
    #[serde(default)]
    pub simulate_launch_binding: bool,
    /// SIMULATION, tests of the trust chain: bind a value one bit off the pod's init data
    /// digest, so that the guest must refuse the pod. Only with `simulate_launch_binding`.
    #[serde(default)]
    pub simulate_binding_mismatch: bool,
    /// QEMU vCPU model (`-cpu`). The SNP launch digest depends on it (the VMSA carries the
    /// CPU signature), so confidential platforms name one: default `EPYC-v4` on `snp`,
    /// `host` on `tdx`; on `insecure` `host` with KVM and QEMU's default under TCG.
    #[serde(default)]
    pub cpu_model: Option<String>,
    /// SEV-SNP: C-bit position in page table entries.
    #[serde(default = "defaults::cbitpos")]
    pub cbitpos: u32,
    /// SEV-SNP: physical address bits lost to encryption.
    #[serde(default = "defaults::reduced_phys_bits")]
    pub reduced_phys_bits: u32,
    /// SEV-SNP guest policy (AMD SEV-SNP ABI spec, chapter 4.3).
    #[serde(default = "defaults::snp_guest_policy")]
    pub snp_guest_policy: u64,
    /// Milliseconds to wait for QEMU's QMP socket.
    #[serde(default = "defaults::qmp_timeout_ms")]
    pub qmp_timeout_ms: u64,
    /// Milliseconds one QMP command may take before it counts as failed (a hung QEMU must not
    /// hang teardown: the VM is then killed).
    #[serde(default = "defaults::qmp_command_timeout_ms")]
    pub qmp_command_timeout_ms: u64,
    /// Milliseconds the guest gets to power off after `system_powerdown`.
    #[serde(default = "defaults::powerdown_timeout_ms")]
    pub powerdown_timeout_ms: u64,
    /// Milliseconds QEMU gets to exit after `quit` before SIGKILL.
    #[serde(default = "defaults::quit_timeout_ms")]
    pub quit_timeout_ms: u64,
    /// A second QMP monitor for people debugging a pod, at `qmp-debug.sock` in its state dir
    /// (`info status`, `stop`, `cont`): the shim keeps the first to itself. Off by default.
    #[serde(default)]
    pub debug_qmp: bool,
}

/// `[agent.kata]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Seconds to keep dialing the agent after QEMU started (kata: `dial_timeout`).
    #[serde(default = "defaults::dial_timeout")]
    pub dial_timeout: u64,
    /// Seconds one agent request may take.
    #[serde(default = "defaults::request_timeout")]
    pub request_timeout: u64,
    /// Start a shell on the guest's serial console (never on confidential platforms in production).
    #[serde(default)]
    pub debug_console_enabled: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            dial_timeout: defaults::dial_timeout(),
            request_timeout: defaults::request_timeout(),
            debug_console_enabled: false,
        }
    }
}

/// `[runtime]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeSection {
    /// Directory under which each pod gets its state dir `<state_dir>/<namespace>/<sandbox-id>`.
    #[serde(default = "defaults::state_dir")]
    pub state_dir: PathBuf,
    /// Where the confidential path caches each image layer as the EROFS + dm-verity image
    /// handed to guests (one file per layer digest, shared by all pods of the node).
    #[serde(default = "defaults::layer_cache_dir")]
    pub layer_cache_dir: PathBuf,
    /// How often the confidential path compares a container's configMap, secret, projected
    /// and downwardAPI volumes with kubelet's files and copies what changed into the guest.
    #[serde(default = "defaults::volume_sync_interval_ms")]
    pub volume_sync_interval_ms: u64,
}

impl Default for RuntimeSection {
    fn default() -> Self {
        RuntimeSection {
            state_dir: defaults::state_dir(),
            layer_cache_dir: defaults::layer_cache_dir(),
            volume_sync_interval_ms: defaults::volume_sync_interval_ms(),
        }
    }
}

mod defaults {
    use std::path::PathBuf;
    pub fn vcpus() -> u32 {
        1
    }
    pub fn max_vcpus() -> u32 {
        8
    }
    pub fn memory() -> u32 {
        512
    }
    pub fn max_memory() -> u32 {
        16384
    }
    // AMD EPYC (Milan, Genoa): C-bit 51, one physical address bit lost.
    pub fn cbitpos() -> u32 {
        51
    }
    pub fn reduced_phys_bits() -> u32 {
        1
    }
    // SEV-SNP ABI spec, guest policy: bit 17 "reserved, must be one", bit 16 SMT allowed.
    pub fn snp_guest_policy() -> u64 {
        0x30000
    }
    pub fn qmp_timeout_ms() -> u64 {
        10_000
    }
    pub fn qmp_command_timeout_ms() -> u64 {
        5_000
    }
    pub fn powerdown_timeout_ms() -> u64 {
        3_000
    }
    pub fn quit_timeout_ms() -> u64 {
        2_000
    }
    pub fn dial_timeout() -> u64 {
        90
    }
    pub fn request_timeout() -> u64 {
        60
    }
    pub fn state_dir() -> PathBuf {
        PathBuf::from("/run/contrast")
    }
    pub fn layer_cache_dir() -> PathBuf {
        PathBuf::from("/var/lib/contrast/layers")
    }
    pub fn volume_sync_interval_ms() -> u64 {
        2000
    }
}

impl RuntimeClassConfig {
    /// Reads, parses and validates a config file, including that the files it names exist.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read { path: path.to_owned(), source })?;
        let config = Self::parse(&text, path)?;
        config.check_files(path)?;
        Ok(config)
    }

    /// Parses and validates config text; `origin` names the file in errors. Does not touch
    /// the file system.
    pub fn parse(text: &str, origin: &Path) -> Result<Self, Error> {
        let config: RuntimeClassConfig = toml::from_str(text).map_err(|e| Error::Parse {
            path: origin.to_owned(),
            message: e.message().to_owned(),
            span: e.span().map(|s| line_of(text, s.start)),
        })?;
        config.validate(origin)?;
        Ok(config)
    }

    fn validate(&self, origin: &Path) -> Result<(), Error> {
        let q = &self.hypervisor.qemu;
        let invalid = |key: &str, problem: String| Error::Invalid {
            path: origin.to_owned(),
            key: format!("hypervisor.qemu.{key}"),
            problem,
        };
        if q.default_vcpus == 0 || q.default_vcpus > q.default_maxvcpus {
            return Err(invalid(
                "default_vcpus",
                format!("{} is not within 1..={} (default_maxvcpus)", q.default_vcpus, q.default_maxvcpus),
            ));
        }
        if q.default_memory < MIN_MEMORY_MIB || q.default_memory > q.default_maxmemory {
            return Err(invalid(
                "default_memory",
                format!(
                    "{} MiB is not within {MIN_MEMORY_MIB}..={} MiB (default_maxmemory)",
                    q.default_memory, q.default_maxmemory
                ),
            ));
        }
        match (&q.igvm, &q.kernel) {
            (None, None) => {
                return Err(invalid("kernel", "either `kernel` or `igvm` must be set".into()));
            }
            (Some(_), Some(_)) => {
                return Err(invalid(
                    "igvm",
                    "`igvm` already contains the kernel; remove `kernel`/`initrd` or `igvm`".into(),
                ));
            }
            _ => {}
        }
        if q.igvm.is_some() {
            // The command line is inside the IGVM file (measured with it on snp): nothing the
            // node or a pod adds could reach the kernel.
            let fixed = [
                ("initrd", q.initrd.is_some()),
                ("firmware", q.firmware.is_some()),
                ("kernel_params_file", q.kernel_params_file.is_some()),
                ("kernel_params", !q.kernel_params.trim().is_empty()),
            ];
            if let Some((key, _)) = fixed.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    key,
                    format!("`igvm` already holds firmware, kernel, initrd and command line; remove `{key}`"),
                ));
            }
            if self.agent.kata.debug_console_enabled {
                return Err(invalid(
                    "debug_console_enabled",
                    "the debug console is switched on through the kernel command line, which `igvm` fixes".into(),
                ));
            }
            // The file's boot stub carries MP tables for 1..=64 vCPUs (the pod-VM kernel's
            // NR_CPUS); beyond that the kernel would find none and run on one CPU.
            if q.default_maxvcpus > IGVM_MAX_VCPUS {
                return Err(invalid(
                    "default_maxvcpus",
                    format!("{} is above {IGVM_MAX_VCPUS}, the most vCPUs `igvm` boots", q.default_maxvcpus),
                ));
            }
            match q.platform {
                Platform::Tdx => {
                    return Err(invalid("igvm", "the pod image's IGVM files are for insecure and snp, not tdx".into()))
                }
                // The SNP file's reference launch digest covers one VMSA: KVM adds one per vCPU.
                Platform::Snp if q.default_maxvcpus != 1 => {
                    return Err(invalid(
                        "default_maxvcpus",
                        "snp with `igvm` runs one vCPU (the reference launch digest covers the boot CPU's VMSA \
                         only); set default_maxvcpus = 1"
                            .into(),
                    ))
                }
                // QEMU takes the guest policy from the file, whatever the config says, and the
                // file's page tables put the C-bit where contrast-image did.
                Platform::Snp
                    if q.snp_guest_policy != defaults::snp_guest_policy() || q.cbitpos != defaults::cbitpos() =>
                {
                    let key = if q.cbitpos != defaults::cbitpos() { "cbitpos" } else { "snp_guest_policy" };
                    return Err(invalid(
                        key,
                        format!(
                            "the pod image's IGVM file fixes the guest policy ({:#x}, which QEMU takes over the \
                             config's) and the C-bit (bit {}, in its page tables); remove `{key}`, or boot \
                             firmware + kernel on a host whose C-bit is elsewhere",
                            defaults::snp_guest_policy(),
                            defaults::cbitpos()
                        ),
                    ));
                }
                _ => {}
            }
            if q.simulate_launch_binding {
                return Err(invalid(
                    "simulate_launch_binding",
                    "the simulated binding reaches the guest through QEMU fw_cfg, which a kernel booted from \
                     `igvm` (no firmware, no ACPI) cannot find"
                        .into(),
                ));
            }
        }
        if q.platform != Platform::Insecure && q.igvm.is_none() && q.firmware.is_none() {
            return Err(invalid("firmware", format!("platform {} needs `firmware` (or `igvm`) to boot", q.platform)));
        }
        if q.platform != Platform::Insecure && q.accel == Accel::Tcg {
            return Err(invalid("accel", format!("platform {} needs KVM", q.platform)));
        }
        if q.simulate_launch_binding && q.shared_fs == SharedFs::VirtioFs {
            return Err(invalid(
                "shared_fs",
                "the simulated confidential path takes container images as verified layers, never from a host \
                 share; use \"none\""
                    .into(),
            ));
        }
        if q.platform != Platform::Insecure && q.shared_fs == SharedFs::VirtioFs {
            return Err(invalid(
                "shared_fs",
                format!("platform {} must not run files shared from the host; use \"none\"", q.platform),
            ));
        }
        if q.simulate_launch_binding && q.platform != Platform::Insecure {
            return Err(invalid(
                "simulate_launch_binding",
                format!("only the insecure platform simulates; platform {} binds through hardware", q.platform),
            ));
        }
        if q.simulate_binding_mismatch && !q.simulate_launch_binding {
            return Err(invalid("simulate_binding_mismatch", "needs simulate_launch_binding = true".into()));
        }
        if let Some(model) = &q.cpu_model {
            if model.is_empty() || !model.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                return Err(invalid("cpu_model", format!("`{model}` is not a QEMU CPU model name")));
            }
        }
        if q.platform == Platform::Tdx && q.vsock_mode == VsockMode::Hybrid {
            // Hybrid vsock needs a shared memory backend, which private TDX memory is not.
            return Err(invalid("vsock_mode", "hybrid vsock cannot work with TDX guest memory".into()));
        }
        for (key, ms) in [
            ("qmp_timeout_ms", q.qmp_timeout_ms),
            ("qmp_command_timeout_ms", q.qmp_command_timeout_ms),
            ("powerdown_timeout_ms", q.powerdown_timeout_ms),
            ("quit_timeout_ms", q.quit_timeout_ms),
        ] {
            if !(1..=MAX_TIMEOUT.as_millis() as u64).contains(&ms) {
                return Err(invalid(key, format!("{ms} is not within 1..={} ms", MAX_TIMEOUT.as_millis())));
            }
        }
        for name in &q.enable_annotations {
            if !annotations::KNOWN.contains(&name.as_str()) {
                return Err(invalid(
                    "enable_annotations",
                    format!("`{name}` is not an annotation we support (known: {})", annotations::KNOWN.join(", ")),
                ));
            }
        }
        let interval = self.runtime.volume_sync_interval_ms;
        if !(100..=MAX_TIMEOUT.as_millis() as u64).contains(&interval) {
            return Err(Error::Invalid {
                path: origin.to_owned(),
                key: "runtime.volume_sync_interval_ms".into(),
                problem: format!("{interval} is not within 100..={} ms", MAX_TIMEOUT.as_millis()),
            });
        }
        // 0 would mean "no deadline" to ttrpc: a hung guest would hang every call.
        for (key, s) in
            [("dial_timeout", self.agent.kata.dial_timeout), ("request_timeout", self.agent.kata.request_timeout)]
        {
            if !(1..=MAX_TIMEOUT.as_secs()).contains(&s) {
                return Err(Error::Invalid {
                    path: origin.to_owned(),
                    key: format!("agent.kata.{key}"),
                    problem: format!("{s} is not within 1..={} seconds", MAX_TIMEOUT.as_secs()),
                });
            }
        }
        Ok(())
    }

    /// Checks that every file the config names exists (and QEMU is executable).
    pub fn check_files(&self, origin: &Path) -> Result<(), Error> {
        let q = &self.hypervisor.qemu;
        let files = [
            ("firmware", q.firmware.as_deref()),
            ("kernel", q.kernel.as_deref()),
            ("initrd", q.initrd.as_deref()),
            ("igvm", q.igvm.as_deref()),
            ("image", q.image.as_deref()),
            ("kernel_params_file", q.kernel_params_file.as_deref()),
        ];
        for (key, path) in std::iter::once(("path", Some(q.path.as_path()))).chain(files) {
            let Some(path) = path else { continue };
            let meta = std::fs::metadata(path).map_err(|e| Error::Invalid {
                path: origin.to_owned(),
                key: format!("hypervisor.qemu.{key}"),
                problem: format!("{}: {e}", path.display()),
            })?;
            if !meta.is_file() {
                return Err(Error::Invalid {
                    path: origin.to_owned(),
                    key: format!("hypervisor.qemu.{key}"),
                    problem: format!("{} is not a regular file", path.display()),
                });
            }
            if key == "path" && meta.permissions().mode() & 0o111 == 0 {
                return Err(Error::Invalid {
                    path: origin.to_owned(),
                    key: "hypervisor.qemu.path".into(),
                    problem: format!("{} is not executable", path.display()),
                });
            }
        }
        Ok(())
    }

    /// Applies a pod's `io.katacontainers.config.hypervisor.*` annotations; only names in
    /// `enable_annotations` are accepted and values are bounds-checked.
    pub fn pod_overrides(&self, annotations: &BTreeMap<String, String>) -> Result<PodOverrides, Error> {
        annotations::apply(&self.hypervisor.qemu, annotations)
    }

    /// Whether pods of this class follow the confidential path (real or simulated binding).
    pub fn confidential_path(&self) -> bool {
        let q = &self.hypervisor.qemu;
        q.platform != Platform::Insecure || q.simulate_launch_binding
    }

    /// The `-cpu` model pods of this class get, `None` for QEMU's default.
    pub fn cpu_model(&self, kvm: bool) -> Option<String> {
        let q = &self.hypervisor.qemu;
        match (&q.cpu_model, q.platform) {
            (Some(m), _) => Some(m.clone()),
            (None, Platform::Snp) => Some(DEFAULT_SNP_CPU_MODEL.into()),
            (None, _) if kvm => Some("host".into()),
            (None, _) => None,
        }
    }

    pub fn dial_timeout(&self) -> Duration {
        Duration::from_secs(self.agent.kata.dial_timeout)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.agent.kata.request_timeout)
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset).map_or(0, |t| t.matches('\n').count()) + 1
}

#[cfg(test)]
mod tests;
