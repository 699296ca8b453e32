//! Harness shared by the integration tests, the demo and the benchmarks: locates the built
//! pod-VM image, writes a runtime-class config for it, talks to the agent, and finds
//! leftovers (processes, state dirs) of a pod.

pub mod containerd;
pub mod images;
pub mod pod;
pub mod tamper;

use std::os::fd::{IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use contrast_agent_protocol::{diagnostics, diagnostics_ttrpc, health, health_ttrpc};
use contrast_config::RuntimeClassConfig;

/// Per-request deadline for agent calls made by tests.
pub const AGENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The pod-VM image built by `make image` (`CONTRAST_IMAGE_DIR`, default `build/image`).
pub fn image_dir() -> Result<PathBuf> {
    let dir = std::env::var_os("CONTRAST_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/image"));
    for file in ["vmlinux", "initrd.img", "root.img", "cmdline"] {
        if !dir.join(file).is_file() {
            bail!("{} missing: run `make image` first", dir.join(file).display());
        }
    }
    Ok(dir)
}

/// The QEMU that loads IGVM files, built by `scripts/build-qemu-igvm.sh` (`make test` passes
/// its path in `CONTRAST_IGVM_QEMU`).
pub fn igvm_qemu() -> Result<PathBuf> {
    let path = std::env::var_os("CONTRAST_IGVM_QEMU")
        .map(PathBuf::from)
        .context("CONTRAST_IGVM_QEMU is not set: run `make test` (it builds the IGVM-capable QEMU once)")?;
    if !path.is_file() {
        bail!("{} missing: run scripts/build-qemu-igvm.sh", path.display());
    }
    Ok(path)
}

/// Options of the development runtime config the tests use.
pub struct TestConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// The verity root disk and the command line that names its root hash; used when
    /// `verity_root` (the default) is set.
    pub root_disk: PathBuf,
    pub cmdline: PathBuf,
    pub verity_root: bool,
    pub qemu: PathBuf,
    pub state_dir: PathBuf,
    /// `hypervisor.qemu.shared_fs`: `virtio-fs` (default) or `none`.
    pub shared_fs: &'static str,
    /// Boot from this IGVM file (kernel, initrd and command line inside) instead of
    /// `kernel` + `initrd` + `cmdline`; `qemu` must then load IGVM (`igvm_qemu()`).
    pub igvm: Option<PathBuf>,
    pub extra: String,
}

impl TestConfig {
    /// `insecure` platform, TCG (KVM for ordinary guests does not work on our machines),
    /// hybrid vsock, diagnostics enabled on the guest command line. QEMU is Debian's, or the
    /// program `CONTRAST_TEST_QEMU` names (`scripts/profile-guest.sh` runs pods under a wrapper
    /// that traces the agent's and the runner's code).
    pub fn new(image: &Path, state_dir: &Path) -> Self {
        // The shim reads the config from the bundle directory: paths must be absolute.
        let image = std::fs::canonicalize(image).unwrap_or_else(|_| image.to_owned());
        TestConfig {
            kernel: image.join("vmlinux"),
            initrd: image.join("initrd.img"),
            root_disk: image.join("root.img"),
            cmdline: image.join("cmdline"),
            verity_root: true,
            qemu: std::env::var_os("CONTRAST_TEST_QEMU")
                .map_or_else(|| PathBuf::from("/usr/bin/qemu-system-x86_64"), PathBuf::from),
            state_dir: state_dir.to_owned(),
            shared_fs: "virtio-fs",
            igvm: None,
            extra: String::new(),
        }
    }

    /// Boots the image's `pod.igvm` with the project-built QEMU that loads IGVM files.
    pub fn igvm(image: &Path, state_dir: &Path) -> Result<Self> {
        let mut c = Self::new(image, state_dir);
        c.igvm = Some(c.kernel.with_file_name("pod.igvm"));
        c.qemu = igvm_qemu()?;
        Ok(c)
    }

    /// The development layout without a disk: the agent as the initrd's `/init`
    /// (`initrd-agent.img`), for comparing boot times.
    pub fn initrd_only(image: &Path, state_dir: &Path) -> Self {
        let mut c = Self::new(image, state_dir);
        c.initrd = c.initrd.with_file_name("initrd-agent.img");
        c.verity_root = false;
        c
    }

    pub fn to_toml(&self) -> String {
        let boot = match &self.igvm {
            // The command line is the one inside the file (no diagnostics service).
            Some(igvm) => format!("igvm = \"{}\"\nimage = \"{}\"\n", igvm.display(), self.root_disk.display()),
            None => {
                let root = if self.verity_root {
                    format!(
                        "image = \"{}\"\nkernel_params_file = \"{}\"\n",
                        self.root_disk.display(),
                        self.cmdline.display()
                    )
                } else {
                    String::new()
                };
                format!(
                    "kernel = \"{}\"\ninitrd = \"{}\"\n{root}kernel_params = \"quiet contrast.diagnostics=1\"\n",
                    self.kernel.display(),
                    self.initrd.display()
                )
            }
        };
        format!(
            r#"[hypervisor.qemu]
platform = "insecure"
accel = "tcg"
path = "{qemu}"
{boot}default_memory = 512
default_maxmemory = 2048
vsock_mode = "hybrid"
shared_fs = "{shared_fs}"
enable_annotations = ["default_memory", "cc_init_data"]
{extra}
[agent.kata]
dial_timeout = 60

[runtime]
state_dir = "{state}"
layer_cache_dir = "{state}-layers"
"#,
            qemu = self.qemu.display(),
            state = self.state_dir.display(),
            shared_fs = self.shared_fs,
            extra = self.extra,
        )
    }

