//! Turning what the kernel reports (netns inodes, ifindexes, addresses) into what a person
//! recognises (interface and namespace names, kernel function names, sysctl values).
//!
//! [`Resolver`] answers [`HostFacts`] (defined on the ground floor, [`crate::host`]) from the
//! live host and caches what it learns. Only the places that build a session import this.

pub mod docker;
pub mod kallsyms;
pub mod links;
pub mod netns;

use std::{
    collections::HashMap,
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use crate::{
    host::{
        ContainerDevice, ContainerRef, HostFacts, Link, LinkTable, NetnsEntry, Published, Symbol,
        Wiring, wire,
    },
    net::Proto,
    ruleset::{Ruleset, read_ruleset},
};

pub use docker::SharedIndex;
pub use kallsyms::Kallsyms;

/// Refresh a cache at most this often when a lookup misses.
const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// The live resolver: caches namespaces, link tables and kernel symbols.
pub struct Resolver {
    own_netns: Option<u32>,
    namespaces: HashMap<u32, NetnsEntry>,
    namespaces_at: Option<Instant>,
    links: HashMap<u32, (LinkTable, Instant)>,
    kallsyms: Option<Kallsyms>,
    containers: Option<SharedIndex>,
    /// Host-side veth → container device, valid for one index generation.
    veths: HashMap<(u32, u32), Option<ContainerDevice>>,
    veths_generation: u64,
    /// Devices' wiring, asked for every receive of a followed packet with `--hooks receive`.
    wiring: HashMap<(u32, u32), (Wiring, Instant)>,
    /// Sysctls and rulesets read recently: a flood of drops must not run `iptables-save` or
    /// enter a namespace once per packet.
    sysctls: HashMap<(u32, String), (Option<String>, Instant)>,
    rulesets: HashMap<u32, (Option<Arc<Ruleset>>, Instant)>,
    /// The first ruleset read per namespace, kept for counter deltas.
    baselines: HashMap<u32, (Arc<Ruleset>, Instant)>,
}

/// How long a sysctl or ruleset read stays fresh.
const FACT_TTL: Duration = Duration::from_secs(1);

/// How long a device's wiring is trusted: finding a veth's peer may dump every namespace's
/// links, and devices are rewired far less often than packets pass.
const WIRING_TTL: Duration = Duration::from_secs(10);

/// Devices whose wiring is kept before the stale ones are forgotten.
const MAX_WIRED: usize = 4096;

impl Resolver {
    pub fn new() -> Self {
        let kallsyms = match Kallsyms::from_proc() {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!("{e}; kernel locations will be shown as addresses");
                None
            }
        };
        Self {
            own_netns: netns::own_inode(),
            namespaces: HashMap::new(),
            namespaces_at: None,
            links: HashMap::new(),
            kallsyms,
            containers: None,
            veths: HashMap::new(),
            veths_generation: 0,
            wiring: HashMap::new(),
            sysctls: HashMap::new(),
            rulesets: HashMap::new(),
            baselines: HashMap::new(),
        }
    }

    /// Reads pathtrace's own namespace's ruleset now, so drops there (a Docker host's FORWARD)
    /// can be checked against counters from before them.
    pub fn prefetch_own_ruleset(&mut self) {
        if let Some(own) = self.own_netns {
            let _ = self.ruleset(own);
        }
    }

    /// Names containers from a Docker index kept current by `docker::watch`.
    pub fn with_containers(mut self, index: SharedIndex) -> Self {
        self.containers = Some(index);
        self
    }

    /// The index generation and the container whose namespace `netns` is, without copying
    /// the list: this runs for every hop. `None` when no container runs.
    fn container_in(&self, netns: u32) -> Option<(u64, Option<ContainerRef>)> {
        let index = self.containers.as_ref()?.read().ok()?;
        if index.containers.is_empty() {
            return None; // no Docker, or nothing running: the common fast path per hop
        }
        Some((
            index.generation,
            index.by_netns(netns).map(|c| c.container.clone()),
        ))
    }

    /// (netns, container) of every running container, copied so the lock is not held while
    /// links are dumped.
    fn container_namespaces(&self) -> Vec<(u32, ContainerRef)> {
        let Some(Ok(index)) = self.containers.as_ref().map(|i| i.read()) else {
            return Vec::new();
        };
        index
            .containers
            .iter()
            .filter_map(|c| Some((c.netns?, c.container.clone())))
            .collect()
    }

    fn refresh_namespaces(&mut self) {
        if self
            .namespaces_at
            .is_some_and(|t| t.elapsed() < REFRESH_EVERY)
        {
            return;
        }
        self.namespaces = netns::scan();
        self.namespaces_at = Some(Instant::now());
    }

    /// Whether a device and the peer found for it still name each other.
    fn still_paired(&mut self, netns: u32, ifindex: u32, w: Wiring) -> bool {
        let Some((peer_ns, peer)) = w.peer else {
            return false;
        };
        match (
            self.interface(netns, ifindex),
            self.interface(peer_ns, peer),
        ) {
            (Some(a), Some(b)) => a.is_loopback() || a.pairs_with(&b),
            _ => false,
        }
    }

    fn table(&mut self, netns: u32, must_have: impl Fn(&LinkTable) -> bool) -> Option<&LinkTable> {
        let fresh = match self.links.get(&netns) {
            Some((t, _)) if must_have(t) => false,
            Some((_, at)) if at.elapsed() < REFRESH_EVERY => false,
            _ => true,
        };
        if fresh {
            let entry = self.netns(netns)?;
            match LinkTable::dump_in(&entry.path) {
                Ok(t) => {
                    self.links.insert(netns, (t, Instant::now()));
                }
                Err(e) => tracing::debug!(netns, "rtnetlink dump failed: {e}"),
            }
        }
        self.links.get(&netns).map(|(t, _)| t)
    }
}

