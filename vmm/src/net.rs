//! A pod's network on the host: the CNI network namespace's interfaces, each joined to a tap
//! that QEMU's virtio-net uses, by tc redirects both ways (kata's "tcfilter" model).
//!
//! For every interface CNI put into the pod's network namespace (a veth, usually `eth0`):
//! a tap `tap<N>_contrast` in the same namespace with the veth's MTU, an `ingress` qdisc on
//! both, and a `u32` match-all filter with a `mirred` egress redirect from each to the other.
//! The guest NIC gets the veth's MAC (the bridge and its neighbours know the pod by it), and
//! the agent gets the veth's addresses, routes and permanent neighbours. The veth itself keeps
//! its addresses: they are what CNI and containerd report as the pod IP.
//!
//! The taps are not persistent: they vanish when the last fd (QEMU's) closes, so a dead QEMU
//! leaves none. [`PodNetwork::detach`] removes the qdiscs (and their filters) from the veths.
//! Namespace work runs on a thread of its own (`setns` changes only the calling thread).

use std::fs::File;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use contrast_netlink::{
    Link, Neighbour, Netlink, RedirectFilter, Route, MAIN_TABLE, NEIGHBOUR_PERMANENT, PROTOCOL_KERNEL,
};

/// Linux `IFNAMSIZ` without the NUL.
const MAX_IFNAME: usize = 15;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
/// Frames carry a virtio-net header: QEMU passes offloads (checksum, GSO) through.
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// `TUNSETIFF` = `_IOW('T', 202, int)` (linux/if_tun.h).
const TUNSETIFF: libc::c_ulong = 0x4004_54ca;

#[derive(Debug, thiserror::Error)]
#[error("pod network namespace {}: {problem}", netns.display())]
pub struct Error {
    pub netns: PathBuf,
    pub problem: String,
}

/// One pod interface and the tap that carries it into the VM.
#[derive(Debug)]
pub struct PodInterface {
    /// The interface's name in the pod's namespace (CNI's `eth0`): the guest NIC's name too.
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    pub addresses: Vec<(IpAddr, u8)>,
    pub veth_index: u32,
    pub tap_name: String,
    pub tap_index: u32,
    /// Open until QEMU has its own copy (see [`PodNetwork::take_tap_fds`]).
    tap: Option<OwnedFd>,
}

/// What the pod's network namespace held, as the guest is to be configured.
#[derive(Debug)]
pub struct PodNetwork {
    pub netns: PathBuf,
    pub interfaces: Vec<PodInterface>,
    /// Routes of the main table through the pod's interfaces, without the kernel's own
    /// (the guest's kernel makes those when the addresses are set).
    pub routes: Vec<Route>,
    /// Permanent neighbours on the pod's interfaces.
    pub neighbours: Vec<Neighbour>,
}

impl PodNetwork {
    /// Creates a tap per pod interface in `netns` and joins each to its interface. On error
    /// nothing stays behind.
    pub async fn attach(netns: &Path) -> Result<PodNetwork, Error> {
        let path = netns.to_owned();
        let err = |problem: String| Error { netns: path.clone(), problem };
        let (interfaces, routes, neighbours) = in_netns(netns, attach_in).await.map_err(|e| err(e.to_string()))?;
        Ok(PodNetwork { netns: netns.to_owned(), interfaces, routes, neighbours })
    }

    /// The tap fds, in interface order, for QEMU to inherit; the caller drops them once QEMU
    /// has started (from then on QEMU's copy keeps each tap alive).
    pub fn take_tap_fds(&mut self) -> Vec<OwnedFd> {
        self.interfaces.iter_mut().filter_map(|i| i.tap.take()).collect()
    }

    /// Removes the redirects from the pod's interfaces (the taps go with QEMU's fds). A
    /// namespace or interface that is already gone counts as done.
    pub async fn detach(&self) {
        let (netns, indexes) = self.detach_work();
        let result = in_netns(&netns, move |nl| remove_redirects(nl, &indexes)).await;
        self.report(result);
    }

    /// [`PodNetwork::detach`] for a caller that cannot await (a drop).
    pub fn detach_blocking(&self) {
        let (netns, indexes) = self.detach_work();
        let result = in_netns_blocking(&netns, move |nl| remove_redirects(nl, &indexes));
        self.report(result);
    }

