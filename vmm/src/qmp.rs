//! Async QMP client on the `qapi` crate: connect (watching that QEMU is still alive),
//! capability negotiation, commands, and the event stream.

use std::io;
use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use qapi::futures::{QapiService, QmpStreamTokio};
use tokio::io::WriteHalf;
use tokio::net::UnixStream;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use crate::supervisor::VmExit;

/// Pause between attempts to connect to a QMP socket that QEMU has not created yet.
const CONNECT_RETRY_INTERVAL: Duration = Duration::from_millis(10);
/// After a failed handshake, how long to wait for QEMU's exit to explain it.
const EXIT_EXPLAINS_FAILURE_WAIT: Duration = Duration::from_secs(2);
/// Events kept for subscribers that fall behind.
const EVENT_BACKLOG: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("QEMU exited before its QMP socket was ready: {0}")]
    QemuExited(VmExit),
    #[error("QMP socket {path} not ready within {timeout:?}")]
    Timeout { path: String, timeout: Duration },
    #[error("QMP handshake failed")]
    Handshake(#[source] io::Error),
    #[error("QMP command {command} failed: {message}")]
    Command { command: &'static str, message: String },
    #[error("QMP command {command} got no answer within {timeout:?}")]
    CommandTimeout { command: &'static str, timeout: Duration },
}

/// An event QEMU sent (`SHUTDOWN`, `POWERDOWN`, `GUEST_PANICKED`, `STOP`, ...).
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    pub name: String,
    pub data: serde_json::Value,
}

type Writer = QmpStreamTokio<WriteHalf<UnixStream>>;

pub struct QmpClient {
    service: QapiService<Writer>,
    /// Deadline of every command.
    command_timeout: Duration,
    /// Set once a command went unanswered: QEMU is hung, and (without OOB ids) an abandoned
    /// command would make the next one's id collide. Later commands fail at once.
    hung: std::sync::atomic::AtomicBool,
    events: broadcast::Sender<QmpEvent>,
    reader: tokio::task::JoinHandle<()>,
}

impl QmpClient {
    /// Connects to QEMU's QMP socket, retrying until `timeout`; gives up at once when the
    /// supervisor reports that QEMU exited.
    pub async fn connect(
        path: &Path,
        timeout: Duration,
        command_timeout: Duration,
        mut exited: watch::Receiver<Option<VmExit>>,
    ) -> Result<Self, Error> {
        let deadline = Instant::now() + timeout;
        let stream = loop {
            if let Some(exit) = exited.borrow_and_update().clone() {
                return Err(Error::QemuExited(exit));
            }
            match UnixStream::connect(path).await {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => {
                    tokio::select! {
                        _ = tokio::time::sleep(CONNECT_RETRY_INTERVAL) => {}
                        _ = exited.changed() => {}
                    }
                }
                Err(_) => return Err(Error::Timeout { path: path.display().to_string(), timeout }),
            }
        };
        let handshake = async {
            let (r, w) = tokio::io::split(stream);
            QmpStreamTokio::open_split(r, w).await?.negotiate().await
        };
        let stream = match tokio::time::timeout_at(deadline, handshake).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(e)) => {
                // QEMU creates the socket before it loads the kernel; a handshake cut short
                // usually means it is exiting. Its exit status and log say why.
                let exit = tokio::time::timeout(EXIT_EXPLAINS_FAILURE_WAIT, exited.wait_for(|e| e.is_some())).await;
                if let Ok(Ok(exit)) = exit {
                    if let Some(exit) = exit.clone() {
                        return Err(Error::QemuExited(exit));
                    }
                }
                return Err(Error::Handshake(e));
            }
            Err(_) => return Err(Error::Timeout { path: path.display().to_string(), timeout }),
        };
        let (service, mut event_stream) = stream.into_parts();
        let (events, _) = broadcast::channel(EVENT_BACKLOG);
        let sender = events.clone();
        // Polling the event stream also delivers command responses to `service`.
        let reader = tokio::spawn(async move {
            while let Some(item) = event_stream.next().await {
                let event = match item {
                    Ok(event) => event,
                    // A reply whose command's caller gave up (its deadline passed, its request
                    // was cancelled) has nobody to go to; QEMU is fine and the stream goes on.
                    // Ending here made every later command of the pod fail.
                    Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                        tracing::debug!(error = %e, "QMP message nobody waits for");
                        continue;
                    }
                    Err(_) => break,
                };
                if let Some(event) = to_event(&event) {
                    tracing::debug!(event = %event.name, data = %event.data, "QMP event");
                    let _ = sender.send(event);
                }
            }
        });
        Ok(QmpClient { service, command_timeout, hung: false.into(), events, reader })
    }

    /// Subscribes to QEMU's events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }

    /// Runs one command under the command deadline.
    async fn execute<C: qapi::Command + qapi::qmp::QmpCommand>(&self, command: C) -> Result<C::Ok, Error> {
        use std::sync::atomic::Ordering;
        let timed_out = Error::CommandTimeout { command: C::NAME, timeout: self.command_timeout };
        if self.hung.load(Ordering::SeqCst) {
            return Err(timed_out);
        }
        match tokio::time::timeout(self.command_timeout, self.service.execute(command)).await {
            Ok(result) => result.map_err(|e| command_error(C::NAME, e)),
            Err(_) => {
                self.hung.store(true, Ordering::SeqCst);
                tracing::warn!(command = C::NAME, timeout = ?self.command_timeout, "QEMU does not answer QMP");
                Err(timed_out)
            }
        }
    }

    /// The VM's run state (`running`, `paused`, `shutdown`, ...).
    pub async fn query_status(&self) -> Result<String, Error> {
        let info = self.execute(qapi::qmp::query_status {}).await?;
        Ok(serde_json::to_value(info.status).ok().and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default())
    }

    /// Presses the ACPI power button.
    pub async fn system_powerdown(&self) -> Result<(), Error> {
        self.execute(qapi::qmp::system_powerdown {}).await?;
        Ok(())
    }

    /// Asks QEMU to exit now.
    pub async fn quit(&self) -> Result<(), Error> {
        self.execute(qapi::qmp::quit {}).await?;
        Ok(())
    }
}

