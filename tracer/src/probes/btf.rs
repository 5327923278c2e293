//! A small reader for the kernel's BTF: struct member offsets and enum values.
//!
//! Rust cannot emit CO-RE relocations, so the loader asks the running kernel's BTF where each
//! field lives and hands the offsets to the programs. aya parses BTF too, but keeps type lookup
//! private; this module reads only what pathtrace needs.

use std::{collections::HashMap, path::Path, sync::Arc};

use thiserror::Error;

/// Where the running kernel publishes its BTF.
pub const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, Error)]
pub enum BtfError {
    #[error(
        "cannot read BTF from {path}: {source} (does the kernel have CONFIG_DEBUG_INFO_BTF=y?)"
    )]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("BTF has no {kind} named `{name}`")]
    NoType { kind: &'static str, name: String },
    #[error("BTF: `{ty}` has no member `{member}`")]
    NoMember { ty: String, member: String },
    #[error("BTF: `{ty}.{member}` is a bitfield; pathtrace reads whole bytes")]
    Bitfield { ty: String, member: String },
}

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

/// One BTF type record: the common header plus where its trailing data starts.
#[derive(Clone, Copy, Debug)]
struct TypeRec {
    name_off: u32,
    kind: u32,
    vlen: u32,
    kind_flag: bool,
    /// `size` for INT/STRUCT/UNION/ENUM, the referenced type id for PTR/TYPEDEF/CONST/...
    size_or_type: u32,
    /// Which blob (`Btf::bufs`) holds the trailing data: 0 for vmlinux, 1 for a module.
    buf: u8,
    /// Offset of the trailing data in that blob.
    extra: usize,
}

/// A member found by [`Btf::member`]: byte offset from the start of the outer struct and the
/// size of its type in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub offset: u32,
    pub size: u32,
}

/// Parsed BTF: type records indexed by id (id 0 is `void`) and the string sections.
///
/// Module BTF (`/sys/kernel/btf/<module>`) is *split* BTF: its type ids and string offsets
/// continue those of vmlinux, so a module is parsed on top of a copy of the base.
#[derive(Clone)]
pub struct Btf {
    bufs: Vec<Arc<Vec<u8>>>,
    types: Vec<TypeRec>,
    /// String sections in offset order: (blob, start, length).
    strs: Vec<(u8, usize, usize)>,
    /// First type id for each (kind, name), built lazily on the first lookup by name.
    by_name: HashMap<(u32, String), u32>,
}

fn le_u16(data: &[u8], o: usize) -> Option<u16> {
    data.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]))
}

