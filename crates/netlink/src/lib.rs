//! A blocking rtnetlink (`NETLINK_ROUTE`) client with the few operations a pod's network needs,
//! shared by the shim (host side: the CNI netns, taps, tc redirects) and the guest agent
//! (the VM's NICs, routes and neighbours).
//!
//! A [`Netlink`] socket works in the network namespace of the thread that opened it; callers
//! that enter another namespace do it on a thread of their own before [`Netlink::open`].
//! Errors are `std::io::Error`s: the kernel's errno for a refused request, `InvalidData` for a
//! message that does not parse.

use std::io;
use std::net::IpAddr;

use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REPLACE,
    NLM_F_REQUEST,
};
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope, RouteType};
use netlink_packet_route::tc::{TcHandle, TcMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

mod tc;

pub use tc::RedirectFilter;

/// The main routing table (`RT_TABLE_MAIN`).
pub const MAIN_TABLE: u32 = 254;

/// A network interface as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    /// Hardware address (6 bytes for Ethernet); empty when the link has none.
    pub mac: Vec<u8>,
    pub mtu: u32,
    /// `IFLA_INFO_KIND` (`veth`, `tun`, `bridge`, ...), when the link has one.
    pub kind: Option<String>,
    pub up: bool,
    pub loopback: bool,
}

/// An interface address with its prefix length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub index: u32,
    pub ip: IpAddr,
    pub prefix_len: u8,
    /// `RT_SCOPE_*` (0 universe, 253 link, 254 host).
    pub scope: u8,
}

/// A route of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub ipv6: bool,
    /// Destination and prefix length; `None` is the default route.
    pub destination: Option<(IpAddr, u8)>,
    pub gateway: Option<IpAddr>,
    /// Output interface index.
    pub device: Option<u32>,
    /// Preferred source address.
    pub source: Option<IpAddr>,
    /// `RT_SCOPE_*`.
    pub scope: u8,
    /// `RTPROT_*` (2 kernel: made by the kernel for an address; 3 boot; 4 static).
    pub protocol: u8,
    pub table: u32,
}

/// `RTPROT_KERNEL`: a route the kernel made for an interface address.
pub const PROTOCOL_KERNEL: u8 = 2;
/// `RTPROT_BOOT`: what `ip route add` sets, and what we set.
pub const PROTOCOL_BOOT: u8 = 3;
/// `NUD_PERMANENT`.
pub const NEIGHBOUR_PERMANENT: u16 = 0x80;

/// A neighbour (ARP / NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub index: u32,
    pub ip: IpAddr,
    pub mac: Vec<u8>,
    /// `NUD_*`.
    pub state: u16,
}

/// One rtnetlink socket in the network namespace of the thread that opened it.
pub struct Netlink {
    socket: Socket,
    seq: u32,
    buf: Vec<u8>,
}

fn invalid(what: impl std::fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("netlink: {what}"))
}

impl Netlink {
    pub fn open() -> io::Result<Netlink> {
        let mut socket = Socket::new(NETLINK_ROUTE)?;
        socket.bind_auto()?;
        socket.connect(&SocketAddr::new(0, 0))?;
        Ok(Netlink { socket, seq: 0, buf: vec![0; 64 * 1024] })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = NLM_F_REQUEST | flags;
        header.sequence_number = self.seq;
        let mut packet = NetlinkMessage::new(header, NetlinkPayload::from(msg));
        packet.finalize();
        let mut out = vec![0; packet.buffer_len()];
        packet.serialize(&mut out);
        self.socket.send(&out, 0)?;
        Ok(self.seq)
    }

