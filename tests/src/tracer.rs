//! Running the `pathtrace` binary against a lab and reading its JSON lines.

use std::{
    io::{BufRead as _, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::mpsc::{Receiver, RecvTimeoutError, channel},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The binary under test: `$PATHTRACE_BIN`, else `target/debug/pathtrace` of this workspace
/// (`cargo xtask test` builds it first).
pub fn pathtrace_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("PATHTRACE_BIN") {
        return Ok(p.into());
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
    let bin = target.join("debug/pathtrace");
    if !bin.exists() {
        bail!(
            "{} is missing: build it with `cargo build -p tracer` or run `cargo xtask test`",
            bin.display()
        );
    }
    Ok(bin)
}

/// A running `pathtrace --json`, its output collected line by line.
pub struct Tracer {
    child: Child,
    lines: Receiver<Value>,
    pub seen: Vec<Value>,
}

impl Tracer {
    /// Starts pathtrace with `args` (plus `--json`) and waits for its `ready` line.
    pub fn start(args: &[&str]) -> Result<Self> {
        let mut child = Command::new(pathtrace_bin()?)
            .args(args)
            .arg("--json")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("starting pathtrace")?;
        let stdout = child.stdout.take().context("pathtrace stdout")?;
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => {
                        if tx.send(v).is_err() {
                            break;
                        }
                    }
                    Err(e) => eprintln!("pathtrace printed a non-JSON line ({e}): {line}"),
                }
            }
        });
        let mut t = Self {
            child,
            lines,
            seen: Vec::new(),
        };
        // Under TCG a debug pathtrace usually needs ~15 s to read BTF and attach, and has
        // been seen to need over 60 s (its 100 MB binary paged in over 9p).
        let patience = if std::env::var_os("PTLAB_IN_VM").is_some() {
            Duration::from_secs(240)
        } else {
            Duration::from_secs(60)
        };
        let started = std::time::Instant::now();
        t.wait_for(patience, |v| v["kind"] == "ready")
            .context("waiting for ready")?;
        if started.elapsed() > Duration::from_secs(30) {
            eprintln!("pathtrace took {:.0?} to be ready", started.elapsed());
        }
        Ok(t)
    }

    /// Waits for a line matching `pred`; errors on timeout or when pathtrace exits first.
    pub fn wait_for(&mut self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        match self.try_wait_for(timeout, pred)? {
            Some(v) => Ok(v),
            None => {
                let stopped = self.seen.len();
                self.stop_for_post_mortem();
                bail!(
                    "timed out; pathtrace said:\n{}",
                    transcript(&self.seen, stopped)
                )
            }
        }
    }

    /// [`Self::wait_for`] that leaves pathtrace running on a timeout (`None`), for a trace
    /// shared by several cases: one that never comes must not end the others.
    pub fn try_wait_for(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Option<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) => {
                    self.seen.push(v.clone());
                    if pred(&v) {
                        return Ok(Some(v));
                    }
                }
                Err(RecvTimeoutError::Timeout) => return Ok(None),
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait()?;
                    bail!(
                        "pathtrace exited ({status}) first; it said:\n{}",
                        transcript(&self.seen, self.seen.len())
                    )
                }
            }
        }
    }

    /// After a timeout: SIGINT makes pathtrace report the packets it still holds and its
    /// counters (lost events, ...), which say whether the awaited line was late or never came.
    fn stop_for_post_mortem(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while let Ok(v) = self
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            let last = v["kind"] == "stats";
            self.seen.push(v);
            if last {
                break;
            }
        }
    }

    /// The hop lines of one verdict's packet (see [`hops_before`]).
    pub fn hops_of(&self, verdict: &Value) -> Vec<&Value> {
        self.seen
            .iter()
            .rposition(|v| v == verdict)
            .map(|at| hops_before(&self.seen, at).iter().collect())
            .unwrap_or_default()
    }

    /// Sends SIGINT and returns the `stats` line.
    pub fn stop(self) -> Result<Value> {
        self.stop_with_lines().map(|(stats, _)| stats)
    }

    /// Sends SIGINT and returns the `stats` line and every line seen, the connections told
    /// at the end among them.
    pub fn stop_with_lines(mut self) -> Result<(Value, Vec<Value>)> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let stats = self.wait_for(Duration::from_secs(10), |v| v["kind"] == "stats")?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("pathtrace exited with {status}");
        }
        Ok((stats, std::mem::take(&mut self.seen)))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hop lines of the verdict at `lines[at]`: pathtrace writes a packet's hops right before
/// its verdict. (Not every hop with the verdict's skb address: the kernel hands a freed skb's
/// memory to the next packet, of this flow or another.)
pub fn hops_before(lines: &[Value], at: usize) -> &[Value] {
    let before = lines.get(..at).unwrap_or_default();
    let hops = before
        .iter()
        .rev()
        .take_while(|v| v["kind"] == "hop")
        .count();
    &before[before.len() - hops..]
}

/// One short line per JSON line, so a failure shows the whole trace rather than the first
/// screenful of a pretty-printed dump; lines after index `stopped` came after the SIGINT.
pub fn transcript(seen: &[Value], stopped: usize) -> String {
    let tuple = |v: &Value| {
        format!(
            "{} {}:{} > {}:{} [{}]",
            v["proto"].as_str().unwrap_or("?"),
            v["src"].as_str().unwrap_or("?"),
            v["sport"],
            v["dst"].as_str().unwrap_or("?"),
            v["dport"],
            v["tcp_flags"].as_str().unwrap_or("")
        )
    };
    let mut out = String::new();
    for (i, v) in seen.iter().enumerate() {
        if i == stopped {
            out.push_str("  -- after SIGINT --\n");
        }
        let line = match v["kind"].as_str() {
            Some("hop") => format!(
                "hop {} {} {}@{} {}",
                v["skb"].as_str().unwrap_or("?"),
                v["hop"].as_str().unwrap_or("?"),
                v["ifname"].as_str().unwrap_or("?"),
                v["netns_name"].as_str().unwrap_or("?"),
                tuple(v)
            ),
            Some("verdict") => format!(
                "verdict {} {} last {} {}@{} {} {}",
                v["skb"].as_str().unwrap_or("?"),
                v["outcome"].as_str().unwrap_or("?"),
                v["last_hop"]["hop"].as_str().unwrap_or("?"),
                v["last_hop"]["ifname"].as_str().unwrap_or("?"),
                v["last_hop"]["netns_name"].as_str().unwrap_or("?"),
                tuple(&v["last_hop"]),
                v["diagnosis"]["code"].as_str().unwrap_or("")
            ),
            _ => v.to_string(),
        };
        out.push_str("  ");
        out.push_str(&line);
        out.push('\n');
    }
    out
}
