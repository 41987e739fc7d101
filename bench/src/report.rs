//! What a run counts per request kind (latency histogram, statuses, errors)
//! and how it is reported as JSON.

use crate::http::{HttpError, Response};
use hdrhistogram::{CreationError, Histogram};
use serde_json::{json, Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// Latencies above this (µs) are clamped: far beyond any timeout.
const MAX_LATENCY_US: u64 = 600_000_000;

/// Per-kind counts of one connection, or of all connections merged.
#[derive(Clone)]
pub struct Tally {
    latency_us: Histogram<u64>,
    pub statuses: BTreeMap<u16, u64>,
    pub errors: BTreeMap<&'static str, u64>,
    /// Scheduled requests never sent because the run ended first (open loop backlog).
    pub unsent: u64,
    /// TCP connections opened.
    pub connects: u64,
}

impl Tally {
    /// An empty tally: latencies from 1 µs to 10 minutes at 3 significant digits.
    pub fn new() -> Result<Self, CreationError> {
        let latency_us = Histogram::new_with_bounds(1, MAX_LATENCY_US, 3)?;
        Ok(Self { latency_us, statuses: BTreeMap::new(), errors: BTreeMap::new(), unsent: 0, connects: 0 })
    }

    /// Counts one request that took `latency`.
    pub fn record(&mut self, latency: Duration, result: &Result<Response, HttpError>) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.latency_us.saturating_record(us);
        match result {
            Ok(response) => {
                *self.statuses.entry(response.status).or_default() += 1;
                if response.rejected_points {
                    *self.errors.entry("rejected_points").or_default() += 1;
                }
            }
            Err(e) => *self.errors.entry(e.kind()).or_default() += 1,
        }
    }

    /// Adds another tally's counts.
    pub fn merge(&mut self, other: &Tally) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latency_us.add(&other.latency_us);
        for (status, n) in &other.statuses {
            *self.statuses.entry(*status).or_default() += n;
        }
        for (kind, n) in &other.errors {
            *self.errors.entry(kind).or_default() += n;
        }
        self.unsent += other.unsent;
        self.connects += other.connects;
    }

    /// Requests answered with a 2xx status and no rejected points.
    pub fn ok(&self) -> u64 {
        let answered: u64 = self.statuses.iter().filter(|(s, _)| (200..300).contains(*s)).map(|(_, n)| n).sum();
        answered.saturating_sub(self.errors.get("rejected_points").copied().unwrap_or(0))
    }

    /// The JSON report over a measuring window.
    pub fn to_json(&self, window: Duration) -> Value {
        let done = self.latency_us.len();
        let transport: u64 = self.errors.iter().filter(|(k, _)| **k != "rejected_points").map(|(_, n)| n).sum();
        let mut errors: Map<String, Value> = self.errors.iter().map(|(k, n)| ((*k).to_owned(), json!(n))).collect();
        for (status, n) in self.statuses.iter().filter(|(s, _)| !(200..300).contains(*s)) {
            errors.insert(format!("status_{status}"), json!(n));
        }
        let h = &self.latency_us;
        let ms = |us: u64| us as f64 / 1000.0;
        json!({
            "completed": done,
            "ok": self.ok(),
            "achieved_rps": done.saturating_sub(transport) as f64 / window.as_secs_f64().max(1e-9),
            "error_count": done - self.ok(),
            "errors": errors,
            "status": self.statuses.iter().map(|(s, n)| (s.to_string(), json!(n))).collect::<Map<_, _>>(),
            "unsent": self.unsent,
            "connects": self.connects,
            "latency_ms": {
                "p50": ms(h.value_at_quantile(0.5)),
                "p90": ms(h.value_at_quantile(0.9)),
                "p99": ms(h.value_at_quantile(0.99)),
                "p999": ms(h.value_at_quantile(0.999)),
                "max": ms(h.max()),
                "mean": h.mean() / 1000.0,
            },
        })
    }
}

/// CPU seconds (user + system) this process has used so far; 0 when /proc is unreadable.
pub fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at field 3; utime, stime are 14, 15.
    let rest = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let ticks: u64 = rest.split_whitespace().skip(11).take(2).filter_map(|f| f.parse::<u64>().ok()).sum();
    // USER_HZ is 100 on every Linux ABI.
    ticks as f64 / 100.0
}
