//! The static side of the rules (`pathtrace doctor`): no packet, only one namespace's
//! configuration and the ports to check there. Each rule that can judge a fault from
//! configuration alone has an `examine` function beside its `check`; [`examine`] runs them all.

use std::net::Ipv4Addr;

use super::{Diagnosis, RULES};
use crate::{
    host::{HostFacts, Link, LinkTable, Published},
    net::Proto,
};

/// A port to check: published by Docker, or named with `--dport`.
#[derive(Clone, Debug)]
pub struct PortCheck {
    pub port: u16,
    pub proto: Proto,
    pub published: Option<Published>,
}

/// What a static check reasons from.
pub struct Premises {
    /// The namespace examined (the doctor's own).
    pub netns: u32,
    pub links: LinkTable,
    pub ports: Vec<PortCheck>,
    /// The client whose first packet is judged: address and source port (`--host`,
    /// `--sport`; else [`CLIENT`]).
    pub client: (Ipv4Addr, u16),
}

/// The client a doctor assumes: an address from TEST-NET-2, a high source port.
pub const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(198, 51, 100, 200), 40000);

/// One packet a doctor judges: a client's first packet to `addr:port`, arriving on `uplink`.
#[derive(Clone, Debug)]
pub struct Arrival<'p> {
    pub port: &'p PortCheck,
    pub uplink: String,
    pub addr: Ipv4Addr,
}

impl Premises {
    /// Interfaces other than loopback, by ifindex.
    pub fn interfaces(&self) -> Vec<&Link> {
        let mut v: Vec<_> = self
            .links
            .links
            .values()
            .filter(|l| l.name != "lo")
            .collect();
        v.sort_by_key(|l| l.ifindex);
        v
    }

    /// Local addresses on devices that are neither bridges nor bridge ports: where outside
    /// clients arrive.
    pub fn uplinks(&self) -> Vec<(String, Ipv4Addr)> {
        self.links
            .addrs
            .iter()
            .filter_map(|(idx, addr, _)| {
                let l = self.links.links.get(idx)?;
                let inside = l.name == "lo" || l.kind == "bridge" || l.master.is_some();
                (!inside && !addr.is_loopback()).then(|| (l.name.clone(), *addr))
            })
            .collect()
    }

    /// Every (port, uplink address) a client's first packet is judged at: a port published on
    /// one address (Docker's `HostIp`) only there, else on every uplink address.
    pub fn arrivals(&self) -> Vec<Arrival<'_>> {
        let uplinks = self.uplinks();
        let mut out = Vec::new();
        for port in &self.ports {
            let on = port.published.as_ref().and_then(|p| p.host_ip);
            for (uplink, addr) in &uplinks {
                if on.is_none_or(|ip| ip == *addr) {
                    out.push(Arrival {
                        port,
                        uplink: uplink.clone(),
                        addr: *addr,
                    });
                }
            }
            // Published on an address that is not an uplink's (a bridge's, loopback):
            // judged arriving on the device that has it.
            if let Some(ip) = on.filter(|ip| !uplinks.iter().any(|(_, a)| a == ip))
                && let Some(l) = self
                    .links
                    .addrs
                    .iter()
                    .find(|(_, a, _)| *a == ip)
                    .and_then(|(idx, _, _)| self.links.links.get(idx))
            {
                out.push(Arrival {
                    port,
                    uplink: l.name.clone(),
                    addr: ip,
                });
            }
        }
        out
    }

    /// `tcp 198.51.100.200:40000 → 203.0.113.1:10001 in on eth0`: what was judged.
    pub fn judged(&self) -> Vec<String> {
        self.arrivals()
            .iter()
            .map(|a| {
                format!(
                    "{} {}:{} → {}:{} in on {}{}",
                    a.port.proto,
                    self.client.0,
                    self.client.1,
                    a.addr,
                    a.port.port,
                    a.uplink,
                    a.port
                        .published
                        .as_ref()
                        .map(|p| format!(" (published to container {})", p.container.name))
                        .unwrap_or_default()
                )
            })
            .collect()
    }

    /// Every address of the namespace, for `-m addrtype --dst-type LOCAL`.
    pub fn local_addrs(&self) -> Vec<Ipv4Addr> {
        self.links.addrs.iter().map(|(_, a, _)| *a).collect()
    }

    /// The namespace has a bridge: containers are forwarded to even with no port published.
    pub fn has_bridge(&self) -> bool {
        self.links.links.values().any(|l| l.kind == "bridge")
    }
}

/// Runs the static side of every rule; findings, worst first.
pub fn examine(premises: &Premises, facts: &mut dyn HostFacts) -> Vec<Diagnosis> {
    let mut out: Vec<Diagnosis> = RULES
        .iter()
        .filter_map(|rule| rule.examine)
        .flat_map(|examine| examine(premises, facts))
        .collect();
    out.sort_by_key(|d| std::cmp::Reverse(d.confidence));
    out
}
