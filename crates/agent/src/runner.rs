//! Runner mode: `/init runner '<json request>'` performs one libcontainer operation in a fresh
//! single-threaded process and exits (as `runc create` / `runc start` do).
//!
//! libcontainer clones and runs Rust code in the child without exec; in a multithreaded
//! process (the agent runs tokio) that deadlocks, and `with_console_socket` changes the
//! process-wide working directory. A fresh process per operation avoids both. Container
//! processes become the agent's children when the runner exits.
//!
//! Contract: stdio of the container process arrives as fds 3, 4, 5 when `stdio` is set. On
//! success the runner prints one JSON line `{"pid": N}` (0 when no process was created) on
//! stdout; on failure it prints the error on stderr and exits 1.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use caps::CapSet;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::oci_spec::runtime::{Capability, LinuxSeccomp, Process, Spec};
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

/// libcontainer's state root inside the guest.
pub const STATE_ROOT: &str = "/run/contrast/libcontainer";
/// First of the three inherited stdio fds (stdin, stdout, stderr).
pub const STDIO_FD_BASE: i32 = 3;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Create { id: String, bundle: PathBuf, console_socket: Option<PathBuf>, stdio: bool },
    Start { id: String },
    Exec { container_id: String, process: PathBuf, console_socket: Option<PathBuf>, stdio: bool },
    Delete { id: String },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub pid: i32,
    /// Seconds since boot (CLOCK_BOOTTIME) when the runner's `main` began, and when its
    /// libcontainer operation returned: where a container's creation spends its time.
    #[serde(default)]
    pub entered: f64,
    #[serde(default)]
    pub done: f64,
}

/// statfs(2) magic numbers (linux/magic.h) of the filesystems an initramfs root can be.
const RAMFS_MAGIC: u64 = 0x8584_58f6;
const TMPFS_MAGIC: u64 = 0x0102_1994;

/// Entry point of runner mode.
pub fn main(arg: &str) -> ! {
    let entered = crate::uptime();
    // libcontainer reports the cause of a failure through tracing; it goes to the runner's
    // stderr, which the agent returns to the client. Through a private duplicate: the
    // container process is a clone of this one and swaps fd 2 for the container's stderr,
    // where libcontainer's messages must not appear.
    let log = private_stderr();
    tracing_subscriber::fmt()
        .with_writer(move || LogWriter(log.clone()))
        .with_ansi(false)
        .without_time()
        .with_max_level(tracing::Level::WARN)
        .init();
    let result = serde_json::from_str::<Request>(arg).context("bad runner request").and_then(run);
    match result {
        Ok(pid) => {
            let reply = Reply { pid, entered, done: crate::uptime() };
            println!("{}", serde_json::to_string(&reply).unwrap_or_default());
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!("{e:#}");
            std::process::exit(1)
        }
    }
}

/// A close-on-exec duplicate of the runner's stderr.
fn private_stderr() -> std::sync::Arc<std::fs::File> {
    let fd = nix::fcntl::fcntl(2, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(10)).unwrap_or(2);
    // SAFETY: `fd` was just returned by fcntl and is owned by nobody else (or is fd 2 itself
    // when duplication failed, which this process never closes).
    std::sync::Arc::new(unsafe { std::fs::File::from_raw_fd(fd) })
}

struct LogWriter(std::sync::Arc<std::fs::File>);

impl std::io::Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        (&*self.0).write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn stdio_fds() -> [OwnedFd; 3] {
    // SAFETY: the agent passes exactly these three descriptors (dup2'ed before exec) and
    // nothing else in this process owns them.
    unsafe {
        [
            OwnedFd::from_raw_fd(STDIO_FD_BASE),
            OwnedFd::from_raw_fd(STDIO_FD_BASE + 1),
            OwnedFd::from_raw_fd(STDIO_FD_BASE + 2),
        ]
    }
}

fn builder(id: &str, console_socket: Option<&Path>, stdio: bool) -> Result<ContainerBuilder> {
    let mut b = ContainerBuilder::new(id.to_owned(), SyscallType::default())
        .with_root_path(STATE_ROOT)
        .context("libcontainer state root")?
        .with_console_socket(console_socket);
    if stdio {
        let [i, o, e] = stdio_fds();
        b = b.with_stdin(i).with_stdout(o).with_stderr(e);
    }
    Ok(b)
}

