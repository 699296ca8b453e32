//! `kubectl port-forward` / `crictl port-forward` into a pod VM.
//!
//! containerd serves CRI `PortForward` by entering the pod's network namespace on the host and
//! connecting to `localhost:<port>` there; with runc the pod's processes listen in that
//! namespace. A pod VM's processes listen in the guest, so nothing would answer. Here an
//! `sk_lookup` BPF program, attached to the pod's namespace, hands every TCP connection to
//! 127.0.0.1 — whatever its port — to one listening socket of the shim (the connection keeps
//! its destination port, which the accepted socket's local address reports). Each connection
//! is carried to the guest agent's [`PORT_FORWARD_VSOCK_PORT`] with a two-byte header (the
//! port, big-endian); the agent asks the pod's policy and connects to 127.0.0.1:`port` in the
//! guest, answers a status byte, then bytes flow both ways in frames until both directions
//! have ended. A
//! connection the guest refuses (the policy, or nothing listening) is reset, and the shim's
//! log says why.
//!
//! Nothing here outlives its [`PortForward`]: the program stays attached only while the BPF
//! link's fd is open, the listening socket leaves the map when it closes, and the forwarded
//! connections are tasks of the accepting task, aborted with it.

use std::fs::File;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::supervisor::VmExit;
use crate::vsock::VsockEndpoint;

/// Guest vsock port of the agent's port forwarder (`contrast_agent_protocol::PORT_FORWARD_VSOCK_PORT`).
pub const PORT_FORWARD_VSOCK_PORT: u32 = 1026;
/// How long a forwarded connection waits for the agent to accept it.
/// Generous: a hybrid handshake cut short can break vhost-device-vsock (crate::vsock), and the
/// agent is already up when a pod's port is forwarded.
const DIAL_TIMEOUT: Duration = Duration::from_secs(60);
/// Forwarded connections one pod carries at once; more are reset (each holds ~128 KiB of
/// buffers here and ~100 KiB in the guest).
const MAX_CONNECTIONS: usize = 256;
/// How long a connection waits for the guest's next bytes once the client has sent all it
/// will (see [`splice`]).
const LINGER: Duration = Duration::from_secs(30);
/// A frame's length: four bytes, big-endian; and the largest payload the host sends or takes
/// (the agent sends at most 32 KiB, header included).
const FRAME_HEADER: usize = 4;
const MAX_FRAME: usize = 64 * 1024;
/// How long the agent may take to answer a connection (its policy check and connect).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest refusal reason read (the agent sends at most 512 bytes).
const MAX_REASON: u64 = 1024;
/// The agent's status bytes (`contrast_agent_protocol::PORT_FORWARD_*`).
const PORT_FORWARD_CONNECTED: u8 = 0;
/// Pause after a failed accept (out of fds, say) before the next.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
#[error("port forwarding in network namespace {}: {problem}", netns.display())]
pub struct Error {
    pub netns: PathBuf,
    pub problem: String,
}

/// The pod namespace's loopback, forwarded into the guest while this lives.
pub struct PortForward {
    accept: tokio::task::JoinHandle<()>,
    /// The program's attachment to the namespace: closing it detaches the program.
    _link: OwnedFd,
}

impl PortForward {
    /// Steers TCP connections to 127.0.0.1 in `netns` to the guest behind `guest`.
    pub async fn start(
        netns: &Path,
        guest: VsockEndpoint,
        exited: watch::Receiver<Option<VmExit>>,
    ) -> Result<PortForward, Error> {
        let err = |problem: String| Error { netns: netns.to_owned(), problem };
        // A socket belongs to the namespace of the thread that creates it.
        let listener = crate::net::in_netns(netns, |_| loopback_listener())
            .await
            .map_err(|e| err(format!("listening on 127.0.0.1: {e}")))?;
        let namespace = File::open(netns).map_err(|e| err(format!("opening the namespace: {e}")))?;
        let link = steer_loopback(&namespace, &listener).map_err(|e| err(e.to_string()))?;
        let listener = std::net::TcpListener::from(listener);
        let listener = TcpListener::from_std(listener).map_err(|e| err(format!("listener: {e}")))?;
        let accept = tokio::spawn(accept_loop(listener, guest, exited));
        Ok(PortForward { accept, _link: link })
    }
}