fn le_u32(data: &[u8], o: usize) -> Option<u32> {
    data.get(o..o + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

impl Btf {
    /// Reads and parses the running kernel's BTF.
    pub fn from_kernel() -> Result<Self, BtfError> {
        Self::from_file(Path::new(KERNEL_BTF))
    }

    pub fn from_file(path: &Path) -> Result<Self, BtfError> {
        Self::parse(read(path)?)
    }

    /// vmlinux BTF extended with a loaded module's (`/sys/kernel/btf/<module>`).
    pub fn with_module(&self, module: &str) -> Result<Self, BtfError> {
        let path = Path::new(KERNEL_BTF).with_file_name(module);
        self.extend(read(&path)?)
    }

    /// Parses a raw (little-endian) BTF blob.
    pub fn parse(data: Vec<u8>) -> Result<Self, BtfError> {
        let empty = Self {
            bufs: Vec::new(),
            types: vec![TypeRec {
                name_off: 0,
                kind: 0,
                vlen: 0,
                kind_flag: false,
                size_or_type: 0,
                buf: 0,
                extra: 0,
            }],
            strs: Vec::new(),
            by_name: HashMap::new(),
        };
        empty.extend(data)
    }

    /// Parses `data` as split BTF on top of `self` (or as base BTF when `self` is empty).
    pub fn extend(&self, data: Vec<u8>) -> Result<Self, BtfError> {
        if le_u16(&data, 0) != Some(0xeb9f) {
            return Err(BtfError::Malformed("bad magic (big-endian or not BTF)"));
        }
        let field = |o| {
            le_u32(&data, o)
                .map(|v| v as usize)
                .ok_or(BtfError::Malformed("short header"))
        };
        let hdr_len = field(4)?;
        let (type_off, type_len, str_off, str_len) =
            (field(8)?, field(12)?, field(16)?, field(20)?);
        let type_start = hdr_len + type_off;
        let type_end = type_start + type_len;
        let str_start = hdr_len + str_off;
        if type_end > data.len() || str_start + str_len > data.len() {
            return Err(BtfError::Malformed("section past end of data"));
        }
        let buf =
            u8::try_from(self.bufs.len()).map_err(|_| BtfError::Malformed("too many blobs"))?;
        let mut out = self.clone();
        out.by_name.clear();
        let mut pos = type_start;
        while pos < type_end {
            let (name_off, info, size_or_type) = match (
                le_u32(&data, pos),
                le_u32(&data, pos + 4),
                le_u32(&data, pos + 8),
            ) {
                (Some(a), Some(b), Some(c)) => (a, b, c),
                _ => return Err(BtfError::Malformed("truncated type record")),
            };
            let kind = (info >> 24) & 0x1f;
            let vlen = info & 0xffff;
            let extra = pos + 12;
            let trailing = match kind {
                KIND_INT => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => 12 * vlen as usize,
                KIND_ENUM => 8 * vlen as usize,
                KIND_FUNC_PROTO => 8 * vlen as usize,
                KIND_VAR => 4,
                KIND_DATASEC => 12 * vlen as usize,
                KIND_DECL_TAG => 4,
                KIND_ENUM64 => 12 * vlen as usize,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                _ => return Err(BtfError::Malformed("unknown type kind")),
            };
            out.types.push(TypeRec {
                name_off,
                kind,
                vlen,
                kind_flag: info >> 31 == 1,
                size_or_type,
                buf,
                extra,
            });
            pos = extra + trailing;
        }
        if pos != type_end {
            return Err(BtfError::Malformed("type section overruns its length"));
        }
        out.strs.push((buf, str_start, str_len));
        out.bufs.push(Arc::new(data));
        Ok(out)
    }

    fn u32_at(&self, t: &TypeRec, o: usize) -> u32 {
        // Offsets were bounds-checked against the type section while parsing.
        self.bufs
            .get(t.buf as usize)
            .and_then(|d| le_u32(d, o))
            .unwrap_or(0)
    }

    fn name(&self, mut off: u32) -> &str {
        for &(buf, start, len) in &self.strs {
            if (off as usize) < len {
                let Some(bytes) = self.bufs[buf as usize].get(start + off as usize..start + len)
                else {
                    return "";
                };
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                return std::str::from_utf8(&bytes[..end]).unwrap_or("");
            }
            off -= len as u32;
        }
        ""
    }

    fn find(&mut self, kind: u32, name: &str) -> Option<u32> {
        if self.by_name.is_empty() {
            for (id, t) in self.types.iter().enumerate().skip(1) {
                let key = (t.kind, self.name(t.name_off).to_owned());
                // Keep the first definition: forward declarations have their own kind.
                self.by_name.entry(key).or_insert(id as u32);
            }
        }
        self.by_name.get(&(kind, name.to_owned())).copied()
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    fn strip(&self, mut id: u32) -> u32 {
        for _ in 0..32 {
            match self.types.get(id as usize) {
                Some(t)
                    if matches!(
                        t.kind,
                        KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG
                    ) =>
                {
                    id = t.size_or_type
                }
                _ => break,
            }
        }
        id
    }

    /// Size in bytes of a type (pointers are 8 bytes on every target pathtrace supports).
    fn size_of(&self, id: u32) -> u32 {
        let id = self.strip(id);
        match self.types.get(id as usize) {
            Some(t) if t.kind == KIND_PTR => 8,
            Some(t) if t.kind == KIND_ARRAY => {
                let elem = self.u32_at(t, t.extra);
                let n = self.u32_at(t, t.extra + 8);
                self.size_of(elem).saturating_mul(n)
            }
            Some(t) => t.size_or_type,
            None => 0,
        }
    }

    /// Searches `name` among the members of struct/union `id`, descending into anonymous
    /// members. Returns (bit offset from the start of `id`, member type, is bitfield).
    fn lookup_member(&self, id: u32, name: &str, depth: u32) -> Option<(u32, u32, bool)> {
        let t = self.types.get(self.strip(id) as usize)?;
        if !matches!(t.kind, KIND_STRUCT | KIND_UNION) || depth > 8 {
            return None;
        }
        for i in 0..t.vlen as usize {
            let m = t.extra + 12 * i;
            let (m_name, m_type, m_off) = (
                self.u32_at(t, m),
                self.u32_at(t, m + 4),
                self.u32_at(t, m + 8),
            );
            let (bit_off, bitfield) = if t.kind_flag {
                (m_off & 0x00ff_ffff, m_off >> 24 != 0)
            } else {
                (m_off, false)
            };
            if m_name == 0 {
                if let Some((inner, ty, bf)) = self.lookup_member(m_type, name, depth + 1) {
                    return Some((bit_off + inner, ty, bf));
                }
            } else if self.name(m_name) == name {
                return Some((bit_off, m_type, bitfield));
            }
        }
        None
    }

    /// Byte offset and size of a member path such as `"ns.inum"` inside `struct <ty>`.
    pub fn member(&mut self, ty: &str, path: &str) -> Result<Member, BtfError> {
        let mut id = self.find(KIND_STRUCT, ty).ok_or_else(|| BtfError::NoType {
            kind: "struct",
            name: ty.to_owned(),
        })?;
        let mut bits = 0u32;
        let mut size = 0;
        for part in path.split('.') {
            let (off, m_type, bitfield) =
                self.lookup_member(id, part, 0)
                    .ok_or_else(|| BtfError::NoMember {
                        ty: ty.to_owned(),
                        member: path.to_owned(),
                    })?;
            if bitfield || off % 8 != 0 {
                return Err(BtfError::Bitfield {
                    ty: ty.to_owned(),
                    member: path.to_owned(),
                });
            }
            bits += off;
            size = self.size_of(m_type);
            id = m_type;
        }
        Ok(Member {
            offset: bits / 8,
            size,
        })
    }

    /// The variants of `enum <name>` (32- or 64-bit) as (name, value).
    pub fn enum_values(&mut self, name: &str) -> Result<Vec<(String, i64)>, BtfError> {
        let (id, wide) = match self.find(KIND_ENUM, name) {
            Some(id) => (id, false),
            None => (
                self.find(KIND_ENUM64, name)
                    .ok_or_else(|| BtfError::NoType {
                        kind: "enum",
                        name: name.to_owned(),
                    })?,
                true,
            ),
        };
        let t = self.types[id as usize];
        let signed = t.kind_flag;
        let mut out = Vec::with_capacity(t.vlen as usize);
        for i in 0..t.vlen as usize {
            let (n, value) = if wide {
                let e = t.extra + 12 * i;
                let v = (self.u32_at(&t, e + 4) as u64) | ((self.u32_at(&t, e + 8) as u64) << 32);
                (self.u32_at(&t, e), v as i64)
            } else {
                let e = t.extra + 8 * i;
                let raw = self.u32_at(&t, e + 4);
                (
                    self.u32_at(&t, e),
                    if signed {
                        raw as i32 as i64
                    } else {
                        raw as i64
                    },
                )
            };
            out.push((self.name(n).to_owned(), value));
        }
        Ok(out)
    }

    /// Whether a function or tracepoint prototype exists (`btf_trace_<tp>` typedefs name
    /// tracepoints a tp_btf program can attach to).
    pub fn has_typedef(&mut self, name: &str) -> bool {
        self.find(KIND_TYPEDEF, name).is_some()
    }

    /// Whether the kernel has a function of this name in BTF (kprobe/fentry targets).
    pub fn has_func(&mut self, name: &str) -> bool {
        self.find(KIND_FUNC, name).is_some()
    }

    /// BTF id of function `name` (kfunc calls name their target by it).
    pub fn func_id(&mut self, name: &str) -> Option<u32> {
        self.find(KIND_FUNC, name)
    }

    /// BTF id of `struct <name>`.
    pub fn struct_id(&mut self, name: &str) -> Option<u32> {
        self.find(KIND_STRUCT, name)
    }

    /// Size in bytes of `struct <name>`.
    pub fn struct_size(&mut self, name: &str) -> Result<u32, BtfError> {
        let id = self
            .find(KIND_STRUCT, name)
            .ok_or_else(|| BtfError::NoType {
                kind: "struct",
                name: name.to_owned(),
            })?;
        Ok(self.size_of(id))
    }

    /// Number of arguments a tp_btf program at tracepoint `tp` receives (the prototype of
    /// `btf_trace_<tp>` minus its leading `void *`). Tracepoints gain arguments across
    /// kernel versions; a program must not read past the last one.
    pub fn tracepoint_args(&mut self, tp: &str) -> Option<u32> {
        let id = self.find(KIND_TYPEDEF, &format!("btf_trace_{tp}"))?;
        let ptr = self.types.get(self.strip(id) as usize)?;
        let proto = self.types.get(self.strip(ptr.size_or_type) as usize)?;
        (ptr.kind == KIND_PTR && proto.kind == KIND_FUNC_PROTO)
            .then(|| proto.vlen.saturating_sub(1))
    }

    /// Number of arguments of kernel function `name`.
    pub fn func_args(&mut self, name: &str) -> Option<u32> {
        let id = self.find(KIND_FUNC, name)?;
        let func = self.types.get(id as usize)?;
        let proto = self.types.get(func.size_or_type as usize)?;
        (proto.kind == KIND_FUNC_PROTO).then_some(proto.vlen)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, BtfError> {
    std::fs::read(path).map_err(|source| BtfError::Read {
        path: path.display().to_string(),
        source,
    })
}

/// Builds small BTF blobs for tests (no kernel needed).
#[cfg(test)]
pub(crate) mod fixture {
    /// A builder that appends types and strings and returns their ids.
    #[derive(Clone, Default)]
    pub struct BtfBuilder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
        str_base: u32,
    }

    impl BtfBuilder {
        pub fn new() -> Self {
            Self {
                types: Vec::new(),
                strings: vec![0],
                next_id: 1,
                str_base: 0,
            }
        }

        /// A builder for split BTF on top of a base with `base_types` types (void included)
        /// and `base_strings` bytes of strings.
        pub fn split(base_types: u32, base_strings: u32) -> Self {
            Self {
                types: Vec::new(),
                strings: Vec::new(),
                next_id: base_types,
                str_base: base_strings,
            }
        }

        /// A function without arguments (`void name(void)`).
        pub fn func(&mut self, name: &str) -> u32 {
            let proto = self.header("", super::KIND_FUNC_PROTO, 0, false, 0);
            self.header(name, super::KIND_FUNC, 0, false, proto)
        }

        /// `typedef void (*btf_trace_<tp>)(void *, <args>)`.
        pub fn tracepoint(&mut self, tp: &str, args: &[u32]) -> u32 {
            let proto = self.header("", super::KIND_FUNC_PROTO, args.len() as u32 + 1, false, 0);
            for ty in std::iter::once(&0).chain(args) {
                self.types.extend_from_slice(&0u32.to_le_bytes());
                self.types.extend_from_slice(&ty.to_le_bytes());
            }
            let ptr = self.ptr(proto);
            self.typedef(&format!("btf_trace_{tp}"), ptr)
        }

        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.str_base + self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn header(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, st: u32) -> u32 {
            let name = self.str(name);
            let info = (kind << 24) | vlen | if kflag { 1 << 31 } else { 0 };
            for v in [name, info, st] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            let id = self.next_id;
            self.next_id += 1;
            id
        }

        pub fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.header(name, super::KIND_INT, 0, false, size);
            self.types.extend_from_slice(&(size * 8).to_le_bytes());
            id
        }

        pub fn ptr(&mut self, to: u32) -> u32 {
            self.header("", super::KIND_PTR, 0, false, to)
        }

        pub fn array(&mut self, elem: u32, n: u32) -> u32 {
            let id = self.header("", super::KIND_ARRAY, 0, false, 0);
            for v in [elem, elem, n] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            id
        }

        pub fn typedef(&mut self, name: &str, to: u32) -> u32 {
            self.header(name, super::KIND_TYPEDEF, 0, false, to)
        }

        /// `members`: (name, type id, bit offset, bitfield size or 0).
        pub fn composite(
            &mut self,
            union: bool,
            name: &str,
            size: u32,
            members: &[(&str, u32, u32, u32)],
        ) -> u32 {
            let kind = if union {
                super::KIND_UNION
            } else {
                super::KIND_STRUCT
            };
            let id = self.header(name, kind, members.len() as u32, true, size);
            for &(m, ty, off, bits) in members {
                let m = self.str(m);
                for v in [m, ty, (bits << 24) | off] {
                    self.types.extend_from_slice(&v.to_le_bytes());
                }
            }
            id
        }

        pub fn enumeration(&mut self, name: &str, values: &[(&str, i32)]) -> u32 {
            let id = self.header(name, super::KIND_ENUM, values.len() as u32, false, 4);
            for &(n, v) in values {
                let n = self.str(n);
                self.types.extend_from_slice(&n.to_le_bytes());
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            id
        }

        pub fn build(self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&0xeb9fu16.to_le_bytes());
            out.extend_from_slice(&[1, 0]);
            let hdr_len = 24u32;
            let type_len = self.types.len() as u32;
            for v in [hdr_len, 0, type_len, type_len, self.strings.len() as u32] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{fixture::BtfBuilder, *};

    /// A miniature `struct net` whose `ns.inum` sits behind an anonymous union, like 6.18's.
    fn sample() -> Btf {
        let mut b = BtfBuilder::new();
        let u32t = b.int("unsigned int", 4);
        let u16t = b.int("__u16", 2);
        let u64t = b.int("u64", 8);
        let be16 = b.typedef("__be16", u16t);
        let ns_common = b.composite(
            false,
            "ns_common",
            16,
            &[("ns_type", u32t, 0, 0), ("inum", u32t, 96, 0)],
        );
        let anon = b.composite(
            true,
            "",
            16,
            &[("ns", ns_common, 0, 0), ("pad", u64t, 0, 0)],
        );
        b.composite(
            false,
            "net",
            32,
            &[("refcnt", u32t, 0, 0), ("", anon, 128, 0)],
        );
        let flags = b.composite(
            false,
            "sk_buff",
            24,
            &[
                ("protocol", be16, 64, 0),
                ("pkt_type", u16t, 80, 3),
                ("head", u64t, 128, 0),
            ],
        );
        b.ptr(flags);
        b.enumeration(
            "skb_drop_reason",
            &[
                ("SKB_NOT_DROPPED_YET", 0),
                ("SKB_DROP_REASON_IP_INADDRERRORS", 87),
            ],
        );
        Btf::parse(b.build()).expect("valid fixture")
    }

    #[test]
    fn finds_nested_member_through_anonymous_union() {
        let mut btf = sample();
        assert_eq!(
            btf.member("net", "ns.inum").unwrap(),
            Member {
                offset: 28,
                size: 4
            }
        );
    }

    #[test]
    fn resolves_typedef_sizes() {
        let mut btf = sample();
        assert_eq!(
            btf.member("sk_buff", "protocol").unwrap(),
            Member { offset: 8, size: 2 }
        );
        assert_eq!(
            btf.member("sk_buff", "head").unwrap(),
            Member {
                offset: 16,
                size: 8
            }
        );
    }

    #[test]
    fn refuses_bitfields_and_unknown_names() {
        let mut btf = sample();
        assert!(matches!(
            btf.member("sk_buff", "pkt_type"),
            Err(BtfError::Bitfield { .. })
        ));
        assert!(matches!(
            btf.member("sk_buff", "nope"),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.member("nope", "x"),
            Err(BtfError::NoType { .. })
        ));
    }

    #[test]
    fn reads_enum_values() {
        let mut btf = sample();
        let values = btf.enum_values("skb_drop_reason").unwrap();
        assert_eq!(
            values[1],
            ("SKB_DROP_REASON_IP_INADDRERRORS".to_owned(), 87)
        );
    }

    #[test]
    fn module_btf_continues_the_base_ids_and_strings() {
        let mut b = BtfBuilder::new();
        let u32t = b.int("unsigned int", 4);
        let base_blob = b.build();
        let base = Btf::parse(base_blob.clone()).expect("base");
        let base_strings = base.strs[0].2 as u32;
        let mut m = BtfBuilder::split(base.types.len() as u32, base_strings);
        let ptr = m.ptr(u32t);
        m.composite(
            false,
            "veth_priv",
            16,
            &[("peer", ptr, 0, 0), ("dropped", u32t, 64, 0)],
        );
        let mut both = base.extend(m.build()).expect("split");
        assert_eq!(
            both.member("veth_priv", "dropped").unwrap(),
            Member { offset: 8, size: 4 }
        );
        assert_eq!(both.member("veth_priv", "peer").unwrap().size, 8);
        assert_eq!(both.struct_size("veth_priv").unwrap(), 16);
    }

    #[test]
    fn counts_tracepoint_arguments() {
        let mut b = BtfBuilder::new();
        let ptr = b.ptr(0);
        b.tracepoint("consume_skb", &[ptr]);
        b.tracepoint("kfree_skb", &[ptr, ptr, ptr, ptr]);
        let mut btf = Btf::parse(b.build()).expect("fixture");
        assert_eq!(btf.tracepoint_args("consume_skb"), Some(1));
        assert_eq!(btf.tracepoint_args("kfree_skb"), Some(4));
        assert_eq!(btf.tracepoint_args("nope"), None);
    }

    #[test]
    fn rejects_garbage() {
        assert!(matches!(
            Btf::parse(vec![0; 8]),
            Err(BtfError::Malformed(_))
        ));
        let mut blob = BtfBuilder::new().build();
        blob.truncate(20);
        assert!(Btf::parse(blob).is_err());
    }

    /// On a machine with kernel BTF, the offsets the loader needs must all resolve.
    #[test]
    fn running_kernel_has_the_fields_we_read() {
        let Ok(mut btf) = Btf::from_kernel() else {
            eprintln!("skipping: no readable {KERNEL_BTF}");
            return;
        };
        for (ty, path) in [
            ("sk_buff", "head"),
            ("sk_buff", "network_header"),
            ("net", "ns.inum"),
            ("net_device", "nd_net.net"),
        ] {
            btf.member(ty, path)
                .unwrap_or_else(|e| panic!("{ty}.{path}: {e}"));
        }
        assert!(btf.enum_values("skb_drop_reason").unwrap().len() > 10);
    }
}
