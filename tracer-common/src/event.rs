//! The one event type the kernel programs emit through the ring buffer.

/// What a hop event records. Values are part of the kernel/userspace ABI: append, never renumber.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HopKind {
    /// The packet was received on a device (`netif_receive_skb`).
    Receive = 0,
    /// The packet is being handed to a device for transmission (`net_dev_start_xmit`).
    Transmit = 1,
    /// The packet was freed as a drop (`kfree_skb`), with a reason and a location.
    Drop = 2,
    /// The packet was freed normally (`consume_skb`): consumed by a socket or after transmit.
    Consume = 3,
    /// A netfilter hook was traversed (kprobe/fentry backends at `nf_hook_slow`).
    NetfilterHook = 4,
    /// The bridge forwarded the frame out of a port (`br_forward`).
    BridgeForward = 5,
    /// A veth transmitted the packet to its peer (`veth_xmit`).
    VethTransmit = 6,
    /// Not a hop: the skb's address now holds another packet, so the one followed there was
    /// freed by a path with no tracepoint (`__kfree_skb`, as TCP frees a SYN-ACK it has
    /// answered). Ends that packet at once; carries only `skb` and `ts_ns`.
    FreedUnseen = 7,
    /// Not a hop: a packet of a summarised flood parted from the way its flow's packets take
    /// (`crate::flood`) and is traced in full from its next hop. Carries `skb`, in `ts_ns` the
    /// time of its first hop (the one its flood summaries name it by), the flow in `location`
    /// and, in `len`, how many hops it took as the flow's packets did, which userspace shows
    /// from the flow's latest full packet.
    Resumed = 8,
}

impl HopKind {
    /// Decodes the raw byte from an event; `None` for values this build does not know.
    pub const fn from_raw(raw: u8) -> Option<Self> {
        Some(match raw {
            0 => Self::Receive,
            1 => Self::Transmit,
            2 => Self::Drop,
            3 => Self::Consume,
            4 => Self::NetfilterHook,
            5 => Self::BridgeForward,
            6 => Self::VethTransmit,
            7 => Self::FreedUnseen,
            8 => Self::Resumed,
            _ => return None,
        })
    }
}

/// An IP address in network byte order: IPv4's in the first 4 bytes (the rest zero), or
/// IPv6's. Aligned to 8 so that a BPF program copies one as two words: 16 bytes of alignment 1
/// are a `memcpy` call, a subprogram whose frame the verifier adds to the caller's.
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Addr(pub [u8; 16]);

impl Addr {
    pub const ZERO: Self = Self([0; 16]);