    /// Writes the config to `path` and loads it the way the shim does.
    pub fn write_and_load(&self, path: &Path) -> Result<RuntimeClassConfig> {
        std::fs::write(path, self.to_toml()).with_context(|| format!("writing {}", path.display()))?;
        Ok(RuntimeClassConfig::load(path)?)
    }
}

/// Rego rules (kata's names, package `agent_policy`) allowing what the shim needs to run a
/// pod — everything but creating containers and exec, which each test's policy decides.
const POD_LIFECYCLE_RULES: &str = r#"package agent_policy
default CreateSandboxRequest := true
default DestroySandboxRequest := true
default StartContainerRequest := true
default RemoveContainerRequest := true
default WaitProcessRequest := true
default SignalProcessRequest := true
default ReadStreamRequest := true
default WriteStreamRequest := true
default CloseStdinRequest := true
default GetOOMEventRequest := true
default StatsContainerRequest := true
default ListProcessesRequest := true

"#;

/// The pod lifecycle rules plus the generator's network and copied-file rules: what a test
/// policy starts with before its own rules.
pub fn pod_lifecycle_rules() -> String {
    format!("{POD_LIFECYCLE_RULES}{}", contrast_generate::POD_NETWORK_RULES)
}

/// ttrpc client on a connected agent stream.
pub fn ttrpc_client(fd: OwnedFd) -> ttrpc::r#async::Client {
    ttrpc::r#async::Client::new(fd.into_raw_fd())
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(AGENT_REQUEST_TIMEOUT.as_nanos() as i64)
}

/// `grpc.Health/Check`: the serving status as kata names it (`SERVING`, ...).
pub async fn health_check(client: &ttrpc::r#async::Client) -> Result<String> {
    let health = health_ttrpc::HealthClient::new(client.clone());
    let resp = health.check(ctx(), &health::CheckRequest::new()).await.context("Health/Check")?;
    Ok(format!("{:?}", resp.status.enum_value_or_default()))
}

/// `grpc.Health/Version`: (API version, agent version).
pub async fn agent_version(client: &ttrpc::r#async::Client) -> Result<(String, String)> {
    let health = health_ttrpc::HealthClient::new(client.clone());
    let resp = health.version(ctx(), &health::CheckRequest::new()).await.context("Health/Version")?;
    Ok((resp.grpc_version, resp.agent_version))
}

/// Pulls `total` bytes of the diagnostics pattern from the guest in 1 MiB calls and checks
/// every byte. Returns the number of bytes verified.
pub async fn pull_pattern(client: &ttrpc::r#async::Client, total: usize) -> Result<usize> {
    let diag = diagnostics_ttrpc::DiagnosticsClient::new(client.clone());
    let chunk = contrast_agent_protocol::MAX_PATTERN_LEN as usize;
    let mut verified = 0;
    let mut seed = 7u32;
    while verified < total {
        let len = chunk.min(total - verified);
        let mut req = diagnostics::PatternRequest::new();
        req.length = len as u32;
        req.seed = seed;
        let resp = diag.pattern(ctx(), &req).await.context("Diagnostics/Pattern")?;
        if resp.data.len() != len {
            bail!("asked for {len} bytes, got {}", resp.data.len());
        }
        if let Some(i) = (0..len).find(|&i| resp.data[i] != contrast_agent_protocol::pattern_byte(seed, i)) {
            bail!("byte {} of the transfer is wrong", verified + i);
        }
        verified += len;
        seed = seed.wrapping_add(13);
    }
    Ok(verified)
}

/// Processes whose command line names the directory `dir` or a path inside it (e.g. a pod's
/// state dir): QEMU and helpers. Whole path components, as the shim's cleanup matches them.
pub fn processes_mentioning(dir: &Path) -> Vec<(u32, String)> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
            // A zombie has an empty cmdline and no longer holds anything.
            contrast_vmm::pidfile::cmdline_names_dir(&raw, dir)
                .then(|| (pid, String::from_utf8_lossy(&raw).replace('\0', " ")))
        })
        .collect()
}

/// Replaces the text between `<!-- {name}:start -->` and `<!-- {name}:end -->` in `doc`
/// (benchmarks write their tables into docs/performance.md this way).
pub fn write_section(doc: &Path, name: &str, body: &str) -> Result<()> {
    let text = std::fs::read_to_string(doc).with_context(|| format!("reading {}", doc.display()))?;
    let (start, end) = (format!("<!-- {name}:start -->"), format!("<!-- {name}:end -->"));
    let (Some(a), Some(b)) = (text.find(&start), text.find(&end)) else {
        bail!("{} has no {start} … {end} section", doc.display());
    };
    let updated = format!("{}{start}\n{body}{}", &text[..a], &text[b..]);
    std::fs::write(doc, updated).with_context(|| format!("writing {}", doc.display()))
}