    fn detach_work(&self) -> (PathBuf, Vec<u32>) {
        (self.netns.clone(), self.interfaces.iter().flat_map(|i| [i.veth_index, i.tap_index]).collect())
    }

    fn report(&self, result: io::Result<()>) {
        match result {
            Ok(()) => {}
            // The namespace is gone (containerd removed it): so is everything in it.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(netns = %self.netns.display(), error = %e, "removing the pod's tc redirects"),
        }
    }
}

fn remove_redirects(nl: &mut Netlink, indexes: &[u32]) -> io::Result<()> {
    for index in indexes {
        match nl.delete_ingress_qdisc(*index) {
            Ok(()) => {}
            // ENODEV: the link is gone; EINVAL/ENOENT: it has no ingress qdisc.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENODEV | libc::EINVAL | libc::ENOENT)) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

type Attached = (Vec<PodInterface>, Vec<Route>, Vec<Neighbour>);

fn attach_in(nl: &mut Netlink) -> io::Result<Attached> {
    let links = nl.links()?;
    let addresses = nl.addresses()?;
    let pod_links: Vec<&Link> =
        links.iter().filter(|l| !l.loopback && l.kind.as_deref() != Some("tun") && l.mac.len() == 6).collect();
    // Read before anything is attached, so a failure leaves the namespace as it was.
    let indexes: Vec<u32> = pod_links.iter().map(|l| l.index).collect();
    let routes = nl
        .routes()?
        .into_iter()
        .filter(|r| r.table == MAIN_TABLE && r.protocol != PROTOCOL_KERNEL)
        .filter(|r| r.device.is_some_and(|d| indexes.contains(&d)))
        .collect();
    let neighbours = nl
        .neighbours()?
        .into_iter()
        .filter(|n| n.state & NEIGHBOUR_PERMANENT != 0 && indexes.contains(&n.index))
        .collect();
    let mut interfaces: Vec<PodInterface> = Vec::new();
    let result = (|| {
        for (n, link) in pod_links.iter().enumerate() {
            let tap_name = format!("tap{n}_contrast");
            let fd = open_tap(&tap_name)?;
            let tap = nl.link_by_name(&tap_name)?;
            let mut mac = [0u8; 6];
            mac.copy_from_slice(&link.mac);
            interfaces.push(PodInterface {
                name: link.name.clone(),
                mac,
                mtu: link.mtu,
                addresses: addresses
                    .iter()
                    // Global addresses only: the guest makes its own link-local ones (same MAC).
                    .filter(|a| a.index == link.index && a.scope == 0)
                    .map(|a| (a.ip, a.prefix_len))
                    .collect(),
                veth_index: link.index,
                tap_name,
                tap_index: tap.index,
                tap: Some(fd),
            });
            nl.set_link(tap.index, None, Some(link.mtu), Some(true))?;
            for index in [link.index, tap.index] {
                nl.add_ingress_qdisc(index)?;
            }
            nl.add_redirect(RedirectFilter { from: link.index, to: tap.index })?;
            nl.add_redirect(RedirectFilter { from: tap.index, to: link.index })?;
        }
        Ok(())
    })();
    if let Err(e) = result {
        for i in &interfaces {
            let _ = nl.delete_ingress_qdisc(i.veth_index);
        }
        return Err(e);
    }
    Ok((interfaces, routes, neighbours))
}

/// `/dev/vhost-net` for one NIC, when the host has it (these development machines do not).
pub fn open_vhost_net() -> Option<OwnedFd> {
    let file = std::fs::OpenOptions::new().read(true).write(true).open("/dev/vhost-net");
    match file {
        Ok(f) => Some(OwnedFd::from(f)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => {
            tracing::warn!(error = %e, "/dev/vhost-net exists but cannot be opened; userspace virtio-net");
            None
        }
    }
}

/// Opens a new non-persistent tap named `name` in the current thread's network namespace.
fn open_tap(name: &str) -> io::Result<OwnedFd> {
    if name.len() > MAX_IFNAME {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("interface name {name:?} too long")));
    }
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        _pad: [u8; 22],
    }
    let mut req = IfReq { name: [0; 16], flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR, _pad: [0; 22] };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: a NUL-terminated literal path; the returned fd is checked and then owned.
    let raw = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
    if raw < 0 {
        return Err(io::Error::other(format!("/dev/net/tun: {}", io::Error::last_os_error())));
    }
    // SAFETY: `raw` is a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: TUNSETIFF reads an `ifreq` (name + flags) that lives across the call.
    if unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF as _, &mut req) } < 0 {
        return Err(io::Error::other(format!("creating tap {name}: {}", io::Error::last_os_error())));
    }
    Ok(fd)
}

