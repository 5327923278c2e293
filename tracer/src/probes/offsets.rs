//! The struct offsets the kernel programs read through, taken from the running kernel's BTF.

use tracer_common::{
    KernelOffsets,
    config::{have, kfunc},
};

use super::{
    btf::{Btf, BtfError},
    kfunc::Kfuncs,
};

/// A field the programs read: where BTF has it, its expected size in bytes (a kernel that
/// changed the field's type under the same name is caught), and where it goes.
struct Field {
    ty: &'static str,
    member: &'static str,
    size: u32,
    set: fn(&mut KernelOffsets, u32),
}

impl Field {
    const fn new(
        ty: &'static str,
        member: &'static str,
        size: u32,
        set: fn(&mut KernelOffsets, u32),
    ) -> Self {
        Self {
            ty,
            member,
            size,
            set,
        }
    }
}

/// Every program needs these.
const REQUIRED: [Field; 12] = [
    Field::new("sk_buff", "head", 8, |o, v| o.skb_head = v),
    Field::new("sk_buff", "data", 8, |o, v| o.skb_data = v),
    Field::new("sk_buff", "len", 4, |o, v| o.skb_len = v),
    Field::new("sk_buff", "dev", 8, |o, v| o.skb_dev = v),
    Field::new("sk_buff", "protocol", 2, |o, v| o.skb_protocol = v),
    Field::new("sk_buff", "network_header", 2, |o, v| {
        o.skb_network_header = v
    }),
    Field::new("sk_buff", "transport_header", 2, |o, v| {
        o.skb_transport_header = v
    }),
    Field::new("sk_buff", "skb_iif", 4, |o, v| o.skb_iif = v),
    Field::new("sk_buff", "mark", 4, |o, v| o.skb_mark = v),
    Field::new("net_device", "ifindex", 4, |o, v| o.dev_ifindex = v),
    Field::new("net_device", "nd_net.net", 8, |o, v| o.dev_nd_net = v),
    Field::new("net", "ns.inum", 4, |o, v| o.net_ns_inum = v),
];

/// `nf_hook_slow`'s state: without it, no netfilter hook hops.
const NF_HOOK_STATE: [Field; 4] = [
    Field::new("nf_hook_state", "hook", 1, |o, v| o.nf_state_hook = v),
    Field::new("nf_hook_state", "pf", 1, |o, v| o.nf_state_pf = v),
    Field::new("nf_hook_state", "in", 8, |o, v| o.nf_state_in = v),
    Field::new("nf_hook_state", "out", 8, |o, v| o.nf_state_out = v),
];

/// Looks every field of `table` up in `btf`; all or none are set.
fn fill(btf: &mut Btf, table: &[Field], off: &mut KernelOffsets) -> Result<(), OffsetError> {
    let mut found = Vec::with_capacity(table.len());
    for f in table {
        found.push(field(btf, f.ty, f.member, f.size)?);
    }
    for (f, v) in table.iter().zip(found) {
        (f.set)(off, v);
    }
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error(transparent)]
    Btf(#[from] BtfError),
    #[error("kernel BTF: {ty}.{member} is {found} bytes, pathtrace reads {expected}")]
    Size {
        ty: &'static str,
        member: &'static str,
        found: u32,
        expected: u32,
    },
    #[error(
        "struct {ty} is not in vmlinux BTF and the {module} module's BTF cannot be read ({why}): the module is not loaded yet (it loads with the first {module} device, and a running trace attaches again then)"
    )]
    Module {
        module: String,
        ty: String,
        why: String,
    },
}

