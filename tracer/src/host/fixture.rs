//! A host described in code, for verdict, diagnosis, doctor and output tests.

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
    /// Sysctls that exist but cannot be read (netns, key) → why.
    pub unreadable: HashMap<(u32, String), String>,
    /// Namespaces whose ruleset cannot be read → why.
    pub unreadable_rulesets: HashMap<u32, String>,
    /// Containers by address, besides those of `published`.
    pub addressed: HashMap<Ipv4Addr, ContainerRef>,
    /// Kernel stacks by id (`--stack`), innermost first.
    pub stacks: HashMap<u32, Vec<u64>>,
    /// Policy routing rules by namespace.
    pub route_rules: HashMap<u32, Vec<RouteRule>>,
    /// `ip route get` answers by (netns, destination); none: the lookup is not answered.
    pub routes: HashMap<(u32, Ipv4Addr), RouteLookup>,
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
            (0xffff_ffff_81f0_1000, "ip6_forward"),
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
    fn sysctl(&mut self, netns: u32, key: &str) -> Lookup<String> {
        if let Some(why) = self.unreadable.get(&(netns, key.to_owned())) {
            return Err(Unreadable {
                what: format!("{key} in netns {netns}"),
                why: why.clone(),
            });
        }
        Ok(self.sysctls.get(&(netns, key.to_owned())).cloned())
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
    fn kernel_stack(&mut self, id: u32) -> Option<Arc<[u64]>> {
        self.stacks.get(&id).map(|s| s.as_slice().into())
    }
    fn own_netns(&self) -> Option<u32> {
        Some(1)
    }
    fn container_device(&mut self, netns: u32, ifindex: u32) -> Option<ContainerDevice> {
        self.containers.get(&(netns, ifindex)).cloned()
    }
    fn published(&mut self, dst: Option<Ipv4Addr>, port: u16, proto: Proto) -> Option<Published> {
        self.published
            .iter()
            .find(|p| p.from_host_port(dst, port, proto))
            .cloned()
    }
    fn container_at(&mut self, addr: Ipv4Addr) -> Option<ContainerRef> {
        self.published
            .iter()
            .find(|p| p.container_addr == Some(addr))
            .map(|p| p.container.clone())
            .or_else(|| self.addressed.get(&addr).cloned())
    }
    fn published_to(&mut self, addr: Ipv4Addr, port: u16, proto: Proto) -> Option<Published> {
        self.published
            .iter()
            .find(|p| p.leads_to(addr, port, proto))
            .cloned()
    }
    fn ruleset(&mut self, netns: u32) -> Lookup<Arc<Ruleset>> {
        if let Some(why) = self.unreadable_rulesets.get(&netns) {
            return Err(Unreadable {
                what: format!("the ruleset of netns {netns}"),
                why: why.clone(),
            });
        }
        Ok(self.rulesets.get(&netns).cloned())
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
    fn connected_subnet(&mut self, netns: u32, addr: Ipv4Addr) -> Option<(Ipv4Addr, u8)> {
        self.subnets
            .iter()
            .filter(|(ns, a, len, _)| {
                *ns == netns && u32::from(*a) & mask(*len) == u32::from(addr) & mask(*len)
            })
            .max_by_key(|(_, _, len, _)| *len)
            .map(|&(_, a, len, _)| (Ipv4Addr::from(u32::from(a) & mask(len)), len))
    }
    fn route_rules(&mut self, netns: u32) -> Lookup<Arc<[RouteRule]>> {
        Ok(self.route_rules.get(&netns).map(|r| r.as_slice().into()))
    }
    fn own_address_near(&mut self, netns: u32, addr: Ipv4Addr) -> Option<Ipv4Addr> {
        let (net, len) = self.connected_subnet(netns, addr)?;
        self.local
            .iter()
            .find(|(ns, a)| *ns == netns && u32::from(*a) & mask(len) == u32::from(net))
            .map(|(_, a)| *a)
    }
    fn route_get(&mut self, netns: u32, to: Ipv4Addr, _from: Ipv4Addr) -> Lookup<RouteLookup> {
        Ok(self.routes.get(&(netns, to)).cloned())
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
            host_ip: None,
            container: web,
            host_port: 10001,
            proto: Proto::TCP,
            container_addr: Some(Ipv4Addr::new(172, 17, 0, 2)),
            container_port: 80,
        });
        h
    }
}
