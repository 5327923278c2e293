//! A `pathtrace daemon` under test: started with a config file in its own directory, scraped
//! over real HTTP, signalled, and killed (and its directory removed) when dropped.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::tracer::pathtrace_bin;

pub struct Daemon {
    pub child: Child,
    pub port: u16,
    /// Holds `pathtrace.toml` and `drops.json`.
    pub dir: PathBuf,
}

impl Daemon {
    pub fn start(config: &str, port: u16) -> Self {
        Self::start_logging_to(config, port, None)
    }

    /// [`Daemon::start`] with the JSON log at `json_log` instead of `dir/drops.json`.
    pub fn start_logging_to(config: &str, port: u16, json_log: Option<&std::path::Path>) -> Self {
        let dir =
            std::env::temp_dir().join(format!("pathtrace-daemon-{}-{port}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pathtrace.toml"), config).unwrap();
        let log = json_log.map_or_else(|| dir.join("drops.json"), std::path::Path::to_owned);
        let child = Command::new(pathtrace_bin().unwrap())
            .args(["daemon", "--config"])
            .arg(dir.join("pathtrace.toml"))
            .args(["--listen", &format!("127.0.0.1:{port}"), "--json-log"])
            .arg(log)
            .stdout(Stdio::null())
            .spawn()
            .expect("daemon starts");
        let d = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while d.get("/healthz").map(|(s, _)| s) != Some(200) {
            assert!(Instant::now() < deadline, "daemon never became healthy");
            std::thread::sleep(Duration::from_millis(200));
        }
        d
    }

    /// A real HTTP scrape.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        http_get(self.port, path)
    }

    pub fn metrics(&self) -> String {
        self.get("/metrics").expect("scrape").1
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn wait_for_metric(&self, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let m = self.metrics();
            if pred(&m) {
                return m;
            }
            assert!(Instant::now() < deadline, "metric never appeared:\n{m}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// One HTTP/1.1 GET to a daemon listening on loopback `port`: its status and body.
pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let status = resp.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, resp.split_once("\r\n\r\n")?.1.to_owned()))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The sum of a counter's series whose labels contain every one of `with`.
pub fn series_sum(metrics: &str, name: &str, with: &[&str]) -> u64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && with.iter().all(|w| l.contains(w)))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum()
}
