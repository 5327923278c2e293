//! Walking a dropped packet through the hooks of the namespace it died in, in kernel order,
//! with the header and interfaces it had at each: the hook (when no `nf_hook_slow` hop says
//! which) and the rule or policy that dropped it.

use super::fix::Where;
use crate::events::ipv4;
use crate::{
    diagnose::{Case, sysctl_is},
    events::{Hop, Tuple},
    host::HostFacts,
    net::{Family, Netfilter},
    ruleset::{Hook, HookOutcome, RuleVerdict, Ruleset},
};

/// Where the packet was when netfilter judged it.
pub(super) struct Walked {
    pub outcome: HookOutcome,
    /// (in, out) interfaces at that hook.
    pub in_if: Option<String>,
    pub out_if: Option<String>,
    /// The hook was observed (nf_hook_slow hop), not inferred.
    pub observed: bool,
    /// Same-bridge traffic seen by iptables through br_netfilter.
    pub bridged: Option<String>,
    /// Decided by the nft `bridge` family (ebtables' successor), not by the IP hooks.
    pub bridge_family: bool,
}

impl Walked {
    pub fn place(&self) -> Where<'_> {
        Where {
            in_if: self.in_if.as_deref(),
            out_if: self.out_if.as_deref(),
            path: &self.outcome.path,
            ..Where::default()
        }
    }
}

/// Walks the packet through the hooks of `netns` until a hook drops it: only the hook the
/// backend saw return drop (`nf`), else from PREROUTING (or OUTPUT for a packet made there).
pub(super) fn walk(
    case: &Case<'_>,
    facts: &mut dyn HostFacts,
    rs: &Ruleset,
    netns: u32,
    nf: Option<Netfilter>,
) -> Option<Walked> {
    let observed = nf.and_then(|n| n.hook);
    let w = Walker::new(case, facts, rs, netns)?;
    // The bridge family's OUTPUT/POSTROUTING: a frame the bridge device sends to a port.
    if let Some(n) = nf
        && n.family == Family::Bridge
        && matches!(n.hook, Some(Hook::Output | Hook::Postrouting))
        && let Some(mut sent) = w.sent_by_bridge(facts, w.at_drop)
    {
        sent.observed = true;
        return Some(sent);
    }
    if let Some(bridged) = w.bridge_family(facts, observed) {
        return Some(bridged);
    }
    Some(match observed {
        Some(hook) => w.observed(facts, hook),
        None if w.input.is_none() => w.local_out(facts),
        None => w.routed(facts),
    })
}

/// What the walk knows of the packet in the namespace it died in.
struct Walker<'w> {
    case: &'w Case<'w>,
    rs: &'w Ruleset,
    netns: u32,
    /// The receive that brought it into the namespace; `None` when it was made there.
    input: Option<Hop>,
    /// The header as it entered the namespace.
    first: Tuple,
    /// The header at the drop.
    at_drop: Tuple,
    /// Input side: a bridge port hands the packet to iptables as the bridge itself.
    in_if: Option<String>,
    /// The bridge port it came in on (`--physdev-in`).
    physdev_in: Option<String>,
    /// The bridge of that port.
    bridge: Option<String>,
    /// The bridge port it was headed out of, when the drop says.
    out_port: Option<String>,
}

impl<'w> Walker<'w> {
    fn new(
        case: &'w Case<'w>,
        facts: &mut dyn HostFacts,
        rs: &'w Ruleset,
        netns: u32,
    ) -> Option<Self> {
        let input = case.input_hop().filter(|h| h.netns == netns);
        // The header as it entered the namespace: at its first hop there, or, when the drop
        // is the only one (`--hooks drops`), as conntrack recorded it before any NAT.
        let first = case
            .packet
            .hops
            .iter()
            .filter(|h| h.netns == netns)
            .find_map(Hop::entered_tuple)
            // Rulesets are evaluated for IPv4 packets so far (issue 25).
            .filter(|t| t.version() == 4)?;
        let at_drop = case.drop_hop().and_then(|h| h.tuple).unwrap_or(first);
        let (in_if, physdev_in, bridge, bridge_index) = match input {
            Some(h) => {
                let link = facts.interface(h.netns, h.ifindex);
                let master_index = link.as_ref().and_then(|l| l.master);
                let master = master_index.and_then(|m| facts.interface(h.netns, m));
                match (link, master) {
                    (Some(l), Some(m)) if m.kind == "bridge" => (
                        Some(m.name.clone()),
                        Some(l.name),
                        Some(m.name),
                        master_index,
                    ),
                    (Some(l), _) => (Some(l.name), None, None, None),
                    _ => (None, None, None, None),
                }
            }
            None => (None, None, None, None),
        };
        // The bridge sets skb->dev to the egress port before its FORWARD hook (__br_forward),
        // so a drop there names the port the frame was headed for: what `oifname` and
        // `--physdev-out` match. Any other device at the drop says nothing about a port.
        let out_port = case
            .drop_hop()
            .filter(|h| h.netns == netns && input.is_some_and(|i| i.ifindex != h.ifindex))
            .filter(|_| bridge_index.is_some())
            .and_then(|h| facts.interface(netns, h.ifindex))
            .filter(|l| l.master == bridge_index)
            .map(|l| l.name);
        Some(Self {
            case,
            rs,
            netns,
            input,
            first,
            at_drop,
            in_if,
            physdev_in,
            bridge,
            out_port,
        })
    }

