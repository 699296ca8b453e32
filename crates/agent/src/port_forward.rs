//! The guest end of CRI `PortForward` (`kubectl port-forward`): the host carries each
//! connection made to 127.0.0.1 in the pod's network namespace to
//! [`PORT_FORWARD_VSOCK_PORT`], preceded by the port (two bytes, big-endian). The pod's
//! policy judges it (rule `PortForwardRequest`); an allowed one is connected to
//! 127.0.0.1:`port` here — the containers share the VM's network namespace — and relayed
//! in frames after a status byte. A refused or failed one gets its status and the reason
//! instead.
//!
//! A confidential pod's policy decides whether the node may reach its ports this way: it
//! reaches services that listen only on the pod's loopback, which the pod network never
//! exposes. A policy without the rule (kata's) refuses every one.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use contrast_agent_protocol::portforward::PortForwardRequest;
use contrast_agent_protocol::{
    MAX_GUEST_WRITE, PORT_FORWARD_CONNECTED, PORT_FORWARD_FAILED, PORT_FORWARD_REFUSED, PORT_FORWARD_VSOCK_PORT,
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
/// A frame's length: four bytes, big-endian.
const FRAME_HEADER: usize = 4;
/// Largest frame payload the host may send.
const MAX_HOST_FRAME: usize = 64 * 1024;
/// Forwarded connections carried at once (the host allows as many).
const MAX_CONNECTIONS: usize = 256;
/// How long a connection to the port may take (the host waits 10 s for the answer).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(8);
/// Pause after a failed accept (out of fds, say).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub async fn serve(policy: Arc<Policy>) -> Result<()> {
    let listener = VsockListener::bind(VsockAddr::new(VMADDR_CID_ANY, PORT_FORWARD_VSOCK_PORT))
        .context("listening on the port-forward vsock port")?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let conn = match listener.accept().await {
            Ok((conn, _peer)) => conn,
            Err(e) => {
                log!("port forward: accept: {e}");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
                continue;
            }
        };
        // Bounds what the host's connections hold in the pod's memory.
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            log!("port forward: more than {MAX_CONNECTIONS} connections at once; one refused");
            continue;
        };
        let policy = policy.clone();
        tokio::spawn(async move {
            if let Err(e) = forward(conn, &policy).await {
                log!("port forward: {e:#}");
            }
            drop(permit);
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
            relay(conn, local).await.with_context(|| format!("port {port}"))
        }
        Err((status, reason)) => {
            let mut answer = vec![status];
            answer.extend(reason.bytes().take(MAX_REASON));
            conn.write_all(&answer).await.context("answering the host")?;
            anyhow::bail!("to port {port}: {reason}")
        }
    }
}

/// Relays framed bytes between the host and the guest's port until the host ends the
/// connection (see `contrast_agent_protocol::PORT_FORWARD_VSOCK_PORT` for the frames). A
/// frame carries each direction's end, which the vsock transport cannot: vhost-device-vsock
/// ignores a shutdown of one direction.
async fn relay(vsock: VsockStream, local: TcpStream) -> Result<()> {
    let (mut from_host, mut to_host) = vsock.into_split();
    let (mut from_local, mut to_local) = local.into_split();
    let host_to_local = async {
        let mut buf = vec![0u8; MAX_HOST_FRAME];
        let mut ended = false;
        // Writing to the port can fail while the server still answers (it closed its input,
        // or went after answering): from then on the host's bytes are read and dropped, so
        // that its frames keep flowing and the answer still reaches it.
        let mut port_takes_input = true;
        loop {
            let len = match from_host.read_u32().await {
                Ok(len) => len as usize,
                // The host's end of the connection: after its last frame, the normal end.
                Err(e) if ended && e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(anyhow::Error::new(e).context("reading from the host")),
            };
            anyhow::ensure!(!ended, "the host sent a frame after its end");
            anyhow::ensure!(len <= MAX_HOST_FRAME, "frame of {len} bytes from the host");
            if len == 0 {
                ended = true;
                if port_takes_input {
                    let _ = to_local.shutdown().await;
                }
                continue;
            }
            from_host.read_exact(&mut buf[..len]).await.context("reading from the host")?;
            if port_takes_input && to_local.write_all(&buf[..len]).await.is_err() {
                port_takes_input = false;
            }
        }
    };
    let local_to_host = async {
        // Header and payload in one write, at most MAX_GUEST_WRITE bytes.
        let mut buf = vec![0u8; MAX_GUEST_WRITE];
        loop {
            let n = from_local.read(&mut buf[FRAME_HEADER..]).await.context("reading from the port")?;
            buf[..FRAME_HEADER].copy_from_slice(&(n as u32).to_be_bytes());
            to_host.write_all(&buf[..FRAME_HEADER + n]).await.context("writing to the host")?;
            if n == 0 {
                return anyhow::Ok(());
            }
        }
    };
    tokio::pin!(host_to_local);
    tokio::select! {
        // The host ended the connection (or broke the protocol): the port's connection goes.
        r = &mut host_to_local => return r,
        r = local_to_host => r?,
    }
    host_to_local.await
}

/// The policy's verdict, then the connection to the port; or the status and reason the host
/// gets instead.
async fn open(port: u16, policy: &Policy) -> std::result::Result<TcpStream, (u8, String)> {
    let mut request = PortForwardRequest::new();
    request.port = port.into();
    policy.allow(&request).map_err(|e| (PORT_FORWARD_REFUSED, e.to_string()))?;
    let failed = |why: String| {
        (PORT_FORWARD_FAILED, format!("connecting to 127.0.0.1:{port} or [::1]:{port} in the pod VM: {why}"))
    };
    let connect = async {
        match TcpStream::connect((Ipv4Addr::LOCALHOST, port)).await {
            // Nothing on IPv4: a server that listens on "localhost" may have it as ::1 only
            // (Node.js does); containerd, too, tries ::1 after 127.0.0.1 with runc.
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                TcpStream::connect((Ipv6Addr::LOCALHOST, port)).await
            }
            other => other,
        }
    };
    match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
        Ok(Ok(local)) => Ok(local),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Err(_) => Err(failed(format!("no answer within {CONNECT_TIMEOUT:?}"))),
    }
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
        // A port nothing listens on: one the kernel just gave out and took back.
        let free =
            std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind").local_addr().expect("addr").port();
        let rego = format!(
            "package agent_policy\ndefault PortForwardRequest := false\nPortForwardRequest if {{ input.port in [{free}] }}\n"
        );
        let listing = Policy::enforcing(&rego).expect("policy");
        assert_eq!(open(free.wrapping_add(1), &listing).await.expect_err("not listed").0, PORT_FORWARD_REFUSED);
        let (status, reason) = open(free, &listing).await.expect_err("nothing listens");
        assert_eq!(status, PORT_FORWARD_FAILED, "{reason}");
        assert!(reason.contains(&format!("127.0.0.1:{free}")), "{reason}");
    }

    /// A server that listens on ::1 only (Node.js's "localhost") is reached too.
    #[tokio::test]
    async fn a_port_open_on_ipv6_loopback_only_is_reached() {
        let server = std::net::TcpListener::bind((Ipv6Addr::LOCALHOST, 0)).expect("bind ::1");
        let port = server.local_addr().expect("addr").port();
        let rego = format!("package agent_policy\nPortForwardRequest if {{ input.port == {port} }}\n");
        let policy = Policy::enforcing(&rego).expect("policy");
        let local = open(port, &policy).await.expect("connected over ::1");
        assert_eq!(local.peer_addr().expect("peer").ip(), std::net::IpAddr::V6(Ipv6Addr::LOCALHOST));
    }
}