    /// An IPv4 address (network byte order).
    #[inline(always)]
    pub const fn v4(a: [u8; 4]) -> Self {
        Self([a[0], a[1], a[2], a[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0])
    }

    /// The first 4 bytes: an IPv4 address.
    #[inline(always)]
    pub const fn v4_bytes(&self) -> [u8; 4] {
        [self.0[0], self.0[1], self.0[2], self.0[3]]
    }

    /// The XOR of the four words: an IPv4 address itself, an IPv6 one folded (for hashes and
    /// flow ids, not to be shown or matched).
    #[inline(always)]
    pub const fn folded(&self) -> [u8; 4] {
        let a = &self.0;
        let mut out = [0u8; 4];
        let mut i = 0;
        while i < 4 {
            out[i] = a[i] ^ a[i + 4] ^ a[i + 8] ^ a[i + 12];
            i += 1;
        }
        out
    }
}

/// `HopEvent::flags`: the IPv4 header was read, addresses and protocol are valid.
pub const FLAG_IPV4: u8 = 1 << 0;
/// `HopEvent::flags`: the TCP/UDP header was read, ports (and TCP flags) are valid.
pub const FLAG_L4: u8 = 1 << 1;
/// `HopEvent::flags`: the skb matched the filter at this hop (as opposed to being tracked).
pub const FLAG_MATCHED: u8 = 1 << 2;
/// `HopEvent::flags`: `entered_daddr`/`entered_dport` hold the destination conntrack recorded
/// when the packet entered this namespace (drops only; see `HopEvent::entered_daddr`).
pub const FLAG_ENTERED: u8 = 1 << 3;
/// `HopEvent::flags`: the skb did not match the filter but answers a packet that did (its
/// reversed tuple, or an ICMP error quoting it): followed from here as a reply.
pub const FLAG_FOLLOWED: u8 = 1 << 4;
/// `HopEvent::flags`: an ICMP error; `icmp_type`, `icmp_code` and `quoted_*` hold its type
/// and the header of the packet it is about (the record carries the tail).
pub const FLAG_QUOTED: u8 = 1 << 5;
/// `HopEvent::flags`: `ct` holds conntrack's entry for the packet as this hop sees it: the
/// first hop where the packet has one (or is marked untracked), each hop where its state or
/// NAT changed since, and every drop that has one. The record is the whole struct.
pub const FLAG_CONNTRACK: u8 = 1 << 6;
/// `HopEvent::flags`: the IPv6 header was read (the extension headers walked to the one
/// `proto` names); `saddr`/`daddr` hold IPv6 addresses.
pub const FLAG_IPV6: u8 = 1 << 7;

/// Conntrack's view of a packet at one hop (`skb->_nfct` and the `struct nf_conn` behind it).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conntrack {
    /// `nf_conn.status`, low word (`IPS_*` bits).
    pub status: u32,
    /// `nf_conn.mark` (0 on a kernel without CONFIG_NF_CONNTRACK_MARK).
    pub mark: u32,
    /// `nf_conn.zone.id` (0 on a kernel without CONFIG_NF_CONNTRACK_ZONES).
    pub zone: u16,
    /// `enum ip_conntrack_info` from `skb->_nfct`'s low bits (7: untracked, no entry).
    pub info: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
    /// The entry's original tuple (as its first packet was sent) and reply tuple (as the
    /// answer is expected, after NAT): both show what NAT does to the connection.
    pub original: crate::config::FlowKey,
    pub reply: crate::config::FlowKey,
}

impl Conntrack {
    pub const ZERO: Self = Self {
        status: 0,
        mark: 0,
        zone: 0,
        info: 0,
        _pad: 0,
        original: crate::config::FlowKey::ZERO,
        reply: crate::config::FlowKey::ZERO,
    };

    /// `IP_CT_UNTRACKED`: `_nfct` with no entry (a raw-table NOTRACK).
    pub const UNTRACKED: u8 = 7;

    /// What a hop compares with the one before it to decide whether conntrack's view changed:
    /// 0 without an entry; else a present bit, the `ip_conntrack_info` and the status bits a
    /// packet's own passage changes (confirmed, seen reply, source and destination NAT done).
    #[inline(always)]
    pub const fn signature(nfct_info: u8, has_ct: bool, status: u32) -> u8 {
        if !has_ct && nfct_info == 0 {
            return 0;
        }
        0x80 | (nfct_info & 7)
            | (((status >> status::SEEN_REPLY_BIT) & 1) << 3) as u8
            | (((status >> status::CONFIRMED_BIT) & 1) << 4) as u8
            | (((status >> status::SRC_NAT_DONE_BIT) & 1) << 5) as u8
            | (((status >> status::DST_NAT_DONE_BIT) & 1) << 6) as u8
    }
}

/// `enum ip_conntrack_status` bit numbers (uapi, stable).
pub mod status {
    pub const EXPECTED_BIT: u32 = 0;
    pub const SEEN_REPLY_BIT: u32 = 1;
    pub const ASSURED_BIT: u32 = 2;
    pub const CONFIRMED_BIT: u32 = 3;
    pub const SRC_NAT_BIT: u32 = 4;
    pub const DST_NAT_BIT: u32 = 5;
    pub const SRC_NAT_DONE_BIT: u32 = 7;
    pub const DST_NAT_DONE_BIT: u32 = 8;
    pub const DYING_BIT: u32 = 9;
}

