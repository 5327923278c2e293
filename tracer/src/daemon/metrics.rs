//! Prometheus text exposition of what the daemon counts. Label cardinality is bounded: the
//! first `top_n` label sets get their own series, later ones fold into `other`.

use std::{collections::HashMap, fmt::Write as _};

/// Labels of `pathtrace_drops_total`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DropLabels {
    pub reason: String,
    /// Netfilter hook when known, else the kernel function that dropped.
    pub hook: String,
    pub ifname: String,
    pub netns: String,
    pub container: String,
    pub code: String,
    /// `original` (the flow's first direction), `reply`, `related` (an ICMP error about
    /// it), or empty when the packet had no flow (not IPv4).
    pub direction: String,
}

impl DropLabels {
    fn other() -> Self {
        let o = || "other".to_owned();
        Self {
            reason: o(),
            hook: o(),
            ifname: o(),
            netns: o(),
            container: o(),
            code: o(),
            direction: o(),
        }
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub drops: HashMap<DropLabels, u64>,
    pub top_n: usize,
    pub events: u64,
    pub lost: u64,
    /// Packets of floods the kernel counted instead of tracing; those it could not count.
    pub summarised: u64,
    pub uncounted: u64,
    /// The kernel's own drop counts (`pathtrace_kernel_drops_total`), and the drops its map
    /// could not take.
    pub kernel_drops: Vec<crate::output::KernelDrop>,
    pub kernel_drops_uncounted: u64,
    pub decode_errors: u64,
    pub packets: u64,
    pub live_packets: u64,
    pub flows: u64,
    pub backend: String,
    /// `path` or `drops`: which hooks are attached.
    pub hooks: String,
    pub filter_reloads: u64,
    /// Drop events the JSON log could not take (disk full, directory gone, permissions).
    pub json_log_errors: u64,
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Metrics {
    pub fn new(top_n: usize) -> Self {
        Self {
            top_n: top_n.max(1),
            ..Self::default()
        }
    }

    /// `n` drops with these labels (a summarised flood's many at once).
    pub fn count_drops(&mut self, labels: DropLabels, n: u64) {
        let key = if self.drops.contains_key(&labels) || self.drops.len() < self.top_n {
            labels
        } else {
            DropLabels::other()
        };
        *self.drops.entry(key).or_insert(0) += n;
    }

    pub fn count_drop(&mut self, labels: DropLabels) {
        self.count_drops(labels, 1);
    }

    /// The exposition text (format 0.0.4).
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# HELP pathtrace_drops_total Packets the kernel dropped, by reason, hook, interface, namespace, container, diagnosis code and direction in their flow."
        );
        let _ = writeln!(s, "# TYPE pathtrace_drops_total counter");
        let mut series: Vec<_> = self.drops.iter().collect();
        series.sort();
        for (l, n) in series {
            let _ = writeln!(
                s,
                "pathtrace_drops_total{{reason=\"{}\",hook=\"{}\",ifname=\"{}\",netns=\"{}\",container=\"{}\",code=\"{}\",direction=\"{}\"}} {n}",
                escape(&l.reason),
                escape(&l.hook),
                escape(&l.ifname),
                escape(&l.netns),
                escape(&l.container),
                escape(&l.code),
                escape(&l.direction)
            );
        }
        let _ = writeln!(
            s,
            "# HELP pathtrace_kernel_drops_total Drops the kernel counted as it traced them, by reason, the function that freed them, interface and namespace: exact, whatever became of their events.\n# TYPE pathtrace_kernel_drops_total counter"
        );
        for d in &self.kernel_drops {
            let _ = writeln!(
                s,
                "pathtrace_kernel_drops_total{{reason=\"{}\",location=\"{}\",ifname=\"{}\",netns=\"{}\"}} {}",
                escape(&d.reason),
                escape(&d.location),
                escape(&d.ifname),
                escape(&d.netns),
                d.count
            );
        }
        for (name, help, kind, v) in [
            (
                "pathtrace_events_total",
                "Hop events read from the ring buffer.",
                "counter",
                self.events,
            ),
            (
                "pathtrace_events_lost_total",
                "Hop events the kernel could not write (ring buffer full).",
                "counter",
                self.lost,
            ),
            (
                "pathtrace_summarised_packets_total",
                "Packets of floods counted in the kernel instead of traced (drops among them are in pathtrace_drops_total with the labels of the full packet they repeat).",
                "counter",
                self.summarised,
            ),
            (
                "pathtrace_uncounted_packets_total",
                "Packets of floods the kernel could neither trace nor count (its summary map was full).",
                "counter",
                self.uncounted,
            ),
            (
                "pathtrace_kernel_drops_uncounted_total",
                "Drops the kernel could not count by key (its map full): pathtrace_kernel_drops_total is short by this much.",
                "counter",
                self.kernel_drops_uncounted,
            ),
            (
                "pathtrace_decode_errors_total",
                "Ring buffer records that did not decode.",
                "counter",
                self.decode_errors,
            ),
            (
                "pathtrace_packets_total",
                "Packets given a verdict.",
                "counter",
                self.packets,
            ),
            (
                "pathtrace_filter_reloads_total",
                "Filters applied from SIGHUP reloads.",
                "counter",
                self.filter_reloads,
            ),
            (
                "pathtrace_json_log_errors_total",
                "Drop events the JSON log could not be written with (they are still counted here).",
                "counter",
                self.json_log_errors,
            ),
            (
                "pathtrace_tracked_packets",
                "Packets being correlated now.",
                "gauge",
                self.live_packets,
            ),
            (
                "pathtrace_tracked_flows",
                "Flows remembered now.",
                "gauge",
                self.flows,
            ),
        ] {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        }
        let _ = writeln!(
            s,
            "# HELP pathtrace_build_info Version, backend and hook set.\n# TYPE pathtrace_build_info gauge"
        );
        let _ = writeln!(
            s,
            "pathtrace_build_info{{version=\"{}\",backend=\"{}\",hooks=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION"),
            escape(&self.backend),
            escape(&self.hooks)
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(reason: &str) -> DropLabels {
        DropLabels {
            reason: reason.into(),
            hook: "FORWARD".into(),
            ifname: "eth0".into(),
            netns: "root".into(),
            container: "web-1".into(),
            code: "netfilter_drop".into(),
            direction: "reply".into(),
        }
    }

    #[test]
    fn renders_parseable_text_and_folds_past_top_n() {
        let mut m = Metrics::new(2);
        m.count_drop(labels("NETFILTER_DROP"));
        m.count_drop(labels("NETFILTER_DROP"));
        m.count_drop(labels("NO_SOCKET"));
        m.count_drop(labels("IP_RPFILTER"));
        m.count_drop(labels("IP_INNOROUTES"));
        let text = m.render();
        assert!(text.contains("pathtrace_drops_total{reason=\"NETFILTER_DROP\",hook=\"FORWARD\",ifname=\"eth0\",netns=\"root\",container=\"web-1\",code=\"netfilter_drop\",direction=\"reply\"} 2"), "{text}");
        assert!(text.contains("pathtrace_drops_total{reason=\"other\",hook=\"other\",ifname=\"other\",netns=\"other\",container=\"other\",code=\"other\",direction=\"other\"} 2"), "{text}");
        assert_eq!(m.drops.len(), 3);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name value");
            value.parse::<f64>().expect("a number");
        }
    }

    #[test]
    fn escapes_label_values() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