/// QMP commands sent with arguments built as JSON (`blockdev-add`, `device_add`, ...): the
/// generated argument types would cost resident code for the few fields we set.
macro_rules! raw_command {
    ($ty:ident, $name:literal) => {
        #[derive(serde::Serialize)]
        #[serde(transparent)]
        struct $ty(serde_json::Value);
        impl qapi::qmp::QmpCommand for $ty {}
        impl qapi::Command for $ty {
            type Ok = serde_json::Value;
            const NAME: &'static str = $name;
            const ALLOW_OOB: bool = false;
        }
    };
}
raw_command!(BlockdevAdd, "blockdev-add");
raw_command!(BlockdevDel, "blockdev-del");
raw_command!(DeviceAdd, "device_add");
raw_command!(DeviceDel, "device_del");

impl QmpClient {
    /// Hot-plugs `file` read-only as SCSI disk `id` at `scsi_id` (LUN 0) on the VM's
    /// virtio-scsi controller [`crate::qemu_args::SCSI_CONTROLLER_ID`].
    pub async fn attach_scsi_disk(&self, id: &str, file: &std::path::Path, scsi_id: u32) -> Result<(), Error> {
        let node = format!("{id}-node");
        self.execute(BlockdevAdd(serde_json::json!({
            "driver": "raw",
            "node-name": node,
            "read-only": true,
            "file": { "driver": "file", "filename": file, "read-only": true },
        })))
        .await?;
        let added = self
            .execute(DeviceAdd(serde_json::json!({
                "driver": "scsi-hd",
                "id": id,
                "bus": format!("{}.0", crate::qemu_args::SCSI_CONTROLLER_ID),
                "drive": node,
                "channel": 0,
                "scsi-id": scsi_id,
                "lun": 0,
            })))
            .await;
        if let Err(e) = added {
            let _ = self.execute(BlockdevDel(serde_json::json!({ "node-name": node }))).await;
            return Err(e);
        }
        Ok(())
    }

    /// Unplugs SCSI disk `id` (the guest has released it) and its block node.
    pub async fn detach_scsi_disk(&self, id: &str) -> Result<(), Error> {
        let mut events = self.subscribe();
        self.execute(DeviceDel(serde_json::json!({ "id": id }))).await?;
        // SCSI unplug completes at once; wait for QEMU to say so before the node goes.
        let _ = tokio::time::timeout(self.command_timeout, async {
            while let Ok(ev) = events.recv().await {
                if ev.name == "DEVICE_DELETED" && ev.data["device"] == id {
                    return;
                }
            }
        })
        .await;
        self.execute(BlockdevDel(serde_json::json!({ "node-name": format!("{id}-node") }))).await?;
        Ok(())
    }
}

impl Drop for QmpClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

fn command_error(command: &'static str, e: qapi::ExecuteError) -> Error {
    Error::Command { command, message: e.to_string() }
}

