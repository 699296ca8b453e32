//! The agent is PID 1: every orphan — and every container process, once the short-lived
//! runner that created it exits — becomes its child. One reaper collects all of them and hands
//! each exit status to whoever watches that pid.
//!
//! Statuses of pids nobody watches yet are kept (a container may exit before its creator
//! has registered it), stamped with a sequence number so that a status left over from an
//! earlier process with the same pid is never handed to a newer one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use tokio::sync::oneshot;

use crate::log;

/// Unclaimed statuses kept at most; older ones are dropped first.
const MAX_UNCLAIMED: usize = 1024;

#[derive(Default)]
pub struct Reaper {
    state: Mutex<State>,
}

#[derive(Default)]
pub struct State {
    waiters: HashMap<i32, oneshot::Sender<i32>>,
    /// pid → (sequence number when reaped, exit status)
    unclaimed: HashMap<i32, (u64, i32)>,
    seq: u64,
}

/// Taken before starting something that creates processes; pids it reports are registered
/// with [`Epoch::watch`], which ignores statuses reaped before the epoch began.
pub struct Epoch<'a> {
    guard: MutexGuard<'a, State>,
    since: u64,
}

impl Reaper {
    pub fn new() -> Arc<Self> {
        Arc::new(Reaper::default())
    }

    /// Holds the reaper while a child is spawned and its pid registered.
    pub fn epoch(&self) -> Epoch<'_> {
        let guard = self.lock();
        let since = guard.seq;
        Epoch { guard, since }
    }

    /// Watches a pid created after sequence mark `since`.
    pub fn watch_since(&self, pid: i32, since: u64) -> oneshot::Receiver<i32> {
        watch_locked(&mut self.lock(), pid, since)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves consistent maps; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reaps every exited child on each SIGCHLD, forever.
    pub async fn run(self: Arc<Self>) {
        let Ok(mut sigchld) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) else {
            log!("cannot watch SIGCHLD: exits will not be reported");
            return;
        };
        loop {
            self.reap_all();
            sigchld.recv().await;
        }
    }

    fn reap_all(&self) {
        let mut state = self.lock();
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid.as_raw(), code),
                // Shell convention (runc, kata): killed by signal N reports 128 + N.
                Ok(WaitStatus::Signaled(pid, sig, _)) => (pid.as_raw(), 128 + sig as i32),
                Ok(WaitStatus::StillAlive) | Err(_) => break,
                Ok(_) => continue,
            };
            state.seq += 1;
            match state.waiters.remove(&pid) {
                Some(tx) => {
                    let _ = tx.send(status);
                }
                None => {
                    if state.unclaimed.len() >= MAX_UNCLAIMED {
                        if let Some(oldest) = state.unclaimed.iter().min_by_key(|(_, (s, _))| *s).map(|(p, _)| *p) {
                            state.unclaimed.remove(&oldest);
                        }
                    }
                    let seq = state.seq;
                    state.unclaimed.insert(pid, (seq, status));
                }
            }
        }
    }
}

impl Epoch<'_> {
    /// The sequence mark this epoch started at.
    pub fn since(&self) -> u64 {
        self.since
    }

    /// Watches a pid created during this epoch.
    pub fn watch(&mut self, pid: i32) -> oneshot::Receiver<i32> {
        watch_locked(&mut self.guard, pid, self.since)
    }
}

fn watch_locked(state: &mut State, pid: i32, since: u64) -> oneshot::Receiver<i32> {
    let (tx, rx) = oneshot::channel();
    match state.unclaimed.remove(&pid) {
        Some((seq, status)) if seq > since => {
            let _ = tx.send(status);
        }
        _ => {
            state.waiters.insert(pid, tx);
        }
    }
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_status_of_a_reused_pid_is_not_handed_out() {
        let reaper = Reaper::default();
        {
            let mut s = reaper.lock();
            s.seq = 5;
            s.unclaimed.insert(42, (3, 1));
        }
        let since = reaper.lock().seq;
        let mut rx = reaper.watch_since(42, since);
        assert!(rx.try_recv().is_err(), "status from before the epoch must not be delivered");
        {
            let mut s = reaper.lock();
            s.seq = 9;
            s.unclaimed.insert(43, (9, 0));
        }
        let mut rx = reaper.watch_since(43, since);
        assert_eq!(rx.try_recv().ok(), Some(0));
    }
}
