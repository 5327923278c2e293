//! The ground floor: what the later stages may ask about the host, and the plain values the
//! answers are made of. No I/O here: [`crate::resolve`] answers from the live host (netlink,
//! namespaces, Docker, kallsyms, rulesets), `fixture::FakeHost` from code in tests. Only the
//! places that build a session (trace, doctor, daemon) know which.

#[cfg(test)]
pub(crate) mod fixture;

use std::{collections::HashMap, net::Ipv4Addr, path::PathBuf, sync::Arc, time::Duration};

use serde::Serialize;

use crate::{net::Proto, ruleset::Ruleset};

/// A fact the host has but would not give: a namespace that could not be entered, a tool that
/// failed. Unlike a fact that is not there, it proves nothing either way; the resolver says it
/// once at warn level, and a diagnosis names it where it changed what could be concluded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot read {what}: {why}")]
pub struct Unreadable {
    /// `net.ipv4.conf.eth0.forwarding in netns root`, `the ruleset of netns root`.
    pub what: String,
    pub why: String,
}

/// `Ok(None)`: not there. `Err`: there may be an answer, but it could not be read.
pub type Lookup<T> = Result<Option<T>, Unreadable>;

/// Questions the later stages ask about the host. Every answer may be missing: a namespace may
/// be gone by the time a packet is reported. The look-ups that can fail for other reasons
/// (entering a namespace, running a tool) say which it was ([`Lookup`]).
pub trait HostFacts {
    fn interface(&mut self, netns: u32, ifindex: u32) -> Option<Link>;
    fn netns(&mut self, netns: u32) -> Option<NetnsEntry>;
    /// A sysctl as read inside `netns` (`net.ipv4.conf.eth0.forwarding`).
    fn sysctl(&mut self, netns: u32, key: &str) -> Lookup<String>;
    fn is_local(&mut self, netns: u32, addr: Ipv4Addr) -> Option<bool>;
    fn symbol(&self, addr: u64) -> Option<Symbol>;
    /// The kernel stack the probes stored under `id` (`--stack`), innermost frame first, as
    /// return addresses. `None` when none was stored or it can no longer be read.
    fn kernel_stack(&mut self, _id: u32) -> Option<Arc<[u64]>> {
        None
    }
    /// The namespace pathtrace itself runs in.
    fn own_netns(&self) -> Option<u32>;

    /// The container a device belongs to: a device in its namespace, or the host side of
    /// its veth.
    fn container_device(&mut self, _netns: u32, _ifindex: u32) -> Option<ContainerDevice> {
        None
    }

    /// The container a host port is published to, on `dst` (`None`: on any address).
    fn published(
        &mut self,
        _dst: Option<Ipv4Addr>,
        _port: u16,
        _proto: Proto,
    ) -> Option<Published> {
        None
    }

    /// The container that has this address (on any of its networks).
    fn container_at(&mut self, _addr: Ipv4Addr) -> Option<ContainerRef> {
        None
    }

    /// The host port published to a container's `addr:port`: the other end of its DNAT.
    fn published_to(&mut self, _addr: Ipv4Addr, _port: u16, _proto: Proto) -> Option<Published> {
        None
    }

    /// The namespace's ruleset (iptables-nft or legacy, and native nft) with counters.
    fn ruleset(&mut self, _netns: u32) -> Lookup<Arc<Ruleset>> {
        Ok(None)
    }

    /// The first ruleset read in the namespace and how long ago: rule counters now minus
    /// counters then say whether a rule really counted the drops seen since.
    fn ruleset_baseline(&mut self, _netns: u32) -> Option<(Arc<Ruleset>, Duration)> {
        None
    }

    /// The interface of the connected subnet holding `addr` in `netns`.
    fn connected_route(&mut self, _netns: u32, _addr: Ipv4Addr) -> Option<Link> {
        None
    }

    /// That connected subnet itself: its network address and prefix length.
    fn connected_subnet(&mut self, _netns: u32, _addr: Ipv4Addr) -> Option<(Ipv4Addr, u8)> {
        None
    }

    /// This namespace's own address on the connected subnet holding `addr`: the gateway its
    /// neighbours there would use (a bridge's address for the containers on it).
    fn own_address_near(&mut self, _netns: u32, _addr: Ipv4Addr) -> Option<Ipv4Addr> {
        None
    }

    /// The namespace's IPv4 policy routing rules (`ip rule`), by priority.
    fn route_rules(&mut self, _netns: u32) -> Lookup<Arc<[RouteRule]>> {
        Ok(None)
    }

    /// Where the namespace would send a packet to `to` from its address `from` (`ip route
    /// get`), or why it cannot.
    fn route_get(&mut self, _netns: u32, _to: Ipv4Addr, _from: Ipv4Addr) -> Lookup<RouteLookup> {
        Ok(None)
    }

