//! Traffic-control messages for the tap ⇄ veth redirect of a pod's network (the model kata
//! calls "tcfilter"): an `ingress` qdisc on each end and one `u32` match-all filter whose
//! `mirred` action redirects every frame to the other end's egress.

use netlink_packet_route::tc::{
    TcAction, TcActionAttribute, TcActionMirrorOption, TcActionOption, TcActionType, TcAttribute, TcFilterU32Option,
    TcHandle, TcMessage, TcMirror, TcMirrorActionType, TcOption, TcU32Key, TcU32Selector, TcU32SelectorFlags,
};

/// Handle of an ingress qdisc (`ffff:`), the parent of its filters.
const INGRESS_QDISC: TcHandle = TcHandle { major: 0xffff, minor: 0 };
/// `ETH_P_ALL` in network byte order, as the low 16 bits of `tcm_info`.
const PROTOCOL_ALL: u32 = 0x0003u16.to_be() as u32;
/// Filter priority (`tc ... prio 1`).
const PRIORITY: u32 = 1;

/// Every frame arriving on link `from` leaves through link `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedirectFilter {
    pub from: u32,
    pub to: u32,
}

pub(crate) fn ingress_qdisc(index: u32) -> TcMessage {
    let mut msg = TcMessage::with_index(index as i32);
    msg.header.handle = INGRESS_QDISC;
    msg.header.parent = TcHandle::INGRESS;
    msg.attributes.push(TcAttribute::Kind("ingress".into()));
    msg.attributes.push(TcAttribute::Options(Vec::new()));
    msg
}

pub(crate) fn redirect(filter: RedirectFilter) -> TcMessage {
    let mut msg = TcMessage::with_index(filter.from as i32);
    msg.header.parent = INGRESS_QDISC;
    msg.header.info = (PRIORITY << 16) | PROTOCOL_ALL;
    // `match u8 0 0 at 0`: one key that every packet matches.
    let mut selector = TcU32Selector::default();
    selector.flags = TcU32SelectorFlags::Terminal;
    selector.nkeys = 1;
    selector.keys = vec![TcU32Key::default()];
    let mut mirror = TcMirror::default();
    mirror.generic.action = TcActionType::Stolen;
    mirror.eaction = TcMirrorActionType::EgressRedir;
    mirror.ifindex = filter.to;
    let mut action = TcAction::default();
    action.attributes.push(TcActionAttribute::Kind("mirred".into()));
    action
        .attributes
        .push(TcActionAttribute::Options(vec![TcActionOption::Mirror(TcActionMirrorOption::Parms(mirror))]));
    msg.attributes.push(TcAttribute::Kind("u32".into()));
    msg.attributes.push(TcAttribute::Options(vec![
        TcOption::U32(TcFilterU32Option::Selector(selector)),
        TcOption::U32(TcFilterU32Option::Action(vec![action])),
    ]));
    msg
}

/// A dumped filter as (kind, the ifindex its `mirred` action redirects to).
pub(crate) fn describe(filter: &TcMessage) -> (String, Option<u32>) {
    let mut kind = String::new();
    let mut target = None;
    for a in &filter.attributes {
        match a {
            TcAttribute::Kind(k) => kind.clone_from(k),
            TcAttribute::Options(options) => {
                for o in options {
                    if let TcOption::U32(TcFilterU32Option::Action(actions)) = o {
                        for action in actions {
                            for attr in &action.attributes {
                                if let TcActionAttribute::Options(opts) = attr {
                                    for opt in opts {
                                        if let TcActionOption::Mirror(TcActionMirrorOption::Parms(m)) = opt {
                                            target = Some(m.ifindex);
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            _ => {}
        }
    }
    (kind, target)
}
