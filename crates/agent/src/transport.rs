//! vsock listener that proxies each connection to the ttrpc server's unix socket.
//!
//! The proxy exists to bound every guest-side write to [`MAX_GUEST_WRITE`] bytes: a single
//! larger write stalls the connection for good behind vhost-device-vsock (see the constant).

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use contrast_agent_protocol::{AGENT_READY_VSOCK_PORT, MAX_GUEST_WRITE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY, VMADDR_CID_HOST};

use crate::log;

/// How long the ready announcement may take before the agent gives up on it.
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn serve_vsock(port: u32, ttrpc_socket: &Path) -> Result<()> {
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, port)).context("listening on vsock")?;
    log!("ready on vsock port {port}");
    tokio::spawn(announce_ready());
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _peer)) => conn,
            Err(e) => {
                log!("vsock accept: {e}");
                continue;
            }
        };
        let target = ttrpc_socket.to_owned();
        tokio::spawn(async move {
            if let Err(e) = proxy(conn, target).await {
                log!("vsock connection: {e:#}");
            }
        });
    }
}

/// Tells the host that the agent now accepts connections: a connection to the host's
/// [`AGENT_READY_VSOCK_PORT`], closed at once (see there). Nobody listening is not an error:
/// a host that polls instead (kernel vhost-vsock) simply resets it.
async fn announce_ready() {
    let addr = VsockAddr::new(VMADDR_CID_HOST, AGENT_READY_VSOCK_PORT);
    match tokio::time::timeout(ANNOUNCE_TIMEOUT, VsockStream::connect(addr)).await {
        Ok(Ok(_announced)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        Ok(Err(e)) => log!("announcing readiness to the host: {e}"),
        Err(_) => log!("announcing readiness to the host: no answer within {ANNOUNCE_TIMEOUT:?}"),
    }
}

async fn proxy(vsock: VsockStream, ttrpc_socket: PathBuf) -> Result<()> {
    let local = UnixStream::connect(&ttrpc_socket).await.context("connecting to the ttrpc server")?;
    let (mut from_host, mut to_host) = vsock.into_split();
    let (mut from_agent, mut to_agent) = local.into_split();
    let upstream = async {
        tokio::io::copy(&mut from_host, &mut to_agent).await?;
        to_agent.shutdown().await
    };
    let downstream = async {
        let mut buf = vec![0u8; MAX_GUEST_WRITE];
        loop {
            let n = from_agent.read(&mut buf).await?;
            if n == 0 {
                return to_host.shutdown().await;
            }
            // Each write_all call issues writes of at most `buf.len()` bytes.
            to_host.write_all(&buf[..n]).await?;
        }
    };
    let (up, down) = tokio::join!(upstream, downstream);
    up.context("host to agent")?;
    down.context("agent to host")?;
    Ok(())
}
