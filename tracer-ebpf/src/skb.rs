//! Reading `sk_buff` and `net_device` fields through offsets taken from the running kernel's BTF.

use aya_ebpf::helpers::bpf_probe_read_kernel;
use tracer_common::event::fingerprint;

use crate::maps::off;

/// Reads a `T` at `base + off` with a helper call; `None` when the kernel refuses the read.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// How a hook may read the fields of the skb it was given.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// The pointer is BTF-typed (tp_btf, fentry arguments): plain loads, which the verifier
    /// checks against the kernel's BTF and the JIT emits as one instruction with a fault
    /// fixup. No helper call: this is what keeps the non-matching path cheap.
    Direct,
    /// Anything else (kprobe registers, map values): `bpf_probe_read_kernel`.
    Probe,
}

/// Reads a field of a kernel object through `access`. `off` must come from [`off!`] so the
/// verifier knows it as a constant.
#[inline(always)]
pub fn field<T: Copy>(base: u64, off: u32, access: Access) -> Option<T> {
    match access {
        // SAFETY: `base` is a BTF-typed kernel pointer and `off` a field offset read from the
        // running kernel's BTF; the verifier rejects the program otherwise, and a faulting
        // load yields zero instead of an oops.
        Access::Direct => {
            Some(unsafe { core::ptr::read_volatile((base + off as u64) as *const T) })
        }
        Access::Probe => read(base, off),
    }
}

/// The headers this tracer looks at.
#[derive(Clone, Copy, Default)]
pub struct Headers {
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub tcp_flags: u8,
    pub ipv4: bool,
    pub l4: bool,
    /// See `HopEvent::fingerprint`.
    pub fingerprint: u32,
}

const ETH_P_IP_BE: u16 = 0x0008; // htons(0x0800) as read on little-endian

/// An IPv4 header without options followed by the first 14 bytes of TCP (up to the flags) or
/// UDP: what one read fetches in the common case.
const IP_L4: usize = 20 + 14;

/// Reads the IPv4 and TCP/UDP headers: the skb fields through `access`, then the packet bytes
/// with one helper call (two when the IP header has options). At receive `skb->data` is the L3
/// header (the network header offset is reset only after the tracepoint); elsewhere
/// `head + network_header` is.
#[inline(always)]
pub fn headers(skb: u64, l3_at_data: bool, access: Access) -> Headers {
    let mut h = Headers::default();
    let Some(protocol) = field::<u16>(skb, off!(skb_protocol), access) else {
        return h;
    };
    if protocol != ETH_P_IP_BE {
        return h;
    }
    let l3 = if l3_at_data {
        match field::<u64>(skb, off!(skb_data), access) {
            Some(p) => p,
            None => return h,
        }
    } else {
        let Some(head) = field::<u64>(skb, off!(skb_head), access) else {
            return h;
        };
        let Some(nh) = field::<u16>(skb, off!(skb_network_header), access) else {
            return h;
        };
        if nh == 0xffff {
            return h;
        }
        head + nh as u64
    };
    if l3 == 0 {
        return h;
    }
    // version/ihl, tos, tot_len, id, frag_off, ttl, protocol, check, saddr, daddr, then L4.
    let mut buf = match read::<[u8; IP_L4]>(l3, 0) {
        Some(b) => b,
        None => match read::<[u8; 20]>(l3, 0) {
            // A short linear area at the end of a page: the IP header alone is still useful.
            Some(ip) => {
                let mut b = [0u8; IP_L4];
                b[..20].copy_from_slice(&ip);
                b
            }
            None => return h,
        },
    };
    let ip = &buf;
    if ip[0] >> 4 != 4 {
        return h;
    }
    h.ipv4 = true;
    h.proto = ip[9];
    let ip_id = u16::from_be_bytes([ip[4], ip[5]]);
    h.fingerprint = fingerprint::ip(ip_id, h.proto);
    h.saddr = [ip[12], ip[13], ip[14], ip[15]];
    h.daddr = [ip[16], ip[17], ip[18], ip[19]];
    let ihl = (ip[0] & 0x0f) as u32 * 4;
    let frag_off = u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff;
    if ihl < 20 || frag_off != 0 || (h.proto != 6 && h.proto != 17) {
        return h;
    }
    if ihl != 20 {
        // IP options push L4 further: a second read.
        match read::<[u8; 14]>(l3, ihl) {
            Some(l4) => buf[20..].copy_from_slice(&l4),
            None => return h,
        }
    }
    let l4 = &buf[20..];
    h.sport = u16::from_be_bytes([l4[0], l4[1]]);
    h.dport = u16::from_be_bytes([l4[2], l4[3]]);
    if h.proto == 6 {
        h.tcp_flags = l4[13];
        let seq = u32::from_be_bytes([l4[4], l4[5], l4[6], l4[7]]);
        let ack = u32::from_be_bytes([l4[8], l4[9], l4[10], l4[11]]);
        h.fingerprint = fingerprint::tcp(seq, ack, h.tcp_flags);
    } else {
        h.fingerprint = fingerprint::udp(ip_id, u16::from_be_bytes([l4[4], l4[5]]));
    }
    h.l4 = true;
    h
}

/// `(ifindex, netns inode)` of a `struct net_device *`; zeros for a null device.
#[inline(always)]
pub fn device(dev: u64) -> (u32, u32) {
    if dev == 0 {
        return (0, 0);
    }
    let ifindex = read::<u32>(dev, off!(dev_ifindex)).unwrap_or(0);
    let netns = match read::<u64>(dev, off!(dev_nd_net)) {
        Some(net) if net != 0 => read::<u32>(net, off!(net_ns_inum)).unwrap_or(0),
        _ => 0,
    };
    (ifindex, netns)
}