fn run(req: Request) -> Result<i32> {
    match req {
        Request::Create { id, bundle, console_socket, stdio } => {
            let container = builder(&id, console_socket.as_deref(), stdio)?
                .validate_id()
                .context("container id")?
                .as_init(bundle)
                .with_no_pivot(root_is_initramfs())
                .with_systemd(false)
                .with_detach(true)
                .build()
                .context("creating the container")?;
            // The container's process waits for Start: nothing of its own has run yet.
            if let Err(e) = enforce_device_rules(&container) {
                let mut container = container;
                if let Err(d) = container.delete(true) {
                    tracing::warn!("removing container {id} after its device rules failed: {d}");
                }
                return Err(e);
            }
            Ok(container.pid().map_or(0, |p| p.as_raw()))
        }
        Request::Start { id } => {
            load(&id)?.start().context("starting the container")?;
            Ok(0)
        }
        Request::Exec { container_id, process, console_socket, stdio } => {
            let mut b = builder(&container_id, console_socket.as_deref(), stdio)?;
            if let Some(executor) = seccomp_executor(&process)? {
                b = b.with_executor(executor);
            }
            let pid =
                b.as_tenant().with_detach(true).with_process(Some(process)).build().context("starting the process")?;
            Ok(pid.as_raw())
        }
        Request::Delete { id } => {
            load(&id)?.delete(true).context("deleting the container")?;
            Ok(0)
        }
    }
}

/// cgroup v2's mount point in the guest.
const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Attaches the device filter for the container's `linux.resources.devices` to its cgroup
/// (libcontainer without `cgroupsv2_devices` leaves device rules unenforced).
fn enforce_device_rules(container: &Container) -> Result<()> {
    let spec = Spec::load(container.bundle().join("config.json")).context("reading the container's config.json")?;
    let linux = spec.linux().as_ref().context("the container's spec has no linux section")?;
    let relative = linux.cgroups_path().as_ref().context("the container's spec has no cgroupsPath")?;
    let cgroup = Path::new(CGROUP_ROOT).join(relative.strip_prefix("/").unwrap_or(relative));
    let spec_rules = linux.resources().as_ref().and_then(|r| r.devices().clone()).unwrap_or_default();
    let rules = crate::device_filter::rules(&spec_rules).context("the container's device rules")?;
    crate::device_filter::attach(&cgroup, &rules).context("enforcing the container's device rules")
}

/// pivot_root(2) cannot move away from the initial ramfs root; there libcontainer must use
/// MS_MOVE + chroot instead (as `runc --no-pivot` does on ramdisks).
#[allow(clippy::unnecessary_cast)]
fn root_is_initramfs() -> bool {
    nix::sys::statfs::statfs("/")
        .map(|s| {
            // The filesystems an initramfs root can be (linux/magic.h); the field's width
            // differs between glibc and musl.
            let t = s.filesystem_type().0 as u64;
            t == RAMFS_MAGIC || t == TMPFS_MAGIC
        })
        .unwrap_or(false)
}

fn load(id: &str) -> Result<Container> {
    Container::load(Path::new(STATE_ROOT).join(id)).with_context(|| format!("loading container {id}"))
}

/// Capabilities an exec'd process needs for a moment to load a seccomp filter without
/// no_new_privs, in the order they are given back (CAP_SETPCAP, needed to shrink the
/// bounding set, last).
const FILTER_LOAD_CAPS: [(Capability, caps::Capability); 2] =
    [(Capability::SysAdmin, caps::Capability::CAP_SYS_ADMIN), (Capability::Setpcap, caps::Capability::CAP_SETPCAP)];

/// Exec'd processes must run under their container's seccomp filter (runc and kata do this),
/// but libcontainer's tenant processes get none. When the container has a profile (in its
/// bundle's `config.json`, next to the process file), the process gets an executor that loads
/// it right before the command runs.
fn seccomp_executor(process_file: &Path) -> Result<Option<SeccompExecutor>> {
    let bundle = process_file.parent().context("exec process file has no directory")?;
    let spec = Spec::load(bundle.join("config.json")).context("reading the container's config.json")?;
    let Some(seccomp) = spec.linux().as_ref().and_then(|l| l.seccomp().clone()) else {
        return Ok(None);
    };
    let mut process: Process =
        serde_json::from_reader(std::fs::File::open(process_file)?).context("reading the exec process file")?;
    let borrowed = borrow_filter_caps(&mut process);
    if !borrowed.is_empty() {
        let file = std::fs::File::create(process_file)?;
        serde_json::to_writer(file, &process).context("writing the exec process file")?;
    }
    Ok(Some(SeccompExecutor { seccomp, borrowed }))
}

