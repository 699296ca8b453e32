//! The pod's network inside the VM: kata's `UpdateInterface`, `UpdateRoutes`,
//! `ListInterfaces`, `ListRoutes` and `AddARPNeighbors` over netlink, in the VM's own network
//! namespace (every container of the pod shares it, see [`crate::spec`]).
//!
//! A NIC is found by its MAC (the host gives each virtio-net device the MAC of the pod's
//! veth), renamed to the name the host asks for, given its MTU and addresses, and raised.
//! Routes are added in dependency order: those without a gateway first, so that a gateway
//! is reachable when its route goes in. Routes the kernel makes itself for an address are
//! not sent by the host; an identical route is replaced, not refused.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use contrast_agent_protocol::{agent, types};
use contrast_netlink::{Link, Neighbour, Netlink, Route, MAIN_TABLE, NEIGHBOUR_PERMANENT, PROTOCOL_BOOT};

use crate::error::Error;

/// How long a NIC named by the host may take to appear (its driver probes at boot).
const NIC_WAIT: Duration = Duration::from_secs(5);
const NIC_POLL: Duration = Duration::from_millis(20);

fn netlink() -> Result<Netlink, Error> {
    Netlink::open().map_err(|e| Error::Internal(format!("netlink socket: {e}")))
}

fn internal(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Internal(format!("{what}: {e}"))
}

/// Raises `lo` (the kernel leaves it down).
pub fn loopback_up() -> Result<(), Error> {
    let mut nl = netlink()?;
    let lo = nl.link_by_name("lo").map_err(internal("lo"))?;
    nl.set_link(lo.index, None, None, Some(true)).map_err(internal("raising lo"))
}

fn parse_ip(text: &str, what: &str) -> Result<IpAddr, Error> {
    text.parse().map_err(|_| Error::InvalidArgument(format!("{what} {text:?} is not an IP address")))
}

fn parse_prefix(text: &str, ip: IpAddr) -> Result<u8, Error> {
    let max = if ip.is_ipv4() { 32 } else { 128 };
    match text.parse::<u8>() {
        Ok(p) if p <= max => Ok(p),
        _ => Err(Error::InvalidArgument(format!("prefix length {text:?} of {ip} is not 0..={max}"))),
    }
}

fn family(ip: IpAddr) -> types::IPFamily {
    if ip.is_ipv4() {
        types::IPFamily::v4
    } else {
        types::IPFamily::v6
    }
}

/// Configures the NIC with `hwAddr`: name, MTU, addresses, up. Answers the interface as it is
/// afterwards.
pub fn update_interface(req: &agent::UpdateInterfaceRequest) -> Result<types::Interface, Error> {
    let Some(want) = req.interface.as_ref() else {
        return Err(Error::InvalidArgument("UpdateInterface without an interface".into()));
    };
    let mac = contrast_netlink::parse_mac(&want.hwAddr)
        .ok_or_else(|| Error::InvalidArgument(format!("interface hwAddr {:?} is not a MAC address", want.hwAddr)))?;
    // A NIC has a unicast address; all zeros is the loopback's (`lo` must not be renamed,
    // readdressed or routed through under another name), a group address no NIC's.
    if mac == [0; 6] || mac[0] & 1 == 1 {
        return Err(Error::InvalidArgument(format!(
            "interface hwAddr {:?} is not a NIC's unicast address (all zeros is the loopback's)",
            want.hwAddr
        )));
    }
    let name = if want.name.is_empty() { want.device.as_str() } else { want.name.as_str() };
    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) || name == "." || name == ".." {
        return Err(Error::InvalidArgument(format!("interface name {name:?} is not a valid Linux interface name")));
    }
    let mtu = u32::try_from(want.mtu)
        .ok()
        .filter(|m| (68..=65535).contains(m))
        .ok_or_else(|| Error::InvalidArgument(format!("interface MTU {} is not 68..=65535", want.mtu)))?;
    let mut addresses = Vec::new();
    for a in &want.IPAddresses {
        let ip = parse_ip(&a.address, "interface address")?;
        addresses.push((ip, parse_prefix(&a.mask, ip)?));
    }
    let mut nl = netlink()?;
    let link = wait_for_mac(&mut nl, &mac)?;
    if link.name != name {
        // A link is renamed only while down.
        nl.set_link(link.index, None, None, Some(false)).map_err(internal("setting the NIC down"))?;
        nl.set_link(link.index, Some(name), None, None)
            .map_err(internal(&format!("renaming {} to {name}", link.name)))?;
    }
    nl.set_link(link.index, None, Some(mtu), None).map_err(internal(&format!("MTU {mtu} on {name}")))?;
    for (ip, prefix) in &addresses {
        nl.add_address(link.index, *ip, *prefix).map_err(internal(&format!("address {ip}/{prefix} on {name}")))?;
    }
    nl.set_link(link.index, None, None, Some(true)).map_err(internal(&format!("raising {name}")))?;
    crate::log!("interface {name} ({}) up, mtu {mtu}, {} address(es)", want.hwAddr, addresses.len());
    let now = nl.links().map_err(internal("listing links"))?;
    let link =
        now.into_iter().find(|l| l.index == link.index).ok_or_else(|| Error::Internal(format!("{name} vanished")))?;
    let all = nl.addresses().map_err(internal("listing addresses"))?;
    Ok(interface_of(&link, &all))
}