/// Runs `work` with a netlink socket inside the network namespace at `netns`, on a thread of
/// its own.
pub(crate) async fn in_netns<T, F>(netns: &Path, work: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut Netlink) -> io::Result<T> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    spawn_in_netns(netns, work, move |result| {
        let _ = tx.send(result);
    })?;
    rx.await.map_err(|_| io::Error::other("network namespace thread ended without an answer"))?
}

fn in_netns_blocking<T, F>(netns: &Path, work: F) -> io::Result<T>
where
    T: Send + 'static,
    F: FnOnce(&mut Netlink) -> io::Result<T> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    spawn_in_netns(netns, work, move |result| {
        let _ = tx.send(result);
    })?;
    rx.recv().map_err(|_| io::Error::other("network namespace thread ended without an answer"))?
}

fn spawn_in_netns<T, F, D>(netns: &Path, work: F, done: D) -> io::Result<()>
where
    T: Send + 'static,
    F: FnOnce(&mut Netlink) -> io::Result<T> + Send + 'static,
    D: FnOnce(io::Result<T>) + Send + 'static,
{
    let file = File::open(netns)?;
    std::thread::Builder::new().name("pod-netns".into()).spawn(move || {
        let result = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(io::Error::from)
            .and_then(|()| Netlink::open())
            .and_then(|mut nl| work(&mut nl));
        done(result);
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two taps in a namespace of this test's own: the redirect filters land on both ends and
    /// go with the qdiscs. (A veth needs a link-create message this crate does not send;
    /// the CRI tests cover veths.)
    #[tokio::test]
    async fn redirects_join_two_links_and_detach_removes_them() {
        if !nix::unistd::geteuid().is_root() {
            panic!("needs root (network namespaces)");
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let keeper = std::thread::spawn(move || {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).expect("unshare");
            tx.send(format!("/proc/self/task/{}/ns/net", nix::unistd::gettid())).expect("send");
            std::thread::park();
        });
        let netns = PathBuf::from(rx.recv().expect("netns path").replace("self", &std::process::id().to_string()));
        let (a, b, _taps) = in_netns(&netns, |nl| {
            let fa = open_tap("tapa")?;
            let fb = open_tap("tapb")?;
            let (a, b) = (nl.link_by_name("tapa")?.index, nl.link_by_name("tapb")?.index);
            for i in [a, b] {
                nl.add_ingress_qdisc(i)?;
            }
            nl.add_redirect(RedirectFilter { from: a, to: b })?;
            nl.add_redirect(RedirectFilter { from: b, to: a })?;
            // A u32 dump lists its hash table nodes too; only the key node carries the action.
            let targets = |nl: &mut Netlink, i| -> io::Result<Vec<u32>> {
                Ok(nl.ingress_filters(i)?.into_iter().filter_map(|(_, to)| to).collect())
            };
            assert_eq!(targets(nl, a)?, vec![b], "a redirects to b");
            assert_eq!(targets(nl, b)?, vec![a], "b redirects to a");
            Ok((a, b, (fa, fb)))
        })
        .await
        .expect("taps and redirects");
        let net = PodNetwork {
            netns: netns.clone(),
            interfaces: vec![PodInterface {
                name: "tapa".into(),
                mac: [0; 6],
                mtu: 1500,
                addresses: vec![],
                veth_index: a,
                tap_name: "tapb".into(),
                tap_index: b,
                tap: None,
            }],
            routes: vec![],
            neighbours: vec![],
        };
        net.detach().await;
        let left = in_netns(&netns, move |nl| Ok((nl.ingress_filters(a)?, nl.ingress_filters(b)?))).await;
        assert!(matches!(&left, Ok((x, y)) if x.is_empty() && y.is_empty()), "filters left: {left:?}");
        keeper.thread().unpark();
        keeper.join().expect("keeper");
    }
}
