//! Owns a running QEMU and its helper daemons: reports QEMU's exit the moment it happens
//! (status plus the tail of the serial console and of QEMU's own log), stops the helpers
//! with it, and kills QEMU on request.

use std::fmt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::process::Child;
use tokio::sync::{mpsc, watch};

use crate::helper::Helper;

/// Lines of the serial console quoted when a VM exits.
const CONSOLE_TAIL_LINES: usize = 10;
/// Lines of QEMU's stderr quoted when a VM exits.
const QEMU_LOG_TAIL_LINES: usize = 5;
/// How long QEMU may take to exit on its own after a helper did, before the helper is taken to
/// be the cause.
const HELPER_EXIT_GRACE: std::time::Duration = std::time::Duration::from_millis(300);

/// How and why a pod VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmExit {
    /// e.g. `exit status 0`, `killed by signal 9`.
    pub status: String,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    /// The owner asked for the stop (powerdown, quit, kill).
    pub expected: bool,
    /// The process that ended first: `qemu` or a helper's name.
    pub cause: String,
    pub console_tail: String,
    pub qemu_log_tail: String,
}

impl VmExit {
    /// The line that most likely says why the guest stopped: the last one our guest code
    /// (`contrast-init`, `contrast-agent`) printed among the tail, else the last line that is
    /// not the kernel's own shutdown notice.
    pub fn guest_last_words(&self) -> Option<&str> {
        let lines = || self.console_tail.lines().rev().map(str::trim).filter(|l| !l.is_empty());
        lines()
            .find(|l| l.contains("contrast-init:") || l.contains("contrast-agent:"))
            .or_else(|| lines().find(|l| !l.contains("reboot: Power down") && !l.contains("reboot: Restarting")))
    }
}

impl fmt::Display for VmExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.cause == "qemu" {
            write!(f, "QEMU {}", self.status)?;
            if self.code == Some(0) && !self.expected {
                f.write_str(" (the guest powered off)")?;
            }
            if let Some(line) = self.guest_last_words() {
                write!(f, "; guest's last console line: {line:?}")?;
            }
        } else {
            write!(f, "{} {} (QEMU was stopped)", self.cause, self.status)?;
        }
        if !self.qemu_log_tail.is_empty() {
            write!(f, "; QEMU said: {}", self.qemu_log_tail.trim_end().replace('\n', " | "))?;
        }
        if !self.console_tail.is_empty() {
            write!(f, "; last console lines: {}", self.console_tail.trim_end().replace('\n', " | "))?;
        }
        Ok(())
    }
}

/// Handle to a supervised QEMU.
pub struct Supervisor {
    pid: u32,
    exit: watch::Receiver<Option<VmExit>>,
    kill: mpsc::Sender<()>,
    expected: Arc<AtomicBool>,
}

pub struct LogFiles {
    pub console: PathBuf,
    pub qemu_log: PathBuf,
}

