//! Reading `sk_buff` and `net_device` fields through offsets taken from the running kernel's BTF.

use aya_ebpf::helpers::{bpf_probe_read_kernel, generated};
use tracer_common::{
    Filter, HeaderFields,
    config::{FlowKey, filter_field, have, kfunc},
    event::{Addr, Conntrack, fingerprint},
};

use crate::maps::off;

/// Reads a `T` at `base + off` with a helper call; `None` when the kernel refuses the read.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address; a bad one is an error, not a fault.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T).ok() }
}

/// Reads a `T` at `base + off` straight into `dst`, which the helper zeroes when the kernel
/// refuses the read: no branch on the outcome, so a dozen such reads in a row do not give the
/// verifier a dozen forks to walk.
#[inline(always)]
pub fn read_into<T>(dst: &mut T, base: u64, off: u32) {
    // SAFETY: `dst` is valid for `size_of::<T>()` bytes; the helper validates the source and
    // writes zeroes on failure, a valid value for the plain integers this is used with.
    unsafe {
        generated::bpf_probe_read_kernel(
            (dst as *mut T).cast(),
            core::mem::size_of::<T>() as u32,
            (base + off as u64) as *const core::ffi::c_void,
        );
    }
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

/// The headers this tracer looks at. Nothing in it is an array zeroed whole (IPv6's addresses
/// stay in the packet): LLVM zeroes one with a `memset` call, a loop the verifier walks byte
/// by byte for every state that reaches it.
#[derive(Clone, Copy, Default)]
pub struct Headers {
    /// The ICMP header's address for an ICMP packet (first fragment or none), else 0.
    pub icmp_at: u64,
    /// An IPv6 packet: the address of its header (where its addresses lie), else 0.
    pub ipv6_at: u64,
    /// Network byte order: IPv4's, or an IPv6 packet's folded (`Addr::folded`: for hashes and
    /// flow ids; its own are read from `ipv6_at` where they are shown or matched, never kept
    /// on a stack that has no room for them).
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// IP id, and TCP sequence/ack (UDP: length in the top half of `seq`), host order: what
    /// [`Headers::fingerprint`] is made of, kept raw: only followed packets need it.
    seq: u32,
    ack: u32,
    pub sport: u16,
    pub dport: u16,
    ip_id: u16,
    /// The IP protocol; IPv6: the header after the extension headers.
    pub proto: u8,
    pub tcp_flags: u8,
    pub ipv4: bool,
    pub ipv6: bool,
    pub l4: bool,
}

impl Headers {
    /// The header as a [`FlowKey`] (ports 0 without them); an IPv6 packet's with its addresses
    /// folded: a hash to tell a NAT rewrite by, no reply to learn.
    #[inline(always)]
    pub fn key(&self) -> FlowKey {
        FlowKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            _pad: 0,
            _pad2: 0,
        }
    }

    /// See `HopEvent::fingerprint`; 0 when the packet is not IP. IPv6 has no IP id: its UDP or
    /// ICMPv6 checksum stands in (`ip_id`), which differs between datagrams of one flow.
    #[inline(always)]
    pub fn fingerprint(&self) -> u32 {
        if !self.ipv4 && !self.ipv6 {
            0
        } else if !self.l4 {
            fingerprint::ip(self.ip_id, self.proto)
        } else if self.proto == 6 {
            fingerprint::tcp(self.seq, self.ack, self.tcp_flags)
        } else {
            fingerprint::udp(self.ip_id, (self.seq >> 16) as u16)
        }
    }
}

impl Headers {
    /// Whether these headers pass `f` (neither IPv4 nor IPv6: no).
    #[inline(always)]
    pub fn passes(&self, f: &Filter) -> bool {
        if self.ipv6 {
            passes6(self, f)
        } else {
            self.ipv4
                && f.matches(
                    self.saddr, self.daddr, self.proto, self.l4, self.sport, self.dport,
                )
        }
    }

    /// An IPv6 packet's source and destination address; `None` for IPv4's or unreadable ones.
    #[inline(always)]
    pub fn addrs6(&self) -> Option<[Addr; 2]> {
        if self.ipv6_at == 0 {
            return None;
        }
        read(self.ipv6_at, 8)
    }