    /// Reads the answers to request `seq` until its ack, error or end of dump.
    fn receive(&mut self, seq: u32, mut each: impl FnMut(RouteNetlinkMessage)) -> io::Result<()> {
        loop {
            let n = self.socket.recv(&mut &mut self.buf[..], 0)?;
            let mut offset = 0;
            while offset < n {
                let packet = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&self.buf[offset..n])
                    .map_err(|e| invalid(format!("reply does not parse: {e}")))?;
                let len = packet.header.length as usize;
                if len == 0 {
                    return Err(invalid("zero-length message"));
                }
                offset += len;
                if packet.header.sequence_number != seq {
                    continue;
                }
                match packet.payload {
                    NetlinkPayload::InnerMessage(m) => each(m),
                    NetlinkPayload::Done(_) => return Ok(()),
                    NetlinkPayload::Error(e) => {
                        return match e.code {
                            None => Ok(()),
                            Some(code) => Err(io::Error::from_raw_os_error(-code.get())),
                        }
                    }
                    NetlinkPayload::Overrun(_) => return Err(invalid("receive buffer overrun")),
                    _ => {}
                }
            }
        }
    }

    /// Sends a request and waits for the kernel's ack.
    pub fn execute(&mut self, msg: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
        let seq = self.send(msg, flags | NLM_F_ACK)?;
        self.receive(seq, |_| {})
    }

    /// Sends a dump request and collects the answers.
    pub fn dump(&mut self, msg: RouteNetlinkMessage) -> io::Result<Vec<RouteNetlinkMessage>> {
        let seq = self.send(msg, NLM_F_DUMP)?;
        let mut out = Vec::new();
        self.receive(seq, |m| out.push(m))?;
        Ok(out)
    }

    pub fn links(&mut self) -> io::Result<Vec<Link>> {
        let answers = self.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()))?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_of(&l)),
                _ => None,
            })
            .collect())
    }

    pub fn link_by_name(&mut self, name: &str) -> io::Result<Link> {
        self.links()?
            .into_iter()
            .find(|l| l.name == name)
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, format!("no network interface {name:?}")))
    }

    /// Renames, resizes and raises or downs link `index` (each only when given).
    pub fn set_link(&mut self, index: u32, name: Option<&str>, mtu: Option<u32>, up: Option<bool>) -> io::Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        if let Some(up) = up {
            msg.header.change_mask = LinkFlags::Up;
            msg.header.flags = if up { LinkFlags::Up } else { LinkFlags::empty() };
        }
        if let Some(name) = name {
            msg.attributes.push(LinkAttribute::IfName(name.to_owned()));
        }
        if let Some(mtu) = mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        self.execute(RouteNetlinkMessage::SetLink(msg), 0)
    }

    pub fn addresses(&mut self) -> io::Result<Vec<Address>> {
        let answers = self.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()))?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewAddress(a) => address_of(&a),
                _ => None,
            })
            .collect())
    }

    /// Adds `ip/prefix_len` to link `index` (an existing identical address is kept).
    pub fn add_address(&mut self, index: u32, ip: IpAddr, prefix_len: u8) -> io::Result<()> {
        let mut msg = AddressMessage::default();
        msg.header.family = family(ip);
        msg.header.prefix_len = prefix_len;
        msg.header.index = index;
        msg.attributes.push(AddressAttribute::Local(ip));
        msg.attributes.push(AddressAttribute::Address(ip));
        if let IpAddr::V4(v4) = ip {
            if prefix_len < 31 {
                let host_bits = 32 - u32::from(prefix_len);
                let broadcast = u32::from(v4) | ((1u32 << host_bits) - 1);
                msg.attributes.push(AddressAttribute::Broadcast(broadcast.into()));
            }
        }
        self.execute(RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_REPLACE)
    }

    /// The routes of all tables, both families.
    pub fn routes(&mut self) -> io::Result<Vec<Route>> {
        let mut out = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let mut msg = RouteMessage::default();
            msg.header.address_family = family;
            for m in self.dump(RouteNetlinkMessage::GetRoute(msg))? {
                if let RouteNetlinkMessage::NewRoute(r) = m {
                    out.push(route_of(&r));
                }
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) a unicast route.
    pub fn add_route(&mut self, route: &Route) -> io::Result<()> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = if route.ipv6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
        msg.header.table = if route.table < 256 {
            route.table as u8
        } else {
            252 /* RT_TABLE_COMPAT */
        };
        msg.header.protocol = RouteProtocol::from(route.protocol);
        msg.header.scope = RouteScope::from(route.scope);
        msg.header.kind = RouteType::Unicast;
        msg.attributes.push(RouteAttribute::Table(route.table));
        if let Some((dest, len)) = route.destination {
            msg.header.destination_prefix_length = len;
            msg.attributes.push(RouteAttribute::Destination(route_address(dest)));
        }
        if let Some(gw) = route.gateway {
            msg.attributes.push(RouteAttribute::Gateway(route_address(gw)));
        }
        if let Some(src) = route.source {
            msg.attributes.push(RouteAttribute::PrefSource(route_address(src)));
        }
        if let Some(dev) = route.device {
            msg.attributes.push(RouteAttribute::Oif(dev));
        }
        self.execute(RouteNetlinkMessage::NewRoute(msg), NLM_F_CREATE | NLM_F_REPLACE)
    }

    pub fn neighbours(&mut self) -> io::Result<Vec<Neighbour>> {
        let mut out = Vec::new();
        for m in self.dump(RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default()))? {
            if let RouteNetlinkMessage::NewNeighbour(n) = m {
                if let Some(n) = neighbour_of(&n) {
                    out.push(n);
                }
            }
        }
        Ok(out)
    }

    /// Adds (or replaces) a neighbour entry.
    pub fn add_neighbour(&mut self, n: &Neighbour) -> io::Result<()> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = family(n.ip);
        msg.header.ifindex = n.index;
        msg.header.state = NeighbourState::from(n.state);
        msg.attributes.push(NeighbourAttribute::Destination(match n.ip {
            IpAddr::V4(a) => NeighbourAddress::Inet(a),
            IpAddr::V6(a) => NeighbourAddress::Inet6(a),
        }));
        msg.attributes.push(NeighbourAttribute::LinkLayerAddress(n.mac.clone()));
        self.execute(RouteNetlinkMessage::NewNeighbour(msg), NLM_F_CREATE | NLM_F_REPLACE)
    }

    /// Adds an `ingress` qdisc to link `index` (fails with `EEXIST` when it has one).
    pub fn add_ingress_qdisc(&mut self, index: u32) -> io::Result<()> {
        self.execute(RouteNetlinkMessage::NewQueueDiscipline(tc::ingress_qdisc(index)), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// Removes link `index`'s `ingress` qdisc and with it every filter under it.
    pub fn delete_ingress_qdisc(&mut self, index: u32) -> io::Result<()> {
        self.execute(RouteNetlinkMessage::DelQueueDiscipline(tc::ingress_qdisc(index)), 0)
    }

    /// Redirects every frame arriving on `filter.from` to the egress of `filter.to`
    /// (`tc filter add dev FROM parent ffff: protocol all u32 match u8 0 0 action mirred
    /// egress redirect dev TO`). `filter.from` needs an ingress qdisc.
    pub fn add_redirect(&mut self, filter: RedirectFilter) -> io::Result<()> {
        self.execute(RouteNetlinkMessage::NewTrafficFilter(tc::redirect(filter)), NLM_F_CREATE | NLM_F_EXCL)
    }

    /// The filters under link `index`'s ingress qdisc, as (kind, redirect target) pairs.
    pub fn ingress_filters(&mut self, index: u32) -> io::Result<Vec<(String, Option<u32>)>> {
        let mut msg = TcMessage::with_index(index as i32);
        msg.header.parent = TcHandle::INGRESS;
        let answers = self.dump(RouteNetlinkMessage::GetTrafficFilter(msg))?;
        Ok(answers
            .into_iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewTrafficFilter(f) => Some(tc::describe(&f)),
                _ => None,
            })
            .filter(|(kind, _)| !kind.is_empty())
            .collect())
    }
}

