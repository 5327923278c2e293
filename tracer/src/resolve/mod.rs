//! Turning what the kernel reports (netns inodes, ifindexes, addresses) into what a person
//! recognises (interface and namespace names, kernel function names, sysctl values).
//!
//! [`Resolver`] answers [`HostFacts`] (defined on the ground floor, [`crate::host`]) from the
//! live host and caches what it learns. Only the places that build a session import this.

mod containers;
pub mod docker;
mod facts;
pub mod kallsyms;
pub mod links;
pub mod netns;
mod routes;

use std::{
    collections::{HashMap, HashSet},
    net::Ipv4Addr,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, StackTraceMap};

use crate::{
    host::{
        ContainerDevice, ContainerRef, HostFacts, Link, LinkTable, Lookup, NetnsEntry, Published,
        RouteLookup, RouteRule, Symbol, Wiring, mask, wire,
    },
    net::Proto,
    ruleset::Ruleset,
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
    /// When each inode was last looked at: a known one seen still behind its path, an
    /// unknown one looked for and not found. Neither is looked at again before
    /// `REFRESH_EVERY` (see `known_namespace`).
    namespaces_looked: HashMap<u32, Instant>,
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
    sysctls: HashMap<(u32, String), (Lookup<String>, Instant)>,
    rulesets: HashMap<u32, (Lookup<Arc<Ruleset>>, Instant)>,
    route_rules: HashMap<u32, Fresh<Arc<[RouteRule]>>>,
    routes: HashMap<(u32, Ipv4Addr, Ipv4Addr), Fresh<RouteLookup>>,
    /// The first ruleset read per namespace, kept for counter deltas.
    baselines: HashMap<u32, (Arc<Ruleset>, Instant)>,
    /// Facts already said to be unreadable: each is warned about once.
    warned: HashSet<String>,
    /// The probes' stack map and the stacks read from it: an id names one stack for as long
    /// as the map lives (nothing deletes it), so each is read once.
    stacks: Option<(StackTraceMap<MapData>, HashMap<u32, KernelStack>)>,
}

/// A fact as read, and when.
type Fresh<T> = (Lookup<T>, Instant);

/// A drop's kernel stack: return addresses, innermost first.
type KernelStack = Arc<[u64]>;

/// How long a sysctl or ruleset read stays fresh.
const FACT_TTL: Duration = Duration::from_secs(1);

/// How long a device's wiring is trusted: finding a veth's peer may dump every namespace's
/// links, and devices are rewired far less often than packets pass.
const WIRING_TTL: Duration = Duration::from_secs(10);

/// Devices whose wiring is kept before the stale ones are forgotten.
const MAX_WIRED: usize = 4096;

impl Resolver {
    /// For a trace: kernel locations are named from /proc/kallsyms, read now.
    pub fn new() -> Self {
        let kallsyms = match Kallsyms::from_proc() {
            Ok(k) => Some(k),
            Err(e) => {
                tracing::warn!("{e}; kernel locations will be shown as addresses");
                None
            }
        };
        Self {
            kallsyms,
            ..Self::without_symbols()
        }
    }

    /// For static checks (`pathtrace doctor`): no packet, so no kernel location to name and
    /// /proc/kallsyms is not read.
    pub fn without_symbols() -> Self {
        Self {
            own_netns: netns::own_inode(),
            namespaces: HashMap::new(),
            namespaces_at: None,
            namespaces_looked: HashMap::new(),
            links: HashMap::new(),
            kallsyms: None,
            containers: None,
            veths: HashMap::new(),
            veths_generation: 0,
            wiring: HashMap::new(),
            sysctls: HashMap::new(),
            rulesets: HashMap::new(),
            baselines: HashMap::new(),
            warned: HashSet::new(),
            stacks: None,
            route_rules: HashMap::new(),
            routes: HashMap::new(),
        }
    }

