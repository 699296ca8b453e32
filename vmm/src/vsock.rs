//! Reaching the guest agent's vsock port: kernel vhost-vsock (AF_VSOCK to the guest CID) or
//! hybrid vsock (a unix socket served by vhost-device-vsock, `CONNECT <port>` handshake).
//!
//! Dialing retries with backoff until the deadline and gives up at once when the VM exits.
//!
//! A hybrid attempt is never abandoned while the guest may still answer it: vhost-device-vsock
//! 0.3 writes `OK <port>` to the host socket with `unwrap()` when the guest accepts, so a
//! socket the host already closed panics its only vring worker thread and the pod's vsock is
//! dead from then on (reproduced here by closing connections early while a VM boots). An attempt
//! therefore waits until the guest accepts or resets it, or until the overall deadline.

use std::io;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::supervisor::VmExit;

/// First pause between dial attempts; doubles up to [`MAX_BACKOFF`].
const INITIAL_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_millis(250);
/// Longest hybrid-vsock handshake reply we accept (`OK <port>\n`).
const MAX_HANDSHAKE_REPLY: usize = 64;
/// `/dev/vhost-vsock` ioctl (linux/vhost.h): `_IOW(VHOST_VIRTIO, 0x60, __u64)`.
const VHOST_VIRTIO: u8 = 0xAF;
const VHOST_VSOCK_SET_GUEST_CID_NR: u8 = 0x60;
/// CIDs 0-2 are reserved (hypervisor, local, host); linux/vm_sockets.h.
const FIRST_GUEST_CID: u32 = 3;
/// CIDs tried before giving up on finding a free one.
const CID_ATTEMPTS: u32 = 256;

nix::ioctl_write_ptr!(vhost_vsock_set_guest_cid, VHOST_VIRTIO, VHOST_VSOCK_SET_GUEST_CID_NR, u64);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("pod VM exited while dialing the agent: {0}")]
    VmExited(VmExit),
    #[error("agent on vsock port {port} not reachable within {timeout:?} (last error: {last})")]
    Timeout { port: u32, timeout: Duration, last: String },
    #[error(
        "the agent did not announce itself (host vsock port {}) within {timeout:?}",
        crate::AGENT_READY_VSOCK_PORT
    )]
    NotAnnounced { timeout: Duration },
    #[error("cannot open /dev/vhost-vsock")]
    OpenVhost(#[source] io::Error),
    #[error("no free guest CID among {CID_ATTEMPTS} candidates")]
    NoFreeCid,
    #[error("setting the guest CID on /dev/vhost-vsock")]
    SetCid(#[source] io::Error),
}

/// Where the host reaches the guest's vsock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VsockEndpoint {
    /// Kernel vhost-vsock: connect with AF_VSOCK to this guest CID.
    Vhost { cid: u32 },
    /// vhost-device-vsock's unix socket; `CONNECT <port>\n` reaches the guest port.
    Hybrid { uds: PathBuf },
}

impl VsockEndpoint {
    /// Connects to `port` in the guest, retrying until `timeout`; fails fast when the VM exits.
    /// Returns the connected stream's file descriptor.
    pub async fn dial(
        &self,
        port: u32,
        timeout: Duration,
        mut exited: watch::Receiver<Option<VmExit>>,
    ) -> Result<OwnedFd, Error> {
        let deadline = Instant::now() + timeout;
        let mut backoff = INITIAL_BACKOFF;
        let mut last: String;
        loop {
            if let Some(exit) = exited.borrow_and_update().clone() {
                return Err(Error::VmExited(exit));
            }
            let started = Instant::now();
            // The attempt runs until the guest answers (see the module doc); only the overall
            // deadline or the VM's exit cut it short.
            let attempt = tokio::time::timeout_at(deadline, self.connect_once(port));
            tokio::select! {
                res = attempt => match res {
                    Ok(Ok(fd)) => return Ok(fd),
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => {
                        let waited = Instant::now().saturating_duration_since(started);
                        last = format!("no answer within {waited:.1?}");
                        return Err(Error::Timeout { port, timeout, last });
                    }
                },
                _ = exited.changed() => continue,
            }
            if Instant::now() + backoff >= deadline {
                return Err(Error::Timeout { port, timeout, last });
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = exited.changed() => {}
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn connect_once(&self, port: u32) -> io::Result<OwnedFd> {
        match self {
            VsockEndpoint::Vhost { cid } => {
                let stream = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, port)).await?;
                // SAFETY: into_raw_fd hands over sole ownership of a valid descriptor.
                Ok(unsafe { OwnedFd::from_raw_fd(stream.into_raw_fd()) })
            }
            VsockEndpoint::Hybrid { uds } => hybrid_connect(uds, port).await,
        }
    }
}

async fn hybrid_connect(uds: &Path, port: u32) -> io::Result<OwnedFd> {
    let mut stream = UnixStream::connect(uds).await?;
    stream.write_all(format!("CONNECT {port}\n").as_bytes()).await?;
    // Read the reply byte by byte so no byte of the guest's stream is consumed.
    let mut reply = Vec::new();
    loop {
        let b = stream.read_u8().await.map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                io::Error::new(io::ErrorKind::ConnectionRefused, "guest closed the connection (port not listening yet)")
            } else {
                e
            }
        })?;
        if b == b'\n' {
            break;
        }
        reply.push(b);
        if reply.len() > MAX_HANDSHAKE_REPLY {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "overlong hybrid vsock handshake reply"));
        }
    }
    if !reply.starts_with(b"OK ") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("hybrid vsock handshake answered {:?}", String::from_utf8_lossy(&reply)),
        ));
    }
    Ok(stream.into_std()?.into())
}

