//! `--hooks drops` with a filter on a port Docker publishes. The kernel programs see a packet
//! only as it dies, and past Docker's DNAT it carries the container's address and port;
//! conntrack's record of the published port (`HopEvent::entered_dport`) lasts only up to the
//! container's veth. So the kernel filter also matches the DNAT's target, and follows the
//! container as it restarts, changes address or goes away.

use tracer_common::{Filter, config::filter_field};

use crate::{host::HostFacts, net::Proto};

/// What a drops-only trace does with the filter it was given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Widening {
    /// Not a filter on a published port: used as given.
    AsGiven,
    /// Also matches traffic to the published port's DNAT target.
    Widened {
        /// Boxed: the filter is larger than the other variants together.
        filter: Box<Filter>,
        /// `172.17.0.2:80 (container web)`.
        target: String,
    },
    /// On a published port, but the filter cannot say "or to the container" (it has other
    /// fields, or the port leads to more than one place): a warning naming `--container`.
    Cannot(String),
}

impl Widening {
    /// The filter the kernel should use.
    pub fn filter(&self, given: &Filter) -> Filter {
        match self {
            Self::Widened { filter, .. } => **filter,
            Self::AsGiven | Self::Cannot(_) => *given,
        }
    }
}

/// Decides how `given` is widened while the host publishes its port. `conntrack`: the kernel
/// programs can read conntrack's header, so drops on the host after the DNAT match anyway.
pub fn widen(given: &Filter, facts: &mut dyn HostFacts, conntrack: bool) -> Widening {
    if given.fields & filter_field::DPORT == 0 || given.n_dests != 0 {
        return Widening::AsGiven;
    }
    let protos: &[Proto] = if given.fields & filter_field::PROTO != 0 {
        &[Proto::from_number(given.proto)]
    } else {
        &[Proto::TCP, Proto::UDP]
    };
    let mut targets: Vec<_> = protos
        .iter()
        .filter_map(|&proto| facts.published(None, given.dport, proto))
        .collect();
    targets.dedup_by(|a, b| {
        (a.container_addr, a.container_port, &a.container.name)
            == (b.container_addr, b.container_port, &b.container.name)
    });
    let Some(first) = targets.first() else {
        return Widening::AsGiven;
    };
    let (dport, port, name) = (given.dport, first.container_port, &first.container.name);
    let addr = match first.container_addr {
        _ if given.fields & !(filter_field::PROTO | filter_field::DPORT) != 0 => {
            Err("with --host or --sport the filter cannot also follow them there")
        }
        _ if targets.len() > 1 => {
            Err("it is published to more than one place (TCP and UDP differ)")
        }
        None => Err("the container has no IPv4 address to match"),
        Some(addr) => Ok(addr),
    };
    match addr {
        Ok(addr) => {
            let mut filter = *given;
            let proto = first.proto.number();
            match filter.add_dest(addr.octets(), port, proto) {
                Ok(()) => Widening::Widened {
                    filter: Box::new(filter),
                    target: format!("{addr}:{port} (container {name})"),
                },
                // The filter as given has no destinations: impossible.
                Err(_) => Widening::AsGiven,
            }
        }
        Err(why) => {
            let host_side = if conntrack {
                "drops on the host match by where conntrack says they were sent, but "
            } else {
                ""
            };
            Widening::Cannot(format!(
                "--hooks drops sees packets as they die: port {dport} is published to port {port} of container {name}; {host_side}past Docker's DNAT they carry port {port} and {why}: --container {name} matches those"
            ))
        }
    }
}

/// The kernel filter of a drops-only session: the given one, widened while its port is
/// published, re-resolved as containers change.
pub struct DropsFilter {
    given: Filter,
    now: Widening,
    conntrack: bool,
}

impl DropsFilter {
    pub fn new(given: Filter, conntrack: bool) -> Self {
        Self {
            given,
            now: Widening::AsGiven,
            conntrack,
        }
    }

    /// `172.17.0.2:80 (container web)` while widened.
    pub fn target(&self) -> Option<&str> {
        match &self.now {
            Widening::Widened { target, .. } => Some(target),
            _ => None,
        }
    }