    /// An IPv6 packet's source and destination address, read into `out` (zeros when
    /// unreadable: the helper writes them); nothing for IPv4's.
    #[inline(always)]
    pub fn addrs6_into(&self, out: &mut [Addr; 2]) {
        if self.ipv6_at != 0 {
            read_into(out, self.ipv6_at, 8);
        }
    }
}

const ETH_P_IP_BE: u16 = 0x0008; // htons(0x0800) as read on little-endian
const ETH_P_IPV6_BE: u16 = 0xdd86; // htons(0x86dd)
const ETH_P_8021Q_BE: u16 = 0x0081;
const ETH_P_8021AD_BE: u16 = 0xa888;

/// Whether the skb carries something other than IP now (ARP, a socket's buffer with no
/// protocol): at an address where a packet was followed, that packet was freed unseen and the
/// memory reused. A VLAN tag changes the protocol of the same packet: not foreign. (IPv4
/// reused for IPv6 or back shows in the fingerprint.)
#[inline(always)]
pub fn foreign(skb: u64, access: Access) -> bool {
    matches!(
        field::<u16>(skb, off!(skb_protocol), access),
        Some(p) if p != ETH_P_IP_BE
            && p != ETH_P_IPV6_BE
            && p != ETH_P_8021Q_BE
            && p != ETH_P_8021AD_BE
    )
}

/// Reads the IP (v4 or v6) and TCP/UDP headers: the skb fields through `access`, then the
/// packet bytes (see [`packet`], [`headers6`]).
#[inline(always)]
pub fn headers(skb: u64, l3_at_data: bool, access: Access) -> Headers {
    let mut h = Headers::default();
    let l3 = l3_header(skb, l3_at_data, access);
    if l3 == 0 {
        return h;
    }
    if field::<u16>(skb, off!(skb_protocol), access) == Some(ETH_P_IPV6_BE) {
        headers6(l3, &mut h);
        return h;
    }
    let Some(p) = packet(l3) else {
        return h;
    };
    if p.ver_ihl >> 4 != 4 {
        return h;
    }
    h.ipv4 = true;
    h.proto = p.proto;
    h.ip_id = u16::from_be(p.id);
    h.saddr = p.saddr.to_ne_bytes();
    h.daddr = p.daddr.to_ne_bytes();
    let ihl = (p.ver_ihl & 0x0f) * 4;
    let fragment = u16::from_be(p.frag_off) & 0x1fff != 0;
    if p.proto == ICMP && ihl >= 20 && !fragment {
        h.icmp_at = l3 + ihl as u64;
    }
    if ihl < 20 || fragment || (p.proto != 6 && p.proto != 17) || !p.l4 {
        return h;
    }
    h.sport = u16::from_be(p.sport);
    h.dport = u16::from_be(p.dport);
    h.seq = u32::from_be(p.seq);
    if p.proto == 6 {
        h.tcp_flags = p.flags;
        h.ack = u32::from_be(p.ack);
    }
    h.l4 = true;
    h
}

/// Whether the skb's packet passes `filter`, reading only what the filter's checks ask for
/// (with direct loads, a packet of another protocol costs two loads from the packet). The
/// question every hook asks of every packet nobody follows yet, so it stays apart from
/// [`headers`], which reads everything for the few that pass: sharing one body made LLVM
/// carry every field through every early exit, spilling them to the stack.
#[inline(always)]
pub fn passes(skb: u64, l3_at_data: bool, access: Access, filter: &Filter) -> bool {
    if off!(have) & have::RDONLY_CAST == 0 {
        // Helper reads: one call fetches every field, as for a followed packet.
        return headers(skb, l3_at_data, access).passes(filter);
    }
    let l3 = l3_header(skb, l3_at_data, access);
    if l3 == 0 {
        return false;
    }
    let ip = rdonly_cast(l3, off!(btf_iphdr));
    let ver_ihl: u8 = load(ip, 0);
    if ver_ihl >> 4 == 6 {
        // IPv6 is read with helper calls so far, extension headers and all.
        let mut h = Headers::default();
        headers6(l3, &mut h);
        return h.passes(filter);
    }
    ver_ihl >> 4 == 4
        && filter.accepts(&Ipv4At {
            l3,
            ip,
            ver_ihl,
            proto: load(ip, 9),
        })
}