/// Looks every field up; fails naming the first one the kernel does not have. Optional groups
/// (netfilter hook state, bridge port, veth peer) are filled when their BTF is present; their
/// hooks are not attached otherwise.
pub fn from_btf(btf: &mut Btf) -> Result<KernelOffsets, OffsetError> {
    let mut off = KernelOffsets::unset();
    fill(btf, &REQUIRED, &mut off)?;
    let mut nf = off;
    let found = fill(btf, &NF_HOOK_STATE, &mut nf);
    optional(
        &mut off,
        have::NF_HOOK_STATE,
        "netfilter hook state",
        found.map(|()| nf),
        |o, nf| *o = nf,
    );
    let bridge = built_in_or_module(btf, "bridge", "net_bridge_port")
        .and_then(|mut b| field(b.get(), "net_bridge_port", "dev", 8));
    optional(
        &mut off,
        have::BRIDGE_PORT,
        "bridge egress port (the port br_forward sends a frame to is not shown)",
        bridge,
        |o, v| {
            o.brport_dev = v;
        },
    );
    let veth = built_in_or_module(btf, "veth", "veth_priv").and_then(|mut b| {
        let b = b.get();
        let peer = field(b, "veth_priv", "peer", 8)?;
        let dev_size = b.struct_size("net_device")?;
        Ok((peer, netdev_priv_offset(dev_size)))
    });
    optional(
        &mut off,
        have::VETH_PEER,
        "veth peer (a veth transmit does not name the device it leads to)",
        veth,
        |o, v| {
            (o.veth_priv_peer, o.netdev_priv) = v;
        },
    );
    let ct = conntrack(btf);
    optional(
        &mut off,
        have::CONNTRACK,
        "conntrack (no conntrack in this kernel?)",
        ct,
        |o, v| {
            [
                o.skb_nfct,
                o.ct_dst_addr,
                o.ct_dst_port,
                o.ct_dir_stride,
                o.ct_src_addr,
                o.ct_src_port,
                o.ct_proto,
                o.ct_status,
                o.ct_mark,
                o.ct_zone,
            ] = v;
        },
    );
    Ok(off)
}

/// Where a driver's types are: in vmlinux when it is built in (`CONFIG_BRIDGE=y`), else in
/// its module's BTF, which exists only while the module is loaded (the bridge module loads with
/// the first bridge, so on a host that has none yet the group is missing until a restart).
enum Types<'a> {
    Vmlinux(&'a mut Btf),
    Module(Btf),
}

impl Types<'_> {
    fn get(&mut self) -> &mut Btf {
        match self {
            Self::Vmlinux(b) => b,
            Self::Module(b) => b,
        }
    }
}

fn built_in_or_module<'a>(
    btf: &'a mut Btf,
    module: &str,
    ty: &str,
) -> Result<Types<'a>, OffsetError> {
    if btf.struct_id(ty).is_some() {
        return Ok(Types::Vmlinux(btf));
    }
    btf.with_module(module)
        .map(Types::Module)
        .map_err(|e| OffsetError::Module {
            module: module.to_owned(),
            ty: ty.to_owned(),
            why: e.to_string(),
        })
}

/// Fills an optional group of offsets and sets its `have` bit; without it, its hooks or reads
/// are left out, and a warning says what detail is missing and why.
fn optional<T>(
    off: &mut KernelOffsets,
    bit: u32,
    group: &str,
    found: Result<T, OffsetError>,
    fill: impl FnOnce(&mut KernelOffsets, T),
) {
    match found {
        Ok(v) => {
            fill(off, v);
            off.have |= bit;
        }
        Err(e) => tracing::warn!("no {group} offsets: {e}"),
    }
}

/// `skb->_nfct`, and where a `struct nf_conn` keeps the destination, source and protocol of
/// its original tuple (the reply's is one `tuplehash` element further), its status, mark and
/// zone: in vmlinux when conntrack is built in, in the nf_conntrack module's BTF when it is a
/// module. A kernel without CONFIG_NF_CONNTRACK_MARK or _ZONES gets 0 for that field.
fn conntrack(btf: &mut Btf) -> Result<[u32; 10], OffsetError> {
    let nfct = field(btf, "sk_buff", "_nfct", 8)?;
    let mut module;
    let b = if btf.struct_id("nf_conn").is_some() {
        btf
    } else {
        module = btf.with_module("nf_conntrack")?;
        &mut module
    };
    let stride = b.struct_size("nf_conntrack_tuple_hash")?;
    let table = b.member("nf_conn", "tuplehash")?;
    if table.size != 2 * stride {
        return Err(OffsetError::Size {
            ty: "nf_conn",
            member: "tuplehash",
            found: table.size,
            expected: 2 * stride,
        });
    }
    let addr = field(b, "nf_conntrack_tuple_hash", "tuple.dst.u3", 16)?;
    let port = field(b, "nf_conntrack_tuple_hash", "tuple.dst.u.all", 2)?;
    let src_addr = field(b, "nf_conntrack_tuple_hash", "tuple.src.u3", 16)?;
    let src_port = field(b, "nf_conntrack_tuple_hash", "tuple.src.u.all", 2)?;
    let proto = field(b, "nf_conntrack_tuple_hash", "tuple.dst.protonum", 1)?;
    let status = field(b, "nf_conn", "status", 8)?;
    let mark = field(b, "nf_conn", "mark", 4).unwrap_or(0);
    let zone = field(b, "nf_conn", "zone.id", 2).unwrap_or(0);
    Ok([
        nfct,
        table.offset + addr,
        table.offset + port,
        stride,
        table.offset + src_addr,
        table.offset + src_port,
        table.offset + proto,
        status,
        mark,
        zone,
    ])
}

