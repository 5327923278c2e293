//! Globals handed to the kernel programs at load time (patched into `.rodata` by the loader).

/// `Filter::fields` bits: which filter fields are set.
pub mod filter_field {
    /// `Filter::proto` is set.
    pub const PROTO: u8 = 1 << 0;
    /// `Filter::host` is set: matches source or destination address (or any of `hosts`).
    pub const HOST: u8 = 1 << 1;
    /// `Filter::sport` is set.
    pub const SPORT: u8 = 1 << 2;
    /// `Filter::dport` is set.
    pub const DPORT: u8 = 1 << 3;
    /// `Filter::host6` is set: an IPv6 address or prefix, source or destination. With `HOST`
    /// set too, a packet of either family passes by its own; with one of them alone, a packet
    /// of the other family does not.
    pub const HOST6: u8 = 1 << 4;
}

/// `Filter::options` bits.
pub mod option {
    /// Record the kernel stack of each traced drop (`--stack`), as an id in `STACKS`.
    pub const STACK: u8 = 1 << 0;
}

/// One destination a packet may be sent to: an address, a port, a protocol. `addr` zero means
/// any of the host's own addresses (`Filter::locals`): a port Docker publishes on 0.0.0.0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Dest {
    /// Network byte order; zero: any of `Filter::locals`.
    pub addr: [u8; 4],
    /// Host byte order.
    pub port: u16,
    pub proto: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
}

/// The packet filter evaluated in the kernel before anything is written to the ring buffer.
///
/// A packet passes when its IP version (if set) and protocol (if set) match and either the
/// fields match (all that are set) or it is sent to one of `dests` (IPv4). A zero `fields`
/// with no `dests` and no `family` matches every IPv4 and IPv6 packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Filter {
    /// IPv4 address in network byte order; matches source or destination.
    pub host: [u8; 4],
    /// Source port, host byte order.
    pub sport: u16,
    /// Destination port, host byte order.
    pub dport: u16,
    /// IP protocol number.
    pub proto: u8,
    /// `filter_field::*` bits.
    pub fields: u8,
    /// How many of `hosts`, `locals` and `dests` are set.
    pub n_hosts: u8,
    pub n_locals: u8,
    pub n_dests: u8,
    /// `option::*` bits: what to record beyond the hop itself.
    pub options: u8,
    /// Seconds a matched flow's replies (and ICMP errors about it) stay followed after its
    /// last traced packet; 0 traces only what the fields match (`--no-replies`).
    pub reply_secs: u16,
    /// Full packets per flow per second before the rest of a flood that keeps the same way is
    /// only counted (`crate::flood`); 0 traces every packet in full (`--every-packet`).
    pub flood_budget: u16,
    /// 4 or 6: only packets of that IP version pass (`-4`, `-6`); 0: both.
    pub family: u8,
    /// Prefix length of `host6` (128: one address).
    pub host6_bits: u8,
    /// IPv6 address (network byte order) with `filter_field::HOST6`: matches source or
    /// destination within its first `host6_bits` bits.
    pub host6: [u8; 16],
    /// More values of `host`: a container on several networks has an address on each.
    pub hosts: [[u8; 4]; MAX_HOSTS],
    /// The host namespace's own addresses, for `dests` published on all of them.
    pub locals: [[u8; 4]; MAX_LOCALS],
    /// A packet that fails the fields still passes when sent to one of these: `--container`
    /// traces traffic to the host addresses and ports published to it, before DNAT rewrote
    /// them; a drops-only trace on a published port also matches its DNAT target.
    pub dests: [Dest; MAX_DESTS],
}

/// Size of `Filter::hosts`.
pub const MAX_HOSTS: usize = 8;
/// Size of `Filter::locals`.
pub const MAX_LOCALS: usize = 16;
/// Size of `Filter::dests`.
pub const MAX_DESTS: usize = 32;

impl Default for Filter {
    fn default() -> Self {
        Self::any()
    }
}

impl Filter {
    /// Whether it matches everything: no field set and no destination.
    pub const fn is_any(&self) -> bool {
        self.fields == 0 && self.n_dests == 0
    }

    /// Matches everything.
    pub const fn any() -> Self {
        Self {
            host: [0; 4],
            sport: 0,
            dport: 0,
            proto: 0,
            fields: 0,
            n_hosts: 0,
            n_locals: 0,
            n_dests: 0,
            options: 0,
            reply_secs: 0,
            flood_budget: 0,
            family: 0,
            host6_bits: 0,
            host6: [0; 16],
            hosts: [[0; 4]; MAX_HOSTS],
            locals: [[0; 4]; MAX_LOCALS],
            dests: [Dest {
                addr: [0; 4],
                port: 0,
                proto: 0,
                _pad: 0,
            }; MAX_DESTS],
        }
    }

    /// Whether a packet with these header fields passes. `has_ports` is false for protocols
    /// without ports (ICMP) or when the L4 header could not be read.
    #[inline(always)]
    pub fn matches(
        &self,
        saddr: [u8; 4],
        daddr: [u8; 4],
        proto: u8,
        has_ports: bool,
        sport: u16,
        dport: u16,
    ) -> bool {
        self.accepts(&Known {
            saddr,
            daddr,
            proto,
            ports: if has_ports {
                Some((sport, dport))
            } else {
                None
            },
        })
    }