fn wait_for_mac(nl: &mut Netlink, mac: &[u8; 6]) -> Result<Link, Error> {
    let deadline = Instant::now() + NIC_WAIT;
    loop {
        let links = nl.links().map_err(internal("listing links"))?;
        if let Some(l) = links.into_iter().find(|l| l.mac == mac) {
            return Ok(l);
        }
        if Instant::now() > deadline {
            return Err(Error::NotFound(format!(
                "network interface with MAC {} (the VM has no such NIC)",
                contrast_netlink::format_mac(mac)
            )));
        }
        std::thread::sleep(NIC_POLL);
    }
}

fn interface_of(link: &Link, addresses: &[contrast_netlink::Address]) -> types::Interface {
    let mut i = types::Interface::new();
    i.device = link.name.clone();
    i.name = link.name.clone();
    i.mtu = u64::from(link.mtu);
    i.hwAddr = contrast_netlink::format_mac(&link.mac);
    i.type_ = link.kind.clone().unwrap_or_default();
    i.IPAddresses = addresses
        .iter()
        .filter(|a| a.index == link.index)
        .map(|a| {
            let mut x = types::IPAddress::new();
            x.family = family(a.ip).into();
            x.address = a.ip.to_string();
            x.mask = a.prefix_len.to_string();
            x
        })
        .collect();
    i
}

pub fn list_interfaces() -> Result<agent::Interfaces, Error> {
    let mut nl = netlink()?;
    let links = nl.links().map_err(internal("listing links"))?;
    let addresses = nl.addresses().map_err(internal("listing addresses"))?;
    let mut out = agent::Interfaces::new();
    out.Interfaces = links.iter().map(|l| interface_of(l, &addresses)).collect();
    Ok(out)
}

fn index_of(links: &[Link], name: &str, what: &str) -> Result<u32, Error> {
    links
        .iter()
        .find(|l| l.name == name)
        .map(|l| l.index)
        .ok_or_else(|| Error::InvalidArgument(format!("{what}: no interface {name:?} in the VM")))
}

/// Adds the routes (replacing identical ones) and answers the main table afterwards.
pub fn update_routes(req: &agent::UpdateRoutesRequest) -> Result<agent::Routes, Error> {
    let mut nl = netlink()?;
    let links = nl.links().map_err(internal("listing links"))?;
    let wanted = req.routes.as_ref().map(|r| r.Routes.as_slice()).unwrap_or_default();
    let mut routes = Vec::new();
    for r in wanted {
        let what = format!("route {:?}", if r.dest.is_empty() { "default" } else { r.dest.as_str() });
        let destination = if r.dest.is_empty() || r.dest == "default" {
            None
        } else {
            let (ip, prefix) = r.dest.split_once('/').unwrap_or((r.dest.as_str(), ""));
            let ip = parse_ip(ip, &what)?;
            let prefix = if prefix.is_empty() {
                if ip.is_ipv4() {
                    32
                } else {
                    128
                }
            } else {
                parse_prefix(prefix, ip)?
            };
            Some((ip, prefix))
        };
        let gateway = (!r.gateway.is_empty()).then(|| parse_ip(&r.gateway, &what)).transpose()?;
        let source = (!r.source.is_empty()).then(|| parse_ip(&r.source, &what)).transpose()?;
        let device = (!r.device.is_empty()).then(|| index_of(&links, &r.device, &what)).transpose()?;
        let ipv6 = r.family.enum_value_or_default() == types::IPFamily::v6
            || destination.is_some_and(|(ip, _)| ip.is_ipv6())
            || gateway.is_some_and(|ip| ip.is_ipv6());
        let scope = u8::try_from(r.scope).map_err(|_| Error::InvalidArgument(format!("{what}: scope {}", r.scope)))?;
        routes.push(Route {
            ipv6,
            destination,
            gateway,
            device,
            source,
            scope,
            protocol: PROTOCOL_BOOT,
            table: MAIN_TABLE,
        });
    }
    // A gateway must be reachable before a route through it goes in.
    routes.sort_by_key(|r| r.gateway.is_some());
    for r in &routes {
        nl.add_route(r).map_err(|e| Error::Internal(format!("adding {}: {e}", describe(r, &links))))?;
    }
    if !routes.is_empty() {
        crate::log!("{} route(s) added", routes.len());
    }
    list_routes_with(&mut nl)
}

