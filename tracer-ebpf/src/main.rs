//! pathtrace's kernel programs: thin entry points, one per hook point. Each hands the skb to
//! [`hop::record`], which filters, tracks and emits one [`HopEvent`] per hop.
//!
//! A host build (cargo's default target) compiles to an empty `main`; the real object is built
//! for `bpfel-unknown-none` by `tracer/build.rs`.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod hop;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod skb;

#[cfg(target_arch = "bpf")]
mod programs {
    use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
    use tracer_common::HopKind;

    use crate::hop::{Site, record};

    /// `trace_netif_receive_skb(skb)`: a device received the packet; `skb->data` is at L3.
    #[btf_tracepoint(function = "netif_receive_skb")]
    pub fn tp_netif_receive_skb(ctx: BtfTracePointContext) -> i32 {
        let skb: u64 = ctx.arg(0);
        record(
            skb,
            Site {
                kind: HopKind::Receive,
                l3_at_data: true,
                ..Site::default()
            },
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
                kind: HopKind::Transmit,
                dev,
                ..Site::default()
            },
        );
        0
    }

    /// `trace_kfree_skb(skb, location, reason, rx_sk)`: the packet was dropped.
    #[btf_tracepoint(function = "kfree_skb")]
    pub fn tp_kfree_skb(ctx: BtfTracePointContext) -> i32 {
        let skb: u64 = ctx.arg(0);
        let location: u64 = ctx.arg(1);
        let reason: u64 = ctx.arg(2);
        record(
            skb,
            Site {
                kind: HopKind::Drop,
                location,
                drop_reason: reason as u32,
                frees: true,
                ..Site::default()
            },
        );
        0
    }

    /// `trace_consume_skb(skb, location)`: the packet was freed without error.
    #[btf_tracepoint(function = "consume_skb")]
    pub fn tp_consume_skb(ctx: BtfTracePointContext) -> i32 {
        let skb: u64 = ctx.arg(0);
        let location: u64 = ctx.arg(1);
        record(
            skb,
            Site {
                kind: HopKind::Consume,
                location,
                frees: true,
                only_tracked: true,
                ..Site::default()
            },
        );
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
