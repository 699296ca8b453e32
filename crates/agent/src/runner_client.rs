//! Runs one runner operation (`contrast-runner <json>`) and collects its answer. The runner's
//! own exit is collected by the reaper like any other child.

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Command, Stdio};

use crate::reaper::Reaper;
use crate::runner::{Reply, Request, STDIO_FD_BASE};

/// The runner binary in the pod VM's root (crates/image puts it beside the agent).
const RUNNER_EXE: &str = "/usr/bin/contrast-runner";
/// Descriptor numbers above which inherited fds are parked before being moved into place.
const PARK_FD_MIN: i32 = 64;

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error("cannot start the container runner: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("{0}")]
    Failed(String),
}

/// Outcome of a runner operation: the created pid (0 if none) and the reaper mark taken
/// before the runner started, for [`Reaper::watch_since`].
pub struct Outcome {
    pub pid: i32,
    pub since: u64,
    pub timing: Timing,
}

/// Where a runner operation's time went, from timestamps (seconds since boot) taken by the
/// agent around it and by the runner inside it.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The agent is about to spawn the runner.
    pub spawn: f64,
    /// The runner's `main` began: process creation, exec and loading took `entered - spawn`.
    pub entered: f64,
    /// The libcontainer operation returned.
    pub done: f64,
    /// The agent has the runner's exit and its answer.
    pub reaped: f64,
}

impl std::fmt::Display for Timing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |a: f64, b: f64| (b - a) * 1e3;
        write!(
            f,
            "runner exec {:.1} ms, libcontainer {:.1} ms, runner exit {:.1} ms",
            ms(self.spawn, self.entered),
            ms(self.entered, self.done),
            ms(self.done, self.reaped)
        )
    }
}

pub async fn run(reaper: &Reaper, req: &Request, stdio: Option<[OwnedFd; 3]>) -> Result<Outcome, RunnerError> {
    let json = serde_json::to_string(req).map_err(|e| RunnerError::Failed(e.to_string()))?;
    let mut cmd = Command::new(RUNNER_EXE);
    cmd.arg(json).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if let Some(fds) = &stdio {
        let raw = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
        // SAFETY: only fcntl/dup2 (async-signal-safe) run between fork and exec, on
        // descriptors that stay open in the parent until spawn returns.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                let mut parked = [0; 3];
                for (i, fd) in raw.iter().enumerate() {
                    parked[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, PARK_FD_MIN);
                    if parked[i] < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                for (i, fd) in parked.iter().enumerate() {
                    if libc::dup2(*fd, STDIO_FD_BASE + i as i32) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
    let spawn = crate::uptime();
    let (child, exited, since) = {
        let mut epoch = reaper.epoch();
        let child = cmd.spawn().map_err(RunnerError::Spawn)?;
        let exited = epoch.watch(child.id() as i32);
        let since = epoch.since();
        (child, exited, since)
    };
    drop(stdio);
    // Wait for the runner's exit, not for end of file: the container process is a clone of
    // the runner and holds the same pipes until it executes.
    let status = exited.await.unwrap_or(-1);
    let out = child.stdout.map(|s| read_available(OwnedFd::from(s))).unwrap_or_default();
    let err = child.stderr.map(|s| read_available(OwnedFd::from(s))).unwrap_or_default();
    if status != 0 {
        let msg = err.trim();
        return Err(RunnerError::Failed(if msg.is_empty() {
            format!("runner exited with {status}")
        } else {
            msg.into()
        }));
    }
    let reply: Reply =
        serde_json::from_str(out.trim()).map_err(|e| RunnerError::Failed(format!("bad runner reply {out:?}: {e}")))?;
    let timing = Timing { spawn, entered: reply.entered, done: reply.done, reaped: crate::uptime() };
    Ok(Outcome { pid: reply.pid, since, timing })
}

/// Whatever is buffered in a pipe, without waiting for more.
fn read_available(fd: OwnedFd) -> String {
    let mut file = std::fs::File::from(fd);
    let flags = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL).unwrap_or(0);
    let nonblocking = nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK;
    let _ = nix::fcntl::fcntl(file.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nonblocking));
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = file.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}
