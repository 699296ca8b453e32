//! Hands the pod's network to the guest: what the host found in the pod's network namespace
//! ([`contrast_vmm::net::PodNetwork`]) as kata's `UpdateInterface`, `UpdateRoutes` and
//! `AddARPNeighbors`, sent before `CreateSandbox` (as kata's runtime does), each judged by
//! the guest's policy.

use std::net::IpAddr;

use contrast_agent_protocol::{agent, types, AgentClient};
use contrast_vmm::net::PodNetwork;

use crate::error::ShimError;

fn family(ip: IpAddr) -> types::IPFamily {
    if ip.is_ipv4() {
        types::IPFamily::v4
    } else {
        types::IPFamily::v6
    }
}

fn ip_address(ip: IpAddr, prefix_len: u8) -> types::IPAddress {
    let mut a = types::IPAddress::new();
    a.family = family(ip).into();
    a.address = ip.to_string();
    a.mask = prefix_len.to_string();
    a
}

/// The agent requests for `network`, in the order they are sent.
pub fn requests(
    network: &PodNetwork,
) -> (Vec<agent::UpdateInterfaceRequest>, agent::UpdateRoutesRequest, agent::AddARPNeighborsRequest) {
    let name_of = |index: u32| {
        network.interfaces.iter().find(|i| i.veth_index == index).map(|i| i.name.clone()).unwrap_or_default()
    };
    let interfaces = network
        .interfaces
        .iter()
        .map(|i| {
            let mut iface = types::Interface::new();
            iface.device = i.name.clone();
            iface.name = i.name.clone();
            iface.mtu = u64::from(i.mtu);
            iface.hwAddr = contrast_netlink::format_mac(&i.mac);
            iface.IPAddresses = i.addresses.iter().map(|(ip, len)| ip_address(*ip, *len)).collect();
            let mut req = agent::UpdateInterfaceRequest::new();
            req.interface = Some(iface).into();
            req
        })
        .collect();
    let mut routes = agent::Routes::new();
    routes.Routes = network
        .routes
        .iter()
        .map(|r| {
            let mut x = types::Route::new();
            x.dest = r.destination.map(|(ip, len)| format!("{ip}/{len}")).unwrap_or_default();
            x.gateway = r.gateway.map(|g| g.to_string()).unwrap_or_default();
            x.source = r.source.map(|s| s.to_string()).unwrap_or_default();
            x.device = r.device.map(name_of).unwrap_or_default();
            x.scope = u32::from(r.scope);
            x.family = if r.ipv6 { types::IPFamily::v6 } else { types::IPFamily::v4 }.into();
            x
        })
        .collect();
    let mut update_routes = agent::UpdateRoutesRequest::new();
    update_routes.routes = Some(routes).into();
    let mut neighbours = agent::ARPNeighbors::new();
    neighbours.ARPNeighbors = network
        .neighbours
        .iter()
        .map(|n| {
            let mut x = types::ARPNeighbor::new();
            x.toIPAddress = Some(ip_address(n.ip, if n.ip.is_ipv4() { 32 } else { 128 })).into();
            x.device = name_of(n.index);
            x.lladdr = contrast_netlink::format_mac(&n.mac);
            x.state = i32::from(n.state);
            x
        })
        .collect();
    let mut add_neighbours = agent::AddARPNeighborsRequest::new();
    add_neighbours.neighbors = Some(neighbours).into();
    (interfaces, update_routes, add_neighbours)
}

/// Configures the guest's NICs, routes and neighbours.
pub async fn configure(agent: &AgentClient, network: &PodNetwork) -> Result<(), ShimError> {
    let (interfaces, routes, neighbours) = requests(network);
    for req in &interfaces {
        agent.update_interface(req).await?;
    }
    if !network.routes.is_empty() {
        agent.update_routes(&routes).await?;
    }
    if !network.neighbours.is_empty() {
        agent.add_arp_neighbors(&neighbours).await?;
    }
    tracing::info!(
        interfaces = network.interfaces.len(),
        routes = network.routes.len(),
        neighbours = network.neighbours.len(),
        netns = %network.netns.display(),
        "pod network handed to the guest"
    );
    Ok(())
}
