//! Fleet's self-metrics (contract §5): the counters every front door keeps, and
//! the Prometheus text exposition rendered from them and the threshold book.

use crate::outcome::{DropReason, Outcome};
use crate::threshold::ThresholdBook;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing count Fleet keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Counter {
    TotalPushes,
    StragglerEvents,
    Dropped(DropReason),
}

/// Every counter, in exposition order: one per drop reason after the two totals.
pub const COUNTERS: [Counter; 2 + DropReason::ALL.len()] = {
    let mut all = [Counter::TotalPushes; 2 + DropReason::ALL.len()];
    all[1] = Counter::StragglerEvents;
    let mut i = 0;
    while i < DropReason::ALL.len() {
        all[2 + i] = Counter::Dropped(DropReason::ALL[i]);
        i += 1;
    }
    all
};

impl Counter {
    /// A flat name for hosts whose counters have no labels (proxy-wasm metrics).
    pub fn flat_name(self) -> String {
        match self {
            Self::TotalPushes => "ingero_fleet_total_pushes".into(),
            Self::StragglerEvents => "ingero_fleet_straggler_events_total".into(),
            Self::Dropped(reason) => format!("ingero_fleet_dropped_total.reason.{}", reason.label()),
        }
    }

    fn index(self) -> usize {
        COUNTERS.iter().position(|c| *c == self).unwrap_or(0)
    }
}

/// Where a front door keeps the counters (atomics, Envoy stats, …).
pub trait CounterSink {
    fn add(&self, counter: Counter, n: u64);
    /// The process-wide value.
    fn value(&self, counter: Counter) -> u64;
}

/// Counters in process memory.
#[derive(Debug, Default)]
pub struct MemoryCounters {
    values: [AtomicU64; COUNTERS.len()],
}

impl CounterSink for MemoryCounters {
    fn add(&self, counter: Counter, n: u64) {
        self.values[counter.index()].fetch_add(n, Ordering::Relaxed);
    }
    fn value(&self, counter: Counter) -> u64 {
        self.values[counter.index()].load(Ordering::Relaxed)
    }
}

impl Outcome {
    /// Adds what a request did to the counters.
    pub fn record(&self, sink: &dyn CounterSink) {
        if self.accepted_push {
            sink.add(Counter::TotalPushes, 1);
        }
        if self.straggler_events > 0 {
            sink.add(Counter::StragglerEvents, self.straggler_events);
        }
        for (reason, n) in &self.drops {
            sink.add(Counter::Dropped(*reason), *n);
        }
    }
}

/// The Prometheus text exposition (format 0.0.4) of every Fleet metric.
pub fn render(sink: &dyn CounterSink, book: &ThresholdBook, tracked_nodes: u32) -> String {
    let mut out = render_counters(sink, tracked_nodes, book.cohorts_over_cap);
    out.push_str(&render_cohorts(book));
    out
}

/// The process counters and gauges: a few hundred bytes, rendered per scrape.
pub fn render_counters(sink: &dyn CounterSink, tracked_nodes: u32, cohorts_over_cap: u32) -> String {
    let mut out = String::with_capacity(2048);
    header(&mut out, "ingero_fleet_total_pushes", "counter", "Pushes accepted.");
    let _ = writeln!(out, "ingero_fleet_total_pushes {}", sink.value(Counter::TotalPushes));
    header(&mut out, "ingero_fleet_straggler_events_total", "counter", "Straggler events reported by agents.");
    let _ = writeln!(out, "ingero_fleet_straggler_events_total {}", sink.value(Counter::StragglerEvents));
    header(&mut out, "ingero_fleet_dropped_total", "counter", "Points and requests not stored, by reason.");
    for counter in COUNTERS {
        if let Counter::Dropped(reason) = counter {
            let _ =
                writeln!(out, "ingero_fleet_dropped_total{{reason=\"{}\"}} {}", reason.label(), sink.value(counter));
        }
    }
    header(&mut out, "ingero_fleet_tracked_nodes", "gauge", "Nodes holding a slot under max_expected_nodes.");
    let _ = writeln!(out, "ingero_fleet_tracked_nodes {tracked_nodes}");
    let help = "Cohorts left out of the last recompute by max_cohorts_per_cluster.";
    header(&mut out, "ingero_fleet_cohorts_over_cap", "gauge", help);
    let _ = writeln!(out, "ingero_fleet_cohorts_over_cap {cohorts_over_cap}");
    out
}

