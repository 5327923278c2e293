//! Turning what the kernel reports (netns inodes, ifindexes, addresses) into what a person
//! recognises (interface and namespace names, kernel function names, sysctl values).
//!
//! [`HostFacts`] is the one interface the verdict, diagnosis and output stages ask; the real
//! [`Resolver`] caches what it learns, tests use a fixture implementation.

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

use crate::diagnose::ruleset::{
    Ruleset, ebtables,
    model::{Backend, Source},
};

pub use docker::{ContainerRef, Published, SharedIndex};
pub use kallsyms::{Kallsyms, Symbol};
pub use links::{LOOPBACK_IFINDEX, Link, LinkTable};
pub use netns::NetnsEntry;

/// Questions the later stages ask about the host. Every answer is optional: a namespace may be
/// gone by the time a packet is reported.
pub trait HostFacts {
    fn interface(&mut self, netns: u32, ifindex: u32) -> Option<Link>;
    fn netns(&mut self, netns: u32) -> Option<NetnsEntry>;
    fn sysctl(&mut self, netns: u32, key: &str) -> Option<String>;
    fn is_local(&mut self, netns: u32, addr: Ipv4Addr) -> Option<bool>;
    fn symbol(&self, addr: u64) -> Option<Symbol>;
    /// The namespace pathtrace itself runs in.
    fn own_netns(&self) -> Option<u32>;

    /// The container a device belongs to: a device in its namespace, or the host side of
    /// its veth.
    fn container_device(&mut self, _netns: u32, _ifindex: u32) -> Option<ContainerDevice> {
        None
    }

    /// The container a host port is published to.
    fn published(&mut self, _port: u16, _proto: u8) -> Option<Published> {
        None
    }

    /// The host port published to a container's `addr:port`: the other end of its DNAT.
    fn published_to(&mut self, _addr: Ipv4Addr, _port: u16, _proto: u8) -> Option<Published> {
        None
    }