fn family(ip: IpAddr) -> AddressFamily {
    match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    }
}

fn route_address(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn ip_of(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(a) => Some(IpAddr::V4(*a)),
        RouteAddress::Inet6(a) => Some(IpAddr::V6(*a)),
        _ => None,
    }
}

fn link_of(l: &LinkMessage) -> Link {
    let mut link = Link {
        index: l.header.index,
        name: String::new(),
        mac: Vec::new(),
        mtu: 0,
        kind: None,
        up: l.header.flags.contains(LinkFlags::Up),
        loopback: l.header.flags.contains(LinkFlags::Loopback),
    };
    for a in &l.attributes {
        match a {
            LinkAttribute::IfName(n) => link.name.clone_from(n),
            LinkAttribute::Address(m) => link.mac.clone_from(m),
            LinkAttribute::Mtu(m) => link.mtu = *m,
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let LinkInfo::Kind(k) = i {
                        link.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn address_of(a: &AddressMessage) -> Option<Address> {
    // IFA_LOCAL is the interface's own address (IFA_ADDRESS is the peer's on point-to-point links).
    let local = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Local(ip) => Some(*ip),
        _ => None,
    });
    let address = a.attributes.iter().find_map(|x| match x {
        AddressAttribute::Address(ip) => Some(*ip),
        _ => None,
    });
    Some(Address {
        index: a.header.index,
        ip: local.or(address)?,
        prefix_len: a.header.prefix_len,
        scope: a.header.scope.into(),
    })
}

fn route_of(r: &RouteMessage) -> Route {
    let mut route = Route {
        ipv6: r.header.address_family == AddressFamily::Inet6,
        destination: None,
        gateway: None,
        device: None,
        source: None,
        scope: r.header.scope.into(),
        protocol: r.header.protocol.into(),
        table: u32::from(r.header.table),
    };
    for a in &r.attributes {
        match a {
            RouteAttribute::Destination(d) => {
                route.destination = ip_of(d).map(|ip| (ip, r.header.destination_prefix_length));
            }
            RouteAttribute::Gateway(g) => route.gateway = ip_of(g),
            RouteAttribute::PrefSource(s) => route.source = ip_of(s),
            RouteAttribute::Oif(i) => route.device = Some(*i),
            RouteAttribute::Table(t) => route.table = *t,
            _ => {}
        }
    }
    route
}

fn neighbour_of(n: &NeighbourMessage) -> Option<Neighbour> {
    let ip = n.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        _ => None,
    })?;
    let mac = n
        .attributes
        .iter()
        .find_map(|a| match a {
            NeighbourAttribute::LinkLayerAddress(m) => Some(m.clone()),
            _ => None,
        })
        .unwrap_or_default();
    Some(Neighbour { index: n.header.ifindex, ip, mac, state: n.header.state.into() })
}

/// `aa:bb:cc:dd:ee:ff` of a hardware address.
pub fn format_mac(mac: &[u8]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff` (case-insensitive).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut out {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *byte = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_round_trip_and_bad_ones_are_refused() {
        let mac = parse_mac("0A:58:0a:58:00:05").expect("parses");
        assert_eq!(mac, [0x0a, 0x58, 0x0a, 0x58, 0x00, 0x05]);
        assert_eq!(format_mac(&mac), "0a:58:0a:58:00:05");
        for bad in ["", "0a:58:0a:58:00", "0a:58:0a:58:00:05:06", "0a:58:0a:58:00:5", "0a:58:0a:58:00:zz"] {
            assert_eq!(parse_mac(bad), None, "{bad:?}");
        }
    }
}