    /// Reads pathtrace's own namespace's ruleset now, so drops there (a Docker host's FORWARD)
    /// can be checked against counters from before them.
    pub fn prefetch_own_ruleset(&mut self) {
        if let Some(own) = self.own_netns {
            let _ = self.ruleset(own);
        }
    }

    /// Reads drops' kernel stacks (`--stack`) from the probes' map.
    pub fn read_stacks_from(&mut self, map: StackTraceMap<MapData>) {
        self.stacks = Some((map, HashMap::new()));
    }

    /// Names containers from a Docker index kept current by `docker::watch`.
    pub fn with_containers(mut self, index: SharedIndex) -> Self {
        self.containers = Some(index);
        self
    }

    /// A namespace already scanned, or found by scanning again. An unknown one is looked for
    /// at once, whenever the last scan was (a container's first packet comes right after its
    /// namespace is made, perhaps right after a scan for another), and again at most every
    /// `REFRESH_EVERY`. A known one is looked at again after `REFRESH_EVERY`: the kernel
    /// hands a freed namespace's inode to the next namespace made, so under a long trace a new
    /// container's namespace arrives under the number of one that is gone, and must not be
    /// shown, entered or judged as the old one.
    fn known_namespace(&mut self, netns: u32) -> Option<&NetnsEntry> {
        let due = self
            .namespaces_looked
            .get(&netns)
            .is_none_or(|at| at.elapsed() >= REFRESH_EVERY);
        if due {
            let still_there = self
                .namespaces
                .get(&netns)
                .is_some_and(|entry| netns::inode_of(&entry.path) == Some(netns));
            if !still_there {
                self.refresh_namespaces(true);
            }
            self.namespaces_looked.insert(netns, Instant::now());
        }
        self.namespaces.get(&netns)
    }