/// The tuple to look up in `REPLIES` for a packet that failed the filter: a TCP or UDP
/// packet's own header, an ICMP error's quoted header reversed (the error answers the packet
/// it quotes). `None` for anything else. Only asked while replies are followed.
#[inline(always)]
pub fn reply_key(skb: u64, l3_at_data: bool, access: Access) -> Option<FlowKey> {
    if off!(have) & have::RDONLY_CAST == 0 {
        let h = headers(skb, l3_at_data, access);
        if !h.ipv4 {
            return None; // IPv6 replies are not followed yet (issue 25)
        }
        if h.l4 {
            return Some(h.key());
        }
        return match h.icmp_at {
            0 => None,
            at => quote(at).map(|q| q.reply()),
        };
    }
    let l3 = l3_header(skb, l3_at_data, access);
    if l3 == 0 {
        return None;
    }
    let ip = rdonly_cast(l3, off!(btf_iphdr));
    let ver_ihl: u8 = load(ip, 0);
    if ver_ihl >> 4 != 4 {
        return None;
    }
    let at = Ipv4At {
        l3,
        ip,
        ver_ihl,
        proto: load(ip, 9),
    };
    if at.proto == ICMP {
        let ihl = (ver_ihl & 0x0f) as u64 * 4;
        if ihl < 20 || u16::from_be(load(ip, 6)) & 0x1fff != 0 {
            return None;
        }
        return quote(l3 + ihl).map(|q| q.reply());
    }
    let (sport, dport) = at.ports()?;
    let (saddr, daddr) = at.addrs();
    Some(FlowKey {
        saddr,
        daddr,
        sport,
        dport,
        proto: at.proto,
        _pad: 0,
        _pad2: 0,
    })
}

const ICMP: u8 = 1;

/// An ICMP error: its type and code, and the header it quotes.
#[derive(Clone, Copy, Default)]
pub struct Quote {
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// The quoted header (ports 0 when its protocol has none).
    pub inner: FlowKey,
}

impl Quote {
    /// The reply tuple of the quoted packet: what `REPLIES` holds when that packet was
    /// followed.
    #[inline(always)]
    fn reply(&self) -> FlowKey {
        let i = &self.inner;
        FlowKey::reply_to(i.saddr, i.daddr, i.sport, i.dport, i.proto)
    }
}

/// ICMP types whose message quotes the packet it is about: destination unreachable (port
/// unreachable from a REJECT, fragmentation needed), source quench, time exceeded, parameter
/// problem.
#[inline(always)]
fn quotes(icmp_type: u8) -> bool {
    matches!(icmp_type, 3 | 4 | 11 | 12)
}

/// The ICMP error at `icmp` (the ICMP header): its type, code and quoted IPv4 header with
/// the quoted ports (TCP or UDP, first fragment). `None` for other ICMP messages or an
/// unreadable quote.
#[inline(always)]
pub fn quote(icmp: u64) -> Option<Quote> {
    let mut q = Quote::default();
    let inner = icmp + 8;
    let ihl;
    if off!(have) & have::RDONLY_CAST != 0 {
        // `struct iphdr` serves for the ICMP header's first two bytes: the loads are u8s at
        // offsets 0 and 1, which the verifier checks against iphdr's first members.
        let h = rdonly_cast(icmp, off!(btf_iphdr));
        q.icmp_type = load(h, 0);
        q.icmp_code = load(h, 1);
        if !quotes(q.icmp_type) {
            return None;
        }
        let ip = rdonly_cast(inner, off!(btf_iphdr));
        let ver_ihl: u8 = load(ip, 0);
        if ver_ihl >> 4 != 4 {
            return None;
        }
        q.inner.proto = load(ip, 9);
        q.inner.saddr = load::<u32>(ip, 12).to_ne_bytes();
        q.inner.daddr = load::<u32>(ip, 16).to_ne_bytes();
        ihl = (ver_ihl & 0x0f) as u64 * 4;
        if ihl < 20
            || u16::from_be(load(ip, 6)) & 0x1fff != 0
            || (q.inner.proto != 6 && q.inner.proto != 17)
        {
            return Some(q);
        }
        let l4 = rdonly_cast(inner + ihl, off!(btf_tcphdr));
        q.inner.sport = u16::from_be(load(l4, 0));
        q.inner.dport = u16::from_be(load(l4, 2));
        return Some(q);
    }
    // Field by field: one 28-byte buffer on the stack would push the drop hook's frame past
    // what the verifier allows once a subprogram (memset) is called from it.
    let [t, c] = read::<[u8; 2]>(icmp, 0)?;
    q.icmp_type = t;
    q.icmp_code = c;
    let ver_ihl = read::<u8>(inner, 0)?;
    if !quotes(q.icmp_type) || ver_ihl >> 4 != 4 {
        return None;
    }
    q.inner.proto = read::<u8>(inner, 9)?;
    q.inner.saddr = read::<[u8; 4]>(inner, 12)?;
    q.inner.daddr = read::<[u8; 4]>(inner, 16)?;
    ihl = (ver_ihl & 0x0f) as u64 * 4;
    let fragment = u16::from_be(read::<u16>(inner, 6)?) & 0x1fff != 0;
    if ihl < 20 || fragment || (q.inner.proto != 6 && q.inner.proto != 17) {
        return Some(q);
    }
    if let Some(ports) = read::<u32>(inner, ihl as u32) {
        let p = ports.to_ne_bytes();
        q.inner.sport = u16::from_be_bytes([p[0], p[1]]);
        q.inner.dport = u16::from_be_bytes([p[2], p[3]]);
    }
    Some(q)
}

