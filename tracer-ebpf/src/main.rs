//! pathtrace's kernel programs: thin entry points, one per hook point. Each hands the skb to
//! [`hop::record`], which filters, tracks and emits one [`HopEvent`] per hop.
//!
//! A host build (cargo's default target) compiles to an empty `main`; the real object is built
//! for `bpfel-unknown-none` by `tracer/build.rs`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// `atomic_xadd`: the BPF target offers no atomic read-modify-write methods (see maps.rs).
#![cfg_attr(target_arch = "bpf", feature(core_intrinsics))]
#![cfg_attr(target_arch = "bpf", allow(internal_features))]

#[cfg(target_arch = "bpf")]
mod flood;
#[cfg(target_arch = "bpf")]
mod hop;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod site;
#[cfg(target_arch = "bpf")]
mod skb;

#[cfg(target_arch = "bpf")]
mod netfilter;

/// tp_btf programs: every backend attaches these (kfree_skb stays the drop source everywhere).
#[cfg(target_arch = "bpf")]
mod tracepoints {
    use aya_ebpf::{
        macros::{btf_tracepoint, map},
        programs::{BtfTracePointContext, tracing::StackIdContext},
    };
    use tracer_common::{HopKind, config::option};

    use crate::{
        hop::{build, emit, record},
        maps::{STACKS, Scratch, filter},
        site::Site,
        skb::Access,
    };

    // Each program's event buffer (`hop::scratch`).
    #[map]
    static EV_RECV: Scratch = Scratch::with_max_entries(1, 0);
    #[map]
    static EV_XMIT: Scratch = Scratch::with_max_entries(1, 0);
    #[map]
    static EV_KFREE: Scratch = Scratch::with_max_entries(1, 0);
    #[map]
    static EV_CONSUME: Scratch = Scratch::with_max_entries(1, 0);
    #[map]
    static EV_CONSUME_NL: Scratch = Scratch::with_max_entries(1, 0);

    /// `trace_netif_receive_skb(skb)`: a device received the packet; `skb->data` is at L3.
    #[btf_tracepoint(function = "netif_receive_skb")]
    pub fn tp_netif_receive_skb(ctx: BtfTracePointContext) -> i32 {
        let skb: u64 = ctx.arg(0);
        record(
            skb,
            Site {
                l3_at_data: true,
                access: Access::Direct,
                ..Site::new(HopKind::Receive)
            },
            &EV_RECV,
        );
        0
    }

    /// `trace_net_dev_start_xmit(skb, dev)`: a device starts transmitting the packet.
    #[btf_tracepoint(function = "net_dev_start_xmit")]
    pub fn tp_net_dev_start_xmit(ctx: BtfTracePointContext) -> i32 {
        let skb: u64 = ctx.arg(0);
        let dev: u64 = ctx.arg(1);
        record(
            skb,
            Site {
                dev,
                access: Access::Direct,
                ..Site::new(HopKind::Transmit)
            },
            &EV_XMIT,
        );
        0
    }

    /// `trace_kfree_skb(skb, location, reason, ...)`: the packet was dropped.
    // Inlined into the macro's entry point: left to LLVM, this body (the largest of the
    // tracepoints) became a subprogram, and the call into it cost every freed skb ~12 ns.
    #[btf_tracepoint(function = "kfree_skb")]
    #[inline(always)]
    pub fn tp_kfree_skb(ctx: BtfTracePointContext) -> i32 {
        let skb: u64 = ctx.arg(0);
        let location: u64 = ctx.arg(1);
        let reason: u64 = ctx.arg(2);
        let site = Site {
            location,
            drop_reason: reason as u32,
            frees: true,
            access: Access::Direct,
            ..Site::new(HopKind::Drop)
        };
        if let Some(ev) = build(skb, site, &EV_KFREE) {
            crate::netfilter::drop_inside_hook(skb);
            // The stack that freed it, when asked for (`--stack`): the kernel's own answer to
            // "who dropped this", beyond the reason and the one return address.
            if filter().is_some_and(|f| f.options & option::STACK != 0)
                && let Ok(id) = ctx.get_stackid(&STACKS, 0)
            {
                ev.stack = id as u32 + 1;
            }
            emit(ev);
        }
        0
    }

    /// `trace_consume_skb(skb, location)` (kernels >= 6.3): freed without error.
    #[btf_tracepoint(function = "consume_skb")]
    pub fn tp_consume_skb(ctx: BtfTracePointContext) -> i32 {
        let skb: u64 = ctx.arg(0);
        let location: u64 = ctx.arg(1);
        record(
            skb,
            Site {
                location,
                frees: true,
                only_tracked: true,
                access: Access::Direct,
                ..Site::new(HopKind::Consume)
            },
            &EV_CONSUME,
        );
        0
    }

