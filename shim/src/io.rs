//! Pumps between containerd's stdio FIFOs and the agent's stream calls. Output pumps run
//! until the agent reports end of stream; no timeouts on long-lived streams.

use contrast_agent_protocol::{agent, AgentClient, AgentError};
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
    pub async fn start(
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
            let (out, err) = crate::logbinary::start(stdout, id, namespace).await?;
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
        self.stop_stdin();
        let mut req = agent::CloseStdinRequest::new();
        req.container_id = id.into();
        req.exec_id = exec_id.into();
        if let Err(e) = agent.close_stdin(&req).await {
            tracing::debug!(error = %e, "close stdin");
        }
    }

    pub fn abort(&mut self) {
        self.stop_stdin();
        self.outputs.drain(..).for_each(|h| h.abort());
    }

    /// Stops forwarding stdin once the process is gone. The pump holds the FIFO open for
    /// writing too (so its open never blocks), so it never reads an end of its own: a
    /// terminal exec gets no `CloseIO` from containerd, and each `kubectl exec -it` left a
    /// task and a descriptor in the shim until the pod ended.
    pub fn stop_stdin(&mut self) {
        if let Some(h) = self.stdin.take() {
            h.abort();
        }
    }
}

impl Drop for Streams {
    /// A dropped task handle does not stop its task: whatever still pumps for a forgotten
    /// process stops with it.
    fn drop(&mut self) {
        self.abort();
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
        let Some(data) = stream_data(res) else { return };
        if fifo.write_all(&data).await.is_err() {
            return;
        }
    }
}

/// The bytes of one `ReadStdout`/`ReadStderr` answer, or `None` once the stream is over.
/// Agents say "end of stream" three ways: ours and kata-agent < 3.27 with an error (ours
/// OutOfRange "EOF", kata INTERNAL "read meet eof"), kata-agent ≥ 3.27 with an empty OK
/// answer — taken as data it would spin forever. Any other error means the agent is gone,
/// which ends the stream too.
fn stream_data(res: Result<agent::ReadStreamResponse, AgentError>) -> Option<Vec<u8>> {
    match res {
        Ok(resp) if !resp.data.is_empty() => Some(resp.data),
        Ok(_) | Err(_) => None,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(data: &[u8]) -> Result<agent::ReadStreamResponse, AgentError> {
        let mut r = agent::ReadStreamResponse::new();
        r.data = data.to_vec();
        Ok(r)
    }

    fn error(code: ttrpc::Code, message: &str) -> Result<agent::ReadStreamResponse, AgentError> {
        Err(AgentError { method: "read_stdout", code, message: message.into() })
    }

    #[test]
    fn every_agents_end_of_stream_ends_the_pump() {
        assert_eq!(stream_data(answer(b"hi")), Some(b"hi".to_vec()));
        // kata-agent >= 3.27: an empty answer at end of stream.
        assert_eq!(stream_data(answer(b"")), None);
        // kata-agent < 3.27: INTERNAL "read meet eof".
        assert_eq!(stream_data(error(ttrpc::Code::INTERNAL, "read meet eof")), None);
        // contrast-agent: OutOfRange "EOF".
        assert_eq!(stream_data(error(ttrpc::Code::OUT_OF_RANGE, "EOF")), None);
    }
}
