//! The guest end of CRI `PortForward` (`kubectl port-forward`): the host carries each
//! connection made to 127.0.0.1 in the pod's network namespace to
//! [`PORT_FORWARD_VSOCK_PORT`], preceded by the port (two bytes, big-endian). The pod's
//! policy judges it (rule `PortForwardRequest`); an allowed one is connected to
//! 127.0.0.1:`port` here — the containers share the VM's network namespace — and relayed
//! after a status byte. A refused or failed one gets its status and the reason instead.
//!
//! A confidential pod's policy decides whether the node may reach its ports this way: it
//! reaches services that listen only on the pod's loopback, which the pod network never
//! exposes. A policy without the rule (kata's) refuses every one.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use contrast_agent_protocol::portforward::PortForwardRequest;
use contrast_agent_protocol::{
    PORT_FORWARD_CONNECTED, PORT_FORWARD_FAILED, PORT_FORWARD_REFUSED, PORT_FORWARD_VSOCK_PORT,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_vsock::{VsockAddr, VsockListener, VsockStream, VMADDR_CID_ANY};

use crate::log;
use crate::policy::Policy;

/// How long the host may take to send the port.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest reason sent with a refusal.
const MAX_REASON: usize = 512;

pub async fn serve(policy: Arc<Policy>) -> Result<()> {
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, PORT_FORWARD_VSOCK_PORT))
        .context("listening on the port-forward vsock port")?;
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _peer)) => conn,
            Err(e) => {
                log!("port forward: accept: {e}");
                continue;
            }
        };
        let policy = policy.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(conn, &policy).await {
                log!("port forward: {e:#}");
            }
        });
    }
}

async fn forward(mut conn: VsockStream, policy: &Policy) -> Result<()> {
    let port = tokio::time::timeout(HEADER_TIMEOUT, conn.read_u16())
        .await
        .context("no port from the host in time")?
        .context("reading the port")?;
    match open(port, policy).await {
        Ok(local) => {
            conn.write_all(&[PORT_FORWARD_CONNECTED]).await.context("answering the host")?;
            crate::transport::relay(conn, local).await.with_context(|| format!("port {port}"))
        }
        Err((status, reason)) => {
            let mut answer = vec![status];
            answer.extend(reason.bytes().take(MAX_REASON));
            conn.write_all(&answer).await.context("answering the host")?;
            anyhow::bail!("to port {port}: {reason}")
        }
    }
}

/// The policy's verdict, then the connection to the port; or the status and reason the host
/// gets instead.
async fn open(port: u16, policy: &Policy) -> std::result::Result<TcpStream, (u8, String)> {
    let mut request = PortForwardRequest::new();
    request.port = port.into();
    policy.allow(&request).map_err(|e| (PORT_FORWARD_REFUSED, e.to_string()))?;
    TcpStream::connect((Ipv4Addr::LOCALHOST, port))
        .await
        .map_err(|e| (PORT_FORWARD_FAILED, format!("connecting to 127.0.0.1:{port} in the pod VM: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A policy without the rule (kata's) refuses every port; ours allows the listed ones.
    #[tokio::test]
    async fn the_policy_decides_which_ports_the_node_reaches() {
        let kata_like =
            Policy::enforcing("package agent_policy\ndefault CreateContainerRequest := true\n").expect("policy");
        let (status, reason) = open(8080, &kata_like).await.expect_err("no rule: refused");
        assert_eq!(status, PORT_FORWARD_REFUSED);
        assert!(reason.contains("PortForwardRequest is blocked by policy"), "{reason}");
        let listing = Policy::enforcing(
            "package agent_policy\ndefault PortForwardRequest := false\nPortForwardRequest if { input.port in [1] }\n",
        )
        .expect("policy");
        assert_eq!(open(2, &listing).await.expect_err("not listed").0, PORT_FORWARD_REFUSED);
        // Port 1 is allowed; nothing listens on it here.
        let (status, reason) = open(1, &listing).await.expect_err("nothing listens");
        assert_eq!(status, PORT_FORWARD_FAILED, "{reason}");
        assert!(reason.contains("127.0.0.1:1"), "{reason}");
    }
}
