//! JSON lines: `ready`, then `hop` objects followed by their packet's `verdict`, then `stats`.

use std::io::Write;

use serde::Serialize;

use super::{Output, Ready, Stats};
use crate::{clock::WallTime, report::Report};

pub struct JsonOutput<W: Write> {
    out: W,
    /// Reused for hop lines (see `tagged_line`).
    scratch: Vec<u8>,
}

impl<W: Write> JsonOutput<W> {
    pub fn new(out: W) -> Self {
        Self {
            out,
            scratch: Vec::with_capacity(1024),
        }
    }

    /// `{"kind":"<kind>", ...body}` for the hot lines (one per hop). Same bytes as
    /// [`Tagged`], without serde's `flatten`, which routes every field through a map
    /// serializer and costs more than the rest of the hop together.
    fn tagged_line(&mut self, kind: &str, body: &impl Serialize) -> std::io::Result<()> {
        self.scratch.clear();
        serde_json::to_writer(&mut self.scratch, body)?;
        let fields = self.scratch.get(1..).unwrap_or_default();
        write!(self.out, "{{\"kind\":\"{kind}\"")?;
        if fields != b"}" {
            self.out.write_all(b",")?;
        }
        self.out.write_all(fields)?;
        self.out.write_all(b"\n")
    }

    /// Writes one line; flushing waits for the tick (every 100 ms), so a busy trace makes a
    /// few large writes instead of a syscall per hop.
    fn line(&mut self, value: &impl Serialize) -> std::io::Result<()> {
        serde_json::to_writer(&mut self.out, value)?;
        self.out.write_all(b"\n")
    }
}

#[derive(Serialize)]
struct Tagged<'a, T: Serialize> {
    kind: &'static str,
    /// When the line was written (hops carry their own).
    #[serde(skip_serializing_if = "Option::is_none")]
    time: Option<WallTime>,
    #[serde(flatten)]
    body: &'a T,
}

impl<W: Write> Output for JsonOutput<W> {
    fn ready(&mut self, ready: &Ready) -> std::io::Result<()> {
        self.line(&Tagged {
            kind: "ready",
            time: Some(WallTime::now()),
            body: ready,
        })?;
        self.out.flush()
    }

    fn tick(&mut self, _stats: &Stats, _live: usize) -> std::io::Result<()> {
        self.out.flush()
    }

    fn report(&mut self, report: &Report) -> std::io::Result<()> {
        for hop in &report.hops {
            self.tagged_line("hop", hop)?;
        }
        self.line(&report.verdict_json())
    }

    fn connection(&mut self, c: &crate::connection::Connection) -> std::io::Result<()> {
        self.line(&Tagged {
            kind: "flow",
            time: None,
            body: c,
        })
    }

    fn summary(&mut self, s: &crate::flood::Summary) -> std::io::Result<()> {
        self.line(&s.json())
    }

    fn stats(&mut self, stats: &Stats) -> std::io::Result<()> {
        self.line(&Tagged {
            kind: "stats",
            time: Some(WallTime::now()),
            body: stats,
        })?;
        self.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Body {
        ifname: &'static str,
        len: u32,
        src: Option<std::net::Ipv4Addr>,
    }

    #[derive(Serialize)]
    struct Empty {}

    fn both(body: &impl Serialize) -> (String, String) {
        let mut fast = JsonOutput::new(Vec::new());
        fast.tagged_line("hop", body).expect("vec write");
        let mut slow = JsonOutput::new(Vec::new());
        slow.line(&Tagged {
            kind: "hop",
            time: None,
            body,
        })
        .expect("vec write");
        (
            String::from_utf8(fast.out).expect("utf8"),
            String::from_utf8(slow.out).expect("utf8"),
        )
    }

    #[test]
    fn hop_lines_are_the_same_bytes_as_the_tagged_form() {
        let (fast, slow) = both(&Body {
            ifname: "veth\"1",
            len: 60,
            src: Some(std::net::Ipv4Addr::new(203, 0, 113, 2)),
        });
        assert_eq!(fast, slow);
        assert_eq!(
            fast,
            "{\"kind\":\"hop\",\"ifname\":\"veth\\\"1\",\"len\":60,\"src\":\"203.0.113.2\"}\n"
        );
        let (fast, slow) = both(&Empty {});
        assert_eq!(fast, slow);
        assert_eq!(fast, "{\"kind\":\"hop\"}\n");
    }
}