    /// Namespaces that can be looked into, by inode: where a veth's other end may be.
    fn namespaces(&mut self) -> Vec<u32> {
        Vec::new()
    }

    /// Whether `netns` knows `other` by the nsid `id` (a veth's `link_netnsid`); `None` when
    /// that cannot be asked.
    fn calls(&mut self, _netns: u32, _other: u32, _id: i32) -> Option<bool> {
        None
    }

    /// How a device is wired: its veth's other end, the bridge it is a port of.
    fn wiring(&mut self, netns: u32, ifindex: u32) -> Option<Wiring> {
        wire(self, netns, ifindex)
    }

    /// Interface name, or `if<N>` when unknown.
    fn ifname(&mut self, netns: u32, ifindex: u32) -> String {
        if ifindex == 0 {
            return "-".into();
        }
        self.interface(netns, ifindex)
            .map_or_else(|| format!("if{ifindex}"), |l| l.name)
    }

    /// Namespace label, or `netns:<inode>` when unknown.
    fn netns_label(&mut self, netns: u32) -> String {
        if netns == 0 {
            return "-".into();
        }
        self.netns(netns)
            .map_or_else(|| format!("netns:{netns}"), |e| e.label)
    }
}

/// How a device is wired to others: which device sent what it receives, and through which
/// bridge a packet routed to it left.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Wiring {
    /// The device whose transmits this one receives, `(netns, ifindex)`: a veth's other end;
    /// loopback itself.
    pub peer: Option<(u32, u32)>,
    /// The bridge the device is a port of (its master, when that is a bridge).
    pub bridge: Option<u32>,
}

/// Works out a device's [`Wiring`] from the link tables. A veth names its peer's ifindex and,
/// when the peer is elsewhere, only an nsid relative to its own namespace, so the other
/// namespaces are asked for the device that names this one back.
pub fn wire<F: HostFacts + ?Sized>(facts: &mut F, netns: u32, ifindex: u32) -> Option<Wiring> {
    let link = facts.interface(netns, ifindex)?;
    let bridge = link.master.filter(|&m| {
        facts
            .interface(netns, m)
            .is_some_and(|l| l.kind == "bridge")
    });
    let peer = if link.is_loopback() {
        Some((netns, ifindex))
    } else if let Some(peer) = link.link.filter(|_| link.kind == "veth") {
        let candidates = match link.link_netnsid {
            Some(_) => facts
                .namespaces()
                .into_iter()
                .filter(|&ns| ns != netns)
                .collect(),
            None => vec![netns],
        };
        // Identical labs or containers pair the same ifindexes: the nsid decides.
        let mut unconfirmed = Vec::new();
        let mut confirmed = None;
        for ns in candidates {
            if !facts
                .interface(ns, peer)
                .is_some_and(|other| link.pairs_with(&other))
            {
                continue;
            }
            let is_it = match link.link_netnsid {
                Some(id) => facts.calls(netns, ns, id),
                None => Some(true),
            };
            match is_it {
                Some(true) => {
                    confirmed = Some(ns);
                    break;
                }
                Some(false) => {}
                None => unconfirmed.push(ns),
            }
        }
        confirmed
            .or_else(|| (unconfirmed.len() == 1).then(|| unconfirmed[0]))
            .map(|ns| (ns, peer))
    } else {
        None
    };
    Some(Wiring { peer, bridge })
}

/// A device that belongs to a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContainerDevice {
    pub container: ContainerRef,
    /// The interface name inside the container (`eth0`).
    pub ifname: String,
    /// The device is the host-side end of the container's veth.
    pub host_side: bool,
}

/// One interface.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    /// `veth`, `bridge`, ... (empty for plain devices).
    pub kind: String,
    /// Bridge or bond this port belongs to.
    pub master: Option<u32>,
    /// For veth: the peer's ifindex (in `link_netnsid`'s namespace when that is set).
    pub link: Option<u32>,
    pub link_netnsid: Option<i32>,
}

/// The loopback device's ifindex, the same in every namespace.
pub const LOOPBACK_IFINDEX: u32 = 1;

impl Link {
    /// Whether `other` is this veth's other end: each names the other's ifindex, and both
    /// say their peer is in another namespace or neither does.
    pub fn pairs_with(&self, other: &Link) -> bool {
        self.kind == "veth"
            && other.kind == "veth"
            && self.link == Some(other.ifindex)
            && other.link == Some(self.ifindex)
            && self.link_netnsid.is_some() == other.link_netnsid.is_some()
    }