fn describe(r: &Route, links: &[Link]) -> String {
    let dest = r.destination.map_or("default".to_owned(), |(ip, p)| format!("{ip}/{p}"));
    let via = r.gateway.map(|g| format!(" via {g}")).unwrap_or_default();
    let dev = r
        .device
        .and_then(|d| links.iter().find(|l| l.index == d))
        .map(|l| format!(" dev {}", l.name))
        .unwrap_or_default();
    format!("route {dest}{via}{dev}")
}

pub fn list_routes() -> Result<agent::Routes, Error> {
    let mut nl = netlink()?;
    list_routes_with(&mut nl)
}

fn list_routes_with(nl: &mut Netlink) -> Result<agent::Routes, Error> {
    let links = nl.links().map_err(internal("listing links"))?;
    let mut out = agent::Routes::new();
    for r in nl.routes().map_err(internal("listing routes"))? {
        if r.table != MAIN_TABLE {
            continue;
        }
        let mut x = types::Route::new();
        x.dest = r.destination.map(|(ip, p)| format!("{ip}/{p}")).unwrap_or_default();
        x.gateway = r.gateway.map(|g| g.to_string()).unwrap_or_default();
        x.device =
            r.device.and_then(|d| links.iter().find(|l| l.index == d)).map(|l| l.name.clone()).unwrap_or_default();
        x.source = r.source.map(|s| s.to_string()).unwrap_or_default();
        x.scope = u32::from(r.scope);
        x.family = if r.ipv6 { types::IPFamily::v6 } else { types::IPFamily::v4 }.into();
        out.Routes.push(x);
    }
    Ok(out)
}

/// Adds the neighbours (permanent unless the request says otherwise).
pub fn add_arp_neighbors(req: &agent::AddARPNeighborsRequest) -> Result<(), Error> {
    let mut nl = netlink()?;
    let links = nl.links().map_err(internal("listing links"))?;
    let wanted = req.neighbors.as_ref().map(|n| n.ARPNeighbors.as_slice()).unwrap_or_default();
    for n in wanted {
        let Some(to) = n.toIPAddress.as_ref() else {
            return Err(Error::InvalidArgument("ARP neighbour without an address".into()));
        };
        let ip = parse_ip(&to.address, "ARP neighbour")?;
        let mac = contrast_netlink::parse_mac(&n.lladdr)
            .ok_or_else(|| Error::InvalidArgument(format!("ARP neighbour {ip}: lladdr {:?} is not a MAC", n.lladdr)))?;
        let index = index_of(&links, &n.device, &format!("ARP neighbour {ip}"))?;
        let state = u16::try_from(n.state).ok().filter(|s| *s != 0).unwrap_or(NEIGHBOUR_PERMANENT);
        nl.add_neighbour(&Neighbour { index, ip, mac: mac.to_vec(), state })
            .map_err(|e| Error::Internal(format!("adding ARP neighbour {ip} on {}: {e}", n.device)))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_interfaces_are_refused_before_netlink_is_touched() {
        let mut req = agent::UpdateInterfaceRequest::new();
        let mut i = types::Interface::new();
        i.name = "eth0".into();
        i.mtu = 1500;
        i.hwAddr = "not-a-mac".into();
        req.interface = Some(i.clone()).into();
        assert!(matches!(update_interface(&req), Err(Error::InvalidArgument(m)) if m.contains("not a MAC")));
        // The loopback's address (it would rename `lo`, and a route through it would pass a
        // policy's "not through lo"), and a group address.
        for not_a_nic in ["00:00:00:00:00:00", "01:00:5e:00:00:01", "ff:ff:ff:ff:ff:ff"] {
            i.hwAddr = not_a_nic.into();
            req.interface = Some(i.clone()).into();
            assert!(
                matches!(update_interface(&req), Err(Error::InvalidArgument(m)) if m.contains("unicast")),
                "{not_a_nic}"
            );
        }
        i.hwAddr = "0a:58:0a:58:00:05".into();
        i.mtu = 10;
        req.interface = Some(i.clone()).into();
        assert!(matches!(update_interface(&req), Err(Error::InvalidArgument(m)) if m.contains("MTU 10")));
        i.mtu = 1500;
        i.name = "a/b".into();
        req.interface = Some(i.clone()).into();
        assert!(matches!(update_interface(&req), Err(Error::InvalidArgument(m)) if m.contains("interface name")));
        i.name = "eth0".into();
        let mut a = types::IPAddress::new();
        a.address = "10.88.0.5".into();
        a.mask = "33".into();
        i.IPAddresses = vec![a];
        req.interface = Some(i).into();
        assert!(matches!(update_interface(&req), Err(Error::InvalidArgument(m)) if m.contains("prefix length \"33\"")));
        assert!(matches!(update_interface(&agent::UpdateInterfaceRequest::new()), Err(Error::InvalidArgument(_))));
    }
}