impl Drop for PortForward {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

/// A non-blocking TCP listener on 127.0.0.1 with a port the kernel picks. `IP_FREEBIND`: the
/// namespace's loopback may not be up (CNI's loopback plugin brings it up for CRI pods).
fn loopback_listener() -> io::Result<OwnedFd> {
    let check = |r: libc::c_int| if r < 0 { Err(io::Error::last_os_error()) } else { Ok(r) };
    // SAFETY: plain socket(2); the result is checked before it is owned.
    let raw =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK, 0) })?;
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let on: libc::c_int = 1;
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(Ipv4Addr::LOCALHOST.octets()) },
        sin_zero: [0; 8],
    };
    // SAFETY: the option value and the address live across the calls, with their sizes.
    unsafe {
        check(libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_FREEBIND,
            &on as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ))?;
        check(libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        ))?;
        check(libc::listen(fd.as_raw_fd(), 128))?;
    }
    Ok(fd)
}

async fn accept_loop(listener: TcpListener, guest: VsockEndpoint, exited: watch::Receiver<Option<VmExit>>) {
    let mut connections = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) if connections.len() >= MAX_CONNECTIONS => {
                    tracing::warn!(limit = MAX_CONNECTIONS, "port forwarding: too many connections; this one is reset");
                    let _ = tcp.set_zero_linger();
                }
                Ok((tcp, _)) => {
                    connections.spawn(forward(tcp, guest.clone(), exited.clone()));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "port forwarding: accepting a connection");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Carries one connection to the guest: the port it was made to, then its bytes.
async fn forward(mut tcp: TcpStream, guest: VsockEndpoint, exited: watch::Receiver<Option<VmExit>>) {
    let port = match tcp.local_addr() {
        Ok(addr) => addr.port(),
        Err(e) => return tracing::warn!(error = %e, "port forwarding: a connection without a local address"),
    };
    // The dial runs to its end (see crate::vsock: abandoning a hybrid handshake can break
    // vhost-device-vsock), even when the client has gone meanwhile.
    let result = match guest.dial(PORT_FORWARD_VSOCK_PORT, DIAL_TIMEOUT, exited).await {
        Ok(fd) => match &guest {
            VsockEndpoint::Hybrid { .. } => match unix_stream(fd) {
                Ok(mut stream) => splice(&mut tcp, &mut stream, port, LINGER).await,
                Err(e) => Err(e.into()),
            },
            VsockEndpoint::Vhost { .. } => match nonblocking(fd) {
                Ok(fd) => splice(&mut tcp, &mut tokio_vsock::VsockStream::from(fd), port, LINGER).await,
                Err(e) => Err(e.into()),
            },
        },
        Err(e) => Err(Failure::Unreachable(format!("reaching the agent: {e}"))),
    };
    match result {
        Ok(()) => tracing::debug!(port, "port forwarding: connection closed"),
        Err(e) => {
            match &e {
                Failure::Refused(reason) => {
                    tracing::warn!(port, %reason, "port forwarding: the pod VM refused the connection")
                }
                Failure::Unreachable(reason) => tracing::warn!(port, %reason, "port forwarding: no agent"),
                Failure::Io(e) => tracing::debug!(port, error = %e, "port forwarding: connection ended"),
            }
            // A reset, as a port nobody listens on gives the client, not a clean end.
            let _ = tcp.set_zero_linger();
        }
    }
}

fn unix_stream(fd: OwnedFd) -> io::Result<tokio::net::UnixStream> {
    tokio::net::UnixStream::from_std(std::os::unix::net::UnixStream::from(nonblocking(fd)?))
}

fn nonblocking(fd: OwnedFd) -> io::Result<OwnedFd> {
    let flags = nix::fcntl::OFlag::from_bits_truncate(nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::F_GETFL)?);
    nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::F_SETFL(flags | nix::fcntl::OFlag::O_NONBLOCK))?;
    Ok(fd)
}