    /// [`Filter::matches`] for an IPv6 packet.
    #[inline(always)]
    pub fn matches6(
        &self,
        saddr: &[u8; 16],
        daddr: &[u8; 16],
        proto: u8,
        has_ports: bool,
        sport: u16,
        dport: u16,
    ) -> bool {
        self.accepts(&Known6 {
            saddr,
            daddr,
            proto,
            ports: if has_ports {
                Some((sport, dport))
            } else {
                None
            },
        })
    }

    /// Whether the packet `p` shows passes, asking `p` only for the fields a check needs: the
    /// kernel programs answer with loads from the packet, so a packet that fails on its
    /// protocol never has its addresses or ports read. The one definition of what the filter
    /// means, for the kernel programs and the userspace tests alike.
    #[inline(always)]
    pub fn accepts(&self, p: &impl HeaderFields) -> bool {
        let f = self.fields;
        let version = if p.ipv6() { 6 } else { 4 };
        if self.family != 0 && self.family != version {
            return false;
        }
        // Both ways to match (the fields, the destinations) require the protocol.
        if f & filter_field::PROTO != 0 && p.proto() != self.proto {
            return false;
        }
        if self.fields_match(p) {
            return true;
        }
        // Published ports are IPv4's so far (issue 25).
        version == 4 && self.n_dests != 0 && self.sent_to_a_dest(p)
    }

    /// The AND of the set fields but the protocol (checked before). A host of the other
    /// family alone fails a packet; with hosts of both set, each family is held to its own.
    #[inline(always)]
    fn fields_match(&self, p: &impl HeaderFields) -> bool {
        let f = self.fields;
        if p.ipv6() {
            if f & filter_field::HOST6 != 0 {
                let (saddr, daddr) = p.addrs6();
                if !self.is_host6(saddr) && !self.is_host6(daddr) {
                    return false;
                }
            } else if f & filter_field::HOST != 0 {
                return false;
            }
        } else if f & filter_field::HOST != 0 {
            let (saddr, daddr) = p.addrs();
            if !self.is_host(saddr) && !self.is_host(daddr) {
                return false;
            }
        } else if f & filter_field::HOST6 != 0 {
            return false;
        }
        if f & (filter_field::SPORT | filter_field::DPORT) != 0 {
            let Some((sport, dport)) = p.ports() else {
                return false;
            };
            if f & filter_field::SPORT != 0 && sport != self.sport {
                return false;
            }
            if f & filter_field::DPORT != 0 && dport != self.dport {
                return false;
            }
        }
        true
    }

    /// `host`, or one of `hosts`.
    #[inline(always)]
    fn is_host(&self, addr: [u8; 4]) -> bool {
        let a = u32::from_ne_bytes(addr);
        if a == u32::from_ne_bytes(self.host) {
            return true;
        }
        let mut i = 0;
        while i < MAX_HOSTS && i < self.n_hosts as usize {
            if a == u32::from_ne_bytes(self.hosts[i]) {
                return true;
            }
            i += 1;
        }
        false
    }

    /// Within `host6`'s first `host6_bits` bits.
    #[inline(always)]
    fn is_host6(&self, addr: &[u8; 16]) -> bool {
        let bits = if self.host6_bits > 128 {
            128
        } else {
            self.host6_bits as usize
        };
        let mut i = 0;
        while i < 16 {
            let left = bits.saturating_sub(i * 8);
            let mask: u8 = if left >= 8 { 0xff } else { !(0xffu8 >> left) };
            if (addr[i] ^ self.host6[i]) & mask != 0 {
                return false;
            }
            i += 1;
        }
        true
    }

    /// Its destination address, port and protocol are one of `dests`.
    #[inline(always)]
    fn sent_to_a_dest(&self, p: &impl HeaderFields) -> bool {
        let Some((_, dport)) = p.ports() else {
            return false;
        };
        let proto = p.proto();
        let (_, daddr) = p.addrs();
        let d = u32::from_ne_bytes(daddr);
        let mut local = false;
        let mut i = 0;
        while i < MAX_LOCALS && i < self.n_locals as usize {
            if d == u32::from_ne_bytes(self.locals[i]) {
                local = true;
            }
            i += 1;
        }
        let mut i = 0;
        while i < MAX_DESTS && i < self.n_dests as usize {
            let dest = &self.dests[i];
            let addr = u32::from_ne_bytes(dest.addr);
            if dest.port == dport && dest.proto == proto && (addr == d || (addr == 0 && local)) {
                return true;
            }
            i += 1;
        }
        false
    }
}

/// A filter's lists are full: said with the limit, never cut silently.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TooMany {
    pub what: &'static str,
    pub limit: usize,
}