/// An IPv4 header read field by field as [`Filter::accepts`] asks (direct loads).
struct Ipv4At {
    l3: u64,
    /// `l3` cast to `struct iphdr`.
    ip: u64,
    ver_ihl: u8,
    /// Loaded up front: nearly every filter asks for it, and `ports` needs it too.
    proto: u8,
}

impl HeaderFields for Ipv4At {
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }

    #[inline(always)]
    fn addrs(&self) -> ([u8; 4], [u8; 4]) {
        (
            load::<u32>(self.ip, 12).to_ne_bytes(),
            load::<u32>(self.ip, 16).to_ne_bytes(),
        )
    }

    /// The same conditions as [`headers`]: a first fragment or none, TCP or UDP.
    #[inline(always)]
    fn ports(&self) -> Option<(u16, u16)> {
        let ihl = (self.ver_ihl & 0x0f) as u64 * 4;
        let proto = self.proto;
        if ihl < 20 || u16::from_be(load(self.ip, 6)) & 0x1fff != 0 || (proto != 6 && proto != 17) {
            return None;
        }
        let l4 = rdonly_cast(self.l3 + ihl, off!(btf_tcphdr));
        Some((u16::from_be(load(l4, 0)), u16::from_be(load(l4, 2))))
    }
}

/// Destination address (network order) and port (host order) that conntrack recorded for this
/// packet's direction: its header as it entered the namespace, before DNAT or a reply's
/// de-SNAT. `None` without conntrack or an entry (untracked, or dropped before conntrack ran).
/// `_nfct` is an integer, so the entry is read with helper calls: drops only, never the
/// per-packet path.
#[inline(always)]
pub fn entered(skb: u64, access: Access) -> Option<([u8; 4], u16)> {
    if off!(have) & have::CONNTRACK == 0 {
        return None;
    }
    let nfct = field::<u64>(skb, off!(skb_nfct), access)?;
    let ct = nfct & !NFCT_INFOMASK;
    if ct < KERNEL_ADDRESSES {
        return None;
    }
    // `enum ip_conntrack_info`: IP_CT_IS_REPLY (3) and above is the reply direction, whose
    // tuple is the second `tuplehash` element; IP_CT_UNTRACKED (7) has no entry (ct is 0).
    let dir = if nfct & NFCT_INFOMASK >= 3 {
        off!(ct_dir_stride)
    } else {
        0
    };
    let addr = read::<u32>(ct, off!(ct_dst_addr) + dir)?;
    let port = read::<u16>(ct, off!(ct_dst_port) + dir)?;
    Some((addr.to_ne_bytes(), u16::from_be(port)))
}

/// How a drop whose header failed the filter still passes, as conntrack knows the packet.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ByConntrack {
    No,
    /// Sent, as it entered the namespace (before DNAT), where the filter matches.
    Entered,
    /// A reply in a connection whose first packet the filter matches.
    Answers,
}

