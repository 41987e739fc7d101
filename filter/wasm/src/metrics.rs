//! Fleet's counters as proxy-wasm metrics: Envoy sums them over every worker.

use ingero_fleet_core::service::{DropReason, Outcome};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Every `reason` label of `ingero_fleet_dropped_total`, each its own Envoy counter.
const DROP_REASONS: [DropReason; 7] = [
    DropReason::InvalidPoint,
    DropReason::MaxExpectedNodes,
    DropReason::Refused(400),
    DropReason::Refused(405),
    DropReason::Refused(413),
    DropReason::Refused(415),
    DropReason::Refused(503),
];

/// Counter ids, defined once per VM.
pub struct Counters {
    total_pushes: Option<u32>,
    straggler_events: Option<u32>,
    dropped: Vec<(DropReason, Option<u32>)>,
}

impl Counters {
    /// Defines (or looks up) every counter.
    pub fn define() -> Self {
        let counter = |name: &str| hostcalls::define_metric(MetricType::Counter, name).ok();
        Self {
            total_pushes: counter("ingero_fleet_total_pushes"),
            straggler_events: counter("ingero_fleet_straggler_events_total"),
            dropped: DROP_REASONS
                .iter()
                .map(|r| (*r, counter(&format!("ingero_fleet_dropped_total.reason.{}", r.label()))))
                .collect(),
        }
    }

    /// Counts what one request did.
    pub fn record(&self, outcome: &Outcome) {
        if outcome.accepted_push {
            add(self.total_pushes, 1);
        }
        add(self.straggler_events, outcome.straggler_events);
        for (reason, count) in &outcome.drops {
            let id = self.dropped.iter().find(|(r, _)| r == reason).and_then(|(_, id)| *id);
            add(id, *count);
        }
    }
}

fn add(id: Option<u32>, count: u64) {
    if let (Some(id), true) = (id, count > 0) {
        let _ = hostcalls::increment_metric(id, i64::try_from(count).unwrap_or(i64::MAX));
    }
}