impl Supervisor {
    /// Starts supervising `qemu` (already spawned) together with `helpers`.
    pub fn start(qemu: Child, helpers: Vec<Helper>, logs: LogFiles) -> Self {
        let pid = qemu.id().unwrap_or_default();
        let (exit_tx, exit) = watch::channel(None);
        let (kill, kill_rx) = mpsc::channel(1);
        let expected = Arc::new(AtomicBool::new(false));
        tokio::spawn(supervise(qemu, helpers, logs, kill_rx, exit_tx, expected.clone()));
        Supervisor { pid, exit, kill, expected }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Receives `Some(exit)` once QEMU is gone and its helpers are stopped.
    pub fn exited(&self) -> watch::Receiver<Option<VmExit>> {
        self.exit.clone()
    }

    /// Marks the coming exit as requested by the owner.
    pub fn expect_exit(&self) {
        self.expected.store(true, Ordering::SeqCst);
    }

    /// SIGKILLs QEMU (helpers follow) and waits until it is reaped.
    pub async fn kill(&self) -> VmExit {
        self.expect_exit();
        let _ = self.kill.try_send(());
        self.wait().await
    }

    /// Asks the supervising task to SIGKILL QEMU without waiting (usable from `Drop`).
    pub fn request_kill(&self) -> bool {
        self.kill.try_send(()).is_ok()
    }

    pub async fn wait(&self) -> VmExit {
        let mut rx = self.exit.clone();
        loop {
            if let Some(exit) = rx.borrow_and_update().clone() {
                return exit;
            }
            if rx.changed().await.is_err() {
                // The supervising task ended without a report: it panicked.
                return VmExit {
                    status: "unknown (supervisor ended)".into(),
                    code: None,
                    signal: None,
                    expected: self.expected.load(Ordering::SeqCst),
                    cause: "qemu".into(),
                    console_tail: String::new(),
                    qemu_log_tail: String::new(),
                };
            }
        }
    }
}

async fn supervise(
    mut qemu: Child,
    mut helpers: Vec<Helper>,
    logs: LogFiles,
    mut kill: mpsc::Receiver<()>,
    exit_tx: watch::Sender<Option<VmExit>>,
    expected: Arc<AtomicBool>,
) {
    let helper_exit = async {
        if helpers.is_empty() {
            return std::future::pending().await;
        }
        let waits = helpers.iter_mut().map(|h| Box::pin(h.wait()));
        let ((name, status), _, _) = futures::future::select_all(waits).await;
        (name, status)
    };
    let (cause, status) = tokio::select! {
        status = qemu.wait() => ("qemu".to_owned(), status.ok()),
        (name, status) = helper_exit => {
            if expected.load(Ordering::SeqCst) {
                // A stop was requested: helpers may go first (virtiofsd leaves when the guest
                // resets its device). QEMU's own exit is the one to report.
                tracing::debug!(helper = %name, "helper exited during stop");
                tokio::select! {
                    status = qemu.wait() => ("qemu".to_owned(), status.ok()),
                    _ = kill.recv() => {
                        let _ = qemu.start_kill();
                        ("qemu".to_owned(), qemu.wait().await.ok())
                    }
                }
            } else {
                // A guest that powers off takes its vhost-user backends down with it, and they
                // may be reaped first: QEMU's exit is the cause when it follows at once.
                match tokio::time::timeout(HELPER_EXIT_GRACE, qemu.wait()).await {
                    Ok(qemu_status) => ("qemu".to_owned(), qemu_status.ok()),
                    Err(_) => {
                        tracing::error!(helper = %name, "helper exited; stopping QEMU");
                        let _ = qemu.start_kill();
                        let _ = qemu.wait().await;
                        (name, status)
                    }
                }
            }
        }
        _ = kill.recv() => {
            let _ = qemu.start_kill();
            ("qemu".to_owned(), qemu.wait().await.ok())
        }
    };
    for helper in &mut helpers {
        helper.stop().await;
    }
    let exit = VmExit {
        status: describe(status),
        code: status.and_then(|s| s.code()),
        signal: status.and_then(|s| s.signal()),
        expected: expected.load(Ordering::SeqCst),
        cause,
        console_tail: tail(&logs.console, CONSOLE_TAIL_LINES),
        qemu_log_tail: tail(&logs.qemu_log, QEMU_LOG_TAIL_LINES),
    };
    if exit.expected {
        tracing::info!(%exit, "pod VM stopped");
    } else {
        tracing::error!(%exit, "pod VM exited unexpectedly");
    }
    let _ = exit_tx.send(Some(exit));
}

fn describe(status: Option<ExitStatus>) -> String {
    match status {
        Some(s) => match (s.code(), s.signal()) {
            (Some(code), _) => format!("exit status {code}"),
            (None, Some(sig)) => format!("killed by signal {sig}"),
            _ => s.to_string(),
        },
        None => "status unknown".into(),
    }
}

/// The last `lines` non-empty lines of a log file, control characters removed.
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(bytes) = std::fs::read(path) else { return String::new() };
    let text = String::from_utf8_lossy(&bytes);
    let clean: Vec<String> = text
        .lines()
        .map(|l| l.chars().filter(|c| !c.is_control()).collect::<String>())
        .filter(|l| !l.trim().is_empty())
        .collect();
    clean[clean.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_last_lines_without_control_characters() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("console.log");
        std::fs::write(&p, "a\n\x1b[2Jb\n\n c \nd\n").expect("write");
        assert_eq!(tail(&p, 2), " c \nd");
        assert_eq!(tail(&p, 10), "a\n[2Jb\n c \nd");
        assert_eq!(tail(&dir.path().join("missing"), 3), "");
    }

    #[test]
    fn exit_message_names_cause_and_console() {
        let exit = VmExit {
            status: "killed by signal 9".into(),
            code: None,
            signal: Some(9),
            expected: false,
            cause: "qemu".into(),
            console_tail: "verity: bad hash\n".into(),
            qemu_log_tail: String::new(),
        };
        assert_eq!(
            exit.to_string(),
            "QEMU killed by signal 9; guest's last console line: \"verity: bad hash\"; last console lines: verity: bad hash"
        );
    }

    #[test]
    fn guest_last_words_skip_the_kernels_power_down_notice() {
        let mut exit = VmExit {
            status: "exit status 0".into(),
            code: Some(0),
            signal: None,
            expected: false,
            cause: "qemu".into(),
            console_tail: "[ 4.06] device-mapper: verity: 254:1: data block 835 is corrupted\n\
                           contrast-init: verity: /usr/bin/contrast-agent fails verification; powering off\n\
                           [ 4.09] reboot: Power down\n"
                .into(),
            qemu_log_tail: String::new(),
        };
        assert_eq!(
            exit.guest_last_words(),
            Some("contrast-init: verity: /usr/bin/contrast-agent fails verification; powering off")
        );
        assert!(
            exit.to_string().starts_with(
                "QEMU exit status 0 (the guest powered off); guest's last console line: \"contrast-init: verity"
            ),
            "{exit}"
        );
        exit.console_tail = "Kernel panic - not syncing: VFS\n[ 4.09] reboot: Power down\n".into();
        assert_eq!(exit.guest_last_words(), Some("Kernel panic - not syncing: VFS"));
        exit.console_tail = String::new();
        assert_eq!(exit.guest_last_words(), None);
    }
}
