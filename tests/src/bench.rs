//! Traffic for the benchmark: a UDP flood from the outside namespace to the published port
//! (DNATed through the bridge into the container, where a sink counts what arrives), and a
//! TCP SYN flood from raw sockets. Loops are bounded in count and time.

use std::{
    net::{Ipv4Addr, SocketAddrV4, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::{Lab, Worker};

/// The UDP port the bench publishes (DNAT to the container's port 9).
pub const UDP_PORT: u16 = 10009;

/// Counts datagrams arriving in the container.
pub struct Sink {
    pub received: Arc<AtomicU64>,
    _worker: Worker,
}

impl Lab {
    /// Publishes UDP [`UDP_PORT`] to the container's port 9 (Docker's rule shape) and starts a
    /// counting sink there.
    pub fn udp_sink(&self) -> Result<Sink> {
        self.publish("udp", UDP_PORT, 9)?;
        let sock = self
            .container
            .run_in(|| UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 9)))??;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let received = Arc::new(AtomicU64::new(0));
        let counter = received.clone();
        let mut buf = [0u8; 2048];
        let worker = Worker::spawn(move || {
            if sock.recv(&mut buf).is_ok() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        });
        Ok(Sink {
            received,
            _worker: worker,
        })
    }

    /// Sends 18-byte datagrams to the published UDP port for `duration` (at most `max`), 64
    /// to a `sendmmsg` call: the highest rate one socket gives here.
    pub fn udp_flood(&self, duration: Duration, max: u64) -> Result<u64> {
        self.udp_flood_to(UDP_PORT, duration, max)
    }

    /// `n` more addresses of the outside namespace, on its link beside its own (the ones after
    /// it): a flood sent from them is `n` flows (a flow is a client address to one service).
    pub fn flow_sources(&self, n: u8) -> Result<Vec<Ipv4Addr>> {
        let base = u32::from(self.config.outside_addr);
        let sources: Vec<Ipv4Addr> = (1..=u32::from(n))
            .map(|k| Ipv4Addr::from(base + k))
            .filter(|a| *a != self.config.host_addr)
            .collect();
        for a in &sources {
            self.outside.ip(&[
                "addr",
                "replace",
                &format!("{a}/{}", self.config.uplink_prefix),
                "dev",
                "eth0",
            ])?;
        }
        Ok(sources)
    }

    /// [`Lab::udp_flood`] from each of `sources` in turn (a `sendmmsg` batch each): as many
    /// flows as sources.
    pub fn udp_flood_from(
        &self,
        sources: &[Ipv4Addr],
        duration: Duration,
        max: u64,
    ) -> Result<u64> {
        self.udp_flood_between(sources, UDP_PORT, duration, max)
    }

    /// [`Lab::udp_flood`] to another port of the host's address (one nothing listens on: every
    /// datagram dies there for want of a socket).
    pub fn udp_flood_to(&self, port: u16, duration: Duration, max: u64) -> Result<u64> {
        self.udp_flood_between(&[self.config.outside_addr], port, duration, max)
    }

    /// 18-byte datagrams from each of `sources` in turn, a `sendmmsg` batch each, to `port`
    /// of the host's address, for `duration` (at most `max`).
    fn udp_flood_between(
        &self,
        sources: &[Ipv4Addr],
        port: u16,
        duration: Duration,
        max: u64,
    ) -> Result<u64> {
        let to = SocketAddrV4::new(self.config.host_addr, port);
        let sources = sources.to_vec();
        self.outside
            .run_in(move || -> std::io::Result<u64> {
                let sockets = sources
                    .iter()
                    .map(|a| {
                        let s = UdpSocket::bind((*a, 0))?;
                        s.connect(to)?;
                        Ok(s)
                    })
                    .collect::<std::io::Result<Vec<_>>>()?;
                let payload = [0x5au8; 18];
                let end = Instant::now() + duration;
                let mut sent = 0u64;
                for s in sockets.iter().cycle() {
                    if sent >= max || Instant::now() >= end {
                        break;
                    }
                    sent += send_batch(s.as_raw_fd(), &[&payload[..]; BATCH], None)?;
                }
                Ok(sent)
            })?
            .context("udp flood")
    }

    /// Datagrams the host's namespace dropped for want of a socket (`Udp: NoPorts`): the
    /// kernel's own count of a drop flood.
    pub fn host_udp_no_ports(&self) -> Result<u64> {
        let text = self
            .host
            .run_in(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
        snmp_value(&text, "Udp:", "NoPorts")
    }

    /// TCP segments the container's stack has received (`Tcp: InSegs`), to count SYNs that
    /// made it through.
    pub fn container_tcp_in_segs(&self) -> Result<u64> {
        let text = self
            .container
            .run_in(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))??;
        snmp_value(&text, "Tcp:", "InSegs")
    }

    /// Sends TCP SYNs (raw socket, source ports cycling, 64 to a `sendmmsg` call) to the
    /// published TCP port.
    pub fn syn_flood(&self, duration: Duration, max: u64) -> Result<u64> {
        self.syn_flood_from(&[self.config.outside_addr], duration, max)
    }

    /// [`Lab::syn_flood`] with each SYN from the next of `sources`: as many flows as sources.
    pub fn syn_flood_from(
        &self,
        sources: &[Ipv4Addr],
        duration: Duration,
        max: u64,
    ) -> Result<u64> {
        let (dst, dport) = (self.config.host_addr, self.config.published_port);
        let sources = sources.to_vec();
        self.outside
            .run_in(move || syn_flood(&sources, dst, dport, duration, max))?
    }
}