/// Whether a drop passes `f` by its conntrack entry: the header it entered the namespace with
/// (its direction's destination), or, for a reply, the connection's original header (what the
/// client sent). A drop traced alone then still matches a filter on a published port after
/// DNAT, and a reply's drop matches the client's filter (unless replies are not followed:
/// `--no-replies`). The entry is read with helper calls, and the packet's header once: drops
/// that failed the filter only.
#[inline(always)]
pub fn by_conntrack(skb: u64, access: Access, f: &Filter) -> ByConntrack {
    if off!(have) & have::CONNTRACK == 0 {
        return ByConntrack::No;
    }
    let Some(nfct) = field::<u64>(skb, off!(skb_nfct), access) else {
        return ByConntrack::No;
    };
    let ct = nfct & !NFCT_INFOMASK;
    if ct < KERNEL_ADDRESSES {
        return ByConntrack::No;
    }
    // IPv4's conntrack tuples only, so far (issue 25): an IPv6 packet's header is not read.
    if field::<u16>(skb, off!(skb_protocol), access) != Some(ETH_P_IP_BE) {
        return ByConntrack::No;
    }
    let h = headers(skb, false, access);
    if !h.ipv4 {
        return ByConntrack::No;
    }
    // `enum ip_conntrack_info`: IP_CT_IS_REPLY (3) and above is the reply direction, whose
    // tuple is the second `tuplehash` element.
    let reply = nfct & NFCT_INFOMASK >= 3;
    let dir = if reply { off!(ct_dir_stride) } else { 0 };
    let dst = |dir: u32| {
        Some((
            read::<u32>(ct, off!(ct_dst_addr) + dir)?.to_ne_bytes(),
            u16::from_be(read::<u16>(ct, off!(ct_dst_port) + dir)?),
        ))
    };
    if let Some((daddr, dport)) = dst(dir)
        && f.matches(h.saddr, daddr, h.proto, h.l4, h.sport, dport)
    {
        return ByConntrack::Entered;
    }
    if !reply || f.reply_secs == 0 {
        return ByConntrack::No;
    }
    let (Some((daddr, dport)), Some(saddr), Some(sport)) = (
        dst(0),
        read::<u32>(ct, off!(ct_src_addr)),
        read::<u16>(ct, off!(ct_src_port)),
    ) else {
        return ByConntrack::No;
    };
    if f.matches(
        saddr.to_ne_bytes(),
        daddr,
        h.proto,
        h.l4,
        u16::from_be(sport),
        dport,
    ) {
        ByConntrack::Answers
    } else {
        ByConntrack::No
    }
}

/// The low bits of `skb->_nfct` hold the `ip_conntrack_info`.
const NFCT_INFOMASK: u64 = 7;

/// Conntrack's hold on a followed packet at this hop: `skb->_nfct` and the
/// [`Conntrack::signature`] a hop compares with the last one shown. Two loads (the second a
/// helper call, only when there is an entry): paid per hop of a followed packet only.
#[derive(Clone, Copy)]
pub struct CtHold {
    nfct: u64,
    pub signature: u8,
}

impl CtHold {
    /// Not looked at: a hop that neither shows nor remembers it.
    pub const NONE: Self = Self {
        nfct: 0,
        signature: 0,
    };
}

#[inline(always)]
pub fn ct_hold(skb: u64, access: Access) -> CtHold {
    if off!(have) & have::CONNTRACK == 0 {
        return CtHold::NONE;
    }
    let nfct = field::<u64>(skb, off!(skb_nfct), access).unwrap_or(0);
    let ct = nfct & !NFCT_INFOMASK;
    let has_ct = ct >= KERNEL_ADDRESSES;
    let mut status = 0u32;
    if has_ct {
        read_into(&mut status, ct, off!(ct_status));
    }
    CtHold {
        nfct,
        signature: Conntrack::signature((nfct & NFCT_INFOMASK) as u8, has_ct, status),
    }
}

/// Fills `out` with the entry `hold` points at: its state, status, mark, zone and both
/// tuples. Helper calls, a dozen: only where the view changed or the packet died.
#[inline(always)]
pub fn ct_view(hold: CtHold, out: &mut Conntrack) {
    out.info = (hold.nfct & NFCT_INFOMASK) as u8;
    let ct = hold.nfct & !NFCT_INFOMASK;
    if ct < KERNEL_ADDRESSES {
        return; // untracked: the state is all there is
    }
    read_into(&mut out.status, ct, off!(ct_status));
    if off!(ct_mark) != 0 {
        read_into(&mut out.mark, ct, off!(ct_mark));
    }
    if off!(ct_zone) != 0 {
        read_into(&mut out.zone, ct, off!(ct_zone));
    }
    read_into(&mut out.original.proto, ct, off!(ct_proto));
    out.reply.proto = out.original.proto;
    ct_tuple(ct, 0, &mut out.original);
    ct_tuple(ct, off!(ct_dir_stride), &mut out.reply);
}