impl Default for Resolver {
    fn default() -> Self {
        Self::new()
    }
}

impl HostFacts for Resolver {
    fn interface(&mut self, netns: u32, ifindex: u32) -> Option<Link> {
        self.table(netns, |t| t.links.contains_key(&ifindex))?
            .links
            .get(&ifindex)
            .cloned()
    }

    // The two lookups every hop makes: clone the name only, not the whole entry.
    fn ifname(&mut self, netns: u32, ifindex: u32) -> String {
        if ifindex == 0 {
            return "-".into();
        }
        self.table(netns, |t| t.links.contains_key(&ifindex))
            .and_then(|t| t.links.get(&ifindex))
            .map_or_else(|| format!("if{ifindex}"), |l| l.name.clone())
    }

    fn netns_label(&mut self, netns: u32) -> String {
        if netns == 0 {
            return "-".into();
        }
        let container = self.containers.as_ref().and_then(|idx| {
            let idx = idx.read().ok()?;
            idx.by_netns(netns).map(|c| c.container.name.clone())
        });
        if let Some(name) = container {
            return name;
        }
        if !self.namespaces.contains_key(&netns) {
            self.refresh_namespaces();
        }
        self.namespaces
            .get(&netns)
            .map_or_else(|| format!("netns:{netns}"), |e| e.label.clone())
    }

    fn netns(&mut self, netns: u32) -> Option<NetnsEntry> {
        let container = self.containers.as_ref().and_then(|idx| {
            let idx = idx.read().ok()?;
            idx.by_netns(netns)
                .map(|c| (c.container.name.clone(), c.pid))
        });
        if let Some((name, pid)) = container {
            return Some(NetnsEntry {
                path: format!("/proc/{pid}/ns/net").into(),
                label: name,
                ip_netns_name: None,
            });
        }
        if !self.namespaces.contains_key(&netns) {
            self.refresh_namespaces();
        }
        self.namespaces.get(&netns).cloned()
    }

    fn namespaces(&mut self) -> Vec<u32> {
        self.refresh_namespaces();
        let mut all: Vec<u32> = self.namespaces.keys().copied().collect();
        all.extend(self.container_namespaces().into_iter().map(|(ns, _)| ns));
        all.sort_unstable();
        all.dedup();
        all
    }

    fn calls(&mut self, netns: u32, other: u32, id: i32) -> Option<bool> {
        let here = self.netns(netns)?.path;
        let there = self.netns(other)?.path;
        match netns::run_in(&here, move || links::nsid_here(&there)) {
            Ok(Ok(nsid)) => Some(nsid == Some(id)),
            Ok(Err(e)) | Err(e) => {
                tracing::debug!(netns, other, "asking for an nsid failed: {e}");
                None
            }
        }
    }

