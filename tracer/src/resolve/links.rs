//! Interfaces and IPv4 addresses of one network namespace, dumped over rtnetlink.
//!
//! Only the handful of attributes pathtrace shows are decoded; the parsers work on byte
//! buffers so they are tested on recorded dumps without a kernel.

use std::{net::Ipv4Addr, os::fd::AsRawFd, path::Path};

use crate::host::{Link, LinkTable};

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;

const RTM_NEWNSID: u16 = 88;
const RTM_GETNSID: u16 = 90;
const NETNSA_NSID: u16 = 1;
const NETNSA_FD: u16 = 3;

const IFLA_LINK: u16 = 5;
const IFLA_IFNAME: u16 = 3;
const IFLA_MASTER: u16 = 10;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFLA_LINK_NETNSID: u16 = 37;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

impl LinkTable {
    /// Dumps the namespace at `path` (on a thread inside it).
    pub fn dump_in(path: &Path) -> std::io::Result<Self> {
        super::netns::run_in(path, Self::dump_here)?
    }

    /// Dumps the calling thread's namespace.
    pub fn dump_here() -> std::io::Result<Self> {
        let sock = NetlinkSocket::open()?;
        let mut table = Self::default();
        for msg in sock.dump(RTM_GETLINK, &[0u8; 16])? {
            if let Some(link) = parse_link(&msg) {
                table.links.insert(link.ifindex, link);
            }
        }
        let ifaddrmsg = [libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 0];
        for msg in sock.dump(RTM_GETADDR, &ifaddrmsg)? {
            if let Some(addr) = parse_addr(&msg) {
                table.addrs.push(addr);
            }
        }
        Ok(table)
    }
}

/// The id the calling thread's namespace gives the namespace at `target` (what a veth's
/// `link_netnsid` names; `ip netns list-id`), `None` when it has given it none.
pub fn nsid_here(target: &Path) -> std::io::Result<Option<i32>> {
    let file = std::fs::File::open(target)?;
    let sock = NetlinkSocket::open()?;
    let mut body = vec![0u8; 4]; // struct rtgenmsg, padded
    body.extend_from_slice(&8u16.to_ne_bytes());
    body.extend_from_slice(&NETNSA_FD.to_ne_bytes());
    body.extend_from_slice(&(file.as_raw_fd() as u32).to_ne_bytes());
    let answer = sock.request(RTM_GETNSID, NLM_F_REQUEST, &body)?;
    Ok(answer
        .iter()
        .find(|m| m.ty == RTM_NEWNSID)
        .and_then(parse_nsid)
        .filter(|&id| id >= 0))
}

/// The NETNSA_NSID of an RTM_NEWNSID message (-1: none assigned).
fn parse_nsid(msg: &Message) -> Option<i32> {
    let (_, v) = attrs(msg.payload.get(4..)?).find(|(t, _)| *t == NETNSA_NSID)?;
    u32_of(v).map(|n| n as i32)
}

/// One netlink message: type and payload (after the 16-byte header).
#[derive(Clone, Debug)]
pub struct Message {
    pub ty: u16,
    pub payload: Vec<u8>,
}

struct NetlinkSocket(std::os::fd::OwnedFd);

impl NetlinkSocket {
    fn open() -> std::io::Result<Self> {
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor.
        Ok(Self(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) }))
    }

    fn dump(&self, ty: u16, body: &[u8]) -> std::io::Result<Vec<Message>> {
        self.request(ty, NLM_F_REQUEST | NLM_F_DUMP, body)
    }

    /// Sends one request and reads its answer: up to NLMSG_DONE for a dump, one datagram
    /// otherwise.
    fn request(&self, ty: u16, flags: u16, body: &[u8]) -> std::io::Result<Vec<Message>> {
        let len = 16 + body.len();
        let mut req = Vec::with_capacity(len);
        req.extend_from_slice(&(len as u32).to_ne_bytes());
        req.extend_from_slice(&ty.to_ne_bytes());
        req.extend_from_slice(&flags.to_ne_bytes());
        req.extend_from_slice(&1u32.to_ne_bytes()); // seq
        req.extend_from_slice(&0u32.to_ne_bytes()); // pid: kernel
        req.extend_from_slice(body);
        // SAFETY: sending a fully initialised buffer on our socket (sockaddr defaults to the
        // kernel for an unbound netlink socket).
        let sent = unsafe { libc::send(self.0.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if sent < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut out = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: receiving into a buffer we own, bounded by its length.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            match split_messages(&buf[..n as usize], &mut out)? {
                true => return Ok(out),
                false if n == 0 || flags & NLM_F_DUMP == 0 => return Ok(out),
                false => {}
            }
        }
    }
}