impl Filter {
    /// Adds another value of `host`.
    pub fn add_host(&mut self, addr: [u8; 4]) -> Result<(), TooMany> {
        if self.fields & filter_field::HOST == 0 {
            self.host = addr;
            self.fields |= filter_field::HOST;
            return Ok(());
        }
        if self.host == addr || self.hosts[..self.n_hosts as usize].contains(&addr) {
            return Ok(());
        }
        let slot = self.hosts.get_mut(self.n_hosts as usize).ok_or(TooMany {
            what: "addresses",
            limit: MAX_HOSTS + 1,
        })?;
        *slot = addr;
        self.n_hosts += 1;
        Ok(())
    }

    /// Sets the IPv6 address or prefix (`bits` long) packets must come from or go to.
    pub fn set_host6(&mut self, addr: [u8; 16], bits: u8) {
        self.host6 = addr;
        self.host6_bits = bits.min(128);
        self.fields |= filter_field::HOST6;
    }

    /// Adds a host address for destinations published on all of them.
    pub fn add_local(&mut self, addr: [u8; 4]) -> Result<(), TooMany> {
        if self.locals[..self.n_locals as usize].contains(&addr) {
            return Ok(());
        }
        let slot = self.locals.get_mut(self.n_locals as usize).ok_or(TooMany {
            what: "host addresses",
            limit: MAX_LOCALS,
        })?;
        *slot = addr;
        self.n_locals += 1;
        Ok(())
    }

    /// Adds a destination.
    pub fn add_dest(&mut self, addr: [u8; 4], port: u16, proto: u8) -> Result<(), TooMany> {
        let dest = Dest {
            addr,
            port,
            proto,
            _pad: 0,
        };
        if self.dests[..self.n_dests as usize].contains(&dest) {
            return Ok(());
        }
        let slot = self.dests.get_mut(self.n_dests as usize).ok_or(TooMany {
            what: "published ports",
            limit: MAX_DESTS,
        })?;
        *slot = dest;
        self.n_dests += 1;
        Ok(())
    }
}

/// A packet's header as the kernel looks it up in `REPLIES`: the tuple a reply to a followed
/// packet shows (its source and destination swapped), at any point on its way back.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Network byte order.
    pub saddr: [u8; 4],
    pub daddr: [u8; 4],
    /// Host byte order.
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// Explicit padding; always zero. Two fields, not `[u8; 3]`: zeroing three bytes is a
    /// `memset` call in BPF, a subprogram whose frame the verifier adds to the caller's.
    pub _pad: u8,
    pub _pad2: u16,
}

impl FlowKey {
    /// All zero.
    pub const ZERO: Self = Self {
        saddr: [0; 4],
        daddr: [0; 4],
        sport: 0,
        dport: 0,
        proto: 0,
        _pad: 0,
        _pad2: 0,
    };

    /// A cheap mix of the tuple, kept with a followed skb to tell a NAT rewrite from the same
    /// header seen again. A collision only skips learning one reply tuple.
    #[inline(always)]
    pub fn hash32(&self) -> u32 {
        let a = u32::from_ne_bytes(self.saddr).wrapping_mul(0x9e37_79b1);
        let b = (a ^ u32::from_ne_bytes(self.daddr)).wrapping_mul(0x85eb_ca6b);
        (b ^ ((self.sport as u32) << 16 | self.dport as u32)).wrapping_mul(0xc2b2_ae35)
            ^ self.proto as u32
    }

    /// The reply to follow for a followed skb showing this header now, given the value
    /// remembered for it (see [`follow`]): a header it did not show before (its first hop, or
    /// one a NAT rewrote) asks for the replies that header will get. `None` when the header
    /// is the one remembered, or has no ports (no reply tuple to expect).
    #[inline(always)]
    pub fn reply_to_learn(&self, remembered: Option<u64>, has_ports: bool) -> Option<FlowKey> {
        let seen = remembered.is_some_and(|v| follow::same_tuple(v, self.hash32()));
        (!seen && has_ports)
            .then(|| Self::reply_to(self.saddr, self.daddr, self.sport, self.dport, self.proto))
    }

    /// The key of the reply to a packet with this header.
    #[inline(always)]
    pub const fn reply_to(
        saddr: [u8; 4],
        daddr: [u8; 4],
        sport: u16,
        dport: u16,
        proto: u8,
    ) -> Self {
        Self {
            saddr: daddr,
            daddr: saddr,
            sport: dport,
            dport: sport,
            proto,
            _pad: 0,
            _pad2: 0,
        }
    }
}

/// The value the kernel keeps per followed skb: the packet's fingerprint in the low half, the
/// [`FlowKey::hash32`] of the header it last showed in the high half.
pub mod follow {
    /// Packs a fingerprint, a tuple hash (its low 24 bits) and the conntrack signature
    /// ([`crate::event::Conntrack::signature`]) last shown for the skb.
    #[inline(always)]
    pub const fn remember(fingerprint: u32, tuple: u32, conntrack: u8) -> u64 {
        fingerprint as u64 | ((tuple & TUPLE_MASK) as u64) << 32 | (conntrack as u64) << 56
    }