/// One direction's tuple of the entry at `ct` (`dir`: 0 or the stride to the reply's), field
/// by field into `out` (already zero): a `FlowKey` built and copied would take stack.
#[inline(always)]
fn ct_tuple(ct: u64, dir: u32, out: &mut FlowKey) {
    read_into(&mut out.saddr, ct, off!(ct_src_addr) + dir);
    read_into(&mut out.daddr, ct, off!(ct_dst_addr) + dir);
    read_into(&mut out.sport, ct, off!(ct_src_port) + dir);
    read_into(&mut out.dport, ct, off!(ct_dst_port) + dir);
    out.sport = u16::from_be(out.sport);
    out.dport = u16::from_be(out.dport);
}

/// The address of the IP header, or 0 when the skb carries neither IPv4 nor IPv6 or its header
/// cannot be located. At receive `skb->data` is the L3 header (the network header offset is reset
/// only after the tracepoint); elsewhere `head + network_header` is.
#[inline(always)]
fn l3_header(skb: u64, l3_at_data: bool, access: Access) -> u64 {
    if !matches!(
        field::<u16>(skb, off!(skb_protocol), access),
        Some(ETH_P_IP_BE | ETH_P_IPV6_BE)
    ) {
        return 0;
    }
    if l3_at_data {
        return field::<u64>(skb, off!(skb_data), access).unwrap_or(0);
    }
    let Some(head) = field::<u64>(skb, off!(skb_head), access) else {
        return 0;
    };
    match field::<u16>(skb, off!(skb_network_header), access) {
        Some(nh) if nh != 0xffff && head != 0 => head + nh as u64,
        _ => 0,
    }
}

/// Header fields as they lie in the packet (multi-byte ones in network order).
#[derive(Clone, Copy, Default)]
struct Packet {
    ver_ihl: u8,
    id: u16,
    frag_off: u16,
    proto: u8,
    saddr: u32,
    daddr: u32,
    /// The L4 fields below could be read.
    l4: bool,
    sport: u16,
    dport: u16,
    /// TCP sequence number; UDP length and checksum.
    seq: u32,
    ack: u32,
    flags: u8,
}

/// The IPv4 header at `l3` and the first 14 bytes of the L4 header after it. `None` when not
/// even the IP header could be read.
#[inline(always)]
fn packet(l3: u64) -> Option<Packet> {
    if off!(have) & have::RDONLY_CAST != 0 {
        Some(packet_direct(l3))
    } else {
        packet_probed(l3)
    }
}

/// Plain loads through `bpf_rdonly_cast` pointers: no helper call at all (the verifier inlines
/// the cast and turns each load into one instruction with a fault fixup; an unreadable field
/// reads as zero, which the callers treat as "not IPv4"). The verifier checks each load against
/// the struct's members and refuses one that spans two, so fields are loaded one by one.
#[inline(always)]
fn packet_direct(l3: u64) -> Packet {
    let ip = rdonly_cast(l3, off!(btf_iphdr));
    let mut p = Packet {
        ver_ihl: load(ip, 0),
        id: load(ip, 4),
        frag_off: load(ip, 6),
        proto: load(ip, 9),
        saddr: load(ip, 12),
        daddr: load(ip, 16),
        ..Packet::default()
    };
    let ihl = (p.ver_ihl & 0x0f) as u64 * 4;
    if ihl < 20 {
        return p;
    }
    // `struct tcphdr` serves UDP too: the ports sit where UDP's do, and UDP's length and
    // checksum where TCP's sequence number is.
    let l4 = rdonly_cast(l3 + ihl, off!(btf_tcphdr));
    p.l4 = true;
    p.sport = load(l4, 0);
    p.dport = load(l4, 2);
    p.seq = load(l4, 4);
    p.ack = load(l4, 8);
    p.flags = load(l4, 13); // fin..cwr; byte 12 (doff, res1) is not used
    p
}