    /// The namespace's ruleset (iptables-nft or legacy, and native nft) with counters.
    fn ruleset(&mut self, _netns: u32) -> Option<Arc<Ruleset>> {
        None
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

    fn published(&mut self, port: u16, proto: u8) -> Option<Published> {
        self.containers
            .as_ref()?
            .read()
            .ok()?
            .published(port, proto)
            .cloned()
    }

    fn published_to(&mut self, addr: Ipv4Addr, port: u16, proto: u8) -> Option<Published> {
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

/// `iptables-save -c` in the calling thread's namespace: the nft-backed tables first, then
/// legacy; whichever has rules (a host uses one or the other).
///
/// `bridges`: the namespace has a bridge, so ebtables rules can matter there. Legacy ebtables
/// cannot list a table without the kernel creating it (empty, ACCEPT) in that namespace, so
/// it is only asked where a bridge exists and its module is already loaded.
pub fn read_ruleset(bridges: bool) -> Option<Ruleset> {
    let mut rs = Ruleset::default();
    let mut read_elsewhere = Vec::new();
    // Both iptables backends: a host can hold rules in each (Docker on one, a firewall script
    // on the other), and each `iptables` lists only its own.
    let ran: Vec<Option<Ruleset>> = ["iptables-nft-save", "iptables-legacy-save"]
        .into_iter()
        .filter_map(read_iptables)
        .collect();
    let saves: Vec<Ruleset> = if ran.is_empty() {
        // Neither split binary exists: the one `iptables-save` says which backend it is.
        read_iptables("iptables-save")
            .flatten()
            .into_iter()
            .collect()
    } else {
        ran.into_iter().flatten().collect()
    };
    for save in saves {
        if save
            .tables
            .iter()
            .any(|t| t.source == Source::Iptables(Backend::Nft))
        {
            read_elsewhere = crate::diagnose::ruleset::nft::iptables_nft_tables();
        }
        rs.merge(save);
    }
    // ebtables-nft's tables are nft `bridge` tables whose `ip` matches nft cannot show.
    for eb in [
        read_ebtables_nft(),
        bridges.then(read_ebtables_legacy).flatten(),
    ]
    .into_iter()
    .flatten()
    {
        for t in &eb.tables {
            if t.source == Source::Ebtables(Backend::Nft) {
                read_elsewhere.push(("bridge".to_owned(), t.name.clone()));
            }
        }
        rs.merge(eb);
    }
    // Native nft tables (firewalld, hand-written) run at the same hooks.
    if let Some(nft) = read_nft(&read_elsewhere) {
        rs.merge(nft);
    }
    (!rs.is_empty()).then_some(rs)
}

/// `<cmd> -c` (an iptables-save): `None` when the command does not exist, `Some(None)` when it
/// ran but had no rules (or failed). The backend comes from the header it writes
/// (`(nf_tables)` or `(legacy)`). iptables-legacy-save lists only the tables the namespace
/// already has (`/proc/net/ip_tables_names`): nothing is created.
fn read_iptables(cmd: &str) -> Option<Option<Ruleset>> {
    let out = std::process::Command::new(cmd).arg("-c").output().ok()?;
    if !out.status.success() {
        tracing::debug!("{cmd}: {}", String::from_utf8_lossy(&out.stderr).trim());
        return Some(None);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let backend =
        if text.contains("(legacy)") || (cmd.contains("legacy") && !text.contains("(nf_tables)")) {
            Backend::Legacy
        } else {
            Backend::Nft
        };
    Some(match Ruleset::parse_from(&text, backend) {
        Ok(rs) if !rs.is_empty() => Some(rs),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!("{cmd}: {e}");
            None
        }
    })
}

/// `ebtables-nft-save -c`, keeping the tables that hold rules ebtables-nft can read (it
/// marks native nft bridge tables as incompatible and leaves them to `nft`).
fn read_ebtables_nft() -> Option<Ruleset> {
    let out = std::process::Command::new("ebtables-nft-save")
        .arg("-c")
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    let rs = ebtables::parse_nft_save(&String::from_utf8_lossy(&out.stdout))
        .inspect_err(|e| tracing::debug!("ebtables-nft-save: {e}"))
        .ok()?;
    (!rs.is_empty()).then_some(rs)
}

/// `ebtables-legacy -L --Lc` for each ebtables table whose module is loaded (no module is ever
/// loaded for it). Listing a table the namespace lacks makes the kernel create it empty
/// (ACCEPT policies, no rules), as any `ebtables-legacy -L` does: no frame's fate changes.
fn read_ebtables_legacy() -> Option<Ruleset> {
    let modules = std::fs::read_to_string("/proc/modules").ok()?;
    let mut text = String::new();
    for table in ebtables::TABLES {
        let module = format!("ebtable_{table} ");
        if !modules.lines().any(|l| l.starts_with(&module)) {
            continue;
        }
        let Ok(out) = std::process::Command::new("ebtables-legacy")
            .args(["-t", table, "-L", "--Lc"])
            .output()
        else {
            return None; // not installed
        };
        if out.status.success() {
            text.push_str(&ebtables::listing_to_save(
                table,
                &String::from_utf8_lossy(&out.stdout),
            ));
        }
    }
    let rs = ebtables::parse(&text, Backend::Legacy)
        .inspect_err(|e| tracing::debug!("ebtables-legacy: {e}"))
        .ok()?;
    (!rs.is_empty()).then_some(rs)
}

/// `nft -j list ruleset`, IPv4 families only, without the tables read elsewhere.
fn read_nft(read_elsewhere: &[(String, String)]) -> Option<Ruleset> {
    let out = std::process::Command::new("nft")
        .args(["-j", "list", "ruleset"])
        .output()
        .ok()?;
    if !out.status.success() {
        tracing::debug!(
            "nft -j list ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        return None;
    }
    match crate::diagnose::ruleset::nft::parse(
        &String::from_utf8_lossy(&out.stdout),
        read_elsewhere,
    ) {
        Ok(rs) => Some(rs),
        Err(e) => {
            tracing::debug!("nft -j list ruleset: {e}");
            None
        }
    }
}

#[cfg(test)]
pub(crate) mod fixture {
    //! A host described in code, for verdict, diagnosis and output tests.
    use super::*;
    use crate::events::fixture::{CTR_NS, HOST_NS, OUT_NS};

    #[derive(Default)]
    pub struct FakeHost {
        pub links: HashMap<(u32, u32), Link>,
        pub sysctls: HashMap<(u32, String), String>,
        pub local: Vec<(u32, Ipv4Addr)>,
        pub symbols: Vec<(u64, &'static str)>,
        pub names: HashMap<u32, &'static str>,
        pub containers: HashMap<(u32, u32), ContainerDevice>,
        pub published: Vec<Published>,
        pub rulesets: HashMap<u32, Arc<Ruleset>>,
        /// Rulesets read "earlier", for counter deltas.
        pub baselines: HashMap<u32, Arc<Ruleset>>,
        /// (netns, subnet address, prefix, ifindex)
        pub subnets: Vec<(u32, Ipv4Addr, u8, u32)>,
        /// (netns, other) → the nsid `netns` gives `other`; empty: nobody can be asked.
        pub nsids: HashMap<(u32, u32), i32>,
    }

    impl FakeHost {
        /// The lab topology: outside ns (eth0), host ns (eth0, docker0, veth), container (eth0).
        pub fn lab() -> Self {
            let mut h = Self::default();
            let mut link = |ns, idx, name: &str, kind: &str| {
                h.links.insert(
                    (ns, idx),
                    Link {
                        ifindex: idx,
                        name: name.into(),
                        kind: kind.into(),
                        ..Link::default()
                    },
                );
            };
            link(OUT_NS, 2, "eth0", "veth");
            link(HOST_NS, 2, "eth0", "veth");
            link(HOST_NS, 3, "docker0", "bridge");
            link(HOST_NS, 4, "veth0c1", "veth");
            link(CTR_NS, 2, "eth0", "veth");
            // Wired as the lab wires them: outside eth0 ↔ host eth0, veth0c1 (a docker0
            // port) ↔ container eth0.
            for (ns, idx, peer, master) in [
                (OUT_NS, 2, 2, None),
                (HOST_NS, 2, 2, None),
                (HOST_NS, 4, 2, Some(3)),
                (CTR_NS, 2, 4, None),
            ] {
                if let Some(l) = h.links.get_mut(&(ns, idx)) {
                    l.link = Some(peer);
                    l.link_netnsid = Some(0);
                    l.master = master;
                }
            }
            for (ns, name) in [
                (OUT_NS, "lab-out"),
                (HOST_NS, "lab-host"),
                (CTR_NS, "lab-ctr"),
            ] {
                h.names.insert(ns, name);
            }
            h.local = vec![
                (HOST_NS, Ipv4Addr::new(203, 0, 113, 1)),
                (HOST_NS, Ipv4Addr::new(172, 17, 0, 1)),
                (CTR_NS, Ipv4Addr::new(172, 17, 0, 2)),
                (OUT_NS, Ipv4Addr::new(203, 0, 113, 2)),
            ];
            h.subnets = vec![
                (HOST_NS, Ipv4Addr::new(203, 0, 113, 0), 24, 2),
                (HOST_NS, Ipv4Addr::new(172, 17, 0, 0), 16, 3),
            ];
            h.symbols = vec![
                (0xffff_ffff_81fe_d320, "ip_error"),
                (0xffff_ffff_8200_0000, "tcp_rcv_state_process"),
            ];
            h
        }

        pub fn set_sysctl(&mut self, netns: u32, key: &str, value: &str) {
            self.sysctls.insert((netns, key.into()), value.into());
        }
    }

    impl HostFacts for FakeHost {
        fn interface(&mut self, netns: u32, ifindex: u32) -> Option<Link> {
            self.links.get(&(netns, ifindex)).cloned()
        }
        fn calls(&mut self, netns: u32, other: u32, id: i32) -> Option<bool> {
            if self.nsids.is_empty() {
                return None;
            }
            Some(self.nsids.get(&(netns, other)) == Some(&id))
        }
        fn namespaces(&mut self) -> Vec<u32> {
            let mut all: Vec<u32> = self.links.keys().map(|(ns, _)| *ns).collect();
            all.sort_unstable();
            all.dedup();
            all
        }
        fn netns(&mut self, netns: u32) -> Option<NetnsEntry> {
            self.names.get(&netns).map(|n| NetnsEntry {
                path: format!("/run/netns/{n}").into(),
                label: (*n).into(),
                ip_netns_name: Some((*n).into()),
            })
        }
        fn sysctl(&mut self, netns: u32, key: &str) -> Option<String> {
            self.sysctls.get(&(netns, key.to_owned())).cloned()
        }
        fn is_local(&mut self, netns: u32, addr: Ipv4Addr) -> Option<bool> {
            Some(self.local.contains(&(netns, addr)))
        }
        fn symbol(&self, addr: u64) -> Option<Symbol> {
            let (start, name) = self
                .symbols
                .iter()
                .filter(|(a, _)| *a <= addr)
                .max_by_key(|(a, _)| *a)?;
            Some(Symbol {
                name: (*name).into(),
                offset: addr - start,
                module: None,
            })
        }
        fn own_netns(&self) -> Option<u32> {
            Some(1)
        }
        fn container_device(&mut self, netns: u32, ifindex: u32) -> Option<ContainerDevice> {
            self.containers.get(&(netns, ifindex)).cloned()
        }
        fn published(&mut self, port: u16, proto: u8) -> Option<Published> {
            self.published
                .iter()
                .find(|p| p.from_host_port(port, proto))
                .cloned()
        }
        fn published_to(&mut self, addr: Ipv4Addr, port: u16, proto: u8) -> Option<Published> {
            self.published
                .iter()
                .find(|p| p.leads_to(addr, port, proto))
                .cloned()
        }
        fn ruleset(&mut self, netns: u32) -> Option<Arc<Ruleset>> {
            self.rulesets.get(&netns).cloned()
        }
        fn ruleset_baseline(&mut self, netns: u32) -> Option<(Arc<Ruleset>, Duration)> {
            self.baselines
                .get(&netns)
                .map(|rs| (rs.clone(), Duration::from_secs(5)))
        }
        fn connected_route(&mut self, netns: u32, addr: Ipv4Addr) -> Option<Link> {
            let (_, _, _, idx) = self
                .subnets
                .iter()
                .filter(|(ns, a, len, _)| {
                    let mask = u32::MAX.checked_shl(32 - *len as u32).unwrap_or(0);
                    *ns == netns && u32::from(*a) & mask == u32::from(addr) & mask
                })
                .max_by_key(|(_, _, len, _)| *len)?;
            self.links.get(&(netns, *idx)).cloned()
        }
    }

    impl FakeHost {
        /// The lab with its container known to Docker as `web-1`, port 10001 published.
        pub fn lab_with_docker() -> Self {
            let mut h = Self::lab();
            let web = ContainerRef {
                id: "0123456789ab".into(),
                name: "web-1".into(),
                image: "nginx:1.27".into(),
            };
            h.containers.insert(
                (CTR_NS, 2),
                ContainerDevice {
                    container: web.clone(),
                    ifname: "eth0".into(),
                    host_side: false,
                },
            );
            h.containers.insert(
                (HOST_NS, 4),
                ContainerDevice {
                    container: web.clone(),
                    ifname: "eth0".into(),
                    host_side: true,
                },
            );
            h.published.push(Published {
                container: web,
                host_port: 10001,
                proto: 6,
                container_addr: Some(Ipv4Addr::new(172, 17, 0, 2)),
                container_port: 80,
            });
            h
        }
    }
}