    /// Resolves again; the filter to load when it changed.
    pub fn refresh(&mut self, facts: &mut dyn HostFacts) -> Option<Filter> {
        let next = widen(&self.given, facts, self.conntrack);
        if next == self.now {
            return None;
        }
        let before = self.now.filter(&self.given);
        self.now = next;
        self.log();
        let after = self.now.filter(&self.given);
        (after != before).then_some(after)
    }

    /// A new filter given (a daemon's SIGHUP): the filter to load.
    pub fn replace(&mut self, given: Filter, facts: &mut dyn HostFacts) -> Filter {
        self.given = given;
        self.now = widen(&self.given, facts, self.conntrack);
        self.log();
        self.now.filter(&self.given)
    }

    fn log(&self) {
        match &self.now {
            Widening::Widened { target, .. } => tracing::info!(
                "--hooks drops: port {} is published to {target}; drops past Docker's DNAT carry that address and port, and match too",
                self.given.dport
            ),
            Widening::Cannot(why) => tracing::warn!("{why}"),
            Widening::AsGiven => tracing::info!("--hooks drops: the filter is used as given"),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use tracer_common::{Filter, config::filter_field};

    use super::*;
    use crate::host::fixture::FakeHost;

    fn dport(port: u16) -> Filter {
        let mut f = Filter::any();
        f.fields |= filter_field::DPORT;
        f.dport = port;
        f
    }

    #[test]
    fn a_published_port_also_matches_its_container_side() {
        let mut host = FakeHost::lab_with_docker();
        let w = widen(&dport(10001), &mut host, true);
        let Widening::Widened { filter, target } = &w else {
            panic!("10001 is published: {w:?}")
        };
        assert_eq!(target, "172.17.0.2:80 (container web-1)");
        // Before the DNAT, after it, and not the container's own traffic to port 80 elsewhere.
        assert!(filter.matches([203, 0, 113, 2], [203, 0, 113, 1], 6, true, 40000, 10001));
        assert!(filter.matches([203, 0, 113, 2], [172, 17, 0, 2], 6, true, 40000, 80));
        assert!(!filter.matches([172, 17, 0, 2], [198, 51, 100, 7], 6, true, 40000, 80));
        assert_eq!(widen(&dport(10002), &mut host, true), Widening::AsGiven);
        assert_eq!(
            widen(&Filter::any(), &mut host, true),
            Widening::AsGiven,
            "no port, nothing to widen"
        );
    }

    #[test]
    fn a_filter_with_more_than_the_port_is_warned_about_instead() {
        let mut host = FakeHost::lab_with_docker();
        let mut f = dport(10001);
        f.fields |= filter_field::HOST;
        f.host = [203, 0, 113, 2];
        let Widening::Cannot(w) = widen(&f, &mut host, true) else {
            panic!("--host cannot be widened")
        };
        assert!(w.contains("published to port 80 of container web-1"), "{w}");
        assert!(w.contains("where conntrack says they were sent"), "{w}");
        assert!(w.contains("--container web-1"), "{w}");
        let Widening::Cannot(w) = widen(&f, &mut host, false) else {
            panic!("--host cannot be widened")
        };
        assert!(!w.contains("conntrack"), "{w}");
    }

    #[test]
    fn the_session_filter_follows_the_container() {
        let mut host = FakeHost::lab_with_docker();
        let given = dport(10001);
        let mut d = DropsFilter::new(given, true);
        let widened = d.refresh(&mut host).expect("widened at start");
        assert_eq!(widened.dests[0].addr, [172, 17, 0, 2]);
        assert_eq!(d.refresh(&mut host), None, "nothing changed");
        // The container restarts with another address.
        for p in &mut host.published {
            p.container_addr = Some(Ipv4Addr::new(172, 17, 0, 9));
        }
        assert_eq!(
            d.refresh(&mut host).map(|f| f.dests[0].addr),
            Some([172, 17, 0, 9])
        );
        assert_eq!(d.target(), Some("172.17.0.9:80 (container web-1)"));
        // It goes away: back to the filter as given.
        host.published.clear();
        assert_eq!(d.refresh(&mut host), Some(given));
        assert_eq!(d.target(), None);
        // A new filter (SIGHUP) is loaded as given when nothing publishes its port.
        assert_eq!(d.replace(dport(10009), &mut host), dport(10009));
    }
}