    /// A frame that came in by a bridge port meets the bridge family's chains first (ebtables'
    /// successor, at priority -200), with the ports as its interfaces: PREROUTING, then
    /// FORWARD when it is bridged to another port, or INPUT when it is for the bridge itself
    /// (routed on, or taken here; a container's reply leaving its network).
    fn bridge_family(&self, facts: &mut dyn HostFacts, observed: Option<Hook>) -> Option<Walked> {
        let (b, port) = (self.bridge.as_ref()?, self.physdev_in.as_ref()?);
        if !observed.is_none_or(|h| matches!(h, Hook::Prerouting | Hook::Forward | Hook::Input)) {
            return None;
        }
        let bridged = self.route(facts, self.at_drop).as_deref() == Some(b.as_str());
        let (last, t, out_port) = if bridged {
            (Hook::Forward, self.at_drop, self.out_port.clone())
        } else {
            (Hook::Input, self.first, None)
        };
        let case = self.case;
        let mut p = case.at_hook(facts, self.netns, t, Some(port.clone()), out_port.clone())?;
        p.physdev_in = Some(port.clone());
        p.physdev_out = out_port.clone();
        for hook in [Hook::Prerouting, last] {
            if observed.is_some_and(|h| h != hook) {
                continue;
            }
            let outcome = self.rs.evaluate_bridge(hook, &p);
            if outcome.verdict != RuleVerdict::Accept {
                return Some(Walked {
                    outcome,
                    in_if: Some(port.clone()),
                    out_if: out_port,
                    observed: observed.is_some(),
                    bridged: Some(b.clone()),
                    bridge_family: true,
                });
            }
        }
        None
    }

    /// The backend saw the hook: evaluate just that one, with the header at the drop.
    fn observed(&self, facts: &mut dyn HostFacts, hook: Hook) -> Walked {
        let t = if hook == Hook::Prerouting || hook == Hook::Output {
            self.first
        } else {
            self.at_drop
        };
        let out_if = if matches!(hook, Hook::Forward | Hook::Postrouting | Hook::Output) {
            self.route(facts, t)
        } else {
            None
        };
        let (o, out_if) = self.at(facts, hook, t, out_if);
        let bridged = if hook == Hook::Forward {
            self.bridged_on(facts, &out_if)
        } else {
            None
        };
        self.result(o, out_if, bridged, true)
    }

    /// Locally generated: OUTPUT, then POSTROUTING.
    fn local_out(&self, facts: &mut dyn HostFacts) -> Walked {
        let out_if = self.route(facts, self.first);
        let (o, out_if) = self.at(facts, Hook::Output, self.first, out_if);
        if o.verdict != RuleVerdict::Accept {
            return self.result(o, out_if, None, false);
        }
        let (o, out_if) = self.at(facts, Hook::Postrouting, self.at_drop, out_if);
        self.result(o, out_if, None, false)
    }