/// One hop of one packet, as seen by a kernel program.
///
/// Addresses stay in network byte order (as on the wire); ports are converted to host order by
/// the kernel program so userspace never has to guess.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HopEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the `struct sk_buff`: the packet's identity while it lives.
    pub skb: u64,
    /// For drops and consumes: the kernel address that freed the skb.
    pub location: u64,
    /// Inode of the network namespace of `ifindex`'s device (0 when the skb had no device).
    pub netns: u32,
    /// Device index within `netns` (0 when the skb had no device).
    pub ifindex: u32,
    /// Source address: IPv4's in the first 4 bytes (`FLAG_IPV4`), or IPv6's (`FLAG_IPV6`).
    pub saddr: Addr,
    /// Destination address, as `saddr`.
    pub daddr: Addr,
    /// Source port, host byte order.
    pub sport: u16,
    /// Destination port, host byte order.
    pub dport: u16,
    /// `skb->len`.
    pub len: u32,
    /// `enum skb_drop_reason` value for drops; names come from the running kernel's BTF.
    pub drop_reason: u32,
    /// Peer or egress device index for veth/bridge hops (0 otherwise).
    pub peer_ifindex: u32,
    /// A [`HopKind`] value.
    pub kind: u8,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP).
    pub proto: u8,
    /// TCP flags byte (FIN=0x01 SYN=0x02 RST=0x04 PSH=0x08 ACK=0x10 ...).
    pub tcp_flags: u8,
    /// Netfilter hook number (NF_INET_*) for netfilter hops.
    pub nf_hook: u8,
    /// Netfilter protocol family (NFPROTO_*) for netfilter hops.
    pub nf_family: u8,
    /// Netfilter verdict (NF_DROP=0, NF_ACCEPT=1, NF_STOLEN=2, NF_QUEUE=3) for netfilter hops.
    pub nf_verdict: u8,
    /// `FLAG_*` bits.
    pub flags: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
    /// Namespace inode of `peer_ifindex`'s device (veth peer, bridge egress port).
    pub peer_netns: u32,
    /// What stays constant for one packet while NAT rewrites it (see `fingerprint`): TCP
    /// sequence, acknowledgement and flags, for UDP the IP id and UDP length, else the IP id
    /// and protocol. A tracked skb address
    /// that shows another fingerprint has been freed (by a path with no tracepoint) and
    /// reused for another packet. 0 when the headers could not be read.
    pub fingerprint: u32,
    /// Drops only: `skb->skb_iif`, the device the packet was last received on in this
    /// namespace (0: generated here). A drop hook alone then still knows the input interface,
    /// which `skb->dev` is not at every hook (the bridge's FORWARD, OUTPUT).
    pub in_ifindex: u32,
    /// Drops only, with `FLAG_ENTERED`: the destination address (network order) and port (host
    /// order) of conntrack's tuple for the packet's direction, i.e. its header as it entered
    /// this namespace, before any DNAT (or reply de-SNAT) rewrote it. What the filter and the
    /// diagnosis need when only the drop is traced.
    pub entered_daddr: [u8; 4],
    pub entered_dport: u16,
    /// With `FLAG_QUOTED`: the ICMP error's type and code.
    pub icmp_type: u8,
    pub icmp_code: u8,
    /// With `FLAG_QUOTED`: the header the ICMP error quotes, i.e. the packet it answers as
    /// its sender saw it (ports 0 when the quoted protocol has none).
    pub quoted: crate::config::FlowKey,
    /// Drops traced with `--stack`: the kernel stack's id in the `STACKS` map, plus one
    /// (0: none asked for, or the map could not take it).
    pub stack: u32,
    /// Drops only: `skb->mark`, the fwmark routing (and reverse path filtering with
    /// `src_valid_mark`) looked routes up with.
    pub skb_mark: u32,
    /// With `FLAG_CONNTRACK`: conntrack's entry for the packet here.
    pub ct: Conntrack,
}

