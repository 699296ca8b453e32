//! A private containerd for tests and the demo: its own root, state and sockets under a temp
//! dir, our shim on its PATH as `containerd-shim-contrast-cc-v2`, the runtime config next to
//! the shim, and the busybox test image imported. The release is the host's (Debian
//! bookworm's 1.6) or one of the newer Debian releases `scripts/fetch-containerd.sh` unpacks.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::TestConfig;

/// How long containerd's CRI plugin may take to list an image imported with `ctr`.
const CRI_IMAGE_DEADLINE: Duration = Duration::from_secs(10);
/// Name under which the busybox test image is imported.
pub const IMAGE: &str = "docker.io/library/contrast-busybox:test";
/// Image CRI runs as each pod's sandbox ("pause") container: busybox sleeping.
pub const PAUSE_IMAGE: &str = "docker.io/library/contrast-pause:test";
/// containerd namespace the CRI plugin uses.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// CRI runtime handler registered for our shim.
pub const CRI_HANDLER: &str = "contrast-cc";
/// CRI handler whose runtime class follows the confidential path with a SIMULATED launch
/// binding (`simulate_launch_binding`).
pub const SIM_HANDLER: &str = "contrast-cc-sim";
/// As [`SIM_HANDLER`], binding a value that does not match the pod's init data.
pub const SIM_MISMATCH_HANDLER: &str = "contrast-cc-sim-mismatch";
/// Runtime type of our shim.
pub const RUNTIME: &str = "io.containerd.contrast-cc.v2";
/// containerd namespace the tests use.
pub const NAMESPACE: &str = "contrast-test";
/// How long containerd may take to answer `ctr version` after its start. It takes ~0.1 s on
/// an idle host; the bound is for a host whose two cores run other tests' pod VMs.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one ctr call (seconds, for timeout(1)); pod VMs boot in ~5 s under TCG.
const CTR_TIMEOUT: &str = "180";

/// A containerd release the tests run against: its `containerd` and `ctr` binaries and the
/// config file version it is given (2 for 1.x, 3 for 2.x).
#[derive(Debug, Clone)]
pub struct Release {
    /// `1.6`, `1.7`, `2.1`.
    pub name: &'static str,
    /// Directory holding `containerd` and `ctr`; `None`: the host's, on PATH.
    bin_dir: Option<PathBuf>,
}

/// The releases `make test` covers: the host's 1.6 (bookworm) and the two newer ones
/// `scripts/fetch-containerd.sh` unpacks under `CONTRAST_CONTAINERD_DIR`.
const FETCHED: [(&str, &str); 2] = [("1.7", "1.7.24"), ("2.1", "2.1.9")];

impl Release {
    /// The host's containerd (Debian bookworm: 1.6.20).
    pub fn host() -> Release {
        Release { name: "1.6", bin_dir: None }
    }

    /// A release by name (`1.6`, `1.7`, `2.1`). The newer ones must have been unpacked by
    /// `scripts/fetch-containerd.sh` into `CONTRAST_CONTAINERD_DIR` (default
    /// `build/containerd`); a missing one is an error, never a skipped test.
    pub fn named(name: &str) -> Result<Release> {
        if name == "1.6" {
            return Ok(Self::host());
        }
        let Some(&(name, version)) = FETCHED.iter().find(|(n, _)| *n == name) else {
            bail!("containerd {name} is not a release the tests know (1.6, 1.7, 2.1)");
        };
        let root = std::env::var_os("CONTRAST_CONTAINERD_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../build/containerd"));
        let bin_dir = root.join(version).join("usr/bin");
        if !bin_dir.join("containerd").is_file() || !bin_dir.join("ctr").is_file() {
            bail!(
                "containerd {version} missing in {}: run `scripts/fetch-containerd.sh build/containerd`",
                root.display()
            );
        }
        Ok(Release { name, bin_dir: Some(bin_dir) })
    }

    /// containerd 2.x reads config version 3 (1.x: version 2).
    pub fn is_v2(&self) -> bool {
        self.name.starts_with("2.")
    }

    fn binary(&self, name: &str) -> PathBuf {
        self.bin_dir.as_ref().map_or_else(|| PathBuf::from(name), |d| d.join(name))
    }

    /// The TOML table prefix under which the CRI plugin takes a setting (`runtime`: runtimes
    /// and CNI; `images`: the sandbox image) in this release's config version.
    pub fn cri_table(&self, part: &str) -> String {
        match (self.is_v2(), part) {
            (true, "images") => r#"plugins."io.containerd.cri.v1.images""#.into(),
            (true, _) => r#"plugins."io.containerd.cri.v1.runtime""#.into(),
            (false, _) => r#"plugins."io.containerd.grpc.v1.cri""#.into(),
        }
    }
}

