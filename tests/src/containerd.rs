//! A private containerd (Debian's 1.6) for tests and the demo: its own root, state and
//! sockets under a temp dir, our shim on its PATH as `containerd-shim-contrast-cc-v2`, the
//! runtime config next to the shim, and the busybox test image imported.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::TestConfig;

/// Name under which the busybox test image is imported.
pub const IMAGE: &str = "docker.io/library/contrast-busybox:test";
/// Image CRI runs as each pod's sandbox ("pause") container: busybox sleeping.
pub const PAUSE_IMAGE: &str = "docker.io/library/contrast-pause:test";
/// containerd namespace the CRI plugin uses.
pub const CRI_NAMESPACE: &str = "k8s.io";
/// CRI runtime handler registered for our shim.
pub const CRI_HANDLER: &str = "contrast-cc";
/// Runtime type of our shim.
pub const RUNTIME: &str = "io.containerd.contrast-cc.v2";
/// containerd namespace the tests use.
pub const NAMESPACE: &str = "contrast-test";
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Upper bound for one ctr call (seconds, for timeout(1)); pod VMs boot in ~5 s under TCG.
const CTR_TIMEOUT: &str = "180";

pub struct Containerd {
    pub dir: tempfile::TempDir,
    config: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// Starts containerd with `shim` installed and configured for the image in `image_dir`.
    pub fn start(shim: &Path, image_dir: &Path) -> Result<Containerd> {
        let dir = tempfile::Builder::new().prefix("cd").tempdir()?;
        let d = dir.path();
        std::fs::create_dir_all(d.join("bin"))?;
        std::fs::copy(shim, d.join("bin/containerd-shim-contrast-cc-v2")).context("installing the shim")?;
        let config = TestConfig::new(image_dir, &d.join("run"));
        std::fs::write(d.join("bin/configuration.toml"), config.to_toml())?;
        let text = format!(
            r#"{}[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.{CRI_HANDLER}]
  runtime_type = "{RUNTIME}"
  pod_annotations = ["io.katacontainers.*"]
"#,
            Self::base_config(d)?
        );
        std::fs::write(d.join("config.toml"), text)?;
        let config = d.join("config.toml");
        Self::start_with_config(dir, &config)
    }

    /// A version 2 containerd config keeping everything inside `d` (root, state, sockets, CNI,
    /// opt), with runc as the only runtime; creates the directories it names.
    pub fn base_config(d: &Path) -> Result<String> {
        for sub in ["bin", "cni/bin", "cni/net.d", "opt"] {
            std::fs::create_dir_all(d.join(sub))?;
        }
        Ok(format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = "{d}/cni/bin"
  conf_dir = "{d}/cni/net.d"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"#,
            d = d.display()
        ))
    }

    /// Starts containerd in `dir` (which holds what [`Containerd::base_config`] names) on the
    /// config file `config`, and imports the test images.
    pub fn start_with_config(dir: tempfile::TempDir, config: &Path) -> Result<Containerd> {
        let mut cd = Containerd { dir, config: config.to_owned(), child: None };
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
        Ok(cd)
    }

    /// (Re)starts the containerd daemon.
    pub fn spawn(&mut self) -> Result<()> {
        let d = self.dir.path();
        let path = format!("{}:{}", d.join("bin").display(), std::env::var("PATH").unwrap_or_default());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(d.join("containerd.log"))?;
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&self.config)
            .env("PATH", path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting containerd (apt-get install containerd)")?;
        self.child = Some(child);
        let deadline = Instant::now() + READY_TIMEOUT;
        while self.ctr_command(NAMESPACE).arg("version").output().map_or(true, |o| !o.status.success()) {
            if Instant::now() > deadline {
                bail!("containerd did not come up; see {}", d.join("containerd.log").display());
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

    pub fn socket(&self) -> String {
        self.dir.path().join("containerd.sock").display().to_string()
    }

    /// State root of the pods this containerd's shim runs.
    pub fn pod_root(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// `ctr` against this containerd in `namespace`, under a timeout: a hung call must fail
    /// the test, not hang the suite.
    fn ctr_command(&self, namespace: &str) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", CTR_TIMEOUT, "ctr", "-a", &self.socket(), "-n", namespace]).stdin(Stdio::null());
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
        let mut cmd = Command::new("ctr");
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

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
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

impl Drop for Containerd {
    /// Tests leave nothing running: containerd, shims, pods; mounts are undone.
    fn drop(&mut self) {
        self.kill();
        for pid in shim_processes(self.dir.path()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
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
    }
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output()?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}