impl HopEvent {
    /// An all-zero event; the kernel fills it field by field.
    pub const fn zeroed() -> Self {
        Self {
            ts_ns: 0,
            skb: 0,
            location: 0,
            netns: 0,
            ifindex: 0,
            saddr: Addr::ZERO,
            daddr: Addr::ZERO,
            sport: 0,
            dport: 0,
            len: 0,
            drop_reason: 0,
            peer_ifindex: 0,
            kind: 0,
            proto: 0,
            tcp_flags: 0,
            nf_hook: 0,
            nf_family: 0,
            nf_verdict: 0,
            flags: 0,
            _pad: 0,
            peer_netns: 0,
            fingerprint: 0,
            in_ifindex: 0,
            entered_daddr: [0; 4],
            entered_dport: 0,
            icmp_type: 0,
            icmp_code: 0,
            quoted: crate::config::FlowKey::ZERO,
            stack: 0,
            skb_mark: 0,
            ct: Conntrack::ZERO,
        }
    }

    /// Bytes every record carries: all fields up to `in_ifindex`. Only a drop's record and
    /// an ICMP error's are the whole struct; the rest stop here, so a flood of followed
    /// packets fills the ring no faster than before drops carried their input interface and
    /// conntrack's header.
    pub const HEAD_LEN: usize = core::mem::offset_of!(HopEvent, in_ifindex);

    /// The record of a `FreedUnseen` event (the head, zero but for time, skb and kind), as
    /// words: a zeroed `HopEvent` on a BPF stack is a `memset` call, a subprogram whose frame
    /// the verifier adds to the caller's, on the hottest hook.
    #[inline(always)]
    pub const fn freed_unseen(ts_ns: u64, skb: u64) -> [u64; Self::HEAD_LEN / 8] {
        const KIND_WORD: usize = core::mem::offset_of!(HopEvent, kind) / 8;
        const KIND_SHIFT: usize = core::mem::offset_of!(HopEvent, kind) % 8 * 8;
        const _: () = assert!(
            core::mem::offset_of!(HopEvent, ts_ns) == 0
                && core::mem::offset_of!(HopEvent, skb) == 8
                && HopEvent::HEAD_LEN.is_multiple_of(8)
        );
        let mut words = [0u64; Self::HEAD_LEN / 8];
        words[0] = ts_ns;
        words[1] = skb;
        // Little-endian, as BPF on x86-64 and arm64 is.
        words[KIND_WORD] = (HopKind::FreedUnseen as u64) << KIND_SHIFT;
        words
    }

    /// The record of a `Resumed` event (see [`HopKind::Resumed`]), as words like
    /// [`HopEvent::freed_unseen`].
    #[inline(always)]
    pub const fn resumed(ts_ns: u64, skb: u64, flow: u32, hops: u32) -> [u64; Self::HEAD_LEN / 8] {
        const KIND_WORD: usize = core::mem::offset_of!(HopEvent, kind) / 8;
        const KIND_SHIFT: usize = core::mem::offset_of!(HopEvent, kind) % 8 * 8;
        const LEN_WORD: usize = core::mem::offset_of!(HopEvent, len) / 8;
        const LEN_SHIFT: usize = core::mem::offset_of!(HopEvent, len) % 8 * 8;
        const _: () = assert!(core::mem::offset_of!(HopEvent, location) == 16);
        let mut words = [0u64; Self::HEAD_LEN / 8];
        words[0] = ts_ns;
        words[1] = skb;
        words[2] = flow as u64;
        words[LEN_WORD] = (hops as u64) << LEN_SHIFT;
        words[KIND_WORD] = (HopKind::Resumed as u64) << KIND_SHIFT;
        words
    }

    /// Bytes a drop's record and an ICMP error's carry without conntrack's entry: up to `ct`.
    pub const TAIL_LEN: usize = core::mem::offset_of!(HopEvent, ct);