fn to_event(event: &qapi::qmp::Event) -> Option<QmpEvent> {
    let mut v = serde_json::to_value(event).ok()?;
    let name = v.get("event")?.as_str()?.to_owned();
    let data = v.get_mut("data").map(serde_json::Value::take).unwrap_or_default();
    Some(QmpEvent { name, data })
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;

    use super::*;

    type Lines = tokio::io::Lines<BufReader<tokio::net::unix::OwnedReadHalf>>;

    /// Accepts the client, greets it and answers its negotiation. `oob`: whether it offers
    /// out-of-band execution (command ids), as QEMU 10 does.
    async fn greeted(path: std::path::PathBuf, oob: bool) -> (Lines, tokio::net::unix::OwnedWriteHalf) {
        let listener = UnixListener::bind(&path).expect("bind");
        let (stream, _) = listener.accept().await.expect("accept");
        let (r, mut w) = stream.into_split();
        let caps = if oob { r#"["oob"]"# } else { "[]" };
        let version = r#"{"qemu": {"micro": 2, "minor": 0, "major": 10}, "package": ""}"#;
        let greeting = format!(r#"{{"QMP": {{"version": {version}, "capabilities": {caps}}}}}"#);
        w.write_all(format!("{greeting}\r\n").as_bytes()).await.expect("greet");
        let mut lines = BufReader::new(r).lines();
        let negotiate = lines.next_line().await.expect("read").unwrap_or_default();
        assert!(negotiate.contains("qmp_capabilities"), "{negotiate}");
        w.write_all(b"{\"return\": {}}\r\n").await.expect("answer");
        (lines, w)
    }

    /// A QEMU that never answers a command (hung main loop).
    async fn hung_qemu(path: std::path::PathBuf, oob: bool) {
        let (mut lines, _w) = greeted(path, oob).await;
        // Read commands forever, answer none.
        while let Ok(Some(_)) = lines.next_line().await {}
    }

    /// A QEMU that answers its first command `late`, then sends an event.
    async fn slow_qemu(path: std::path::PathBuf, oob: bool, late: Duration) {
        let (mut lines, mut w) = greeted(path, oob).await;
        let command = lines.next_line().await.expect("read").expect("a command");
        let command: serde_json::Value = serde_json::from_str(&command).expect("json");
        tokio::time::sleep(late).await;
        let mut reply = serde_json::json!({ "return": { "status": "running", "running": true } });
        if let Some(id) = command.get("id") {
            reply["id"] = id.clone();
        }
        w.write_all(format!("{reply}\r\n").as_bytes()).await.expect("late answer");
        let event = r#"{"event": "STOP", "data": {}, "timestamp": {"seconds": 1, "microseconds": 2}}"#;
        w.write_all(format!("{event}\r\n").as_bytes()).await.expect("event");
        while let Ok(Some(_)) = lines.next_line().await {}
    }

    /// An answer that comes after its command's deadline has nobody to go to: the client
    /// still hears QEMU afterwards (it stopped reading at such an answer, and so lost every
    /// event and answer after it).
    #[tokio::test]
    async fn an_answer_after_its_deadline_does_not_end_the_stream() {
        for oob in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let path = dir.path().join("qmp.sock");
            let deadline = Duration::from_millis(200);
            let server = tokio::spawn(slow_qemu(path.clone(), oob, deadline * 2));
            let (_tx, exited) = watch::channel(None);
            let qmp = QmpClient::connect(&path, Duration::from_secs(5), deadline, exited).await.expect("handshake");
            let mut events = qmp.subscribe();
            let err = qmp.query_status().await.expect_err("answered after the deadline");
            assert!(matches!(err, Error::CommandTimeout { command: "query-status", .. }), "{err}");
            let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
                .await
                .expect("the event after the late answer arrives")
                .expect("event");
            assert_eq!(event.name, "STOP", "oob {oob}");
            server.abort();
        }
    }

    #[tokio::test]
    async fn a_command_qemu_never_answers_fails_at_its_deadline() {
        for oob in [false, true] {
            a_hung_qemu_fails_commands(oob).await;
        }
    }

    async fn a_hung_qemu_fails_commands(oob: bool) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("qmp.sock");
        let server = tokio::spawn(hung_qemu(path.clone(), oob));
        let (_tx, exited) = watch::channel(None);
        let deadline = Duration::from_millis(200);
        let qmp = QmpClient::connect(&path, Duration::from_secs(5), deadline, exited).await.expect("handshake");
        let err = qmp.quit().await.expect_err("no answer must be an error");
        assert!(matches!(err, Error::CommandTimeout { command: "quit", .. }), "{err}");
        // The next command fails too (at once: QEMU is known to be hung), without panicking
        // on a reused command id.
        assert!(matches!(qmp.query_status().await, Err(Error::CommandTimeout { command: "query-status", .. })));
        server.abort();
    }
}
