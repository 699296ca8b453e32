//! The lifecycle of one task process (a container's init or an exec) as one state machine:
//! the status containerd sees and the exit it waits for are the same value, changed only
//! through checked transitions. A recorded exit is final — a late `Start`/`Resume` that
//! finishes after the VM died cannot bring the process back to RUNNING.

use containerd_shim_protos::api::Status;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use tokio::sync::watch;

/// Where a process is in its life.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskState {
    Created,
    Running,
    Paused,
    /// Exited (or never started): the status and when it was recorded.
    Stopped {
        status: u32,
        at: Timestamp,
    },
}

/// What happened to the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The guest started it.
    Start,
    Pause,
    Resume,
    /// It exited, could not start, or its VM died, with this status.
    Exit(u32),
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("cannot {transition:?} a process that is {from}")]
pub struct IllegalTransition {
    pub from: &'static str,
    pub transition: Transition,
}

impl TaskState {
    /// The state after `t`, or why `t` cannot happen now. Allowed:
    /// CREATED→RUNNING (start), RUNNING⇄PAUSED (pause, resume), and any state but STOPPED
    /// →STOPPED (exit; a CREATED process that never ran exits when its start fails or its VM
    /// dies). STOPPED is final.
    pub fn next(&self, t: Transition) -> Result<TaskState, IllegalTransition> {
        use TaskState::*;
        match (self, t) {
            (Created, Transition::Start) | (Paused, Transition::Resume) => Ok(Running),
            (Running, Transition::Pause) => Ok(Paused),
            (Created | Running | Paused, Transition::Exit(status)) => Ok(Stopped { status, at: Timestamp::now() }),
            (from, transition) => Err(IllegalTransition { from: from.name(), transition }),
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            TaskState::Created => "created",
            TaskState::Running => "running",
            TaskState::Paused => "paused",
            TaskState::Stopped { .. } => "stopped",
        }
    }

    /// The status containerd's Task API reports.
    pub fn status(&self) -> Status {
        match self {
            TaskState::Created => Status::CREATED,
            TaskState::Running => Status::RUNNING,
            TaskState::Paused => Status::PAUSED,
            TaskState::Stopped { .. } => Status::STOPPED,
        }
    }

    pub fn exit(&self) -> Option<(u32, Timestamp)> {
        match self {
            TaskState::Stopped { status, at } => Some((*status, at.clone())),
            _ => None,
        }
    }
}

/// A process's state, shared by the RPCs and the watchers; `Wait` subscribes to it.
pub struct StateCell(watch::Sender<TaskState>);

impl Default for StateCell {
    fn default() -> Self {
        StateCell(watch::channel(TaskState::Created).0)
    }
}

impl StateCell {
    pub fn get(&self) -> TaskState {
        self.0.borrow().clone()
    }

    /// Applies `t` atomically; on success returns the new state.
    pub fn apply(&self, t: Transition) -> Result<TaskState, IllegalTransition> {
        let mut result = None;
        self.0.send_if_modified(|state| match state.next(t) {
            Ok(next) => {
                *state = next.clone();
                result = Some(Ok(next));
                true
            }
            Err(e) => {
                result = Some(Err(e));
                false
            }
        });
        // send_if_modified always runs the closure once.
        result.unwrap_or(Err(IllegalTransition { from: "unknown", transition: t }))
    }

    /// Records the exit; false when one was already recorded (the first exit wins).
    pub fn record_exit(&self, status: u32) -> bool {
        self.apply(Transition::Exit(status)).is_ok()
    }

    /// Waits until the process has exited.
    pub async fn wait_exit(&self) -> (u32, Timestamp) {
        let mut rx = self.0.subscribe();
        let state = rx.wait_for(|s| matches!(s, TaskState::Stopped { .. })).await.map(|s| s.clone());
        // The sender lives as long as `self`, so the wait only ends with an exit.
        state.ok().and_then(|s| s.exit()).unwrap_or_else(|| (crate::service::VM_DIED_STATUS, Timestamp::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Transition; 4] = [Transition::Start, Transition::Pause, Transition::Resume, Transition::Exit(1)];

    fn stopped() -> TaskState {
        TaskState::Stopped { status: 0, at: Timestamp::now() }
    }

    #[test]
    fn legal_transitions() {
        assert_eq!(TaskState::Created.next(Transition::Start), Ok(TaskState::Running));
        assert_eq!(TaskState::Running.next(Transition::Pause), Ok(TaskState::Paused));
        assert_eq!(TaskState::Paused.next(Transition::Resume), Ok(TaskState::Running));
        for from in [TaskState::Created, TaskState::Running, TaskState::Paused] {
            let next = from.next(Transition::Exit(7)).expect("exit is always possible before stopped");
            assert_eq!(next.exit().map(|e| e.0), Some(7));
        }
    }

    #[test]
    fn every_illegal_transition_is_refused() {
        let legal = |from: &TaskState, t: Transition| {
            matches!(
                (from, t),
                (TaskState::Created, Transition::Start)
                    | (TaskState::Running, Transition::Pause)
                    | (TaskState::Paused, Transition::Resume)
                    | (TaskState::Created | TaskState::Running | TaskState::Paused, Transition::Exit(_))
            )
        };
        let mut refused = 0;
        for from in [TaskState::Created, TaskState::Running, TaskState::Paused, stopped()] {
            for t in ALL {
                let r = from.next(t);
                assert_eq!(r.is_ok(), legal(&from, t), "{from:?} --{t:?}-> {r:?}");
                if let Err(e) = r {
                    assert_eq!(e.from, from.name());
                    refused += 1;
                }
            }
        }
        // created: pause, resume; running: start, resume; paused: start, pause; stopped: all 4.
        assert_eq!(refused, 10);
    }

    #[test]
    fn vm_death_during_start_stays_stopped_255() {
        let cell = StateCell::default();
        // The VM dies while StartContainer is in flight: the VM watcher records 255 ...
        assert!(cell.record_exit(255));
        // ... then the start call returns and tries to mark the process running.
        let late = cell.apply(Transition::Start);
        assert!(late.is_err(), "a late start must not revive a stopped process: {late:?}");
        assert_eq!(cell.get().status(), Status::STOPPED);
        assert_eq!(cell.get().exit().map(|e| e.0), Some(255));
        // A second exit (the guest's WaitProcess failing later) does not change the status.
        assert!(!cell.record_exit(137));
        assert_eq!(cell.get().exit().map(|e| e.0), Some(255));
    }

    #[test]
    fn late_resume_and_pause_do_not_overwrite_an_exit() {
        let cell = StateCell::default();
        cell.apply(Transition::Start).expect("start");
        cell.apply(Transition::Pause).expect("pause");
        assert!(cell.record_exit(255));
        assert!(cell.apply(Transition::Resume).is_err());
        assert!(cell.apply(Transition::Pause).is_err());
        assert_eq!(cell.get().status(), Status::STOPPED);
    }

    #[tokio::test]
    async fn wait_returns_the_recorded_exit() {
        let cell = std::sync::Arc::new(StateCell::default());
        cell.apply(Transition::Start).expect("start");
        let waiter = {
            let cell = cell.clone();
            tokio::spawn(async move { cell.wait_exit().await })
        };
        tokio::task::yield_now().await;
        assert!(cell.record_exit(3));
        let (status, _) = waiter.await.expect("waiter");
        assert_eq!(status, 3);
    }
}