    /// The record length the kernel program writes for an event of `kind` with `flags`.
    #[inline(always)]
    pub const fn record_len(kind: u8, flags: u8) -> usize {
        if flags & FLAG_CONNTRACK != 0 {
            core::mem::size_of::<Self>()
        } else if kind == HopKind::Drop as u8 || flags & FLAG_QUOTED != 0 {
            Self::TAIL_LEN
        } else {
            Self::HEAD_LEN
        }
    }

    /// Decodes one ring buffer record: at least [`HopEvent::HEAD_LEN`] bytes, the fields a
    /// shorter record lacks read as zero. `None` when the record is too short (a newer kernel
    /// object than this userspace, or corruption): never read past the record.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        if bytes.len() < Self::HEAD_LEN {
            return None;
        }
        let mut ev = Self::zeroed();
        let n = bytes.len().min(core::mem::size_of::<Self>());
        // SAFETY: `n` bytes fit both the record and the event; every bit pattern is a valid
        // HopEvent (plain integers and byte arrays), and a byte copy needs no alignment.
        unsafe {
            core::ptr::copy_nonoverlapping(bytes.as_ptr(), (&mut ev as *mut Self).cast::<u8>(), n);
        }
        Some(ev)
    }

    /// The bytes the kernel program writes for this event ([`HopEvent::record_len`]).
    pub fn record(&self) -> &[u8] {
        &self.as_bytes()[..Self::record_len(self.kind, self.flags)]
    }

    /// The raw bytes of this event, as the kernel writes them (used to build fixtures).
    pub fn as_bytes(&self) -> &[u8] {
        // SAFETY: HopEvent is repr(C) without implicit padding (checked by the layout test).
        unsafe {
            core::slice::from_raw_parts(
                (self as *const Self).cast::<u8>(),
                core::mem::size_of::<Self>(),
            )
        }
    }
}

/// Indices of the per-CPU `COUNTERS` array.
pub mod counter {
    /// Events written to the ring buffer.
    pub const EMITTED: u32 = 0;
    /// Events lost because the ring buffer was full.
    pub const LOST: u32 = 1;
    /// Skbs that could not be remembered because the tracked-skb map refused the insert.
    pub const TRACK_FAILED: u32 = 2;
    /// Packets of a flood counted in `SUMMARIES` instead of traced (`crate::flood`).
    pub const SUMMARISED: u32 = 3;
    /// Quiet packets that could not be counted (`SUMMARIES` refused the insert): reported,
    /// like a lost event.
    pub const UNCOUNTED: u32 = 4;
    /// Quiet packets that parted from their flow's way and were traced from there.
    pub const RESUMED: u32 = 5;
    /// Drops the kernel's per-key drop counter (`DROPS`) could not take: its map was full.
    pub const DROPS_UNCOUNTED: u32 = 6;
    /// Number of counters.
    pub const COUNT: u32 = 7;
}

/// How `HopEvent::fingerprint` is computed, shared so userspace tests pin the kernel's choice.
/// Every value is non-zero (0 means "headers unreadable") without folding neighbours together:
/// a SYN-ACK (seq S) and the next segment (seq S+1) must differ even when S is even.
pub mod fingerprint {
    #[inline(always)]
    const fn nonzero(x: u32) -> u32 {
        if x == 0 { 1 } else { x }
    }

    /// TCP: sequence and acknowledgement numbers and flags, which NAT leaves alone.
    #[inline(always)]
    pub const fn tcp(seq: u32, ack: u32, flags: u8) -> u32 {
        nonzero(seq ^ ack.rotate_left(16) ^ ((flags as u32) << 24))
    }

    /// UDP: the IP id and the UDP length.
    #[inline(always)]
    pub const fn udp(ip_id: u16, udp_len: u16) -> u32 {
        nonzero(((ip_id as u32) << 16) | udp_len as u32)
    }