/// Sends the port, takes the agent's answer, then relays both ways in frames (see
/// `contrast_agent_protocol::PORT_FORWARD_VSOCK_PORT`): a frame of length 0 carries a
/// direction's end, which the vsock transport cannot (vhost-device-vsock). Ends when both
/// directions have ended; once the client has sent all it will, the guest's side may stay
/// silent for at most `linger` ([`LINGER`]) at a time (then the client's connection is reset).
async fn splice<G>(tcp: &mut TcpStream, guest: &mut G, port: u16, linger: Duration) -> Result<(), Failure>
where
    G: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    guest.write_all(&port.to_be_bytes()).await?;
    answer(guest).await?;
    let (mut from_client, mut to_client) = tcp.split();
    let (mut from_guest, mut to_guest) = tokio::io::split(guest);
    let (client_ended, mut ended) = watch::channel(false);
    let client_to_guest = async {
        let mut buf = vec![0u8; FRAME_HEADER + MAX_FRAME];
        loop {
            let n = from_client.read(&mut buf[FRAME_HEADER..]).await?;
            buf[..FRAME_HEADER].copy_from_slice(&(n as u32).to_be_bytes());
            to_guest.write_all(&buf[..FRAME_HEADER + n]).await?;
            if n == 0 {
                let _ = client_ended.send(true);
                return io::Result::Ok(());
            }
        }
    };
    let guest_to_client = async {
        let mut buf = vec![0u8; MAX_FRAME];
        loop {
            let len = tokio::select! {
                len = from_guest.read_u32() => len? as usize,
                // Cut short: the client must not take a partial answer for a whole one.
                () = silent_after_the_client(&mut ended, linger) => {
                    return Err(io::Error::new(io::ErrorKind::TimedOut, "the pod's port stayed silent after the client's end"));
                }
            };
            if len == 0 {
                return to_client.shutdown().await;
            }
            if len > MAX_FRAME {
                return Err(io::Error::new(io::ErrorKind::InvalidData, format!("frame of {len} bytes from the agent")));
            }
            from_guest.read_exact(&mut buf[..len]).await?;
            to_client.write_all(&buf[..len]).await?;
        }
    };
    tokio::try_join!(client_to_guest, guest_to_client)?;
    Ok(())
}

/// Returns `linger` after the client's end of input (never before it).
async fn silent_after_the_client(ended: &mut watch::Receiver<bool>, linger: Duration) {
    if ended.wait_for(|ended| *ended).await.is_err() {
        // The client's side is gone without its end: the other branch ends the relay.
        std::future::pending::<()>().await;
    }
    tokio::time::sleep(linger).await;
}

/// Why a forwarded connection did not run to its end.
#[derive(Debug, thiserror::Error)]
enum Failure {
    /// The agent refused it (the policy, or nothing listens on the port): its reason.
    #[error("{0}")]
    Refused(String),
    /// The agent did not take the connection (not reachable, no answer).
    #[error("{0}")]
    Unreachable(String),
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The agent's status byte: connected, or the refusal with its reason.
async fn answer<G: tokio::io::AsyncRead + Unpin>(guest: &mut G) -> Result<(), Failure> {
    let status = match tokio::time::timeout(ANSWER_TIMEOUT, guest.read_u8()).await {
        Ok(status) => status.map_err(|e| Failure::Unreachable(format!("reading the agent's answer: {e}")))?,
        Err(_) => return Err(Failure::Unreachable(format!("the agent did not answer within {ANSWER_TIMEOUT:?}"))),
    };
    if status == PORT_FORWARD_CONNECTED {
        return Ok(());
    }
    let mut reason = Vec::new();
    let mut limited = guest.take(MAX_REASON);
    let _ = tokio::time::timeout(ANSWER_TIMEOUT, limited.read_to_end(&mut reason)).await;
    Err(Failure::Refused(String::from_utf8_lossy(&reason).into_owned()))
}

/// bpf(2) commands, map, program and attach types, helpers (linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_SK_LOOKUP: u32 = 36;
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_SK_RELEASE: i32 = 86;
const HELPER_SK_ASSIGN: i32 = 124;
/// `struct bpf_sk_lookup` offsets: family, protocol, local_ip4 (network order).
const CTX_FAMILY: i16 = 8;
const CTX_PROTOCOL: i16 = 12;
const CTX_LOCAL_IP4: i16 = 40;
/// 127.0.0.1 as the context holds it (network byte order, read as a little-endian u32).
const LOOPBACK_IP4: i32 = i32::from_le_bytes([127, 0, 0, 1]);
const SK_PASS: i32 = 1;

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
}

