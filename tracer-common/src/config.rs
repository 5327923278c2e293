//! Globals handed to the kernel programs at load time (patched into `.rodata` by the loader).

/// `Filter::fields` bits: which filter fields are set.
pub mod filter_field {
    /// `Filter::proto` is set.
    pub const PROTO: u8 = 1 << 0;
    /// `Filter::host` is set: matches source or destination address.
    pub const HOST: u8 = 1 << 1;
    /// `Filter::sport` is set.
    pub const SPORT: u8 = 1 << 2;
    /// `Filter::dport` is set.
    pub const DPORT: u8 = 1 << 3;
    /// With `HOST`: the address must be the destination (a DNAT's target), not either end.
    pub const HOST_IS_DST: u8 = 1 << 4;
}

/// The packet filter evaluated in the kernel before anything is written to the ring buffer.
///
/// A zero `fields` matches every IPv4 packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
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
    /// How many of `or_dports` are set.
    pub n_or_dports: u8,
    /// Explicit padding; always zero.
    pub _pad: u8,
    /// A packet that fails the fields above still matches when its destination port is one of
    /// these (and `proto`, if set, matches): `--container` traces traffic to the container's
    /// address *or* to the ports published to it, before DNAT has rewritten them.
    pub or_dports: [u16; MAX_OR_DPORTS],
}

/// Size of `Filter::or_dports`.
pub const MAX_OR_DPORTS: usize = 8;

impl Filter {
    /// Whether it matches everything: no field set and no alternative port.
    pub const fn is_any(&self) -> bool {
        self.fields == 0 && self.n_or_dports == 0
    }

    /// Matches everything.
    pub const fn any() -> Self {
        Self {
            host: [0; 4],
            sport: 0,
            dport: 0,
            proto: 0,
            fields: 0,
            n_or_dports: 0,
            _pad: 0,
            or_dports: [0; MAX_OR_DPORTS],
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

    /// Whether the packet `p` shows passes, asking `p` only for the fields a check needs: the
    /// kernel programs answer with loads from the packet, so a packet that fails on its
    /// protocol never has its addresses or ports read. The one definition of what the filter
    /// means, for the kernel programs and the userspace tests alike.
    #[inline(always)]
    pub fn accepts(&self, p: &impl HeaderFields) -> bool {
        let f = self.fields;
        // Both ways to match (the fields, the alternative ports) require the protocol.
        if f & filter_field::PROTO != 0 && p.proto() != self.proto {
            return false;
        }
        if self.fields_match(p) {
            return true;
        }
        if self.n_or_dports == 0 {
            return false;
        }
        let Some((_, dport)) = p.ports() else {
            return false;
        };
        let mut i = 0;
        while i < MAX_OR_DPORTS {
            if i < self.n_or_dports as usize && self.or_dports[i] == dport {
                return true;
            }
            i += 1;
        }
        false
    }

    /// The AND of the set fields but the protocol (checked before).
    #[inline(always)]
    fn fields_match(&self, p: &impl HeaderFields) -> bool {
        let f = self.fields;
        if f & filter_field::HOST != 0 {
            let (saddr, daddr) = p.addrs();
            let host = u32::from_ne_bytes(self.host);
            if u32::from_ne_bytes(daddr) != host
                && (f & filter_field::HOST_IS_DST != 0 || u32::from_ne_bytes(saddr) != host)
            {
                return false;
            }
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
}

/// An IPv4 packet's header fields as [`Filter::accepts`] asks for them, each read only when
/// asked.
pub trait HeaderFields {
    /// The IP protocol number.
    fn proto(&self) -> u8;
    /// Source and destination address, network byte order.
    fn addrs(&self) -> ([u8; 4], [u8; 4]);
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
            have: 0,
        }
    }
}

#[cfg(feature = "user")]
// SAFETY: repr(C), explicit padding, every bit pattern valid.
unsafe impl aya::Pod for Filter {}
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

    #[test]
    fn container_filter_matches_its_address_or_its_published_ports() {
        let mut flt = f(filter_field::HOST | filter_field::PROTO);
        flt.host = [172, 17, 0, 2];
        flt.or_dports[0] = 10001;
        flt.or_dports[1] = 8443;
        flt.n_or_dports = 2;
        // Before DNAT: to the host's published port.
        assert!(flt.matches([203, 0, 113, 2], [203, 0, 113, 1], 6, true, 40000, 8443));
        // After DNAT, and replies: the container's address.
        assert!(flt.matches([172, 17, 0, 2], [203, 0, 113, 2], 6, true, 80, 40000));
        // Another port, another protocol: no.
        assert!(!flt.matches([203, 0, 113, 2], [203, 0, 113, 1], 6, true, 40000, 22));
        assert!(!flt.matches([203, 0, 113, 2], [203, 0, 113, 1], 17, true, 40000, 8443));
    }

    #[test]
    fn a_published_port_widened_to_its_dnat_target_matches_only_traffic_to_it() {
        // --dport 10001, published to 172.17.0.2:80.
        let mut flt = f(filter_field::HOST | filter_field::HOST_IS_DST | filter_field::DPORT);
        flt.host = [172, 17, 0, 2];
        flt.dport = 80;
        flt.or_dports[0] = 10001;
        flt.n_or_dports = 1;
        // Before DNAT, and after it.
        assert!(flt.matches([203, 0, 113, 2], [203, 0, 113, 1], 6, true, 40000, 10001));
        assert!(flt.matches([203, 0, 113, 2], [172, 17, 0, 2], 6, true, 40000, 80));
        // The container itself talking to some other server's port 80 is not traffic to it.
        assert!(!flt.matches([172, 17, 0, 2], [198, 51, 100, 7], 6, true, 40000, 80));
        // Nor is another of its ports.
        assert!(!flt.matches([203, 0, 113, 2], [172, 17, 0, 2], 6, true, 40000, 22));
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