    /// Any other IPv4 packet: the IP id and protocol (bit 8 keeps it non-zero).
    #[inline(always)]
    pub const fn ip(ip_id: u16, proto: u8) -> u32 {
        ((ip_id as u32) << 16) | 0x100 | proto as u32
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), no implicit padding, every bit pattern valid.
unsafe impl aya::Pod for HopEvent {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_has_no_implicit_padding() {
        assert_eq!(core::mem::size_of::<HopEvent>(), 176);
        assert_eq!(core::mem::size_of::<Conntrack>(), 44);
        assert_eq!(core::mem::align_of::<HopEvent>(), 8);
        assert_eq!(core::mem::offset_of!(HopEvent, netns), 24);
        assert_eq!(core::mem::offset_of!(HopEvent, saddr), 32);
        assert_eq!(core::mem::offset_of!(HopEvent, kind), 80);
        assert_eq!(core::mem::offset_of!(HopEvent, _pad), 87);
        assert_eq!(core::mem::offset_of!(HopEvent, peer_netns), 88);
        assert_eq!(core::mem::offset_of!(HopEvent, in_ifindex), 96);
        assert_eq!(core::mem::offset_of!(HopEvent, icmp_type), 106);
        assert_eq!(core::mem::offset_of!(HopEvent, quoted), 108);
        assert_eq!(core::mem::offset_of!(HopEvent, stack), 124);
        assert_eq!(core::mem::offset_of!(HopEvent, skb_mark), 128);
        assert_eq!(core::mem::offset_of!(HopEvent, ct), 132);
        assert_eq!(core::mem::offset_of!(Conntrack, original), 12);
        assert_eq!(core::mem::offset_of!(Conntrack, reply), 28);
    }

    #[test]
    fn conntrack_rides_only_where_it_was_set() {
        let mut ev = HopEvent::zeroed();
        ev.kind = HopKind::Transmit as u8;
        ev.flags = FLAG_CONNTRACK;
        ev.ct.info = 2;
        ev.ct.original.dport = 8080;
        ev.ct.reply.sport = 80;
        assert_eq!(ev.record().len(), 176);
        assert_eq!(HopEvent::from_bytes(ev.record()), Some(ev));
        // A drop without an entry stops before it.
        ev.kind = HopKind::Drop as u8;
        ev.flags = 0;
        ev.skb_mark = 2;
        assert_eq!(ev.record().len(), 132);
        assert_eq!(
            HopEvent::from_bytes(ev.record()).map(|e| e.skb_mark),
            Some(2)
        );
    }

    #[test]
    fn a_conntrack_signature_changes_with_what_a_hop_changes() {
        let none = Conntrack::signature(0, false, 0);
        let untracked = Conntrack::signature(Conntrack::UNTRACKED, false, 0);
        let new = Conntrack::signature(2, true, 0);
        let dnat = Conntrack::signature(2, true, 1 << status::DST_NAT_DONE_BIT);
        let confirmed = Conntrack::signature(
            2,
            true,
            1 << status::DST_NAT_DONE_BIT | 1 << status::CONFIRMED_BIT,
        );
        let reply = Conntrack::signature(3, true, 1 << status::CONFIRMED_BIT);
        let all = [none, untracked, new, dnat, confirmed, reply];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
        assert_eq!(none, 0);
        // Bits nobody shows (assured, a mark) do not count as a change.
        assert_eq!(Conntrack::signature(2, true, 1 << status::ASSURED_BIT), new);
    }

    #[test]
    fn round_trips_through_bytes() {
        let mut ev = HopEvent::zeroed();
        ev.skb = 0xffff_8880_0102_0304;
        ev.kind = HopKind::Drop as u8;
        ev.dport = 10001;
        ev.in_ifindex = 4;
        ev.entered_dport = 80;
        let back = HopEvent::from_bytes(ev.record()).expect("full record");
        assert_eq!(back, ev);
        assert_eq!(ev.record().len(), 132, "a drop carries its tail");
        assert!(HopEvent::from_bytes(&ev.as_bytes()[..HopEvent::HEAD_LEN - 1]).is_none());

        // Any other hop stops before the drop's fields, which then read as zero.
        ev.kind = HopKind::Receive as u8;
        assert_eq!(ev.record().len(), 96);
        let back = HopEvent::from_bytes(ev.record()).expect("head record");
        assert_eq!((back.skb, back.dport), (ev.skb, ev.dport));
        assert_eq!((back.in_ifindex, back.entered_dport), (0, 0));

        // An ICMP error carries the tail too: the header it quotes.
        ev.flags = FLAG_QUOTED;
        ev.quoted.dport = 10001;
        ev.icmp_type = 3;
        assert_eq!(ev.record().len(), 132);
        assert_eq!(HopEvent::from_bytes(ev.record()), Some(ev));
    }