#[repr(C)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

/// The leading fields of `union bpf_attr` for `BPF_PROG_LOAD`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a live, initialized `#[repr(C)]` prefix of `union bpf_attr` for `cmd`
    // and the size passed is its own; the kernel reads (and for the log, writes) only memory
    // the attribute's pointers name, which the caller keeps alive for the call.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, std::mem::size_of::<T>()) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: for the commands used here a non-negative result is a new fd (or 0 from an
    // update, which callers do not keep).
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Insn {
    code: u8,
    /// dst in the low nibble, src in the high one.
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

/// Opcodes used (class | size/op | source).
mod op {
    pub const LDX_W: u8 = 0x61;
    pub const ST_W: u8 = 0x62;
    pub const MOV64_REG: u8 = 0xbf;
    pub const MOV64_IMM: u8 = 0xb7;
    pub const ADD64_IMM: u8 = 0x07;
    pub const LD_IMM64: u8 = 0x18;
    pub const JNE_IMM: u8 = 0x55;
    pub const JEQ_IMM: u8 = 0x15;
    pub const CALL: u8 = 0x85;
    pub const EXIT: u8 = 0x95;
}
/// `ld_imm64` source register value: the immediate is a map fd.
const PSEUDO_MAP_FD: u8 = 1;

/// The sk_lookup program: a TCP/IPv4 connection to 127.0.0.1 goes to the socket at key 0 of
/// `map`; everything else takes the kernel's own lookup.
fn program(map: i32) -> Vec<Insn> {
    const PASS: i16 = 21;
    // A jump's offset counts from the next instruction.
    let to_pass = |at: i16| PASS - at - 1;
    vec![
        insn(op::MOV64_REG, 6, 1, 0, 0),                        // 0: r6 = ctx
        insn(op::LDX_W, 2, 6, CTX_PROTOCOL, 0),                 // 1
        insn(op::JNE_IMM, 2, 0, to_pass(2), libc::IPPROTO_TCP), // 2
        insn(op::LDX_W, 2, 6, CTX_FAMILY, 0),                   // 3
        insn(op::JNE_IMM, 2, 0, to_pass(4), libc::AF_INET),     // 4
        insn(op::LDX_W, 2, 6, CTX_LOCAL_IP4, 0),                // 5
        insn(op::JNE_IMM, 2, 0, to_pass(6), LOOPBACK_IP4),      // 6
        insn(op::ST_W, 10, 0, -4, 0),                           // 7: key 0 on the stack
        insn(op::MOV64_REG, 2, 10, 0, 0),                       // 8
        insn(op::ADD64_IMM, 2, 0, 0, -4),                       // 9: r2 = &key
        insn(op::LD_IMM64, 1, PSEUDO_MAP_FD, 0, map),           // 10: r1 = map
        insn(0, 0, 0, 0, 0),                                    // 11: (upper half)
        insn(op::CALL, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM),        // 12: r0 = socket, referenced
        insn(op::JEQ_IMM, 0, 0, to_pass(13), 0),                // 13
        insn(op::MOV64_REG, 7, 0, 0, 0),                        // 14
        insn(op::MOV64_REG, 1, 6, 0, 0),                        // 15
        insn(op::MOV64_REG, 2, 7, 0, 0),                        // 16
        insn(op::MOV64_IMM, 3, 0, 0, 0),                        // 17
        insn(op::CALL, 0, 0, 0, HELPER_SK_ASSIGN),              // 18
        insn(op::MOV64_REG, 1, 7, 0, 0),                        // 19
        insn(op::CALL, 0, 0, 0, HELPER_SK_RELEASE),             // 20
        insn(op::MOV64_IMM, 0, 0, 0, SK_PASS),                  // 21: PASS
        insn(op::EXIT, 0, 0, 0, 0),                             // 22
    ]
}

/// Puts `listener` into a socket map and attaches the program for it to `namespace`; the
/// returned link fd keeps the attachment (the map and program live as long as it does).
fn steer_loopback(namespace: &File, listener: &OwnedFd) -> io::Result<OwnedFd> {
    let context = |what: &'static str| move |e: io::Error| io::Error::new(e.kind(), format!("{what}: {e}"));
    let mut create = MapCreateAttr { map_type: BPF_MAP_TYPE_SOCKMAP, key_size: 4, value_size: 8, max_entries: 1 };
    let map = bpf(BPF_MAP_CREATE, &mut create).map_err(context("creating the socket map (BPF_MAP_CREATE)"))?;
    let key = 0u32;
    let value = listener.as_raw_fd() as u64;
    let mut update = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        _pad: 0,
        key: &key as *const u32 as u64,
        value: &value as *const u64 as u64,
        flags: 0,
    };
    // The update answers 0, not an fd: nothing to keep.
    std::mem::forget(bpf(BPF_MAP_UPDATE_ELEM, &mut update).map_err(context("adding the listener to the map"))?);
    let insns = program(map.as_raw_fd());
    const LICENSE: &[u8] = b"Apache-2.0\0";
    let mut load = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_SK_LOOKUP,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        expected_attach_type: BPF_SK_LOOKUP,
        ..Default::default()
    };
    load.prog_name[..12].copy_from_slice(b"port_forward");
    let prog = bpf(BPF_PROG_LOAD, &mut load).map_err(context("loading the sk_lookup program (BPF_PROG_LOAD)"))?;
    let mut link = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_fd: namespace.as_raw_fd() as u32,
        attach_type: BPF_SK_LOOKUP,
        flags: 0,
    };
    bpf(BPF_LINK_CREATE, &mut link).map_err(context("attaching it to the namespace (BPF_LINK_CREATE)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_on_the_pass_exit() {
        let p = program(7);
        for (at, i) in p.iter().enumerate() {
            if i.code == op::JNE_IMM || i.code == op::JEQ_IMM {
                let target = at as i64 + 1 + i64::from(i.off);
                assert_eq!(p[target as usize], insn(op::MOV64_IMM, 0, 0, 0, SK_PASS), "jump at {at}");
            }
        }
        assert_eq!(p.last(), Some(&insn(op::EXIT, 0, 0, 0, 0)));
        assert_eq!(p[10].imm, 7, "the map fd is the ld_imm64's immediate");
    }

    /// In a network namespace of the test's own: a connection to any port of 127.0.0.1
    /// reaches the one listener, which sees the port it was made to; other addresses are
    /// left alone; after the link closes, the kernel's own lookup answers again.
    #[test]
    fn loopback_connections_of_any_port_reach_the_listener() {
        if !nix::unistd::geteuid().is_root() {
            panic!("needs root (network namespaces, BPF)");
        }
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            let lo_up = std::process::Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip");
            assert!(lo_up.success());
            let listener = loopback_listener().expect("listener");
            let namespace = File::open(format!("/proc/self/task/{}/ns/net", nix::unistd::gettid())).expect("netns");
            let link = steer_loopback(&namespace, &listener).expect("steer");
            let listener = std::net::TcpListener::from(listener);
            listener.set_nonblocking(false).expect("blocking");
            for port in [80u16, 8080, 65000] {
                let client = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
                let (served, _) = listener.accept().expect("accept");
                assert_eq!(served.local_addr().expect("local").port(), port);
                assert_eq!(served.peer_addr().expect("peer"), client.local_addr().expect("client"));
            }
            drop(link);
            let refused = std::net::TcpStream::connect((Ipv4Addr::LOCALHOST, 8080));
            assert_eq!(refused.err().map(|e| e.kind()), Some(io::ErrorKind::ConnectionRefused), "detached");
        })
        .join()
        .expect("test thread");
    }

    /// A client that sends `input`, ends its output and reads the answer to the end; and the
    /// connection's other end.
    async fn client_sending(input: &'static [u8]) -> (TcpStream, tokio::task::JoinHandle<Vec<u8>>) {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::spawn(async move {
            let mut c = TcpStream::connect(addr).await.expect("connect");
            c.write_all(input).await.expect("write");
            c.shutdown().await.expect("shutdown");
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.expect("read");
            back
        });
        (listener.accept().await.expect("accept").0, client)
    }

    fn frame(payload: &[u8]) -> Vec<u8> {
        [&(payload.len() as u32).to_be_bytes()[..], payload].concat()
    }

    /// What the agent's end reads: the port, then (after its answer) the frames up to the
    /// client's end.
    async fn agent_reads(agent: &mut tokio::net::UnixStream) -> (u16, Vec<u8>) {
        let port = agent.read_u16().await.expect("the port");
        agent.write_all(&[PORT_FORWARD_CONNECTED]).await.expect("status");
        (port, frames(agent).await)
    }

    /// The payloads of frames up to the one that ends the direction.
    async fn frames(agent: &mut tokio::net::UnixStream) -> Vec<u8> {
        let mut got = Vec::new();
        loop {
            let len = agent.read_u32().await.expect("frame length") as usize;
            if len == 0 {
                return got;
            }
            let mut payload = vec![0u8; len];
            agent.read_exact(&mut payload).await.expect("frame");
            got.extend(payload);
        }
    }

    /// The port first, then the client's bytes and its end as frames; the guest's answer and
    /// its end come back to the client; the connection closes once both ended.
    #[tokio::test]
    async fn splice_sends_the_port_then_frames_both_ways() {
        let (mut tcp, client) = client_sending(b"ping").await;
        let (mut guest, mut agent) = tokio::net::UnixStream::pair().expect("pair");
        let done = tokio::spawn(async move { splice(&mut tcp, &mut guest, 8080, LINGER).await });
        assert_eq!(agent_reads(&mut agent).await, (8080, b"ping".to_vec()));
        agent.write_all(&[frame(b"po"), frame(b"ng"), frame(b"")].concat()).await.expect("answer");
        done.await.expect("splice").expect("splice ok");
        assert_eq!(client.await.expect("client"), b"pong");
        let mut rest = Vec::new();
        agent.read_to_end(&mut rest).await.expect("closed");
        assert!(rest.is_empty(), "nothing after the client's end: {rest:?}");
    }

    /// The guest's end of output reaches the client while the client still sends: each
    /// direction ends on its own.
    #[tokio::test]
    async fn the_guests_end_reaches_the_client_while_it_still_sends() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (mut guest, mut agent) = tokio::net::UnixStream::pair().expect("pair");
        let relay = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.expect("accept");
            splice(&mut tcp, &mut guest, 7, LINGER).await
        });
        let mut client = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(agent.read_u16().await.expect("port"), 7);
        agent.write_all(&[&[PORT_FORWARD_CONNECTED][..], &frame(b"bye"), &frame(b"")].concat()).await.expect("answer");
        let mut answer = Vec::new();
        client.read_to_end(&mut answer).await.expect("the guest's end");
        assert_eq!(answer, b"bye");
        client.write_all(b"still sending").await.expect("write after the guest's end");
        client.shutdown().await.expect("shutdown");
        let got = frames(&mut agent).await;
        assert_eq!(got, b"still sending");
        relay.await.expect("relay").expect("relay ok");
    }

    /// A guest silent after the client's end is cut off as a failure (the client is then
    /// reset), not ended as if its answer were whole.
    #[tokio::test]
    async fn a_guest_silent_after_the_clients_end_is_a_failure() {
        let (mut tcp, _client) = client_sending(b"x").await;
        let (mut guest, mut agent) = tokio::net::UnixStream::pair().expect("pair");
        let done = tokio::spawn(async move { splice(&mut tcp, &mut guest, 9, Duration::from_millis(100)).await });
        assert_eq!(agent_reads(&mut agent).await, (9, b"x".to_vec()));
        agent.write_all(&frame(b"partial")).await.expect("a part of the answer");
        let e = done.await.expect("splice").expect_err("cut off");
        assert!(matches!(&e, Failure::Io(e) if e.kind() == io::ErrorKind::TimedOut), "{e:?}");
    }

    /// A refusal arrives as an error carrying the agent's reason.
    #[tokio::test]
    async fn a_refusal_is_an_error_with_the_reason() {
        let (mut guest, mut agent) = tokio::net::UnixStream::pair().expect("pair");
        agent.write_all(&[1]).await.expect("status: refused");
        agent.write_all(b"PortForwardRequest is blocked by policy").await.expect("reason");
        drop(agent);
        let e = answer(&mut guest).await.expect_err("refused");
        assert!(matches!(&e, Failure::Refused(r) if r == "PortForwardRequest is blocked by policy"), "{e:?}");
    }
}