    /// A device's wiring, trusted for `WIRING_TTL`, then checked in the cached tables.
    fn cached_wiring(&mut self, netns: u32, ifindex: u32) -> Option<Wiring> {
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

    /// Scans the namespaces again (at most every `REFRESH_EVERY` unless `force`d: a known one
    /// was found gone). What was learnt about a namespace no longer behind its path is
    /// forgotten, whatever now has its number.
    fn refresh_namespaces(&mut self, force: bool) {
        if !force
            && self
                .namespaces_at
                .is_some_and(|t| t.elapsed() < REFRESH_EVERY)
        {
            return;
        }
        let found = netns::scan();
        let gone: Vec<u32> = self
            .namespaces
            .iter()
            .filter(|&(&ino, old)| {
                !found.contains_key(&ino) || netns::inode_of(&old.path) != Some(ino)
            })
            .map(|(&ino, _)| ino)
            .collect();
        for ino in gone {
            self.forget_namespace(ino);
        }
        let now = Instant::now();
        // Every namespace found was just seen behind its path; an unknown inode's last look
        // is kept, and forgotten once it would be due anyway.
        self.namespaces_looked
            .retain(|ino, at| !found.contains_key(ino) && at.elapsed() < REFRESH_EVERY);
        self.namespaces_looked
            .extend(found.keys().map(|&ino| (ino, now)));
        self.namespaces = found;
        self.namespaces_at = Some(now);
    }

    /// Drops every fact cached for a namespace that is gone: its devices, wiring, sysctls,
    /// rules, counter baseline and routes.
    fn forget_namespace(&mut self, netns: u32) {
        tracing::debug!(netns, "namespace gone; forgetting what was read in it");
        self.links.remove(&netns);
        self.wiring.retain(|&(ns, _), (w, _)| {
            ns != netns && w.peer.is_none_or(|(peer_ns, _)| peer_ns != netns)
        });
        self.veths.retain(|&(ns, _), _| ns != netns);
        self.sysctls.retain(|(ns, _), _| *ns != netns);
        self.rulesets.remove(&netns);
        self.baselines.remove(&netns);
        self.route_rules.remove(&netns);
        self.routes.retain(|&(ns, _, _), _| ns != netns);
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
                // Devices are then shown by ifindex.
                Err(e) => {
                    self.unreadable(format!("the interfaces of netns {}", entry.label), &e);
                }
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
        if let Some((name, _)) = self.container_of_netns(netns) {
            return name;
        }
        self.known_namespace(netns)
            .map_or_else(|| format!("netns:{netns}"), |e| e.label.clone())
    }

    fn netns(&mut self, netns: u32) -> Option<NetnsEntry> {
        if let Some((name, pid)) = self.container_of_netns(netns) {
            return Some(NetnsEntry {
                path: format!("/proc/{pid}/ns/net").into(),
                label: name,
                ip_netns_name: None,
            });
        }
        self.known_namespace(netns).cloned()
    }

    fn namespaces(&mut self) -> Vec<u32> {
        self.refresh_namespaces(false);
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
        self.cached_wiring(netns, ifindex)
    }

    fn sysctl(&mut self, netns: u32, key: &str) -> Lookup<String> {
        self.read_sysctl(netns, key)
    }

    fn is_local(&mut self, netns: u32, addr: Ipv4Addr) -> Option<bool> {
        Some(self.table(netns, |t| t.is_local(addr))?.is_local(addr))
    }

    fn symbol(&self, addr: u64) -> Option<Symbol> {
        self.kallsyms.as_ref()?.resolve(addr)
    }

    fn kernel_stack(&mut self, id: u32) -> Option<Arc<[u64]>> {
        let (map, read) = self.stacks.as_mut()?;
        if let Some(s) = read.get(&id) {
            return Some(s.clone());
        }
        let frames: Arc<[u64]> = match map.get(&id, 0) {
            Ok(trace) => trace.frames().iter().map(|f| f.ip).collect(),
            Err(e) => {
                tracing::debug!("kernel stack {id}: {e}");
                return None;
            }
        };
        read.insert(id, frames.clone());
        Some(frames)
    }

    fn own_netns(&self) -> Option<u32> {
        self.own_netns
    }

    fn container_device(&mut self, netns: u32, ifindex: u32) -> Option<ContainerDevice> {
        self.device_of_container(netns, ifindex)
    }

    fn published(&mut self, dst: Option<Ipv4Addr>, port: u16, proto: Proto) -> Option<Published> {
        self.publication(|i| i.published(dst, port, proto).cloned())
    }

    fn published_to(&mut self, addr: Ipv4Addr, port: u16, proto: Proto) -> Option<Published> {
        self.publication(|i| i.published_to(addr, port, proto).cloned())
    }

    fn container_at(&mut self, addr: Ipv4Addr) -> Option<ContainerRef> {
        let index = self.containers.as_ref()?.read().ok()?;
        index
            .containers
            .iter()
            .find(|c| c.addresses.contains(&addr))
            .map(|c| c.container.clone())
    }

    fn ruleset(&mut self, netns: u32) -> Lookup<Arc<Ruleset>> {
        self.read_ruleset(netns)
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

    fn connected_subnet(&mut self, netns: u32, addr: Ipv4Addr) -> Option<(Ipv4Addr, u8)> {
        let (_, own, len) = self
            .table(netns, |t| t.subnet_of(addr).is_some())?
            .subnet_of(addr)?;
        Some((Ipv4Addr::from(u32::from(own) & mask(len)), len))
    }

    fn own_address_near(&mut self, netns: u32, addr: Ipv4Addr) -> Option<Ipv4Addr> {
        let (_, own, _) = self
            .table(netns, |t| t.subnet_of(addr).is_some())?
            .subnet_of(addr)?;
        Some(own)
    }

    fn route_get(&mut self, netns: u32, to: Ipv4Addr, from: Ipv4Addr) -> Lookup<RouteLookup> {
        self.read_route(netns, to, from)
    }

    fn route_rules(&mut self, netns: u32) -> Lookup<Arc<[RouteRule]>> {
        self.read_route_rules(netns)
    }
}