/// An IPv4 header without options followed by the first 14 bytes of TCP (up to the flags) or
/// UDP: what one read fetches in the common case.
const IP_L4: usize = 20 + 14;

/// The same fields with `bpf_probe_read_kernel`: one call in the common case, two when the IP
/// header has options.
#[inline(always)]
fn packet_probed(l3: u64) -> Option<Packet> {
    let (b, l4) = match read::<[u8; IP_L4]>(l3, 0) {
        Some(b) => (b, true),
        // A short linear area at the end of a page: the IP header alone is still useful.
        None => {
            let ip = read::<[u8; 20]>(l3, 0)?;
            let mut b = [0u8; IP_L4];
            b[..20].copy_from_slice(&ip);
            (b, false)
        }
    };
    let u16_at = |b: &[u8], o: usize| u16::from_ne_bytes([b[o], b[o + 1]]);
    let u32_at = |b: &[u8], o: usize| u32::from_ne_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
    let mut p = Packet {
        ver_ihl: b[0],
        id: u16_at(&b, 4),
        frag_off: u16_at(&b, 6),
        proto: b[9],
        saddr: u32_at(&b, 12),
        daddr: u32_at(&b, 16),
        l4,
        ..Packet::default()
    };
    let ihl = (p.ver_ihl & 0x0f) as u32 * 4;
    let mut l4b = [0u8; 14];
    l4b.copy_from_slice(&b[20..]);
    if ihl > 20 {
        // IP options push L4 further: a second read.
        match read::<[u8; 14]>(l3, ihl) {
            Some(r) => {
                l4b = r;
                p.l4 = true;
            }
            None => p.l4 = false,
        }
    }
    p.sport = u16_at(&l4b, 0);
    p.dport = u16_at(&l4b, 2);
    p.seq = u32_at(&l4b, 4);
    p.ack = u32_at(&l4b, 8);
    p.flags = l4b[13];
    Some(p)
}

/// [`Headers::passes`] for an IPv6 packet, its addresses read only for a filter on them.
#[inline(always)]
fn passes6(h: &Headers, f: &Filter) -> bool {
    if f.fields & filter_field::HOST6 == 0 {
        return f.matches6(&[0; 16], &[0; 16], h.proto, h.l4, h.sport, h.dport);
    }
    // Unreadable addresses match no host.
    let Some([saddr, daddr]) = h.addrs6() else {
        return false;
    };
    f.matches6(&saddr.0, &daddr.0, h.proto, h.l4, h.sport, h.dport)
}

/// IPv6 next-header values: the extension headers walked to find the upper layer, and ICMPv6.
const HOP_BY_HOP: u8 = 0;
const ROUTING: u8 = 43;
const FRAGMENT: u8 = 44;
const AUTH: u8 = 51;
const DEST_OPTS: u8 = 60;
const ICMPV6: u8 = 58;

/// Extension headers walked at most; a packet with more is shown with the one after the last
/// walked as its protocol, and no ports.
const MAX_EXTENSIONS: usize = 4;