/// The per-cohort gauges: they change only when a new book is published, so
/// a front door renders them once per book ([`crate::read_cache`]).
pub fn render_cohorts(book: &ThresholdBook) -> String {
    let mut out = String::with_capacity(512 + 512 * book.cohorts.len());
    type Field = fn(&crate::threshold::ThresholdSnapshot) -> Option<f64>;
    let per_cohort: [(&str, &str, Field); 6] = [
        ("ingero_fleet_active_nodes", "Active unexpired nodes.", |s| Some(f64::from(s.active_nodes))),
        ("ingero_fleet_median", "Median active score.", |s| Some(s.median)),
        ("ingero_fleet_mad", "Median absolute deviation of active scores.", |s| Some(s.mad)),
        ("ingero_fleet_threshold", "Published straggler threshold (absent without quorum).", |s| s.threshold),
        ("ingero_fleet_straggler_count", "Active nodes below the threshold.", |s| Some(f64::from(s.stragglers))),
        ("ingero_fleet_coverage_low", "1 when active nodes < coverage_fraction x world_size.", |s| {
            Some(if s.coverage_low { 1.0 } else { 0.0 })
        }),
    ];
    for (name, help, field) in per_cohort {
        header(&mut out, name, "gauge", help);
        for s in &book.cohorts {
            if let Some(value) = field(s) {
                let _ = writeln!(
                    out,
                    "{name}{{cluster_id=\"{}\",cgroup_path_hash=\"{}\"}} {value}",
                    escape(&s.cluster),
                    escape(&s.cohort)
                );
            }
        }
    }
    out
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Label value escaping of the text format: `\\`, `\"` and `\n` as it defines;
/// any other control character (CR, NUL, ESC, DEL, C1), which the format has no
/// escape for and which breaks line-based readers, is written as the text
/// `\xHH` (its backslash escaped), so every byte of the output is printable.
fn escape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(out, "\\\\x{:02x}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::threshold::ThresholdSnapshot;

    fn snapshot(cluster: &str, threshold: Option<f64>) -> ThresholdSnapshot {
        ThresholdSnapshot {
            cluster: cluster.into(),
            cohort: String::new(),
            active_nodes: 5,
            live_nodes: 6,
            median: 0.9,
            mad: 0.05,
            threshold,
            stragglers: 1,
            world_size: 8,
            coverage_low: true,
            histogram: Vec::new(),
        }
    }

    #[test]
    fn renders_counters_and_cohorts() {
        let sink = MemoryCounters::default();
        Outcome { accepted_push: true, straggler_events: 2, drops: vec![(DropReason::BadRequest, 1)] }.record(&sink);
        Outcome { accepted_push: true, ..Outcome::default() }.record(&sink);
        let book = ThresholdBook {
            epoch: 1,
            computed_at_ms: 0,
            cohorts: vec![snapshot("a\"b", Some(0.8)), snapshot("cold", None)],
            cohorts_over_cap: 3,
        };
        let text = render(&sink, &book, 11);
        for line in [
            "ingero_fleet_total_pushes 2",
            "ingero_fleet_straggler_events_total 2",
            "ingero_fleet_dropped_total{reason=\"bad_request\"} 1",
            "ingero_fleet_dropped_total{reason=\"invalid_point\"} 0",
            "ingero_fleet_tracked_nodes 11",
            "ingero_fleet_cohorts_over_cap 3",
            "ingero_fleet_active_nodes{cluster_id=\"a\\\"b\",cgroup_path_hash=\"\"} 5",
            "ingero_fleet_threshold{cluster_id=\"a\\\"b\",cgroup_path_hash=\"\"} 0.8",
            "ingero_fleet_coverage_low{cluster_id=\"cold\",cgroup_path_hash=\"\"} 1",
            "# TYPE ingero_fleet_median gauge",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(!text.contains("ingero_fleet_threshold{cluster_id=\"cold\""), "no threshold without quorum");
    }

    #[test]
    fn control_characters_in_label_values_are_escaped() {
        let mut cluster = String::from("a\rb\0c\x1b[2J\u{7f}\u{85}\nd\\\"");
        cluster.push('é');
        let book = ThresholdBook { cohorts: vec![snapshot(&cluster, Some(0.8))], ..ThresholdBook::default() };
        let text = render(&MemoryCounters::default(), &book, 1);
        assert!(text.chars().all(|c| c == '\n' || !c.is_control()), "{text:?}");
        let line = "ingero_fleet_threshold{cluster_id=\"a\\\\x0db\\\\x00c\\\\x1b[2J\\\\x7f\\\\x85\\nd\\\\\\\"é\",cgroup_path_hash=\"\"} 0.8";
        assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        assert_eq!(text.lines().filter(|l| l.starts_with("ingero_fleet_threshold{")).count(), 1);
    }
}
