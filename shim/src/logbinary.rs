//! `binary://` stdio URIs: containerd's shim-side logging binary protocol (containerd
//! `pkg/process` `NewBinaryIO`): the binary gets the stdout pipe as fd 3, the stderr pipe as
//! fd 4 and a readiness pipe as fd 5, which it closes (or writes to) once ready;
//! `CONTAINER_ID` and `CONTAINER_NAMESPACE` in its environment; each query parameter
//! `k=v` becomes the arguments `k v`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::Stdio;

use nix::fcntl::OFlag;
use tokio::net::unix::pipe;

use crate::io::Sink;

/// First descriptor number of the three the logging binary receives.
const LOGGER_FD_BASE: i32 = 3;
/// How long a logging binary may take to say it is ready.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

fn invalid(msg: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, msg)
}

/// Starts the logging binary; returns the sinks for stdout and stderr once it is ready. One
/// that is not ready within [`READY_TIMEOUT`] is killed; the daemon's other calls go on
/// meanwhile.
pub async fn start(uri: &str, id: &str, namespace: &str) -> std::io::Result<(Sink, Sink)> {
    let rest = uri.strip_prefix("binary://").ok_or_else(|| invalid(format!("not a binary:// URI: {uri}")))?;
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if !path.starts_with('/') {
        return Err(invalid(format!("logging binary must be an absolute path: {uri}")));
    }
    let mut args = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        args.push(k.to_owned());
        if !v.is_empty() {
            args.push(v.to_owned());
        }
    }
    let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let (ready_r, ready_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
    let fds = [out_r.as_raw_fd(), err_r.as_raw_fd(), ready_w.as_raw_fd()];
    let mut cmd = tokio::process::Command::new(path);
    cmd.args(&args)
        .env("CONTAINER_ID", id)
        .env("CONTAINER_NAMESPACE", namespace)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        // Its own process group: a logger that never gets ready goes with whatever it started.
        .process_group(0);
    // SAFETY: only fcntl/dup2 (async-signal-safe) run between fork and exec, on descriptors
    // that stay open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            let mut parked = [0; 3];
            for (i, fd) in fds.iter().enumerate() {
                parked[i] = libc_dup_high(*fd)?;
            }
            for (i, fd) in parked.iter().enumerate() {
                if nix::libc::dup2(*fd, LOGGER_FD_BASE + i as i32) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| invalid(format!("starting logging binary {path}: {e}")))?;
    drop((out_r, err_r, ready_w));
    let ready = tokio::time::timeout(READY_TIMEOUT, wait_ready(ready_r)).await;
    let failed = match ready {
        Ok(Ok(())) => None,
        Ok(Err(e)) => Some(std::io::Error::new(e.kind(), format!("waiting for logging binary {path}: {e}"))),
        Err(_) => Some(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("logging binary {path} was not ready within {}s", READY_TIMEOUT.as_secs()),
        )),
    };
    if failed.is_some() {
        if let Some(pid) = child.id() {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
        }
    }
    // The logger exits when the process's output ends; reap it then.
    tokio::spawn(async move {
        let _ = child.wait().await;
    });
    if let Some(e) = failed {
        return Err(e);
    }
    Ok((Sink::Fifo(pipe::Sender::from_owned_fd(out_w)?), Sink::Fifo(pipe::Sender::from_owned_fd(err_w)?)))
}

fn libc_dup_high(fd: i32) -> std::io::Result<i32> {
    // Above the three target numbers, so that moving one never clobbers another.
    // SAFETY: fcntl on a descriptor the caller keeps open.
    let new = unsafe { nix::libc::fcntl(fd, nix::libc::F_DUPFD_CLOEXEC, 10) };
    if new < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(new)
    }
}

/// Until the logger closes or writes to its readiness pipe.
async fn wait_ready(ready: OwnedFd) -> std::io::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut reader = pipe::Receiver::from_owned_fd(ready)?;
    let mut b = [0u8; 1];
    let _ = reader.read(&mut b).await?;
    Ok(())
}