    /// `trace_consume_skb(skb)` (older kernels: no location argument to read).
    #[btf_tracepoint(function = "consume_skb")]
    pub fn tp_consume_skb_noloc(ctx: BtfTracePointContext) -> i32 {
        let skb: u64 = ctx.arg(0);
        record(
            skb,
            Site {
                frees: true,
                only_tracked: true,
                access: Access::Direct,
                ..Site::new(HopKind::Consume)
            },
            &EV_CONSUME_NL,
        );
        0
    }
}

/// fentry/fexit programs: function hooks through BPF trampolines (cheapest, needs BTF and a
/// kernel that allows tracing programs).
#[cfg(target_arch = "bpf")]
mod fentry {
    use aya_ebpf::{
        macros::{fentry, fexit, map},
        programs::{FEntryContext, FExitContext},
    };

    use crate::{hop, maps::Scratch, netfilter};

    // Each program's event buffer (`hop::scratch`).
    #[map]
    static EV_FE_BRFWD: Scratch = Scratch::with_max_entries(1, 0);
    #[map]
    static EV_FE_VETH: Scratch = Scratch::with_max_entries(1, 0);

    /// `int nf_hook_slow(struct sk_buff *skb, struct nf_hook_state *state, ...)`.
    #[fentry]
    pub fn fentry_nf_hook_slow(ctx: FEntryContext) -> i32 {
        let skb: u64 = ctx.arg(0);
        let state: u64 = ctx.arg(1);
        netfilter::enter(skb, skb, state, false);
        0
    }

    /// The return value follows the four arguments.
    #[fexit]
    pub fn fexit_nf_hook_slow(ctx: FExitContext) -> i32 {
        let skb: u64 = ctx.arg(0);
        let ret: i32 = ctx.arg(4);
        netfilter::exit(skb, ret as i64, false);
        0
    }

    /// `void br_forward(const struct net_bridge_port *to, struct sk_buff *skb, ...)`.
    #[fentry]
    pub fn fentry_br_forward(ctx: FEntryContext) -> i32 {
        hop::bridge_forward(ctx.arg(0), ctx.arg(1), &EV_FE_BRFWD);
        0
    }

    /// `netdev_tx_t veth_xmit(struct sk_buff *skb, struct net_device *dev)`.
    #[fentry]
    pub fn fentry_veth_xmit(ctx: FEntryContext) -> i32 {
        hop::veth_transmit(ctx.arg(0), ctx.arg(1), &EV_FE_VETH);
        0
    }
}

/// kprobe/kretprobe programs: the same hooks where fentry is not available.
#[cfg(target_arch = "bpf")]
mod kprobes {
    use aya_ebpf::{
        macros::{kprobe, kretprobe, map},
        programs::{ProbeContext, RetProbeContext},
    };

    use crate::{hop, maps::Scratch, netfilter};

    // Each program's event buffer (`hop::scratch`).
    #[map]
    static EV_KP_BRFWD: Scratch = Scratch::with_max_entries(1, 0);
    #[map]
    static EV_KP_VETH: Scratch = Scratch::with_max_entries(1, 0);

    /// kretprobes see no arguments: entry and return are paired by `netfilter::task_key`.
    #[kprobe]
    pub fn kprobe_nf_hook_slow(ctx: ProbeContext) -> u32 {
        let (Some(skb), Some(state)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) else {
            return 0;
        };
        netfilter::enter(netfilter::task_key(), skb, state, true);
        0
    }

    #[kretprobe]
    pub fn kretprobe_nf_hook_slow(ctx: RetProbeContext) -> u32 {
        let ret: i32 = ctx.ret();
        netfilter::exit(netfilter::task_key(), ret as i64, true);
        0
    }

    #[kprobe]
    pub fn kprobe_br_forward(ctx: ProbeContext) -> u32 {
        if let (Some(port), Some(skb)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
            hop::bridge_forward(port, skb, &EV_KP_BRFWD);
        }
        0
    }

    #[kprobe]
    pub fn kprobe_veth_xmit(ctx: ProbeContext) -> u32 {
        if let (Some(skb), Some(dev)) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1)) {
            hop::veth_transmit(skb, dev, &EV_KP_VETH);
        }
        0
    }
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any reachable panic path, so this is never executed.
    loop {}
}

#[cfg(target_arch = "bpf")]
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
