//! Helper daemons a pod VM needs next to QEMU (vhost-device-vsock; later virtiofsd):
//! spawned with their output in the state dir, waited for, and always stopped.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

/// Pause between checks for a helper's socket.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(5);
/// How long a killed helper gets to be reaped before we stop waiting.
const REAP_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot start {name} ({})", program.display())]
    Spawn {
        name: &'static str,
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create log file {}", path.display())]
    Log {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{name} exited ({status}) before creating {}{}", socket.display(), fmt_log(log))]
    EarlyExit { name: &'static str, status: String, socket: PathBuf, log: String },
    #[error("{name} did not create {} within {timeout:?}", socket.display())]
    Timeout { name: &'static str, socket: PathBuf, timeout: Duration },
}

fn fmt_log(log: &str) -> String {
    if log.is_empty() {
        String::new()
    } else {
        format!(": {}", log.replace('\n', " | "))
    }
}

pub struct Helper {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Helper {
    /// Spawns `program args...` with stdout and stderr appended to `log`, then waits until
    /// `socket` exists (the helper is ready) or it exits or `timeout` passes.
    pub async fn spawn<I, S>(
        name: &'static str,
        program: &Path,
        args: I,
        log: PathBuf,
        socket: &Path,
        timeout: Duration,
    ) -> Result<Helper, Error>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = std::fs::File::create(&log).map_err(|source| Error::Log { path: log.clone(), source })?;
        let err = out.try_clone().map_err(|source| Error::Log { path: log.clone(), source })?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| Error::Spawn { name, program: program.to_owned(), source })?;
        let mut helper = Helper { name, child, log };
        tracing::debug!(helper = name, pid = helper.pid(), "helper started");
        let deadline = Instant::now() + timeout;
        while !socket.exists() {
            if let Ok(Some(status)) = helper.child.try_wait() {
                let log = crate::supervisor::tail(&helper.log, 3);
                return Err(Error::EarlyExit { name, status: status.to_string(), socket: socket.to_owned(), log });
            }
            if Instant::now() >= deadline {
                helper.stop().await;
                return Err(Error::Timeout { name, socket: socket.to_owned(), timeout });
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
        Ok(helper)
    }

    pub fn pid(&self) -> u32 {
        self.child.id().unwrap_or_default()
    }

    /// Waits for the helper to exit by itself.
    pub async fn wait(&mut self) -> (String, Option<ExitStatus>) {
        (self.name.to_owned(), self.child.wait().await.ok())
    }

    /// SIGKILLs the helper and reaps it. Helpers hold no state worth a graceful stop.
    pub async fn stop(&mut self) {
        let _ = self.child.start_kill();
        if tokio::time::timeout(REAP_TIMEOUT, self.child.wait()).await.is_err() {
            tracing::warn!(helper = self.name, "helper not reaped after SIGKILL");
        }
    }
}
