//! Floods summarised in the kernel: a matched flow whose packets keep taking the same way and
//! ending the same way is counted, not streamed.
//!
//! Each flow (a client address sending to one service: source and destination address,
//! protocol, destination port; the source port left out so a SYN flood from ephemeral ports
//! is one flow) gets `Filter::flood_budget` packets a second traced in full ("loud"). Each
//! hop of a loud packet writes its running path signature ([`step`] over [`hop_code`]s) into
//! the flow's [`FlowState::path`]; a later packet of the flow past the budget is "quiet": at
//! each hop its own running signature is compared with the flow's at the same index, and as
//! long as they agree nothing is emitted. A quiet packet that ends where the flow's loud ones
//! ended is counted in `SUMMARIES` under ([`SummaryKey`]: flow, final signature); one that
//! parts from them is announced by a `Resumed` record (how many hops it shared), traced
//! in full from there, and its way joins the flow's: the next packet like it is counted. Since a signature folds in every hop before it, equality at one index
//! means the whole way there was the same.

/// Hops of a flow's reference path kept; a quiet packet going further is traced from there.
pub const REF_HOPS: usize = 16;

/// Default `Filter::flood_budget`: full packets per flow per second (`--packets-per-flow`).
pub const DEFAULT_BUDGET: u16 = 20;

/// Log2 of the budget's window in nanoseconds (2^30 ns, about 1.07 s: a shift, not a
/// division, on the hot path).
pub const WINDOW_SHIFT: u32 = 30;

/// The flow a packet is summarised under, from the header of its first traced hop.
#[inline(always)]
pub const fn flow_id(saddr: [u8; 4], daddr: [u8; 4], proto: u8, dport: u16) -> u32 {
    let a = u32::from_ne_bytes(saddr).wrapping_mul(0x9e37_79b1);
    let b = (a ^ u32::from_ne_bytes(daddr)).wrapping_mul(0x85eb_ca6b);
    let c = (b ^ ((proto as u32) << 16 | dport as u32)).wrapping_mul(0xc2b2_ae35);
    let id = c ^ (c >> 15);
    // 0 means "not summarising" where a packet's flow is kept.
    if id == 0 { 1 } else { id }
}

/// What makes one hop the same as another's: where (hook kind, device and its namespace, the
/// bridge or veth peer, the netfilter hook), how the packet looked (its header after NAT as
/// [`flow_id`] folds it, without the source port, conntrack's signature, its TCP flags; the
/// header and flags are left out (0) where a followed packet is freed, which its last hop
/// already told) and, for a drop, why and where it was freed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HopShape {
    pub kind: u8,
    pub ifindex: u32,
    pub netns: u32,
    pub peer_ifindex: u32,
    pub nf_hook: u8,
    pub nf_family: u8,
    pub tcp_flags: u8,
    pub conntrack: u8,
    pub tuple: u32,
    pub drop_reason: u32,
    pub location: u64,
}

/// One hop folded into a value ([`HopShape`]).
#[inline(always)]
pub const fn hop_code(s: &HopShape) -> u32 {
    let mut x = (s.kind as u32) << 24
        | (s.nf_hook as u32) << 16
        | (s.nf_family as u32) << 8
        | s.tcp_flags as u32;
    x = mix(x ^ s.ifindex);
    x = mix(x ^ s.netns);
    x = mix(x ^ s.peer_ifindex);
    x = mix(x ^ s.tuple ^ (s.conntrack as u32) << 24);
    x = mix(x ^ s.drop_reason);
    mix(x ^ s.location as u32 ^ (s.location >> 32) as u32)
}

/// The running signature after one more hop: every hop before is folded in. Never zero (a
/// zero in [`FlowState::path`] means "no reference here yet"), and even: the kernel returns
/// it with a flag in bit 0 (`tracer-ebpf`'s `flood::walk`).
#[inline(always)]
pub const fn step(path: u32, code: u32) -> u32 {
    let x = mix(path.rotate_left(5) ^ code) & !1;
    if x == 0 { 2 } else { x }
}

#[inline(always)]
const fn mix(x: u32) -> u32 {
    let x = (x ^ (x >> 16)).wrapping_mul(0x7feb_352d);
    let x = (x ^ (x >> 15)).wrapping_mul(0x846c_a68b);
    x ^ (x >> 16)
}

/// A flow's budget and reference ways, in the kernel's `FLOWS` map, keyed by [`state_key`]
/// (LRU: an evicted flow starts over with full packets).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowState {
    /// The budget's window (`ktime >> WINDOW_SHIFT`) and the full packets started in it.
    pub window: u64,
    pub full: u32,
    pub _pad: u32,
    /// The running signatures at each hop of the flow's full packets (budgeted, or quiet ones
    /// that parted from the flow's way there), the two latest distinct ones (0: none yet): a flood whose packets end two ways in turn (delivered, or
    /// dropped by a full socket buffer) stays summarised.
    pub path: [[u32; 2]; REF_HOPS],
}

impl FlowState {
    pub const ZERO: Self = Self {
        window: 0,
        full: 0,
        _pad: 0,
        path: [[0; 2]; REF_HOPS],
    };
}

