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
