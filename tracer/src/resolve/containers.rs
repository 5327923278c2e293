//! Container answers from the Docker index: whose namespace a device is in, which container a
//! host-side veth leads to, and which ports are published where.

use super::{Resolver, docker::ContainerIndex};
use crate::host::{ContainerDevice, ContainerRef, HostFacts, Published};

impl Resolver {
    /// The index generation and the container whose namespace `netns` is, without copying
    /// the list: this runs for every hop. `None` when no container runs.
    pub(super) fn container_in(&self, netns: u32) -> Option<(u64, Option<ContainerRef>)> {
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
    pub(super) fn container_namespaces(&self) -> Vec<(u32, ContainerRef)> {
        let Some(Ok(index)) = self.containers.as_ref().map(|i| i.read()) else {
            return Vec::new();
        };
        index
            .containers
            .iter()
            .filter_map(|c| Some((c.netns?, c.container.clone())))
            .collect()
    }

    /// The container's name and init pid when `netns` is a container's.
    pub(super) fn container_of_netns(&self, netns: u32) -> Option<(String, i64)> {
        let idx = self.containers.as_ref()?.read().ok()?;
        idx.by_netns(netns)
            .map(|c| (c.container.name.clone(), c.pid))
    }

    /// A device in a container's namespace, or the host side of a container's veth (found
    /// through its wiring, remembered for one index generation).
    pub(super) fn device_of_container(
        &mut self,
        netns: u32,
        ifindex: u32,
    ) -> Option<ContainerDevice> {
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

    /// A question about published ports, asked of the container index.
    pub(super) fn publication(
        &self,
        ask: impl FnOnce(&ContainerIndex) -> Option<Published>,
    ) -> Option<Published> {
        ask(&*self.containers.as_ref()?.read().ok()?)
    }
}