    /// Received: PREROUTING (and its DNAT), then INPUT for a local destination, else FORWARD
    /// and POSTROUTING.
    fn routed(&self, facts: &mut dyn HostFacts) -> Walked {
        let (pre, _) = self.at(facts, Hook::Prerouting, self.first, None);
        if pre.verdict != RuleVerdict::Accept {
            return self.result(pre, None, None, false);
        }
        let mut t = self.first;
        if let Some((addr, port)) = pre.dnat {
            t.dst = addr.into();
            if let Some(p) = port {
                t.dport = p;
            }
        } else if self.at_drop != self.first {
            t = self.at_drop; // a rewrite the ruleset walk did not model, seen by the kernel
        }
        if ipv4(t.dst).and_then(|a| facts.is_local(self.netns, a)) == Some(true) {
            let (o, out_if) = self.at(facts, Hook::Input, t, None);
            return self.result(o, out_if, None, false);
        }
        let out_if = self.route(facts, t);
        let (fwd, out_if) = self.at(facts, Hook::Forward, t, out_if);
        if fwd.verdict != RuleVerdict::Accept {
            let bridged = self.bridged_on(facts, &out_if);
            return self.result(fwd, out_if, bridged, false);
        }
        let (post, out_if) = self.at(facts, Hook::Postrouting, t, out_if);
        if post.verdict != RuleVerdict::Accept {
            return self.result(post, out_if, None, false);
        }
        self.sent_by_bridge(facts, t)
            .unwrap_or_else(|| self.result(post, out_if, None, false))
    }

    /// Routed out of a bridge device: the bridge sends the frame to a port, through the bridge
    /// family's OUTPUT and POSTROUTING (no input device; the port as the output), where an
    /// nft `bridge` table (ebtables) may drop it. The port is the device at the drop.
    fn sent_by_bridge(&self, facts: &mut dyn HostFacts, t: Tuple) -> Option<Walked> {
        let bridge = facts
            .connected_route(self.netns, ipv4(t.dst)?)
            .filter(|l| l.kind == "bridge")?;
        let port = self
            .case
            .drop_hop()
            .filter(|h| h.netns == self.netns)
            .and_then(|h| facts.interface(self.netns, h.ifindex))
            .filter(|l| l.master == Some(bridge.ifindex))
            .map(|l| l.name);
        let mut p = self
            .case
            .at_hook(facts, self.netns, t, None, port.clone())?;
        p.physdev_out = port.clone();
        for hook in [Hook::Output, Hook::Postrouting] {
            let outcome = self.rs.evaluate_bridge(hook, &p);
            if outcome.verdict != RuleVerdict::Accept {
                return Some(Walked {
                    outcome,
                    in_if: None,
                    out_if: port,
                    observed: false,
                    bridged: Some(bridge.name),
                    bridge_family: true,
                });
            }
        }
        None
    }

    /// The packet at `hook` with header `t`, evaluated.
    fn at(
        &self,
        facts: &mut dyn HostFacts,
        hook: Hook,
        t: Tuple,
        out_if: Option<String>,
    ) -> (HookOutcome, Option<String>) {
        let Some(mut p) =
            self.case
                .at_hook(facts, self.netns, t, self.in_if.clone(), out_if.clone())
        else {
            // Not reached: a walker is made for IPv4 packets only (`Walker::new`).
            return (HookOutcome::unevaluated(hook), out_if);
        };
        if hook != Hook::Output {
            p.physdev_in = self.physdev_in.clone();
        } else {
            p.in_if = None;
        }
        if self.physdev_in.is_some() && out_if.is_some() && out_if == self.bridge {
            p.physdev_out = self.out_port.clone();
        }
        (self.rs.evaluate(hook, &p), out_if)
    }

    /// The device of the connected route to `t`'s destination.
    fn route(&self, facts: &mut dyn HostFacts, t: Tuple) -> Option<String> {
        facts
            .connected_route(self.netns, ipv4(t.dst)?)
            .map(|l| l.name)
    }

    /// The bridge, when the packet leaves by the bridge it came in on and br_netfilter hands
    /// that traffic to iptables.
    fn bridged_on(&self, facts: &mut dyn HostFacts, out: &Option<String>) -> Option<String> {
        let b = self.bridge.clone()?;
        (out.as_deref() == Some(b.as_str())
            && sysctl_is(facts, self.netns, "net.bridge.bridge-nf-call-iptables", "1"))
        .then_some(b)
    }

    fn result(
        &self,
        outcome: HookOutcome,
        out_if: Option<String>,
        bridged: Option<String>,
        observed: bool,
    ) -> Walked {
        Walked {
            outcome,
            in_if: self.in_if.clone(),
            out_if,
            observed,
            bridged,
            bridge_family: false,
        }
    }
}