/// Appends the messages in one datagram to `out`; `Ok(true)` at NLMSG_DONE.
pub fn split_messages(mut data: &[u8], out: &mut Vec<Message>) -> std::io::Result<bool> {
    while data.len() >= 16 {
        let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
        let ty = u16::from_ne_bytes([data[4], data[5]]);
        if len < 16 || len > data.len() {
            return Err(std::io::Error::other("truncated netlink message"));
        }
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR => {
                let errno = data
                    .get(16..20)
                    .map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                if errno != 0 {
                    return Err(std::io::Error::from_raw_os_error(-errno));
                }
            }
            _ => out.push(Message {
                ty,
                payload: data[16..len].to_vec(),
            }),
        }
        data = &data[align4(len).min(data.len())..];
    }
    Ok(false)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterates `(type, value)` of the rtattrs in `data`.
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let ty = u16::from_ne_bytes([data[2], data[3]]) & 0x3fff; // strip NESTED/BYTEORDER
        if len < 4 || len > data.len() {
            return None;
        }
        let value = &data[4..len];
        data = &data[align4(len).min(data.len())..];
        Some((ty, value))
    })
}

fn u32_of(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?))
}

fn str_of(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// Decodes an RTM_NEWLINK message.
pub fn parse_link(msg: &Message) -> Option<Link> {
    if msg.ty != RTM_NEWLINK || msg.payload.len() < 16 {
        return None;
    }
    let ifindex = u32::from_ne_bytes(msg.payload[4..8].try_into().ok()?);
    let mut link = Link {
        ifindex,
        ..Link::default()
    };
    for (ty, v) in attrs(&msg.payload[16..]) {
        match ty {
            IFLA_IFNAME => link.name = str_of(v),
            IFLA_MASTER => link.master = u32_of(v),
            IFLA_LINK => link.link = u32_of(v).filter(|&i| i != 0),
            IFLA_LINK_NETNSID => link.link_netnsid = u32_of(v).map(|n| n as i32),
            IFLA_LINKINFO => {
                if let Some((_, kind)) = attrs(v).find(|(t, _)| *t == IFLA_INFO_KIND) {
                    link.kind = str_of(kind);
                }
            }
            _ => {}
        }
    }
    // A device with no lower device names itself; a veth whose peer is in another namespace
    // may name an ifindex equal to its own.
    if link.link == Some(ifindex) && link.link_netnsid.is_none() {
        link.link = None;
    }
    Some(link)
}

/// Decodes an RTM_NEWADDR message for IPv4.
pub fn parse_addr(msg: &Message) -> Option<(u32, Ipv4Addr, u8)> {
    if msg.ty != RTM_NEWADDR || msg.payload.len() < 8 || msg.payload[0] != libc::AF_INET as u8 {
        return None;
    }
    let prefix = msg.payload[1];
    let ifindex = u32::from_ne_bytes(msg.payload[4..8].try_into().ok()?);
    let mut address = None;
    for (ty, v) in attrs(&msg.payload[8..]) {
        let Some(bytes) = v.get(..4) else { continue };
        let a = Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
        match ty {
            IFA_LOCAL => address = Some(a),
            IFA_ADDRESS if address.is_none() => address = Some(a),
            _ => {}
        }
    }
    Some((ifindex, address?, prefix))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn attr(ty: u16, value: &[u8]) -> Vec<u8> {
        let mut a = Vec::new();
        a.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        a.extend_from_slice(&ty.to_ne_bytes());
        a.extend_from_slice(value);
        while !a.len().is_multiple_of(4) {
            a.push(0);
        }
        a
    }

    fn nlmsg(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(payload);
        m
    }

    fn veth_newlink() -> Vec<u8> {
        let mut p = vec![0u8; 16];
        p[4..8].copy_from_slice(&7u32.to_ne_bytes());
        p.extend(attr(IFLA_IFNAME, b"veth1a2b\0"));
        p.extend(attr(IFLA_MASTER, &3u32.to_ne_bytes()));
        p.extend(attr(IFLA_LINK, &2u32.to_ne_bytes()));
        p.extend(attr(IFLA_LINK_NETNSID, &0i32.to_ne_bytes()));
        p.extend(attr(
            IFLA_LINKINFO | 0x8000,
            &attr(IFLA_INFO_KIND, b"veth\0"),
        ));
        nlmsg(RTM_NEWLINK, &p)
    }

    #[test]
    fn parses_a_veth_bridge_port() {
        let mut out = Vec::new();
        let mut dgram = veth_newlink();
        dgram.extend(nlmsg(NLMSG_DONE, &[0; 4]));
        assert!(split_messages(&dgram, &mut out).unwrap());
        let link = parse_link(&out[0]).expect("link");
        assert_eq!(
            link,
            Link {
                ifindex: 7,
                name: "veth1a2b".into(),
                kind: "veth".into(),
                master: Some(3),
                link: Some(2),
                link_netnsid: Some(0),
            }
        );
    }

    #[test]
    fn a_veth_may_name_its_own_ifindex_in_another_namespace() {
        let msg = |extra: &[u8]| {
            let mut p = vec![0u8; 16];
            p[4..8].copy_from_slice(&2u32.to_ne_bytes());
            p.extend(attr(IFLA_IFNAME, b"eth0\0"));
            p.extend(attr(IFLA_LINK, &2u32.to_ne_bytes()));
            p.extend(extra);
            let mut out = Vec::new();
            split_messages(&nlmsg(RTM_NEWLINK, &p), &mut out).unwrap();
            parse_link(&out[0]).expect("link")
        };
        let plain = msg(&[]);
        assert_eq!(
            plain.link, None,
            "a device naming itself has no lower device"
        );
        let veth = msg(&attr(IFLA_LINK_NETNSID, &0i32.to_ne_bytes()));
        assert_eq!((veth.link, veth.link_netnsid), (Some(2), Some(0)));
    }

    #[test]
    fn parses_ipv4_addresses_and_locality() {
        let mut p = vec![libc::AF_INET as u8, 16, 0, 0];
        p.extend_from_slice(&4u32.to_ne_bytes());
        p.extend(attr(IFA_ADDRESS, &[172, 17, 0, 1]));
        p.extend(attr(IFA_LOCAL, &[172, 17, 0, 1]));
        let msg = Message {
            ty: RTM_NEWADDR,
            payload: p,
        };
        let a = parse_addr(&msg).expect("addr");
        assert_eq!(a, (4, Ipv4Addr::new(172, 17, 0, 1), 16));
        let table = LinkTable {
            links: HashMap::new(),
            addrs: vec![a],
        };
        assert!(table.is_local(Ipv4Addr::new(172, 17, 0, 1)));
        assert!(table.is_local(Ipv4Addr::LOCALHOST));
        assert!(!table.is_local(Ipv4Addr::new(172, 17, 0, 2)));
    }

    #[test]
    fn surfaces_netlink_errors_and_truncation() {
        let mut out = Vec::new();
        let err = nlmsg(NLMSG_ERROR, &(-libc::EPERM).to_ne_bytes());
        assert_eq!(
            split_messages(&err, &mut out).unwrap_err().raw_os_error(),
            Some(libc::EPERM)
        );
        let mut short = veth_newlink();
        short.truncate(20);
        assert!(split_messages(&short, &mut out).is_err());
    }

    #[test]
    fn dumps_this_namespace() {
        // Every namespace has `lo`; no privileges needed to read links.
        let table = LinkTable::dump_here().expect("rtnetlink dump");
        assert!(table.links.values().any(|l| l.name == "lo"), "{table:?}");
    }
}
