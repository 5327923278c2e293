//! What an entry point knows about the hook it runs at, and how a netfilter site is completed
//! from its `nf_hook_state` once its skb is known to be followed.

use tracer_common::HopKind;

use crate::{
    maps::off,
    skb::{Access, field},
};

const NF_INET_FORWARD: u8 = 2;
const NF_INET_LOCAL_OUT: u8 = 3;
const NF_INET_POST_ROUTING: u8 = 4;

/// What the entry point knows about the hook it runs at.
#[derive(Clone, Copy)]
pub struct Site {
    pub kind: HopKind,
    /// The device argument, when the hook has one; otherwise `skb->dev` is used.
    pub dev: u64,
    /// A second device reported as the peer (veth peer, bridge egress port, FORWARD output).
    pub peer_dev: u64,
    /// Kernel address that freed the skb (drops and consumes).
    pub location: u64,
    pub drop_reason: u32,
    pub nf_hook: u8,
    pub nf_family: u8,
    /// `struct nf_hook_state *` at `nf_hook_slow`: hook, family and devices are read from it
    /// only once the skb is known to be followed, so packets nobody asked for pay nothing here.
    pub nf_state: u64,
    /// `skb->data` points at the L3 header here.
    pub l3_at_data: bool,
    /// The skb is freed at this hook: forget it after emitting.
    pub frees: bool,
    /// Emit only for skbs already tracked: a hook this hot (consume_skb) must not pay for
    /// header reads, and a packet first seen as it is freed normally tells nothing.
    pub only_tracked: bool,
    /// How the skb pointer, and the devices above, may be read (BTF-typed or not): a site
    /// whose skb is BTF-typed must have typed devices too (tracepoint and fentry arguments,
    /// or fields loaded from them), never an address that came from a helper.
    pub access: Access,
}

impl Site {
    pub const fn new(kind: HopKind) -> Self {
        Self {
            kind,
            dev: 0,
            peer_dev: 0,
            location: 0,
            drop_reason: 0,
            nf_hook: 0,
            nf_family: 0,
            nf_state: 0,
            l3_at_data: false,
            frees: false,
            only_tracked: false,
            access: Access::Probe,
        }
    }

    /// The device this hop is at: the hook's argument, or `skb->dev`.
    #[inline(always)]
    pub fn device(&self, skb: u64) -> u64 {
        if self.dev != 0 {
            self.dev
        } else {
            field::<u64>(skb, off!(skb_dev), self.access).unwrap_or(0)
        }
    }

    /// Completes a netfilter site from its `nf_hook_state`: the hook, the family, and the
    /// devices (output at OUTPUT/POSTROUTING; input, with the output as peer, at FORWARD).
    /// Other sites are complete as built. Called only for skbs that are followed.
    #[inline(always)]
    pub fn completed(self) -> Self {
        let site = self;
        let state = site.nf_state;
        if state == 0 {
            return site;
        }
        let hook = field::<u8>(state, off!(nf_state_hook), site.access).unwrap_or(0);
        let pf = field::<u8>(state, off!(nf_state_pf), site.access).unwrap_or(0);
        let input = field::<u64>(state, off!(nf_state_in), site.access).unwrap_or(0);
        let output = field::<u64>(state, off!(nf_state_out), site.access).unwrap_or(0);
        let (dev, peer_dev) = match hook {
            NF_INET_LOCAL_OUT | NF_INET_POST_ROUTING => (output, 0),
            NF_INET_FORWARD => (input, output),
            _ => (input, 0),
        };
        Site {
            dev,
            peer_dev,
            nf_hook: hook,
            nf_family: pf,
            ..site
        }
    }
}
