//! Pumps between containerd's stdio FIFOs and the agent's stream calls. Output pumps run
//! until the agent reports end of stream; no timeouts on long-lived streams.

use contrast_agent_protocol::{agent, AgentClient};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::task::JoinHandle;

/// Bytes asked for per ReadStdout/ReadStderr call (the agent's vsock writes are 32 KiB).
const READ_CHUNK: u32 = 32 * 1024;

pub struct Streams {
    stdin: Option<JoinHandle<()>>,
    outputs: Vec<JoinHandle<()>>,
}

#[derive(Clone, Copy)]
enum Output {
    Stdout,
    Stderr,
}

impl Streams {
    /// Opens the FIFOs containerd created (empty path: not attached) and starts pumping.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        agent: &AgentClient,
        namespace: &str,
        id: &str,
        exec_id: &str,
        stdin: &str,
        stdout: &str,
        stderr: &str,
        terminal: bool,
    ) -> std::io::Result<Streams> {
        let mut outputs = Vec::new();
        // `binary://<logger>?k=v`: both streams go to a logging binary (containerd's shim
        // logging protocol); it is started once for the process.
        if stdout.starts_with("binary://") {
            let (out, err) = crate::logbinary::start(stdout, id, namespace)?;
            outputs.push(tokio::spawn(pump_out(agent.clone(), id.to_owned(), exec_id.to_owned(), out, Output::Stdout)));
            if !terminal {
                outputs.push(tokio::spawn(pump_out(
                    agent.clone(),
                    id.to_owned(),
                    exec_id.to_owned(),
                    err,
                    Output::Stderr,
                )));
            }
            let stdin = Self::pump_stdin(agent, id, exec_id, stdin)?;
            return Ok(Streams { stdin, outputs });
        }
        for (path, kind) in [(stdout, Output::Stdout), (stderr, Output::Stderr)] {
            if path.is_empty() || (terminal && matches!(kind, Output::Stderr)) {
                continue;
            }
            // `file://<path>`: containerd's log-to-file URI; both streams append to the file.
            if let Some(file) = path.strip_prefix("file://") {
                let file = log_file(file)?;
                outputs.push(tokio::spawn(pump_out(agent.clone(), id.to_owned(), exec_id.to_owned(), file, kind)));
                continue;
            }

            // Opened read-write so the open never blocks on a reader that is not there yet.
            let fifo = Sink::Fifo(pipe::OpenOptions::new().read_write(true).open_sender(path)?);
            outputs.push(tokio::spawn(pump_out(agent.clone(), id.to_owned(), exec_id.to_owned(), fifo, kind)));
        }
        let stdin = Self::pump_stdin(agent, id, exec_id, stdin)?;
        Ok(Streams { stdin, outputs })
    }

    fn pump_stdin(
        agent: &AgentClient,
        id: &str,
        exec_id: &str,
        stdin: &str,
    ) -> std::io::Result<Option<JoinHandle<()>>> {
        if stdin.is_empty() {
            return Ok(None);
        }
        let fifo = pipe::OpenOptions::new().read_write(true).open_receiver(stdin)?;
        Ok(Some(tokio::spawn(pump_in(agent.clone(), id.to_owned(), exec_id.to_owned(), fifo))))
    }

    /// Waits until all output has been copied (the process and its children closed it).
    pub async fn drain(&mut self) {
        for h in self.outputs.drain(..) {
            let _ = h.await;
        }
    }

    /// Stops forwarding stdin and tells the agent the input ended.
    pub async fn close_stdin(&mut self, agent: &AgentClient, id: &str, exec_id: &str) {
        if let Some(h) = self.stdin.take() {
            h.abort();
        }
        let mut req = agent::CloseStdinRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        if let Err(e) = agent.close_stdin(&req).await {
            tracing::debug!(error = %e, "close stdin");
        }
    }

    pub fn abort(&mut self) {
        if let Some(h) = self.stdin.take() {
            h.abort();
        }
        self.outputs.drain(..).for_each(|h| h.abort());
    }
}

fn log_file(path: &str) -> std::io::Result<Sink> {
    let path = std::path::Path::new(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    Ok(Sink::File(tokio::fs::File::from_std(file)))
}

/// Where a process's output goes: a FIFO containerd reads, a log file, or a logging binary.
pub(crate) enum Sink {
    Fifo(pipe::Sender),
    File(tokio::fs::File),
}

impl Sink {
    async fn write_all(&mut self, data: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Fifo(f) => f.write_all(data).await,
            Sink::File(f) => {
                f.write_all(data).await?;
                f.flush().await
            }
        }
    }
}

async fn pump_out(agent: AgentClient, id: String, exec_id: String, mut fifo: Sink, kind: Output) {
    let mut req = agent::ReadStreamRequest::new();
    req.container_id = id;
    req.exec_id = exec_id;
    req.len = READ_CHUNK;
    loop {
        let res = match kind {
            Output::Stdout => agent.read_stdout(&req).await,
            Output::Stderr => agent.read_stderr(&req).await,
        };
        // End of stream (OutOfRange) or the agent is gone: either way the stream is over.
        let Ok(resp) = res else { return };
        if fifo.write_all(&resp.data).await.is_err() {
            return;
        }
    }
}

async fn pump_in(agent: AgentClient, id: String, exec_id: String, mut fifo: pipe::Receiver) {
    let mut buf = vec![0u8; READ_CHUNK as usize];
    loop {
        let n = match fifo.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let mut req = agent::WriteStreamRequest::new();
        req.container_id = id.clone();
        req.exec_id = exec_id.clone();
        req.data = buf[..n].to_vec();
        if agent.write_stdin(&req).await.is_err() {
            return;
        }
    }
    let mut req = agent::CloseStdinRequest::new();
    req.container_id = id;
    req.exec_id = exec_id;
    let _ = agent.close_stdin(&req).await;
}