/// The `FLOWS` key of a packet: its flow and its first hop's signature, so the kinds of
/// packet one flow sends in turn (a SYN flood's SYNs and the client's RSTs) each have their
/// budget and their ways.
#[inline(always)]
pub const fn state_key(flow: u32, first: u32) -> u32 {
    mix(flow ^ first.rotate_left(16))
}

/// A flow and the way its packets ended: a key of `SUMMARIES`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SummaryKey {
    pub flow: u32,
    /// The final running signature.
    pub path: u32,
}

/// Quiet packets counted for a [`SummaryKey`], cumulative: userspace reads the differences.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SummaryCount {
    pub packets: u64,
    /// `skb->len` at each packet's first hop, summed.
    pub bytes: u64,
    /// `bpf_ktime_get_ns` at the first hop of the first and of the latest packet counted (the
    /// time it was first seen, kept since: reading the clock again where it ends costs a helper
    /// call per packet, and a flood's rate does not notice a packet's microseconds in transit).
    pub first_ns: u64,
    pub last_ns: u64,
    /// The first hop's time of the latest loud packet that ended this way: the packet whose
    /// story the counted ones repeat (0: none ended this way yet, as when a quiet packet was
    /// freed unseen where loud ones ended in a tracepoint).
    pub reference: u64,
}

/// What the kernel counts every traced drop under, whether its event reached userspace or not
/// (`DROPS`): a full ring loses which JSON lines are written, never a count.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DropKey {
    /// The kfree_skb location (the function that freed it).
    pub location: u64,
    /// `enum skb_drop_reason`.
    pub reason: u32,
    /// The device the skb was on and its namespace (0 without one).
    pub ifindex: u32,
    pub netns: u32,
    pub _pad: u32,
}

#[cfg(feature = "user")]
// SAFETY: repr(C), no implicit padding, every bit pattern valid.
unsafe impl aya::Pod for DropKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C), no implicit padding, every bit pattern valid.
unsafe impl aya::Pod for SummaryKey {}
#[cfg(feature = "user")]
// SAFETY: as above.
unsafe impl aya::Pod for SummaryCount {}

#[cfg(test)]
mod tests {
    use super::*;

    fn drop_at(ifindex: u32, reason: u32) -> HopShape {
        HopShape {
            kind: 2,
            ifindex,
            netns: 4026531840,
            drop_reason: reason,
            location: 0xffff_ffff_8100_1234,
            ..HopShape::default()
        }
    }

    #[test]
    fn the_source_port_is_not_part_of_a_flow() {
        let a = flow_id([198, 51, 100, 7], [10, 88, 0, 4], 6, 8443);
        assert_eq!(a, flow_id([198, 51, 100, 7], [10, 88, 0, 4], 6, 8443));
        assert_ne!(a, flow_id([198, 51, 100, 7], [10, 88, 0, 4], 17, 8443));
        assert_ne!(a, flow_id([198, 51, 100, 7], [10, 88, 0, 4], 6, 8444));
        assert_ne!(a, flow_id([198, 51, 100, 8], [10, 88, 0, 4], 6, 8443));
    }

    #[test]
    fn a_signature_tells_every_hop_and_its_order() {
        let rx = HopShape {
            kind: 0,
            ifindex: 3,
            netns: 4026531840,
            tcp_flags: 0x02,
            tuple: 0x00ab_cdef,
            ..HopShape::default()
        };
        let drop = drop_at(3, 16);
        let one = step(step(0, hop_code(&rx)), hop_code(&drop));
        assert_eq!(one, step(step(0, hop_code(&rx)), hop_code(&drop)));
        // Another reason, place, device, flag or NAT: another signature.
        for other in [
            drop_at(3, 5),
            drop_at(4, 16),
            HopShape {
                location: 0xffff_ffff_8100_9999,
                ..drop
            },
            HopShape {
                conntrack: 0x81,
                ..drop
            },
        ] {
            assert_ne!(
                one,
                step(step(0, hop_code(&rx)), hop_code(&other)),
                "{other:?}"
            );
        }
        let ack = HopShape {
            tcp_flags: 0x10,
            ..rx
        };
        assert_ne!(one, step(step(0, hop_code(&ack)), hop_code(&drop)));
        let natted = HopShape {
            tuple: 0x0012_3456,
            ..rx
        };
        assert_ne!(one, step(step(0, hop_code(&natted)), hop_code(&drop)));
        // The same hops in another order differ too.
        assert_ne!(
            step(step(0, hop_code(&rx)), hop_code(&drop)),
            step(step(0, hop_code(&drop)), hop_code(&rx))
        );
        assert_ne!(step(0, 0), 0, "never the empty reference");
        assert_eq!(step(7, 99) & 1, 0, "bit 0 is the kernel's flag");
    }

    #[test]
    fn layouts_shared_with_the_kernel_stay_put() {
        use core::mem::size_of;
        assert_eq!(size_of::<FlowState>(), 16 + 8 * REF_HOPS);
        assert_eq!(size_of::<SummaryKey>(), 8);
        assert_eq!(size_of::<SummaryCount>(), 40);
        assert_eq!(size_of::<DropKey>(), 24);
    }
}