    /// The bits of a tuple hash kept: a collision only skips learning one reply tuple.
    pub const TUPLE_MASK: u32 = 0x00ff_ffff;

    /// Whether `v` remembers the tuple hashed to `tuple`.
    #[inline(always)]
    pub const fn same_tuple(v: u64, tuple: u32) -> bool {
        (v >> 32) as u32 & TUPLE_MASK == tuple & TUPLE_MASK
    }

    #[inline(always)]
    pub const fn conntrack(v: u64) -> u8 {
        (v >> 56) as u8
    }

    #[inline(always)]
    pub const fn fingerprint(v: u64) -> u32 {
        v as u32
    }
}

/// A packet's header fields as [`Filter::accepts`] asks for them, each read only when asked.
pub trait HeaderFields {
    /// The IP protocol number (IPv6: the header after the extension headers).
    fn proto(&self) -> u8;
    /// An IPv6 packet: its addresses are [`HeaderFields::addrs6`]'s.
    fn ipv6(&self) -> bool {
        false
    }
    /// Source and destination address of an IPv4 packet, network byte order.
    fn addrs(&self) -> ([u8; 4], [u8; 4]);
    /// Source and destination address of an IPv6 packet, network byte order.
    fn addrs6(&self) -> (&[u8; 16], &[u8; 16]) {
        (&[0; 16], &[0; 16])
    }
    /// Source and destination port, host byte order; `None` for protocols without ports, for
    /// fragments past the first, and when the L4 header cannot be read.
    fn ports(&self) -> Option<(u16, u16)>;
}

/// Fields already read.
struct Known {
    saddr: [u8; 4],
    daddr: [u8; 4],
    proto: u8,
    ports: Option<(u16, u16)>,
}

impl HeaderFields for Known {
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn addrs(&self) -> ([u8; 4], [u8; 4]) {
        (self.saddr, self.daddr)
    }
    #[inline(always)]
    fn ports(&self) -> Option<(u16, u16)> {
        self.ports
    }
}

/// Fields of an IPv6 packet already read (the addresses where they lie: no copies on a BPF
/// stack).
struct Known6<'a> {
    saddr: &'a [u8; 16],
    daddr: &'a [u8; 16],
    proto: u8,
    ports: Option<(u16, u16)>,
}

impl HeaderFields for Known6<'_> {
    #[inline(always)]
    fn proto(&self) -> u8 {
        self.proto
    }
    #[inline(always)]
    fn ipv6(&self) -> bool {
        true
    }
    #[inline(always)]
    fn addrs(&self) -> ([u8; 4], [u8; 4]) {
        ([0; 4], [0; 4])
    }
    #[inline(always)]
    fn addrs6(&self) -> (&[u8; 16], &[u8; 16]) {
        (self.saddr, self.daddr)
    }
    #[inline(always)]
    fn ports(&self) -> Option<(u16, u16)> {
        self.ports
    }
}

/// Field offsets of kernel structures, read from the running kernel's BTF by userspace.
///
/// Rust cannot emit CO-RE relocations, so every offset the programs use arrives here; none is
/// compiled in. `net_ns_inum` is the offset of `ns.inum` inside `struct net`, whose layout
/// differs between kernel versions.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub skb_head: u32,
    pub skb_data: u32,
    pub skb_len: u32,
    pub skb_dev: u32,
    pub skb_protocol: u32,
    pub skb_network_header: u32,
    pub skb_transport_header: u32,
    pub dev_ifindex: u32,
    /// `net_device.nd_net.net`: the `struct net *` of the device.
    pub dev_nd_net: u32,
    /// `net.ns.inum`.
    pub net_ns_inum: u32,
    /// `nf_hook_state.hook` (u8): the NF_INET_* hook number.
    pub nf_state_hook: u32,
    /// `nf_hook_state.pf` (u8): the NFPROTO_* family.
    pub nf_state_pf: u32,
    /// `nf_hook_state.in` / `.out`: input and output devices.
    pub nf_state_in: u32,
    pub nf_state_out: u32,
    /// `net_bridge_port.dev` (bridge module BTF): the egress port's device in `br_forward`.
    pub brport_dev: u32,
    /// `netdev_priv()` offset: `sizeof(struct net_device)` aligned to NETDEV_ALIGN (32).
    pub netdev_priv: u32,
    /// `veth_priv.peer` (veth module BTF).
    pub veth_priv_peer: u32,
    /// BTF ids (vmlinux) of `struct iphdr` and `struct tcphdr`: the types packet bytes are cast
    /// to with `bpf_rdonly_cast` (see [`kfunc`]), so the verifier lets them be loaded directly.
    pub btf_iphdr: u32,
    pub btf_tcphdr: u32,
    /// `sk_buff.skb_iif`: the index of the device the packet was last received on.
    pub skb_iif: u32,
    /// `sk_buff._nfct`: the packet's `struct nf_conn *`, its `ip_conntrack_info` in the low
    /// three bits.
    pub skb_nfct: u32,
    /// `nf_conn.tuplehash[0].tuple.dst.u3` and `.dst.u.all`: the original direction's
    /// destination address and port; the reply direction's are `ct_dir_stride` further on.
    pub ct_dst_addr: u32,
    pub ct_dst_port: u32,
    /// `sizeof(struct nf_conntrack_tuple_hash)`: one `tuplehash` element.
    pub ct_dir_stride: u32,
    /// `nf_conn.tuplehash[0].tuple.src.u3` and `.src.u.all`: the original direction's
    /// source, so a reply's drop can be matched by the connection it answers.
    pub ct_src_addr: u32,
    pub ct_src_port: u32,
    /// `nf_conn.tuplehash[0].tuple.dst.protonum`: the entry's L4 protocol.
    pub ct_proto: u32,
    /// `nf_conn.status` (`enum ip_conntrack_status` bits; its low word is read).
    pub ct_status: u32,
    /// `nf_conn.mark` and `nf_conn.zone.id`; 0 when the kernel is built without
    /// CONFIG_NF_CONNTRACK_MARK / _ZONES (the field is never at offset 0).
    pub ct_mark: u32,
    pub ct_zone: u32,
    /// `sk_buff.mark`: the packet's fwmark, which policy routing (and reverse path filtering,
    /// with `src_valid_mark`) looks routes up with.
    pub skb_mark: u32,
    /// BTF id (vmlinux) of `struct ipv6hdr`, with `have::RDONLY_CAST`: as `btf_iphdr`.
    pub btf_ipv6hdr: u32,
    /// `have::*` bits: which optional groups above are valid (offset 0 is a real offset).
    pub have: u32,
}

