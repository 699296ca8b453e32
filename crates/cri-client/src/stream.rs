//! The client side of a CRI streaming session (`Exec`) over WebSocket, in Kubernetes'
//! channel protocol as the kubelet/containerd streaming server serves it
//! (k8s.io/apimachinery `wsstream`, subprotocol `v4.channel.k8s.io`): every binary message
//! starts with one channel byte — 0 stdin, 1 stdout, 2 stderr, 3 error (a JSON `Status`
//! when the process ends), 4 terminal resize.

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

/// Subprotocol with the final status on the error channel.
const PROTOCOL: &str = "v4.channel.k8s.io";
const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;

/// What an exec session printed, and how it ended.
#[derive(Debug, Default)]
pub struct ExecOutput {
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The error channel's `Status` document (`{"status":"Success",...}` or a Failure with
    /// the exit code in `details.causes`).
    pub status: String,
}

pub async fn exec(url: &str, input: &[u8]) -> Result<ExecOutput> {
    let url = url.replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
    let mut request = url.as_str().into_client_request().context("exec URL")?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
    let (mut ws, _) =
        tokio_tungstenite::connect_async(request).await.with_context(|| format!("connecting to {url}"))?;
    if !input.is_empty() {
        let mut frame = vec![STDIN];
        frame.extend_from_slice(input);
        ws.send(Message::Binary(frame.into())).await.context("writing stdin")?;
    }
    let mut out = ExecOutput::default();
    while let Some(message) = ws.next().await {
        let data = match message {
            Ok(Message::Binary(data)) => data.to_vec(),
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            // The server may drop the connection right after the status.
            Err(_) if !out.status.is_empty() => break,
            Err(e) => return Err(e).context("reading the exec stream"),
        };
        let Some((&channel, payload)) = data.split_first() else { continue };
        match channel {
            STDOUT => out.stdout.extend_from_slice(payload),
            STDERR => out.stderr.extend_from_slice(payload),
            ERROR => out.status.push_str(&String::from_utf8_lossy(payload)),
            // Each channel opens with an empty message.
            _ if payload.is_empty() => {}
            other => bail!("message on unexpected channel {other}"),
        }
    }
    Ok(out)
}

/// What one port-forward session brought back.
#[derive(Debug, Default)]
pub struct PortForwardOutput {
    /// Bytes from the pod's port, up to the point the caller stopped reading.
    pub data: Vec<u8>,
    /// What the server wrote on the port's error channel (why the connection failed).
    pub error: String,
}

/// CRI `PortForward` session for one port (`kubectl port-forward`): data channel 0, error
/// channel 1, each opening with the port (u16, little-endian). Sends `input`, then reads
/// until `done` says the data is complete, the server ends the session, or it reports an
/// error.
pub async fn port_forward(
    url: &str,
    port: u16,
    input: &[u8],
    done: impl Fn(&[u8]) -> bool,
) -> Result<PortForwardOutput> {
    const DATA: u8 = 0;
    const ERRORS: u8 = 1;
    let url = url.replacen("http://", "ws://", 1).replacen("https://", "wss://", 1);
    let url = format!("{url}{}port={port}", if url.contains('?') { '&' } else { '?' });
    let mut request = url.as_str().into_client_request().context("port-forward URL")?;
    request.headers_mut().insert("Sec-WebSocket-Protocol", HeaderValue::from_static(PROTOCOL));
    let (mut ws, _) =
        tokio_tungstenite::connect_async(request).await.with_context(|| format!("connecting to {url}"))?;
    let mut frame = vec![DATA];
    frame.extend_from_slice(input);
    ws.send(Message::Binary(frame.into())).await.context("writing to the port")?;
    let mut out = PortForwardOutput::default();
    let mut opened = [false; 2];
    while let Some(message) = ws.next().await {
        let data = match message {
            Ok(Message::Binary(data)) => data.to_vec(),
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(e) => return Err(e).context("reading the port-forward stream"),
        };
        let Some((&channel, payload)) = data.split_first() else { continue };
        let Some(seen) = opened.get_mut(channel as usize) else { bail!("message on unexpected channel {channel}") };
        // Each channel opens with its port.
        if !*seen {
            *seen = true;
            if payload != port.to_le_bytes() {
                bail!("channel {channel} opened for port {payload:?}, not {port}");
            }
            continue;
        }
        match channel {
            DATA => out.data.extend_from_slice(payload),
            ERRORS => out.error.push_str(&String::from_utf8_lossy(payload)),
            _ => unreachable!("channels beyond 1 are refused above"),
        }
        if !out.error.is_empty() || done(&out.data) {
            break;
        }
    }
    let _ = ws.close(None).await;
    Ok(out)
}