pub struct Containerd {
    pub dir: tempfile::TempDir,
    pub release: Release,
    config: PathBuf,
    child: Option<Child>,
    /// The network namespace containerd runs in (pod networks via CNI), deleted on drop.
    netns: Option<String>,
}

/// Debian's CNI plugins (`containernetworking-plugins`).
const CNI_PLUGINS: &str = "/usr/lib/cni";
/// Subnet of the test's CNI bridge network (inside the test's own network namespace).
const POD_SUBNET: &str = "10.88.0.0/24";

impl Containerd {
    /// Starts the host's containerd with `shim` installed and configured for the image in
    /// `image_dir`.
    pub fn start(shim: &Path, image_dir: &Path) -> Result<Containerd> {
        Self::start_release(Release::host(), shim, image_dir)
    }

    /// Starts containerd `release` with `shim` installed and configured for the image in
    /// `image_dir`, in a network namespace of its own that has a CNI bridge network (Debian's
    /// plugins), so CRI pods get their own network namespace as on a node; nothing of it
    /// touches the host's network.
    pub fn start_release(release: Release, shim: &Path, image_dir: &Path) -> Result<Containerd> {
        let dir = tempfile::Builder::new().prefix("cd").tempdir()?;
        let d = dir.path();
        std::fs::create_dir_all(d.join("bin"))?;
        std::fs::copy(shim, d.join("bin/containerd-shim-contrast-cc-v2")).context("installing the shim")?;
        let config = TestConfig::new(image_dir, &d.join("run"));
        std::fs::write(d.join("bin/configuration.toml"), config.to_toml())?;
        let runtimes = release.cri_table("runtime");
        let mut text = format!(
            r#"{}[{runtimes}.containerd.runtimes.{CRI_HANDLER}]
  runtime_type = "{RUNTIME}"
  pod_annotations = ["io.katacontainers.*"]
  privileged_without_host_devices = true
"#,
            Self::base_config(&release, d)?,
        );
        for (handler, extra) in [
            (SIM_HANDLER, "simulate_launch_binding = true"),
            (SIM_MISMATCH_HANDLER, "simulate_launch_binding = true\nsimulate_binding_mismatch = true"),
        ] {
            let mut sim = TestConfig::new(image_dir, &d.join("run"));
            sim.extra = extra.into();
            sim.shared_fs = "none";
            let path = d.join(format!("bin/{handler}.toml"));
            std::fs::write(&path, sim.to_toml())?;
            text.push_str(&format!(
                "[{runtimes}.containerd.runtimes.{handler}]\n  runtime_type = \"{RUNTIME}\"\n  \
                 pod_annotations = [\"io.katacontainers.*\"]\n  privileged_without_host_devices = true\n[{runtimes}.containerd.runtimes.{handler}.options]\n  \
                 ConfigPath = \"{}\"\n",
                path.display()
            ));
        }
        std::fs::write(d.join("config.toml"), text)?;
        let config = d.join("config.toml");
        let netns = Self::pod_network(d)?;
        Self::start_in(release, dir, &config, netns)
    }