/// `KernelOffsets::have` bits.
pub mod have {
    /// `nf_state_*` are valid.
    pub const NF_HOOK_STATE: u32 = 1 << 0;
    /// `brport_dev` is valid (bridge module loaded).
    pub const BRIDGE_PORT: u32 = 1 << 1;
    /// `netdev_priv` and `veth_priv_peer` are valid (veth module loaded).
    pub const VETH_PEER: u32 = 1 << 2;
    /// `btf_iphdr`/`btf_tcphdr` are valid and the loader turned the programs'
    /// [`kfunc::RDONLY_CAST`](super::kfunc::RDONLY_CAST) placeholders into `bpf_rdonly_cast`
    /// calls (kernel >= 6.2).
    pub const RDONLY_CAST: u32 = 1 << 3;
    /// `skb_nfct` and `ct_*` are valid (a kernel with conntrack).
    pub const CONNTRACK: u32 = 1 << 4;
}

/// Kernel functions (kfuncs) the programs call.
///
/// A kfunc call is `call` with `src_reg = BPF_PSEUDO_KFUNC_CALL` and the function's BTF id as
/// its immediate, which only the loader can know. Rust cannot name a kfunc (no `__ksym`
/// externs) and aya 0.14 cannot link one, so the programs call a placeholder helper number and
/// the loader rewrites each such instruction before aya sees the object: into the kfunc call
/// where the kernel has the function, otherwise into `r0 = r1` inside a branch the verifier
/// knows is dead (guarded by a [`have`] bit in the frozen `.rodata`).
pub mod kfunc {
    /// `void *bpf_rdonly_cast(const void *obj, u32 btf_id)`: returns `obj` typed as a
    /// read-only, untrusted pointer to the BTF type, which the verifier lets the program load
    /// from directly (each load becomes one instruction with a fault fixup) and which it
    /// inlines as `r0 = r1`. No helper number comes near this value.
    pub const RDONLY_CAST: i32 = 0x7d0c_a570;
    /// Every placeholder and the kfunc it stands for.
    pub const ALL: [(i32, &str); 1] = [(RDONLY_CAST, "bpf_rdonly_cast")];
}