/// Why packet headers cannot be cast to their BTF types on this kernel.
#[derive(Debug, thiserror::Error)]
pub enum HeaderTypesError {
    #[error("the kernel has no bpf_rdonly_cast kfunc")]
    NoRdonlyCast,
    #[error("no struct {0} in kernel BTF")]
    Missing(&'static str),
    #[error("struct {name} is {size} bytes, fewer than {min}")]
    TooSmall {
        name: &'static str,
        size: u32,
        min: u32,
    },
    #[error(transparent)]
    Btf(#[from] BtfError),
}

/// Lets the programs load packet headers directly: sets the BTF ids of the header types packet
/// bytes are cast to, when the kernel has `bpf_rdonly_cast` (6.2+) and the structs are as
/// large as the programs read (20 and 16 bytes). Says why not otherwise.
pub fn use_header_types(
    off: &mut KernelOffsets,
    btf: &mut Btf,
    kfuncs: &Kfuncs,
) -> Result<(), HeaderTypesError> {
    let (iphdr, tcphdr) = header_types(btf, kfuncs)?;
    off.btf_iphdr = iphdr;
    off.btf_tcphdr = tcphdr;
    off.have |= have::RDONLY_CAST;
    Ok(())
}

fn header_types(btf: &mut Btf, kfuncs: &Kfuncs) -> Result<(u32, u32), HeaderTypesError> {
    if !kfuncs.has(kfunc::RDONLY_CAST) {
        return Err(HeaderTypesError::NoRdonlyCast);
    }
    let mut id = |name: &'static str, min: u32| -> Result<u32, HeaderTypesError> {
        let id = btf.struct_id(name).ok_or(HeaderTypesError::Missing(name))?;
        match btf.struct_size(name)? {
            size if size >= min => Ok(id),
            size => Err(HeaderTypesError::TooSmall { name, size, min }),
        }
    };
    Ok((id("iphdr", 20)?, id("tcphdr", 16)?))
}

/// `netdev_priv(dev)` is `dev + ALIGN(sizeof(struct net_device), NETDEV_ALIGN)`; NETDEV_ALIGN
/// has been 32 since it exists.
pub fn netdev_priv_offset(net_device_size: u32) -> u32 {
    net_device_size.div_ceil(32) * 32
}

fn field(
    btf: &mut Btf,
    ty: &'static str,
    member: &'static str,
    expected: u32,
) -> Result<u32, OffsetError> {
    let m = btf.member(ty, member)?;
    if m.size != expected {
        return Err(OffsetError::Size {
            ty,
            member,
            found: m.size,
            expected,
        });
    }
    Ok(m.offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probes::btf::fixture::BtfBuilder;

    fn kernel_like(protocol_size: u32) -> Btf {
        Btf::parse(kernel_like_types(protocol_size).build()).expect("fixture")
    }

    fn kernel_like_types(protocol_size: u32) -> BtfBuilder {
        let mut b = BtfBuilder::new();
        let u32t = b.int("unsigned int", 4);
        let u16t = b.int("__u16", protocol_size);
        let u16h = b.int("u16", 2);
        let ptr = b.ptr(0);
        let ns = b.composite(
            false,
            "ns_common",
            8,
            &[("ns_type", u32t, 0, 0), ("inum", u32t, 32, 0)],
        );
        let net = b.composite(
            false,
            "net",
            64,
            &[("passive", u32t, 0, 0), ("ns", ns, 256, 0)],
        );
        let net_ptr = b.ptr(net);
        let possible = b.composite(false, "", 8, &[("net", net_ptr, 0, 0)]);
        let possible_t = b.typedef("possible_net_t", possible);
        b.composite(
            false,
            "net_device",
            512,
            &[("ifindex", u32t, 1600, 0), ("nd_net", possible_t, 2048, 0)],
        );
        let anon = b.composite(false, "", 16, &[("dev", ptr, 0, 0)]);
        let anon_u = b.composite(true, "", 16, &[("", anon, 0, 0)]);
        b.composite(
            false,
            "sk_buff",
            232,
            &[
                ("", anon_u, 0, 0),
                ("len", u32t, 896, 0),
                ("skb_iif", u32t, 1088, 0),
                ("mark", u32t, 1344, 0),
                ("protocol", u16t, 1440, 0),
                ("transport_header", u16h, 1456, 0),
                ("network_header", u16h, 1472, 0),
                ("head", ptr, 1600, 0),
                ("data", ptr, 1664, 0),
            ],
        );
        b
    }

    #[test]
    fn reads_every_offset() {
        let mut btf = kernel_like(2);
        let off = from_btf(&mut btf).expect("all fields present");
        assert_eq!(off.skb_dev, 0);
        assert_eq!(off.skb_len, 112);
        assert_eq!(off.skb_protocol, 180);
        assert_eq!(off.skb_network_header, 184);
        assert_eq!(off.skb_head, 200);
        assert_eq!(off.skb_data, 208);
        assert_eq!(off.dev_ifindex, 200);
        assert_eq!(off.dev_nd_net, 256);
        assert_eq!(off.net_ns_inum, 36);
        assert_eq!(off.skb_iif, 136);
        assert_eq!(off.skb_mark, 168);
        assert_eq!(
            off.have & (have::NF_HOOK_STATE | have::CONNTRACK),
            0,
            "fixture has no nf_hook_state and no conntrack"
        );
    }

    /// `CONFIG_BRIDGE=y`, `CONFIG_VETH=y`: their types are in vmlinux, and no module BTF is
    /// needed for the bridge port and the veth peer.
    #[test]
    fn built_in_bridge_and_veth_are_read_from_vmlinux() {
        let mut b = kernel_like_types(2);
        let ptr = b.ptr(0);
        b.composite(
            false,
            "net_bridge_port",
            64,
            &[("br", ptr, 0, 0), ("dev", ptr, 64, 0)],
        );
        b.composite(false, "veth_priv", 32, &[("peer", ptr, 0, 0)]);
        let mut btf = Btf::parse(b.build()).expect("fixture");
        let off = from_btf(&mut btf).expect("all fields present");
        assert_eq!(
            off.have & (have::BRIDGE_PORT | have::VETH_PEER),
            have::BRIDGE_PORT | have::VETH_PEER
        );
        assert_eq!(off.brport_dev, 8);
        assert_eq!(off.veth_priv_peer, 0);
        assert_eq!(off.netdev_priv, 512, "sizeof(net_device) aligned to 32");
    }

    /// `nf_conn.tuplehash[2]`, each a list node and a tuple whose destination is an address
    /// union and a port union: where the original direction's destination lies, and the
    /// stride to the reply's.
    #[test]
    fn finds_conntracks_addresses_of_each_direction() {
        let mut b = BtfBuilder::new();
        let u8t = b.int("u8", 1);
        let be16 = b.int("__be16", 2);
        let be32 = b.int("__be32", 4);
        let ulong = b.int("long unsigned int", 8);
        let u16t = b.int("u16", 2);
        let u32t = b.int("u32", 4);
        b.composite(false, "sk_buff", 232, &[("_nfct", ulong, 960, 0)]);
        let zone = b.composite(false, "nf_conntrack_zone", 4, &[("id", u16t, 0, 0)]);
        let addr = b.composite(true, "nf_inet_addr", 16, &[("ip", be32, 0, 0)]);
        let port = b.composite(true, "", 2, &[("all", be16, 0, 0)]);
        let man = b.composite(
            false,
            "nf_conntrack_man",
            20,
            &[("u3", addr, 0, 0), ("u", port, 128, 0)],
        );
        let dst = b.composite(
            false,
            "",
            20,
            &[
                ("u3", addr, 0, 0),
                ("u", port, 128, 0),
                ("protonum", u8t, 144, 0),
            ],
        );
        let tuple = b.composite(
            false,
            "nf_conntrack_tuple",
            40,
            &[("src", man, 0, 0), ("dst", dst, 160, 0)],
        );
        let hash = b.composite(
            false,
            "nf_conntrack_tuple_hash",
            56,
            &[("tuple", tuple, 128, 0)],
        );
        let pair = b.array(hash, 2);
        b.composite(
            false,
            "nf_conn",
            256,
            &[
                ("zone", zone, 96, 0),
                ("tuplehash", pair, 256, 0),
                ("status", ulong, 1152, 0),
                ("mark", u32t, 1280, 0),
            ],
        );
        let mut btf = Btf::parse(b.build()).expect("fixture");
        // _nfct at 120; tuplehash at 32, its tuple at 16, the tuple's dst at 20, the port 16
        // into dst, the protocol 18; one element is 56 bytes; the source at the tuple's start,
        // its port 16 in; status after the pair (144), the mark at 160, the zone's id at 12.
        assert_eq!(
            conntrack(&mut btf).expect("offsets"),
            [120, 68, 84, 56, 48, 64, 86, 144, 160, 12]
        );

        // A kernel without conntrack has no _nfct: the group is left out, naming why.
        let err = conntrack(&mut kernel_like(2)).unwrap_err().to_string();
        assert!(err.contains("_nfct"), "{err}");
    }

    #[test]
    fn header_types_are_cast_to_only_where_the_kernel_has_bpf_rdonly_cast() {
        let mut b = kernel_like_types(2);
        let u32t = b.int("__be32", 4);
        let iphdr = b.composite(
            false,
            "iphdr",
            20,
            &[("saddr", u32t, 96, 0), ("daddr", u32t, 128, 0)],
        );
        let tcphdr = b.composite(false, "tcphdr", 20, &[("seq", u32t, 32, 0)]);
        let without = Btf::parse(b.clone().build()).expect("fixture");
        b.func("bpf_rdonly_cast");
        let mut with = Btf::parse(b.build()).expect("fixture");

        let mut off = from_btf(&mut with).expect("offsets");
        let kfuncs = Kfuncs::from_btf(&mut with);
        use_header_types(&mut off, &mut with, &kfuncs).expect("direct header loads");
        assert_ne!(off.have & have::RDONLY_CAST, 0);
        assert_eq!((off.btf_iphdr, off.btf_tcphdr), (iphdr, tcphdr));

        let mut without = without;
        let mut off = from_btf(&mut without).expect("offsets");
        let kfuncs = Kfuncs::from_btf(&mut without);
        let why = use_header_types(&mut off, &mut without, &kfuncs)
            .unwrap_err()
            .to_string();
        assert!(why.contains("no bpf_rdonly_cast"), "{why}");
        assert_eq!(off.have & have::RDONLY_CAST, 0);
        assert_eq!((off.btf_iphdr, off.btf_tcphdr), (0, 0));
    }

    #[test]
    fn netdev_priv_is_aligned_to_32() {
        assert_eq!(netdev_priv_offset(2368), 2368);
        assert_eq!(netdev_priv_offset(2369), 2400);
    }

    #[test]
    fn names_the_missing_field() {
        let mut b = BtfBuilder::new();
        let ptr = b.ptr(0);
        b.composite(false, "sk_buff", 16, &[("head", ptr, 0, 0)]);
        let mut btf = Btf::parse(b.build()).expect("fixture");
        let err = from_btf(&mut btf).unwrap_err();
        assert!(
            err.to_string().contains("sk_buff") && err.to_string().contains("data"),
            "{err}"
        );
    }

    #[test]
    fn rejects_changed_field_size() {
        let mut btf = kernel_like(4);
        let err = from_btf(&mut btf).unwrap_err();
        assert!(
            matches!(
                err,
                OffsetError::Size {
                    member: "protocol",
                    ..
                }
            ),
            "{err}"
        );
    }
}