    /// The loopback device: what it receives, it sent itself.
    pub fn is_loopback(&self) -> bool {
        self.ifindex == LOOPBACK_IFINDEX && self.name == "lo"
    }
}

/// Everything known about one namespace's interfaces.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LinkTable {
    pub links: HashMap<u32, Link>,
    /// (ifindex, address, prefix length)
    pub addrs: Vec<(u32, Ipv4Addr, u8)>,
}

impl LinkTable {
    pub fn is_local(&self, addr: Ipv4Addr) -> bool {
        addr.is_loopback() || self.addrs.iter().any(|(_, a, _)| *a == addr)
    }

    /// The interface whose connected subnet holds `addr` (longest prefix): where the
    /// namespace would send it without a gateway.
    pub fn connected_route(&self, addr: Ipv4Addr) -> Option<&Link> {
        self.subnet_of(addr)
            .and_then(|(idx, _, _)| self.links.get(&idx))
    }

    /// The connected subnet holding `addr` (longest prefix): its device, this namespace's own
    /// address on it, and the prefix length.
    pub fn subnet_of(&self, addr: Ipv4Addr) -> Option<(u32, Ipv4Addr, u8)> {
        self.addrs
            .iter()
            .filter(|(_, a, len)| u32::from(*a) & mask(*len) == u32::from(addr) & mask(*len))
            .max_by_key(|(_, _, len)| *len)
            .copied()
    }
}

/// The netmask of a prefix length.
pub fn mask(len: u8) -> u32 {
    u32::MAX.checked_shl(32 - len as u32).unwrap_or(0)
}

/// A namespace's answer to `ip route get`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteLookup {
    Via {
        dev: String,
        gateway: Option<Ipv4Addr>,
    },
    /// No route: the kernel's words (`Network is unreachable`).
    Unreachable(String),
}

/// One policy routing rule (`ip rule`): which lookups it sends to which table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RouteRule {
    pub priority: u32,
    /// `fwmark VALUE/MASK`; `None`: any mark.
    pub fwmark: Option<(u32, u32)>,
    /// `main`, `local`, `default` or a number.
    pub table: String,
    /// The rule selects by mark alone: no source, destination, interface or other selector,
    /// so every lookup with a matching mark (a reverse path check's among them) takes it.
    pub mark_only: bool,
}

impl RouteRule {
    /// Whether a lookup with `mark` (and no other selector this rule could refuse) takes it.
    pub fn takes(&self, mark: u32) -> bool {
        self.mark_only && self.fwmark.is_none_or(|(v, m)| mark & m == v)
    }
}

/// Where a namespace can be entered and what to call it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetnsEntry {
    pub path: PathBuf,
    /// `ip netns` name, `root` for the init namespace, `pid N (comm)` otherwise.
    pub label: String,
    /// Set for `ip netns` names (`/run/netns/NAME`): the fix command can use `ip netns exec`.
    pub ip_netns_name: Option<String>,
}

/// A resolved location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Symbol {
    pub name: String,
    pub offset: u64,
    pub module: Option<String>,
}

impl std::fmt::Display for Symbol {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}+{:#x}", self.name, self.offset)?;
        if let Some(m) = &self.module {
            write!(f, " [{m}]")?;
        }
        Ok(())
    }
}

/// A container as people name it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ContainerRef {
    /// Short (12 hex digits) id, as `docker ps` shows.
    pub id: String,
    pub name: String,
    pub image: String,
}

/// A port published on the host: traffic to `host_port` is DNATed to the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Published {
    pub container: ContainerRef,
    /// The host address it is published on (`-p 198.51.100.1:7790:8080`); `None`: every
    /// address of the host (0.0.0.0, the default).
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub proto: Proto,
    pub container_addr: Option<Ipv4Addr>,
    pub container_port: u16,
}

impl Published {
    /// Traffic to host port `port` of `proto`, at `dst` (`None`: any address), is what this
    /// publishes: Docker DNATs only the address it publishes on.
    pub fn from_host_port(&self, dst: Option<Ipv4Addr>, port: u16, proto: Proto) -> bool {
        self.host_port == port
            && self.proto == proto
            && (self.host_ip.is_none() || dst.is_none() || self.host_ip == dst)
    }

    /// `198.51.100.1:7790`, or `*:7790` on every address.
    pub fn host_side(&self) -> String {
        match self.host_ip {
            Some(ip) => format!("{ip}:{}", self.host_port),
            None => format!("*:{}", self.host_port),
        }
    }

    /// Its DNAT leads to `addr:port` of `proto` (the container's side).
    pub fn leads_to(&self, addr: Ipv4Addr, port: u16, proto: Proto) -> bool {
        self.container_addr == Some(addr) && self.container_port == port && self.proto == proto
    }
}