/// One counter of `/proc/net/snmp`: `name` of the `group` (`Tcp:`, `Udp:`), whose header line
/// comes before its values.
fn snmp_value(text: &str, group: &str, name: &str) -> Result<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(group));
    let (names, values) = (
        lines.next().with_context(|| format!("{group} header"))?,
        lines.next().with_context(|| format!("{group} values"))?,
    );
    let i = names
        .split_whitespace()
        .position(|n| n == name)
        .with_context(|| format!("{group} {name}"))?;
    values
        .split_whitespace()
        .nth(i)
        .with_context(|| format!("{group} {name} value"))?
        .parse()
        .with_context(|| format!("{group} {name} number"))
}

/// Datagrams per `sendmmsg` call.
const BATCH: usize = 64;

/// One `sendmmsg` of the `payloads` (at most [`BATCH`]; to `to`, on an unconnected socket);
/// how many the kernel took. A full queue (ENOBUFS, EAGAIN) takes none and is not an error.
fn send_batch(fd: i32, payloads: &[&[u8]], to: Option<&libc::sockaddr_in>) -> std::io::Result<u64> {
    let n = payloads.len().min(BATCH);
    let mut iovs: [libc::iovec; BATCH] = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; BATCH];
    for (iov, p) in iovs.iter_mut().zip(payloads) {
        iov.iov_base = p.as_ptr() as *mut libc::c_void;
        iov.iov_len = p.len();
    }
    // SAFETY: all-zero is a valid mmsghdr; the pointers set below outlive the call.
    let mut msgs: [libc::mmsghdr; BATCH] = unsafe { std::mem::zeroed() };
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
        if let Some(to) = to {
            m.msg_hdr.msg_name = (to as *const libc::sockaddr_in).cast_mut().cast();
            m.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_in>() as u32;
        }
    }
    // SAFETY: `msgs` holds `n` valid headers.
    let n = unsafe { libc::sendmmsg(fd, msgs.as_mut_ptr(), n as u32, 0) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            // ECONNREFUSED: a connected socket is told of the port unreachable a closed port
            // answers (the drop flood's); the call sent nothing and the error is cleared.
            Some(libc::ENOBUFS | libc::EAGAIN | libc::ECONNREFUSED) => Ok(0),
            _ => Err(e),
        };
    }
    Ok(n as u64)
}

fn checksum(data: &[u8], mut sum: u32) -> u16 {
    for chunk in data.chunks(2) {
        let word = u16::from_be_bytes([chunk[0], *chunk.get(1).unwrap_or(&0)]);
        sum += word as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An IPv4+TCP SYN, checksums filled.
pub fn syn_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, seq: u32) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[6] = 0x40; // DF
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let ip_sum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = 0u32;
    for w in [&src.octets()[..], &dst.octets()[..]] {
        for c in w.chunks(2) {
            pseudo += u16::from_be_bytes([c[0], c[1]]) as u32;
        }
    }
    pseudo += 6 + 20;
    let tcp_sum = checksum(&p[20..40], pseudo);
    p[36..38].copy_from_slice(&tcp_sum.to_be_bytes());
    p
}

fn syn_flood(
    sources: &[Ipv4Addr],
    dst: Ipv4Addr,
    dport: u16,
    duration: Duration,
    max: u64,
) -> Result<u64> {
    anyhow::ensure!(!sources.is_empty(), "a SYN flood needs a source address");
    // SAFETY: a raw socket we own and close at the end.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("raw socket");
    }
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(dst).to_be(),
        },
        sin_zero: [0; 8],
    };
    let end = Instant::now() + duration;
    let mut sent = 0u64;
    while sent < max && Instant::now() < end {
        let packets: Vec<[u8; 40]> = (0..BATCH as u64)
            .map(|i| {
                let n = sent + i;
                let src = sources[n as usize % sources.len()];
                syn_packet(src, dst, 20000 + (n % 40000) as u16, dport, n as u32)
            })
            .collect();
        let batch: Vec<&[u8]> = packets.iter().map(|p| &p[..]).collect();
        match send_batch(fd, &batch, Some(&addr)) {
            Ok(n) => sent += n,
            Err(e) => {
                // SAFETY: closing our fd.
                unsafe { libc::close(fd) };
                return Err(e).context("sendmmsg");
            }
        }
    }
    // SAFETY: closing our fd.
    unsafe { libc::close(fd) };
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_checksums_verify() {
        let p = syn_packet(
            Ipv4Addr::new(203, 0, 113, 2),
            Ipv4Addr::new(203, 0, 113, 1),
            40000,
            10001,
            7,
        );
        assert_eq!(
            checksum(&p[..20], 0),
            0,
            "IP header sums to zero with its checksum"
        );
        let mut pseudo = 0u32;
        for w in [[203u8, 0], [113, 2], [203, 0], [113, 1]] {
            pseudo += u16::from_be_bytes(w) as u32;
        }
        pseudo += 6 + 20;
        assert_eq!(checksum(&p[20..], pseudo), 0);
        assert_eq!(p[33], 0x02, "SYN");
    }
}