/// An open `/dev/vhost-vsock` with a guest CID claimed on it; QEMU gets the fd (`vhostfd=`).
pub struct VhostVsock {
    pub fd: OwnedFd,
    pub cid: u32,
}

/// Claims a free guest CID, starting at a candidate derived from `seed` and moving on when
/// the kernel says a CID is in use (another VM holds it).
pub fn allocate_vhost_cid(seed: u64) -> Result<VhostVsock, Error> {
    let file = std::fs::OpenOptions::new().read(true).write(true).open("/dev/vhost-vsock").map_err(Error::OpenVhost)?;
    let fd = OwnedFd::from(file);
    let span = u32::MAX - FIRST_GUEST_CID;
    for i in 0..CID_ATTEMPTS {
        let cid = FIRST_GUEST_CID + ((seed as u32).wrapping_add(i) % span);
        let value = u64::from(cid);
        // SAFETY: the fd is an open /dev/vhost-vsock and `value` outlives the call.
        match unsafe { vhost_vsock_set_guest_cid(std::os::fd::AsRawFd::as_raw_fd(&fd), &value) } {
            Ok(_) => return Ok(VhostVsock { fd, cid }),
            Err(nix::errno::Errno::EADDRINUSE) => continue,
            Err(e) => return Err(Error::SetCid(e.into())),
        }
    }
    Err(Error::NoFreeCid)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fake vhost-device-vsock: answers the handshake like the real one, or refuses.
    async fn fake_hybrid(dir: &Path, reply: &'static [u8]) -> PathBuf {
        let path = dir.join("vm.vsock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let mut buf = [0u8; 13];
                let _ = s.read_exact(&mut buf).await;
                assert_eq!(&buf, b"CONNECT 1024\n");
                let _ = s.write_all(reply).await;
                let _ = s.write_all(b"payload").await;
            }
        });
        path
    }

    #[tokio::test]
    async fn hybrid_handshake_leaves_the_stream_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = fake_hybrid(dir.path(), b"OK 1024\n").await;
        let (_tx, rx) = watch::channel(None);
        let fd = VsockEndpoint::Hybrid { uds }.dial(1024, Duration::from_secs(2), rx).await.expect("dial");
        let mut s = UnixStream::from_std(std::os::unix::net::UnixStream::from(fd)).expect("stream");
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).await.expect("payload");
        assert_eq!(&buf, b"payload");
    }

    #[tokio::test]
    async fn refused_handshake_times_out_with_the_reason() {
        let dir = tempfile::tempdir().expect("tempdir");
        let uds = fake_hybrid(dir.path(), b"NO\n").await;
        let (_tx, rx) = watch::channel(None);
        let err = VsockEndpoint::Hybrid { uds }.dial(1024, Duration::from_millis(200), rx).await.unwrap_err();
        assert!(err.to_string().contains("handshake answered \"NO\""), "{err}");
    }

    #[tokio::test]
    async fn silent_peer_times_out_at_the_deadline() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vm.vsock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        // Accepts and never answers, like vhost-device-vsock before the guest transport is up.
        let _keep = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let (_tx, rx) = watch::channel(None);
        let endpoint = VsockEndpoint::Hybrid { uds: path };
        let dial = endpoint.dial(1024, Duration::from_millis(500), rx);
        let err = tokio::time::timeout(Duration::from_secs(5), dial).await.expect("respects the deadline").unwrap_err();
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("no answer within"), "{err}");
    }

    /// A guest that answers late (its vsock transport came up after the `CONNECT`) is waited
    /// for on the same connection: the host never closes a connection the guest may still
    /// accept, which would kill vhost-device-vsock's worker thread.
    #[tokio::test]
    async fn slow_answer_is_awaited_on_one_connection() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("vm.vsock");
        let listener = tokio::net::UnixListener::bind(&path).expect("bind");
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 13];
            s.read_exact(&mut buf).await.expect("CONNECT");
            tokio::time::sleep(Duration::from_millis(2500)).await;
            s.write_all(b"OK 1024\n").await.expect("answer");
            let more = tokio::time::timeout(Duration::from_millis(300), listener.accept()).await;
            (s, more.is_ok())
        });
        let (_tx, rx) = watch::channel(None);
        let fd = VsockEndpoint::Hybrid { uds: path }.dial(1024, Duration::from_secs(10), rx).await.expect("dial");
        let (_conn, second_connection) = server.await.expect("server");
        assert!(!second_connection, "the dial opened another connection instead of waiting");
        drop(fd);
    }

    #[tokio::test]
    async fn vm_exit_stops_dialing_at_once() {
        let (tx, rx) = watch::channel(None);
        let endpoint = VsockEndpoint::Hybrid { uds: PathBuf::from("/nonexistent/vm.vsock") };
        let dial = tokio::spawn(async move { endpoint.dial(1024, Duration::from_secs(60), rx).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        let exit = VmExit {
            status: "killed by signal 9".into(),
            code: None,
            signal: Some(9),
            expected: false,
            cause: "qemu".into(),
            console_tail: String::new(),
            qemu_log_tail: String::new(),
        };
        tx.send(Some(exit)).expect("send");
        let res = tokio::time::timeout(Duration::from_secs(1), dial).await.expect("returns promptly").expect("join");
        assert!(matches!(res, Err(Error::VmExited(_))));
    }
}