    fn wiring(&mut self, netns: u32, ifindex: u32) -> Option<Wiring> {
        if let Some(&(w, at)) = self.wiring.get(&(netns, ifindex)) {
            if at.elapsed() < WIRING_TTL {
                return Some(w);
            }
            // Past its time, a found pair is checked in the cached tables rather than found
            // again: finding asks every namespace.
            if self.still_paired(netns, ifindex, w) {
                self.wiring.insert((netns, ifindex), (w, Instant::now()));
                return Some(w);
            }
        }
        let w = wire(self, netns, ifindex)?;
        if self.wiring.len() >= MAX_WIRED {
            // Containers come and go under a daemon: forget devices not asked about lately.
            self.wiring.retain(|_, (_, at)| at.elapsed() < WIRING_TTL);
        }
        self.wiring.insert((netns, ifindex), (w, Instant::now()));
        Some(w)
    }

    fn sysctl(&mut self, netns: u32, key: &str) -> Option<String> {
        if let Some((v, at)) = self.sysctls.get(&(netns, key.to_owned()))
            && at.elapsed() < FACT_TTL
        {
            return v.clone();
        }
        let entry = self.netns(netns)?;
        let value = match netns::sysctl(&entry.path, key) {
            Ok(v) => Some(v),
            Err(e) => {
                tracing::debug!(netns, key, "sysctl read failed: {e}");
                None
            }
        };
        self.sysctls
            .insert((netns, key.to_owned()), (value.clone(), Instant::now()));
        value
    }

    fn is_local(&mut self, netns: u32, addr: Ipv4Addr) -> Option<bool> {
        Some(self.table(netns, |t| t.is_local(addr))?.is_local(addr))
    }

    fn symbol(&self, addr: u64) -> Option<Symbol> {
        self.kallsyms.as_ref()?.resolve(addr)
    }

    fn own_netns(&self) -> Option<u32> {
        self.own_netns
    }

    fn container_device(&mut self, netns: u32, ifindex: u32) -> Option<ContainerDevice> {
        let (generation, in_netns) = self.container_in(netns)?;
        if let Some(container) = in_netns {
            let ifname = self.ifname(netns, ifindex);
            return Some(ContainerDevice {
                container,
                ifname,
                host_side: false,
            });
        }
        if generation != self.veths_generation {
            self.veths.clear();
            self.veths_generation = generation;
        }
        if let Some(known) = self.veths.get(&(netns, ifindex)) {
            return known.clone();
        }
        // A host-side veth: the container whose namespace holds its other end.
        let found = match self.wiring(netns, ifindex)?.peer {
            Some((ns, peer)) if ns != netns => {
                self.container_in(ns)
                    .and_then(|(_, c)| c)
                    .map(|container| ContainerDevice {
                        container,
                        ifname: self.ifname(ns, peer),
                        host_side: true,
                    })
            }
            _ => None,
        };
        self.veths.insert((netns, ifindex), found.clone());
        found
    }

    fn published(&mut self, port: u16, proto: Proto) -> Option<Published> {
        self.containers
            .as_ref()?
            .read()
            .ok()?
            .published(port, proto)
            .cloned()
    }

    fn published_to(&mut self, addr: Ipv4Addr, port: u16, proto: Proto) -> Option<Published> {
        self.containers
            .as_ref()?
            .read()
            .ok()?
            .published_to(addr, port, proto)
            .cloned()
    }

    fn ruleset(&mut self, netns: u32) -> Option<Arc<Ruleset>> {
        if let Some((rs, at)) = self.rulesets.get(&netns)
            && at.elapsed() < FACT_TTL
        {
            return rs.clone();
        }
        let entry = self.netns(netns)?;
        let bridges = self
            .table(netns, |_| true)
            .is_some_and(|t| t.links.values().any(|l| l.kind == "bridge"));
        let rs = match netns::run_in(&entry.path, move || read_ruleset(bridges)) {
            Ok(rs) => rs.map(Arc::new),
            Err(e) => {
                tracing::debug!(netns, "reading the ruleset failed: {e}");
                None
            }
        };
        if let Some(rs) = &rs {
            self.baselines
                .entry(netns)
                .or_insert_with(|| (rs.clone(), Instant::now()));
        }
        self.rulesets.insert(netns, (rs.clone(), Instant::now()));
        rs
    }

    fn ruleset_baseline(&mut self, netns: u32) -> Option<(Arc<Ruleset>, Duration)> {
        self.baselines
            .get(&netns)
            .map(|(rs, at)| (rs.clone(), at.elapsed()))
    }

    fn connected_route(&mut self, netns: u32, addr: Ipv4Addr) -> Option<Link> {
        self.table(netns, |t| t.connected_route(addr).is_some())?
            .connected_route(addr)
            .cloned()
    }
}