    #[test]
    fn a_freed_unseen_record_decodes_as_its_event() {
        let words = HopEvent::freed_unseen(42, 0xffff_8880_0000_1000);
        // SAFETY: plain integers viewed as bytes.
        let bytes =
            unsafe { core::slice::from_raw_parts(words.as_ptr().cast::<u8>(), HopEvent::HEAD_LEN) };
        let ev = HopEvent::from_bytes(bytes).expect("a head");
        let mut want = HopEvent::zeroed();
        want.ts_ns = 42;
        want.skb = 0xffff_8880_0000_1000;
        want.kind = HopKind::FreedUnseen as u8;
        assert_eq!(ev, want);
    }

    #[test]
    fn a_resumed_record_carries_its_flow_and_the_hops_it_shared() {
        let words = HopEvent::resumed(42, 0xffff_8880_0000_7000, 0x9abc_def0, 3);
        // SAFETY: plain words viewed as bytes.
        let bytes =
            unsafe { core::slice::from_raw_parts(words.as_ptr().cast::<u8>(), HopEvent::HEAD_LEN) };
        let ev = HopEvent::from_bytes(bytes).expect("a head record");
        assert_eq!(ev.kind, HopKind::Resumed as u8);
        assert_eq!((ev.ts_ns, ev.skb), (42, 0xffff_8880_0000_7000));
        assert_eq!((ev.location, ev.len), (0x9abc_def0, 3));
        assert_eq!(
            (ev.netns, ev.ifindex, ev.flags, ev.fingerprint),
            (0, 0, 0, 0)
        );
    }

    #[test]
    fn adjacent_tcp_segments_have_different_fingerprints() {
        use super::fingerprint;
        // The SYN-ACK (seq S, ack C+1) and the server's next ACK (seq S+1, same ack) share an
        // skb address when the first is freed unseen; the fingerprint must tell them apart.
        for s in [0u32, 2, 0x8000_0000, u32::MAX - 1] {
            let synack = fingerprint::tcp(s, 77, 0x12);
            let ack = fingerprint::tcp(s.wrapping_add(1), 77, 0x10);
            assert_ne!(synack, ack, "seq {s}");
            assert_ne!(synack, 0);
        }
        assert_ne!(fingerprint::tcp(0, 0, 0), 0);
        assert_ne!(fingerprint::udp(0, 0), 0);
        assert_ne!(fingerprint::udp(7, 100), fingerprint::udp(7, 101));
        assert_ne!(fingerprint::ip(0, 0), 0);
    }

    #[test]
    fn hop_kind_round_trips() {
        for raw in 0..=8u8 {
            assert_eq!(HopKind::from_raw(raw).map(|k| k as u8), Some(raw));
        }
        assert_eq!(HopKind::from_raw(9), None);
    }
}

/// Ring buffer flags of `bpf_ringbuf_output`/`bpf_ringbuf_query` (uapi `BPF_RB_*`).
pub mod ring {
    pub const NO_WAKEUP: u64 = 1;
    pub const FORCE_WAKEUP: u64 = 2;
    pub const AVAIL_DATA: u64 = 0;
}

/// `HopEvent::nf_verdict` values (the kernel's NF_DROP/NF_ACCEPT/NF_STOLEN numbering).
pub mod nf_verdict {
    pub const DROP: u8 = 0;
    pub const ACCEPT: u8 = 1;
    /// Stolen or queued: the hook kept the packet (NFQUEUE, a reassembly, ...).
    pub const STOLEN: u8 = 2;
}
