//! Sysctls, rulesets and routing rules, read inside their namespace and kept for a second: a flood of drops
//! must not run `iptables-save` or enter a namespace once per packet. A read that fails for
//! any reason but absence is [`Unreadable`], said once at warn level.

use std::{sync::Arc, time::Instant};

use super::{FACT_TTL, Resolver, netns, routes};
use crate::{
    host::{HostFacts, Lookup, RouteLookup, RouteRule, Unreadable},
    ruleset::{Ruleset, read_ruleset},
};

impl Resolver {
    pub(super) fn read_sysctl(&mut self, netns: u32, key: &str) -> Lookup<String> {
        if let Some((v, at)) = self.sysctls.get(&(netns, key.to_owned()))
            && at.elapsed() < FACT_TTL
        {
            return v.clone();
        }
        let Some(entry) = self.netns(netns) else {
            return Ok(None); // the namespace is gone
        };
        let value = match netns::sysctl(&entry.path, key) {
            Ok(v) => Ok(Some(v)),
            // No such sysctl: the interface is gone, or the kernel has no such switch.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(self.unreadable(format!("{key} in netns {}", entry.label), &e)),
        };
        self.sysctls
            .insert((netns, key.to_owned()), (value.clone(), Instant::now()));
        value
    }

    pub(super) fn read_ruleset(&mut self, netns: u32) -> Lookup<Arc<Ruleset>> {
        if let Some((rs, at)) = self.rulesets.get(&netns)
            && at.elapsed() < FACT_TTL
        {
            return rs.clone();
        }
        let Some(entry) = self.netns(netns) else {
            return Ok(None);
        };
        let bridges = self
            .table(netns, |_| true)
            .is_some_and(|t| t.links.values().any(|l| l.kind == "bridge"));
        let what = || format!("the ruleset of netns {}", entry.label);
        let rs = match netns::run_in(&entry.path, move || read_ruleset(bridges)) {
            Ok(Ok(rs)) => Ok(rs.map(Arc::new)),
            Ok(Err(e)) => Err(self.unreadable(what(), &e)),
            Err(e) => Err(self.unreadable(what(), &e)),
        };
        if let Ok(Some(rs)) = &rs {
            self.baselines
                .entry(netns)
                .or_insert_with(|| (rs.clone(), Instant::now()));
        }
        self.rulesets.insert(netns, (rs.clone(), Instant::now()));
        rs
    }

    pub(super) fn read_route_rules(&mut self, netns: u32) -> Lookup<Arc<[RouteRule]>> {
        if let Some((r, at)) = self.route_rules.get(&netns)
            && at.elapsed() < FACT_TTL
        {
            return r.clone();
        }
        let Some(entry) = self.netns(netns) else {
            return Ok(None);
        };
        let what = || format!("the routing rules of netns {}", entry.label);
        let rules = match netns::run_in(&entry.path, routes::read_rules) {
            Ok(Ok(r)) => Ok(Some(r.into())),
            Ok(Err(e)) => Err(self.unreadable(what(), &e)),
            Err(e) => Err(self.unreadable(what(), &e)),
        };
        self.route_rules
            .insert(netns, (rules.clone(), Instant::now()));
        rules
    }

    pub(super) fn read_route(
        &mut self,
        netns: u32,
        to: std::net::Ipv4Addr,
        from: std::net::Ipv4Addr,
    ) -> Lookup<RouteLookup> {
        if let Some((r, at)) = self.routes.get(&(netns, to, from))
            && at.elapsed() < FACT_TTL
        {
            return r.clone();
        }
        let Some(entry) = self.netns(netns) else {
            return Ok(None);
        };
        let what = || format!("the route to {to} in netns {}", entry.label);
        let route = match netns::run_in(&entry.path, move || routes::get(to, from)) {
            Ok(Ok(r)) => Ok(Some(r)),
            Ok(Err(e)) => Err(self.unreadable(what(), &e)),
            Err(e) => Err(self.unreadable(what(), &e)),
        };
        self.routes
            .insert((netns, to, from), (route.clone(), Instant::now()));
        route
    }

    /// Says, once per fact, that it could not be read, and returns it as an answer.
    pub(super) fn unreadable(&mut self, what: String, why: &dyn std::fmt::Display) -> Unreadable {
        let u = Unreadable {
            what,
            why: why.to_string(),
        };
        if self.warned.insert(u.what.clone()) {
            tracing::warn!("{u}");
        }
        u
    }
}
