//! Task events leave the shim through one queue drained by one task, in the order they
//! happened: an RPC never waits for containerd to take an event (containerd may be the one
//! calling, or restarting), and TaskCreate always precedes that task's TaskStart and TaskExit.

use std::time::Duration;

use async_trait::async_trait;
use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim_protos::protobuf::MessageDyn;
use tokio::sync::{mpsc, oneshot};

/// Where events go: containerd's event service, or a recorder in unit tests.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    async fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) -> Result<(), String>;
}

/// containerd's `Events.Forward` through the publisher the shim crate connected.
pub struct Containerd {
    pub publisher: RemotePublisher,
    pub namespace: String,
}

#[async_trait]
impl EventSink for Containerd {
    async fn publish(&self, topic: &'static str, event: Box<dyn MessageDyn>) -> Result<(), String> {
        let ctx = ttrpc::context::Context::default();
        self.publisher.publish(ctx, topic, &self.namespace, event).await.map_err(|e| e.to_string())
    }
}

enum Item {
    Event(&'static str, Box<dyn MessageDyn>),
    /// Answered once every event queued before it was handed to the sink.
    Flush(oneshot::Sender<()>),
}

pub struct EventQueue {
    tx: mpsc::UnboundedSender<Item>,
}

impl EventQueue {
    /// Starts the task that drains the queue into `sink`.
    pub fn start(sink: impl EventSink) -> EventQueue {
        let (tx, mut rx) = mpsc::unbounded_channel::<Item>();
        tokio::spawn(async move {
            while let Some(item) = rx.recv().await {
                match item {
                    Item::Event(topic, event) => {
                        if let Err(e) = sink.publish(topic, event).await {
                            tracing::warn!(topic, error = %e, "cannot publish event");
                        }
                    }
                    Item::Flush(done) => {
                        let _ = done.send(());
                    }
                }
            }
        });
        EventQueue { tx }
    }

    /// Queues an event; never waits.
    pub fn send(&self, topic: &'static str, event: Box<dyn MessageDyn>) {
        if self.tx.send(Item::Event(topic, event)).is_err() {
            tracing::warn!(topic, "event queue closed; event dropped");
        }
    }

    /// Waits (at most `timeout`) until everything queued so far was handed to the sink — the
    /// shim's last events (TaskDelete) must reach containerd before the daemon exits.
    pub async fn flush(&self, timeout: Duration) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Item::Flush(done)).is_ok() && tokio::time::timeout(timeout, wait).await.is_err() {
            tracing::warn!(?timeout, "events still queued at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use containerd_shim_protos::events::task::{TaskCreate, TaskExit, TaskStart};

    use super::*;

    /// Records the topics in arrival order; each publish takes `delay` (a slow containerd).
    struct Recorder {
        seen: Arc<Mutex<Vec<&'static str>>>,
        delay: Duration,
    }

    #[async_trait]
    impl EventSink for Recorder {
        async fn publish(&self, topic: &'static str, _: Box<dyn MessageDyn>) -> Result<(), String> {
            tokio::time::sleep(self.delay).await;
            self.seen.lock().map_err(|e| e.to_string())?.push(topic);
            Ok(())
        }
    }

    #[tokio::test(start_paused = true)]
    async fn events_keep_their_order_and_sending_never_waits_for_the_sink() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let queue = EventQueue::start(Recorder { seen: seen.clone(), delay: Duration::from_secs(10) });
        let before = tokio::time::Instant::now();
        queue.send("/tasks/create", Box::new(TaskCreate::default()));
        queue.send("/tasks/start", Box::new(TaskStart::default()));
        queue.send("/tasks/exit", Box::new(TaskExit::default()));
        assert_eq!(before.elapsed(), Duration::ZERO, "send must not wait for a slow containerd");
        assert!(seen.lock().expect("lock").is_empty());
        queue.flush(Duration::from_secs(60)).await;
        assert_eq!(*seen.lock().expect("lock"), ["/tasks/create", "/tasks/start", "/tasks/exit"]);
    }

    #[tokio::test(start_paused = true)]
    async fn flush_gives_up_after_its_timeout() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let queue = EventQueue::start(Recorder { seen: seen.clone(), delay: Duration::from_secs(3600) });
        queue.send("/tasks/delete", Box::new(TaskExit::default()));
        let before = tokio::time::Instant::now();
        queue.flush(Duration::from_secs(2)).await;
        assert_eq!(before.elapsed(), Duration::from_secs(2));
        assert!(seen.lock().expect("lock").is_empty());
    }
}