/// Reads the IPv6 header at `l3` into `h`, walking its extension headers (hop-by-hop,
/// routing, fragment, authentication, destination options) to TCP, UDP or ICMPv6: ports and
/// sequence as for IPv4, none past a first fragment. Helper reads: the fixed header in one,
/// each extension header's first four bytes in one, the upper layer's first 14 in one.
#[inline(always)]
fn headers6(l3: u64, h: &mut Headers) {
    // Read whole (no array zeroed on the stack first: that is a `memset` call).
    let Some(fixed) = read::<[u64; 5]>(l3, 0) else {
        return;
    };
    let first = fixed[0];
    if (first & 0xff) >> 4 != 6 {
        return;
    }
    h.ipv6 = true;
    h.ipv6_at = l3;
    let fold = |a: u64, b: u64| ((a ^ b) as u32 ^ ((a ^ b) >> 32) as u32).to_ne_bytes();
    h.saddr = fold(fixed[1], fixed[2]);
    h.daddr = fold(fixed[3], fixed[4]);
    let mut next = (first >> 48) as u8;
    let mut at = 40u32;
    let mut later_fragment = false;
    let mut i = 0;
    while i < MAX_EXTENSIONS {
        if !matches!(next, HOP_BY_HOP | ROUTING | FRAGMENT | AUTH | DEST_OPTS) {
            break;
        }
        // Next header, length, and (a fragment header's) offset, as the bytes lie.
        let Some(ext) = read::<u32>(l3, at) else {
            break;
        };
        let hdr_len = (ext >> 8) & 0xff;
        let len = match next {
            FRAGMENT => 8,
            AUTH => (hdr_len + 2) * 4,
            _ => (hdr_len + 1) * 8,
        };
        if next == FRAGMENT && u16::from_be((ext >> 16) as u16) & 0xfff8 != 0 {
            later_fragment = true;
        }
        next = ext as u8;
        at += len;
        i += 1;
    }
    h.proto = next;
    if later_fragment || !matches!(next, 6 | 17 | ICMPV6) {
        return;
    }
    let Some(l4) = read::<[u8; 14]>(l3, at) else {
        return;
    };
    if next == ICMPV6 {
        // Its checksum: what tells one echo or error from the next (the fingerprint).
        h.ip_id = u16::from_be_bytes([l4[2], l4[3]]);
        return;
    }
    let u32_at = |o: usize| u32::from_be_bytes([l4[o], l4[o + 1], l4[o + 2], l4[o + 3]]);
    h.sport = u16::from_be_bytes([l4[0], l4[1]]);
    h.dport = u16::from_be_bytes([l4[2], l4[3]]);
    h.seq = u32_at(4);
    if next == 6 {
        h.tcp_flags = l4[13];
        h.ack = u32_at(8);
    } else {
        // UDP's checksum, as ICMPv6's above.
        h.ip_id = u16::from_be_bytes([l4[6], l4[7]]);
    }
    h.l4 = true;
}

/// `bpf_rdonly_cast(p, btf_id)`, through the placeholder the loader links (see
/// `tracer_common::config::kfunc`). `btf_id` must come from [`off!`] (a verifier constant).
#[inline(always)]
fn rdonly_cast(p: u64, btf_id: u32) -> u64 {
    // SAFETY: calling a helper number is how every BPF helper is called; this one is rewritten
    // by the loader into the kfunc call (or into dead code where the kernel lacks it).
    let f: unsafe extern "C" fn(u64, u32) -> u64 =
        unsafe { core::mem::transmute(kfunc::RDONLY_CAST as usize) };
    // SAFETY: see above; the kfunc only retypes its argument.
    unsafe { f(p, btf_id) }
}

/// One load through a [`rdonly_cast`] pointer at a constant offset (`to_ne_bytes` of the
/// result gives the bytes in packet order).
#[inline(always)]
fn load<T: Copy>(p: u64, off: u64) -> T {
    // SAFETY: the verifier checks the offset against the BTF type and emits a faulting load
    // with a fixup (reads zero) for this untrusted pointer.
    unsafe { core::ptr::read_volatile((p + off) as *const T) }
}

/// Every kernel address on 64-bit kernels lies in the upper half: 0xffff8... with 4-level
/// page tables, 0xff11... with 5-level ones (la57: recent servers, and qemu's `-cpu max`),
/// 0xffff... on arm64. What is below is not a pointer (`_nfct`'s `IP_CT_UNTRACKED`, zero).
const KERNEL_ADDRESSES: u64 = 1 << 63;

/// `(ifindex, netns inode)` of a `struct net_device *`; zeros for anything else. With
/// [`Access::Direct`] (a BTF-typed device, and the `struct net *` it points to is typed too)
/// these are plain loads; otherwise three helper calls.
#[inline(always)]
pub fn device(dev: u64, access: Access) -> (u32, u32) {
    // `skb->dev` shares its word with `dev_scratch`, which UDP fills for queued skbs: at
    // consume_skb it is a length, not a device. What is not a kernel address is no device:
    // zeros at once. A direct load from it would fault (~1.5 µs for the fixup), and the
    // helper, which refuses it without a fault, still costs two calls on every datagram a
    // socket consumes (each call's return is dear on CPUs whose returns are mitigated).
    if dev < KERNEL_ADDRESSES {
        return (0, 0);
    }
    let ifindex = field::<u32>(dev, off!(dev_ifindex), access).unwrap_or(0);
    let netns = match field::<u64>(dev, off!(dev_nd_net), access) {
        Some(net) if net != 0 => field::<u32>(net, off!(net_ns_inum), access).unwrap_or(0),
        _ => 0,
    };
    (ifindex, netns)
}