    /// Creates the network namespace and the CNI config; returns the namespace's name.
    fn pod_network(d: &Path) -> Result<String> {
        for plugin in ["bridge", "host-local", "loopback"] {
            let from = Path::new(CNI_PLUGINS).join(plugin);
            if !from.is_file() {
                bail!("{} missing (apt-get install containernetworking-plugins)", from.display());
            }
            std::os::unix::fs::symlink(&from, d.join("cni/bin").join(plugin))?;
        }
        let conf = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": "contrast-test",
            "plugins": [
                { "type": "bridge", "bridge": "cni-test0", "isGateway": true, "ipMasq": false,
                  "ipam": { "type": "host-local", "ranges": [[{ "subnet": POD_SUBNET }]],
                            "dataDir": d.join("cni/ipam").display().to_string() } },
                { "type": "loopback" }
            ]
        });
        std::fs::write(d.join("cni/net.d/10-contrast-test.conflist"), conf.to_string())?;
        let name = format!("contrast-{}", d.file_name().and_then(|n| n.to_str()).unwrap_or("test"));
        run(Command::new("ip").args(["netns", "add", &name]))?;
        // containerd's CRI streaming server listens on 127.0.0.1 there.
        run(Command::new("ip").args(["-n", &name, "link", "set", "lo", "up"]))?;
        Ok(name)
    }

    /// A containerd config (version 2 for 1.x, 3 for 2.x) keeping everything inside `d`
    /// (root, state, sockets, CNI, opt), with runc as the only runtime; creates the
    /// directories it names.
    pub fn base_config(release: &Release, d: &Path) -> Result<String> {
        for sub in ["bin", "cni/bin", "cni/net.d", "opt"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        let (runtime, images) = (release.cri_table("runtime"), release.cri_table("images"));
        let cni_bin = d.join("cni/bin");
        let (version, sandbox_image, bin_dir) = if release.is_v2() {
            let bin_dir = format!("bin_dirs = [\"{}\"]", cni_bin.display());
            (3, format!("[{images}.pinned_images]\n  sandbox = \"{PAUSE_IMAGE}\""), bin_dir)
        } else {
            (
                2,
                format!("[{images}]\n  sandbox_image = \"{PAUSE_IMAGE}\""),
                format!("bin_dir = \"{}\"", cni_bin.display()),
            )
        };
        // NRI (1.7: off by default, 2.x: on) listens on one socket per host unless told
        // otherwise: two test containerds starting at once raced for it, and the loser's CRI
        // plugin exited ("bind: address already in use"). Each gets its own.
        let nri = if release.name == "1.6" {
            String::new()
        } else {
            format!(
                "[plugins.\"io.containerd.nri.v1.nri\"]\n  socket_path = \"{d}/nri/nri.sock\"\n  \
                 plugin_path = \"{d}/nri/plugins\"\n  plugin_config_path = \"{d}/nri/conf.d\"\n",
                d = d.display()
            )
        };
        Ok(format!(
            r#"version = {version}
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
{sandbox_image}
[{runtime}.cni]
  {bin_dir}
  conf_dir = "{d}/cni/net.d"
[{runtime}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
{nri}"#,
            d = d.display()
        ))
    }

    /// Starts containerd `release` in `dir` (which holds what [`Containerd::base_config`]
    /// names) on the config file `config`, in a network namespace of its own with the CNI
    /// bridge network, and imports the test images.
    pub fn start_with_config(release: Release, dir: tempfile::TempDir, config: &Path) -> Result<Containerd> {
        let netns = Self::pod_network(dir.path())?;
        Self::start_in(release, dir, config, netns)
    }

    fn start_in(release: Release, dir: tempfile::TempDir, config: &Path, netns: String) -> Result<Containerd> {
        let mut cd = Containerd { dir, release, config: config.to_owned(), child: None, netns: Some(netns) };
        cd.spawn()?;
        let image = cd.dir.path().join("busybox.tar");
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-busybox-image.py");
        run(Command::new("python3").arg(&script).arg(&image).arg(IMAGE))?;
        let pause = cd.dir.path().join("pause.tar");
        run(Command::new("python3").arg(&script).arg(&pause).arg(PAUSE_IMAGE).arg(r#"["sleep", "2147483647"]"#))?;
        cd.ctr_ok(&["image", "import", &image.to_string_lossy()])?;
        for tar in [&image, &pause] {
            let out = cd.ctr_command(CRI_NAMESPACE).args(["image", "import"]).arg(tar).output()?;
            if !out.status.success() {
                bail!("importing {} for CRI: {}", tar.display(), String::from_utf8_lossy(&out.stderr));
            }
        }
        cd.wait_until_cri_knows(&[IMAGE, PAUSE_IMAGE])?;
        Ok(cd)
    }

    /// Waits until the CRI plugin's image cache has `images`: it is filled from containerd's
    /// image events, a moment after `ctr image import` returns, and a RunPodSandbox before
    /// that tries to pull the pause image from the network (seen with containerd 1.7).
    fn wait_until_cri_knows(&self, images: &[&str]) -> Result<()> {
        let socket = self.socket();
        // Its own thread and runtime: callers may be inside a tokio runtime already.
        std::thread::scope(|s| {
            s.spawn(|| -> Result<()> {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                rt.block_on(async {
                    let mut cri = contrast_cri_client::CriClient::connect(Path::new(&socket)).await?;
                    let deadline = Instant::now() + CRI_IMAGE_DEADLINE;
                    for image in images {
                        while !cri.image_known(image).await? {
                            if Instant::now() > deadline {
                                bail!("containerd's CRI plugin does not list {image} {CRI_IMAGE_DEADLINE:?} after its import");
                            }
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                    Ok(())
                })
            })
            .join()
            .unwrap_or_else(|_| bail!("CRI image wait panicked"))
        })
    }

    /// (Re)starts the containerd daemon.
    pub fn spawn(&mut self) -> Result<()> {
        let d = self.dir.path();
        let path = format!("{}:{}", d.join("bin").display(), std::env::var("PATH").unwrap_or_default());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("containerd.log"))?;
        // In a network namespace: nsenter execs containerd (same pid), keeping the mount
        // namespace, so the unix sockets stay where the tests look.
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg(self.release.binary("containerd"));
                c
            }
            None => Command::new(self.release.binary("containerd")),
        };
        let child = cmd
            .arg("--config")
            .arg(&self.config)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting containerd {} (apt-get install containerd)", self.release.name))?;
        self.child = Some(child);
        let started = Instant::now();
        while self.ctr_command(NAMESPACE).arg("version").output().map_or(true, |o| !o.status.success()) {
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || started.elapsed() > READY_TIMEOUT {
                let why = exited
                    .map_or_else(|| format!("no answer after {:?}", started.elapsed()), |s| format!("it exited ({s})"));
                bail!("containerd did not come up: {why}; its log ends:\n{}", log_tail(&d.join("containerd.log")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILLs containerd (shims and pods keep running).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The network namespace containerd (and so CNI's bridge) runs in.
    pub fn netns_path(&self) -> Option<PathBuf> {
        self.netns.as_ref().map(|n| Path::new("/run/netns").join(n))
    }

    pub fn socket(&self) -> String {
        self.dir.path().join("containerd.sock").display().to_string()
    }

    /// State root of the pods this containerd's shim runs.
    pub fn pod_root(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// `ctr` against this containerd in `namespace`, under a timeout: a hung call must fail
    /// the test, not hang the suite.
    pub fn ctr_command(&self, namespace: &str) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", CTR_TIMEOUT])
            .arg(self.release.binary("ctr"))
            .args(["-a", &self.socket(), "-n", namespace])
            .stdin(Stdio::null());
        cmd
    }

    /// Starts `ctr <args>` in the background (under the same timeout) with stdout to `out`.
    pub fn ctr_spawn(&self, args: &[&str], out: std::fs::File) -> Result<std::process::Child> {
        Ok(self.ctr_command(NAMESPACE).args(args).stdout(out).stderr(Stdio::null()).spawn()?)
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.ctr_command(NAMESPACE).args(args).output().unwrap_or_else(|e| panic!("running ctr: {e}"))
    }

    /// Runs `ctr <args>` on a new pseudo-terminal as its controlling terminal (what `ctr run -t`
    /// needs) and returns what it printed there and its exit code. ctr is SIGKILLed if it has
    /// not exited within `deadline`; the exit code is then `None`.
    pub fn ctr_in_terminal(&self, args: &[&str], deadline: Duration) -> Result<(String, Option<i32>)> {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let pty = nix::pty::openpty(None, None)?;
        let slave = std::fs::File::from(pty.slave);
        let slave_fd = slave.as_raw_fd();
        let mut cmd = Command::new(self.release.binary("ctr"));
        cmd.args(["-a", &self.socket(), "-n", NAMESPACE])
            .args(args)
            .stdin(slave.try_clone()?)
            .stdout(slave.try_clone()?)
            .stderr(slave.try_clone()?);
        // SAFETY: setsid and ioctl are async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setsid()?;
                if libc::ioctl(slave_fd, libc::TIOCSCTTY as _, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().context("starting ctr")?;
        drop(cmd);
        drop(slave);
        let mut master = std::fs::File::from(pty.master);
        // Reads until every holder of the terminal is gone (EIO) or the reader is abandoned.
        let reader = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = std::io::Read::read_to_end(&mut master, &mut out);
            out
        });
        let end = Instant::now() + deadline;
        let code = loop {
            if let Some(status) = child.try_wait()? {
                break status.code();
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader ends once the terminal's last holder is gone; give it a moment.
        let end = Instant::now() + Duration::from_secs(5);
        while !reader.is_finished() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = if reader.is_finished() { reader.join().unwrap_or_default() } else { Vec::new() };
        Ok((String::from_utf8_lossy(&out).into_owned(), code))
    }

    pub fn ctr_ok(&self, args: &[&str]) -> Result<String> {
        let out = self.ctr(args);
        if !out.status.success() {
            bail!("ctr {args:?} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// The status `ctr task ls` shows for task `id` (`RUNNING`, `STOPPED`, …; empty if none).
    pub fn task_status(&self, id: &str) -> String {
        let out = self.ctr_ok(&["task", "ls"]).unwrap_or_default();
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(id))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or("")
            .to_owned()
    }

    /// Pids of the shim daemons this containerd started.
    pub fn shim_pids(&self) -> Vec<u32> {
        shim_processes(self.dir.path())
    }

    /// The shim daemon of pod `id` (it runs in the pod's bundle dir, named by the id) and the
    /// socket it serves.
    pub fn shim_daemon(&self, id: &str) -> Option<(u32, PathBuf)> {
        shim_processes(self.dir.path()).into_iter().find_map(|pid| {
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok()?;
            (cwd.file_name()? == id).then_some(())?;
            Some((pid, daemon_socket(pid)?))
        })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// [`Containerd::leftovers`] once they are gone or `deadline` has passed (containerd and
    /// the shim clean up asynchronously after a pod's removal or a shim's death).
    pub async fn leftovers_after(&self, deadline: std::time::Duration) -> Vec<String> {
        let end = Instant::now() + deadline;
        loop {
            let left = self.leftovers();
            if left.is_empty() || Instant::now() > end {
                return left;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Everything a pod could leave behind: processes mentioning the pod root (QEMU,
    /// vhost-device-vsock, virtiofsd), shim processes, mounts and state dirs.
    pub fn leftovers(&self) -> Vec<String> {
        let root = self.pod_root();
        let mut out: Vec<String> =
            crate::processes_mentioning(&root).into_iter().map(|(p, c)| format!("process {p}: {c}")).collect();
        out.extend(shim_processes(self.dir.path()).into_iter().map(|p| format!("shim process {p}")));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        out.extend(
            mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(4))
                .filter(|m| Path::new(m).starts_with(&root))
                .map(|m| format!("mount {m}")),
        );
        for ns in std::fs::read_dir(&root).into_iter().flatten().flatten() {
            if let Ok(entries) = std::fs::read_dir(ns.path()) {
                out.extend(entries.flatten().map(|e| format!("state dir {}", e.path().display())));
            }
        }
        out
    }
}

/// Shim daemons whose working directory (the bundle) is under `dir`.
fn shim_processes(dir: &Path) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let exe = std::fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default();
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            exe.to_string_lossy().contains("containerd-shim-contrast") && cwd.starts_with(dir)
        })
        .collect()
}

/// The socket a shim daemon serves: its `-socket unix://…` argument (`<shim> start` has none).
fn daemon_socket(pid: u32) -> Option<PathBuf> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<&[u8]> = raw.split(|&b| b == 0).collect();
    let at = args.iter().position(|a| *a == b"-socket")?;
    let address = std::str::from_utf8(args.get(at + 1)?).ok()?;
    Some(PathBuf::from(address.trim_start_matches("unix://")))
}

/// How much of containerd's log a failed test prints.
const FAILED_TEST_LOG_LINES: usize = 200;

impl Drop for Containerd {
    /// Tests leave nothing running: containerd, shims, pods; mounts are undone. A failed test
    /// shows the end of containerd's log (the shims log there too) before it goes.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(FAILED_TEST_LOG_LINES)..];
            eprintln!("--- last {} lines of containerd's log ---\n{}", tail.len(), tail.join("\n"));
        }
        self.kill();
        for pid in shim_processes(self.dir.path()) {
            // With containerd gone nobody runs `<shim> delete`: the socket goes here. Named by
            // the daemon's own argument: containerd may have removed the bundle's `address`.
            let socket = daemon_socket(pid);
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            if let Some(socket) = socket {
                let _ = std::fs::remove_file(socket);
            }
        }
        for (pid, _) in crate::processes_mentioning(&self.pod_root()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut points: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(self.dir.path()))
            .collect();
        points.sort_by_key(|p| std::cmp::Reverse(p.len()));
        for p in points {
            let _ = nix::mount::umount2(p, nix::mount::MntFlags::MNT_DETACH);
        }
        // CNI's pod netns (containerd's, under /run/netns or its state dir) went with the
        // mounts; the test's own namespace goes last.
        if let Some(ns) = self.netns.take() {
            let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        }
    }
}

/// The last lines of the log at `path`, for an error that outlives the test's temporary dir.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| format!("({}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// One test per containerd release `make test` covers. Wraps a test function taking the
/// release into a module of the same name with a `#[test]` for each release
/// (`ctr_run::containerd_1_7`); `async fn` bodies run on a two-thread tokio runtime.
#[macro_export]
macro_rules! containerd_matrix {
    ($(#[$meta:meta])* fn $name:ident($release:ident: Release) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn run($release: $crate::containerd::Release) $body
            fn release(name: &str) -> $crate::containerd::Release {
                $crate::containerd::Release::named(name).expect("containerd release")
            }
            #[test]
            fn containerd_1_6() { run(release("1.6")) }
            #[test]
            fn containerd_1_7() { run(release("1.7")) }
            #[test]
            fn containerd_2_1() { run(release("2.1")) }
        }
    };
    ($(#[$meta:meta])* async fn $name:ident($release:ident: Release) $body:block) => {
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            async fn run($release: $crate::containerd::Release) $body
            fn release(name: &str) -> $crate::containerd::Release {
                $crate::containerd::Release::named(name).expect("containerd release")
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn containerd_1_6() { run(release("1.6")).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn containerd_1_7() { run(release("1.7")).await }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn containerd_2_1() { run(release("2.1")).await }
        }
    };
}