/// Without no_new_privs, loading a filter needs CAP_SYS_ADMIN. A process not granted it (the
/// Kubernetes default) is given CAP_SYS_ADMIN, and CAP_SETPCAP if missing (shrinking the
/// bounding set needs it), in its bounding, effective and permitted sets. Returns what was
/// added, for the executor to drop from every set once the filter is loaded, so the command
/// starts with exactly the capabilities it asked for.
fn borrow_filter_caps(process: &mut Process) -> Vec<caps::Capability> {
    if process.no_new_privileges() == Some(true) {
        return Vec::new();
    }
    let Some(caps) = process.capabilities().clone() else { return Vec::new() };
    let lacks = |c: &Capability| caps.effective().as_ref().is_some_and(|set| !set.contains(c));
    let missing: Vec<(Capability, caps::Capability)> = FILTER_LOAD_CAPS.into_iter().filter(|(c, _)| lacks(c)).collect();
    // Only needed when CAP_SYS_ADMIN itself is missing.
    if !missing.iter().any(|(c, _)| *c == Capability::SysAdmin) {
        return Vec::new();
    }
    let widen = |set: &Option<HashSet<Capability>>| {
        set.clone().map(|mut s| {
            s.extend(missing.iter().map(|(c, _)| *c));
            s
        })
    };
    let mut widened = caps.clone();
    widened.set_bounding(widen(caps.bounding()));
    widened.set_effective(widen(caps.effective()));
    widened.set_permitted(widen(caps.permitted()));
    process.set_capabilities(Some(widened));
    missing.into_iter().map(|(_, c)| c).collect()
}

#[derive(Clone)]
struct SeccompExecutor {
    seccomp: LinuxSeccomp,
    /// Capabilities added only to load the filter, in the order they are given back
    /// (CAP_SETPCAP last: shrinking the bounding set needs it in effect).
    borrowed: Vec<caps::Capability>,
}

impl Executor for SeccompExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        libcontainer::seccomp::initialize_seccomp(&self.seccomp)
            .map_err(|e| ExecutorError::Other(format!("loading the container's seccomp filter: {e}")))?;
        for &cap in &self.borrowed {
            // The bounding set first: shrinking it needs CAP_SETPCAP still in effect.
            caps::drop(None, CapSet::Bounding, cap)
                .and_then(|()| caps::drop(None, CapSet::Effective, cap))
                .and_then(|()| caps::drop(None, CapSet::Permitted, cap))
                .and_then(|()| caps::drop(None, CapSet::Inheritable, cap))
                .map_err(|e| ExecutorError::Other(format!("dropping {cap} after loading seccomp: {e}")))?;
        }
        libcontainer::workload::default::get_executor().exec(spec)
    }

    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        libcontainer::workload::default::get_executor().validate(spec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(json: serde_json::Value) -> Process {
        serde_json::from_value(json).expect("process")
    }

    #[test]
    fn filter_caps_are_borrowed_only_when_loading_needs_them() {
        let default_caps = serde_json::json!({
            "args": ["sh"], "cwd": "/", "user": { "uid": 0, "gid": 0 },
            "capabilities": { "bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"] },
        });
        let mut p = process(default_caps.clone());
        assert_eq!(borrow_filter_caps(&mut p), [caps::Capability::CAP_SYS_ADMIN, caps::Capability::CAP_SETPCAP]);
        let c = p.capabilities().clone().expect("caps");
        for set in [c.bounding(), c.effective(), c.permitted()] {
            let set = set.as_ref().expect("set");
            assert!(set.contains(&Capability::SysAdmin) && set.contains(&Capability::Setpcap) && set.len() == 3);
        }

        let mut nnp = default_caps.clone();
        nnp["noNewPrivileges"] = serde_json::json!(true);
        assert!(borrow_filter_caps(&mut process(nnp)).is_empty());

        let mut admin = default_caps.clone();
        admin["capabilities"]["effective"] = serde_json::json!(["CAP_SYS_ADMIN"]);
        assert!(borrow_filter_caps(&mut process(admin)).is_empty());

        let mut only_setpcap_missing = default_caps;
        only_setpcap_missing["capabilities"]["effective"] = serde_json::json!(["CAP_CHOWN", "CAP_SETPCAP"]);
        only_setpcap_missing["capabilities"]["bounding"] = serde_json::json!(["CAP_CHOWN", "CAP_SETPCAP"]);
        only_setpcap_missing["capabilities"]["permitted"] = serde_json::json!(["CAP_CHOWN", "CAP_SETPCAP"]);
        assert_eq!(borrow_filter_caps(&mut process(only_setpcap_missing)), [caps::Capability::CAP_SYS_ADMIN]);
    }
}