impl KernelOffsets {
    /// All zero: the programs refuse to run (emit nothing) until the loader sets real offsets.
    pub const fn unset() -> Self {
        Self {
            skb_head: 0,
            skb_data: 0,
            skb_len: 0,
            skb_dev: 0,
            skb_protocol: 0,
            skb_network_header: 0,
            skb_transport_header: 0,
            dev_ifindex: 0,
            dev_nd_net: 0,
            net_ns_inum: 0,
            nf_state_hook: 0,
            nf_state_pf: 0,
            nf_state_in: 0,
            nf_state_out: 0,
            brport_dev: 0,
            netdev_priv: 0,
            veth_priv_peer: 0,
            btf_iphdr: 0,
            btf_tcphdr: 0,
            skb_iif: 0,
            skb_nfct: 0,
            ct_dst_addr: 0,
            ct_dst_port: 0,
            ct_dir_stride: 0,
            ct_src_addr: 0,
            ct_src_port: 0,
            ct_proto: 0,
            ct_status: 0,
            ct_mark: 0,
            ct_zone: 0,
            skb_mark: 0,
            btf_ipv6hdr: 0,
            have: 0,
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, every bit pattern valid.
unsafe impl aya::Pod for Filter {}
#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, every bit pattern valid.
unsafe impl aya::Pod for FlowKey {}
#[cfg(feature = "user")]
// SAFETY: repr(C) of u32 only.
unsafe impl aya::Pod for KernelOffsets {}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(fields: u8) -> Filter {
        Filter {
            host: [10, 0, 0, 1],
            sport: 5555,
            dport: 10001,
            proto: 6,
            fields,
            ..Filter::any()
        }
    }

    fn key(s: [u8; 4], sport: u16, d: [u8; 4], dport: u16) -> FlowKey {
        FlowKey {
            saddr: s,
            daddr: d,
            sport,
            dport,
            proto: 6,
            _pad: 0,
            _pad2: 0,
        }
    }

    /// The replies a followed packet teaches, hop by hop, as the kernel programs learn them:
    /// each header the packet shows for the first time (remembered per skb as its hash).
    fn learned(hops: &[FlowKey]) -> [Option<FlowKey>; 4] {
        let mut out = [None; 4];
        let mut remembered = None;
        for (i, h) in hops.iter().enumerate() {
            out[i] = h.reply_to_learn(remembered, true);
            remembered = Some(follow::remember(0xfeed, h.hash32(), 0));
        }
        out
    }

    #[test]
    fn replies_are_learned_before_and_after_dnat() {
        // A SYN to a published port: at the uplink, DNATed on its way to the bridge, then in
        // the container (same header, nothing new to learn).
        let client = [198, 51, 100, 7];
        let at_uplink = key(client, 40000, [192, 0, 2, 10], 8080);
        let dnat = key(client, 40000, [10, 88, 0, 5], 443);
        let learned = learned(&[at_uplink, dnat, dnat]);
        assert_eq!(learned[2], None, "the same header again teaches nothing");
        // The SYN-ACK as the container sends it, and as it leaves the host after de-DNAT:
        // each is the reply key of one of the SYN's headers.
        let from_container = key([10, 88, 0, 5], 443, client, 40000);
        let after_de_nat = key([192, 0, 2, 10], 8080, client, 40000);
        assert_eq!(learned[1], Some(from_container));
        assert_eq!(learned[0], Some(after_de_nat));
    }

    #[test]
    fn replies_are_learned_after_masquerade() {
        // A container's DNS query leaving by the uplink with its source rewritten to the host.
        let inside = key([10, 88, 0, 5], 51000, [203, 0, 113, 53], 53);
        let masqueraded = key([192, 0, 2, 10], 61000, [203, 0, 113, 53], 53);
        let learned = learned(&[inside, masqueraded]);
        // The answer arrives at the uplink addressed to the host's port, and is de-NATed
        // towards the container.
        assert_eq!(
            learned[1],
            Some(key([203, 0, 113, 53], 53, [192, 0, 2, 10], 61000))
        );
        assert_eq!(
            learned[0],
            Some(key([203, 0, 113, 53], 53, [10, 88, 0, 5], 51000))
        );
    }

    #[test]
    fn a_header_without_ports_teaches_no_reply() {
        assert_eq!(
            key([1, 1, 1, 1], 0, [2, 2, 2, 2], 0).reply_to_learn(None, false),
            None
        );
        // Another packet at a reused skb address: nothing remembered for it.
        let k = key([1, 1, 1, 1], 1, [2, 2, 2, 2], 2);
        let stale = follow::remember(7, k.hash32(), 0x9b);
        assert_eq!(k.reply_to_learn(Some(stale), true), None);
        assert!(k.reply_to_learn(None, true).is_some());
        assert_eq!(follow::fingerprint(stale), 7);
        assert!(follow::same_tuple(stale, k.hash32()));
        assert!(!follow::same_tuple(stale, k.hash32() ^ 1));
        assert_eq!(
            follow::conntrack(stale),
            0x9b,
            "the signature keeps its own byte"
        );
    }

    #[test]
    fn container_filter_matches_its_addresses_or_its_published_destinations() {
        // A container on two networks, 8443 published on 198.51.100.1 only, 10001 on every
        // host address (192.0.2.10, 10.9.0.1).
        let mut flt = f(filter_field::PROTO);
        flt.add_host([172, 17, 0, 2]).unwrap();
        flt.add_host([172, 18, 0, 5]).unwrap();
        flt.add_dest([198, 51, 100, 1], 8443, 6).unwrap();
        flt.add_dest([0; 4], 10001, 6).unwrap();
        flt.add_local([192, 0, 2, 10]).unwrap();
        flt.add_local([10, 9, 0, 1]).unwrap();
        let client = [203, 0, 113, 2];
        // Before DNAT: to a published address and port.
        assert!(flt.matches(client, [198, 51, 100, 1], 6, true, 40000, 8443));
        assert!(flt.matches(client, [10, 9, 0, 1], 6, true, 40000, 10001));
        // After DNAT, and replies: either of the container's addresses.
        assert!(flt.matches([172, 17, 0, 2], client, 6, true, 80, 40000));
        assert!(flt.matches(client, [172, 18, 0, 5], 6, true, 40000, 80));
        // The same port on an address it is not published on, or elsewhere: no. The host's
        // own HTTPS to some server is not the container's traffic.
        assert!(!flt.matches(client, [192, 0, 2, 10], 6, true, 40000, 8443));
        assert!(!flt.matches([192, 0, 2, 10], [93, 184, 216, 34], 6, true, 40000, 8443));
        assert!(!flt.matches([192, 0, 2, 10], [93, 184, 216, 34], 6, true, 40000, 10001));
        // Another protocol: no.
        assert!(!flt.matches(client, [198, 51, 100, 1], 17, true, 40000, 8443));
    }

    #[test]
    fn lists_refuse_past_their_limit_and_ignore_repeats() {
        let mut flt = Filter::any();
        for i in 0..MAX_DESTS {
            flt.add_dest([10, 0, 0, 1], i as u16 + 1, 6).unwrap();
        }
        flt.add_dest([10, 0, 0, 1], 1, 6).unwrap();
        assert_eq!(
            flt.add_dest([10, 0, 0, 1], 9999, 6),
            Err(TooMany {
                what: "published ports",
                limit: MAX_DESTS
            })
        );
        for i in 0..=MAX_HOSTS {
            flt.add_host([10, 1, 0, i as u8]).unwrap();
        }
        assert!(flt.add_host([10, 2, 0, 0]).is_err());
    }

    #[test]
    fn a_published_port_widened_to_its_dnat_target_matches_only_traffic_to_it() {
        // --dport 10001, published to 172.17.0.2:80.
        let mut flt = f(filter_field::DPORT);
        flt.add_dest([172, 17, 0, 2], 80, 6).unwrap();
        // Before DNAT, and after it.
        assert!(flt.matches([203, 0, 113, 2], [203, 0, 113, 1], 6, true, 40000, 10001));
        assert!(flt.matches([203, 0, 113, 2], [172, 17, 0, 2], 6, true, 40000, 80));
        // The container itself talking to some other server's port 80 is not traffic to it.
        assert!(!flt.matches([172, 17, 0, 2], [198, 51, 100, 7], 6, true, 40000, 80));
        // Nor is another of its ports.
        assert!(!flt.matches([203, 0, 113, 2], [172, 17, 0, 2], 6, true, 40000, 22));
    }

    /// IPv6 packets pass on their own fields: ports and protocol as IPv4's, an IPv6 host or
    /// prefix against either address, a host of the other family never, `-4`/`-6` by version.
    #[test]
    fn ipv6_packets_pass_by_their_own_fields() {
        let a: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 7];
        let b: [u8; 16] = [0xfd, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
        let mut f = Filter::any();
        f.dport = 8443;
        f.fields = filter_field::DPORT;
        assert!(f.matches6(&a, &b, 6, true, 50000, 8443));
        assert!(!f.matches6(&a, &b, 6, true, 50000, 8444));
        assert!(!f.matches6(&a, &b, 58, false, 0, 0), "ICMPv6 has no port");
        // An IPv6 prefix: the whole /32 of `a`, either direction, and nothing of IPv4.
        let mut net = Filter::any();
        net.set_host6(
            [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            32,
        );
        assert!(net.matches6(&b, &a, 17, true, 53, 53));
        let mut other = a;
        other[3] = 0xb9;
        assert!(!net.matches6(&other, &b, 17, true, 53, 53));
        assert!(!net.matches([10, 0, 0, 1], [10, 0, 0, 2], 17, true, 53, 53));
        // A prefix that ends inside a byte.
        let mut nibble = Filter::any();
        nibble.set_host6([0xfd, 0x40, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 12);
        assert!(nibble.matches6(&a, &b, 6, true, 1, 2));
        nibble.set_host6([0xfd, 0x50, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], 12);
        assert!(!nibble.matches6(&a, &b, 6, true, 1, 2));
        // An IPv4 host alone fails IPv6 packets; both hosts set hold each family to its own.
        let mut v4 = Filter::any();
        v4.add_host([10, 0, 0, 1]).unwrap();
        assert!(!v4.matches6(&a, &b, 6, true, 1, 2));
        v4.set_host6(a, 128);
        assert!(v4.matches6(&a, &b, 6, true, 1, 2));
        assert!(v4.matches([10, 0, 0, 1], [10, 0, 0, 2], 6, true, 1, 2));
        assert!(!v4.matches([10, 0, 0, 3], [10, 0, 0, 2], 6, true, 1, 2));
        // The version alone.
        let mut six = Filter::any();
        six.family = 6;
        assert!(six.matches6(&a, &b, 6, true, 1, 2));
        assert!(!six.matches([10, 0, 0, 1], [10, 0, 0, 2], 6, true, 1, 2));
        six.family = 4;
        assert!(!six.matches6(&a, &b, 6, true, 1, 2));
        assert!(Filter::any().matches6(&a, &b, 58, false, 0, 0));
    }

    /// The kernel programs read these structs at the offsets their own build of this crate
    /// gives; a field moved by accident must fail here, not as a filter that matches wrongly.
    #[test]
    fn layouts_shared_with_the_kernel_stay_put() {
        use core::mem::{align_of, offset_of, size_of};
        assert_eq!((size_of::<Dest>(), align_of::<Dest>()), (8, 2));
        assert_eq!(offset_of!(Dest, port), 4);
        assert_eq!(offset_of!(Dest, proto), 6);
        assert_eq!((size_of::<Filter>(), align_of::<Filter>()), (388, 2));
        assert_eq!(offset_of!(Filter, sport), 4);
        assert_eq!(offset_of!(Filter, dport), 6);
        assert_eq!(offset_of!(Filter, proto), 8);
        assert_eq!(offset_of!(Filter, fields), 9);
        assert_eq!(offset_of!(Filter, n_hosts), 10);
        assert_eq!(offset_of!(Filter, n_dests), 12);
        assert_eq!(offset_of!(Filter, reply_secs), 14);
        assert_eq!(offset_of!(Filter, flood_budget), 16);
        assert_eq!(offset_of!(Filter, family), 18);
        assert_eq!(offset_of!(Filter, host6), 20);
        assert_eq!(offset_of!(Filter, hosts), 36);
        assert_eq!(offset_of!(Filter, locals), 68);
        assert_eq!(offset_of!(Filter, dests), 132);
        assert_eq!((size_of::<FlowKey>(), align_of::<FlowKey>()), (16, 2));
        assert_eq!(offset_of!(FlowKey, sport), 8);
        assert_eq!(offset_of!(FlowKey, proto), 12);
        assert_eq!(
            (size_of::<KernelOffsets>(), align_of::<KernelOffsets>()),
            (132, 4)
        );
        assert_eq!(offset_of!(KernelOffsets, nf_state_hook), 40);
        assert_eq!(offset_of!(KernelOffsets, btf_iphdr), 68);
        assert_eq!(offset_of!(KernelOffsets, ct_src_port), 100);
        assert_eq!(offset_of!(KernelOffsets, ct_zone), 116);
        assert_eq!(offset_of!(KernelOffsets, have), 128);
    }

    #[test]
    fn empty_filter_matches_all() {
        assert!(Filter::any().matches([1, 1, 1, 1], [2, 2, 2, 2], 17, false, 0, 0));
    }

    #[test]
    fn dport_filter() {
        let flt = f(filter_field::DPORT);
        assert!(flt.matches([1, 1, 1, 1], [2, 2, 2, 2], 6, true, 1, 10001));
        assert!(!flt.matches([1, 1, 1, 1], [2, 2, 2, 2], 6, true, 10001, 80));
        assert!(!flt.matches([1, 1, 1, 1], [2, 2, 2, 2], 1, false, 0, 10001));
    }

    #[test]
    fn host_matches_either_side_and_proto_is_checked() {
        let flt = f(filter_field::HOST | filter_field::PROTO);
        assert!(flt.matches([10, 0, 0, 1], [2, 2, 2, 2], 6, true, 1, 2));
        assert!(flt.matches([2, 2, 2, 2], [10, 0, 0, 1], 6, true, 1, 2));
        assert!(!flt.matches([2, 2, 2, 2], [3, 3, 3, 3], 6, true, 1, 2));
        assert!(!flt.matches([10, 0, 0, 1], [3, 3, 3, 3], 17, true, 1, 2));
    }

    /// Records which fields the filter asked for.
    struct Asked {
        known: Known,
        asked: core::cell::Cell<(bool, bool, bool)>,
    }

    impl HeaderFields for Asked {
        fn proto(&self) -> u8 {
            self.asked
                .set((true, self.asked.get().1, self.asked.get().2));
            self.known.proto()
        }
        fn addrs(&self) -> ([u8; 4], [u8; 4]) {
            self.asked
                .set((self.asked.get().0, true, self.asked.get().2));
            self.known.addrs()
        }
        fn ports(&self) -> Option<(u16, u16)> {
            self.asked
                .set((self.asked.get().0, self.asked.get().1, true));
            self.known.ports()
        }
    }

    fn asked(flt: &Filter, proto: u8) -> (bool, (bool, bool, bool)) {
        let p = Asked {
            known: Known {
                saddr: [10, 0, 0, 1],
                daddr: [10, 0, 0, 2],
                proto,
                ports: Some((5555, 10001)),
            },
            asked: Default::default(),
        };
        (flt.accepts(&p), p.asked.get())
    }

    #[test]
    fn the_filter_reads_only_the_fields_its_checks_need() {
        // (matched, (proto, addresses, ports) asked)
        let port_and_proto = f(filter_field::DPORT | filter_field::PROTO);
        // Another protocol: nothing else is read.
        assert_eq!(asked(&port_and_proto, 17), (false, (true, false, false)));
        assert_eq!(asked(&port_and_proto, 6), (true, (true, false, true)));
        // A port filter never reads the addresses; a host filter never reads the ports.
        assert_eq!(
            asked(&f(filter_field::DPORT), 6),
            (true, (false, false, true))
        );
        assert_eq!(
            asked(&f(filter_field::HOST), 6),
            (true, (false, true, false))
        );
        let mut other_host = f(filter_field::HOST);
        other_host.host = [192, 0, 2, 1];
        assert_eq!(asked(&other_host, 6), (false, (false, true, false)));
    }
}
