//! JSON lines: `ready`, then `hop` objects followed by their packet's `verdict`, then `stats`.

use std::io::Write;

use serde::Serialize;

use super::{Output, Ready, Stats};
use crate::report::{HopView, Report};

pub struct JsonOutput<W: Write> {
    out: W,
}

impl<W: Write> JsonOutput<W> {
    pub fn new(out: W) -> Self {
        Self { out }
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
    #[serde(flatten)]
    body: &'a T,
}

impl<W: Write> Output for JsonOutput<W> {
    fn ready(&mut self, ready: &Ready) -> std::io::Result<()> {
        self.line(&Tagged {
            kind: "ready",
            body: ready,
        })?;
        self.out.flush()
    }

    fn tick(&mut self, _stats: &Stats, _live: usize) -> std::io::Result<()> {
        self.out.flush()
    }

    fn report(&mut self, report: &Report) -> std::io::Result<()> {
        for hop in &report.hops {
            self.line(&Tagged::<HopView> {
                kind: "hop",
                body: hop,
            })?;
        }
        self.line(&report.verdict_json())
    }

    fn stats(&mut self, stats: &Stats) -> std::io::Result<()> {
        self.line(&Tagged {
            kind: "stats",
            body: stats,
        })?;
        self.out.flush()
    }
}
