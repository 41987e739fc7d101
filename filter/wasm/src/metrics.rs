//! Fleet's counters as proxy-wasm metrics: Envoy sums them over every worker,
//! and any worker can read the total back for `/metrics`.

use ingero_fleet_core::metrics::{Counter, CounterSink, COUNTERS};
use proxy_wasm::hostcalls;
use proxy_wasm::types::MetricType;

/// Envoy counter ids, defined once per VM (Envoy names them `wasmcustom.<name>`).
pub struct HostCounters {
    ids: Vec<(Counter, Option<u32>)>,
}

impl HostCounters {
    /// Defines (or looks up) every counter.
    pub fn define() -> Self {
        let ids =
            COUNTERS.iter().map(|c| (*c, hostcalls::define_metric(MetricType::Counter, &c.flat_name()).ok())).collect();
        Self { ids }
    }

    fn id(&self, counter: Counter) -> Option<u32> {
        self.ids.iter().find(|(c, _)| *c == counter).and_then(|(_, id)| *id)
    }
}

impl CounterSink for HostCounters {
    fn add(&self, counter: Counter, n: u64) {
        if let Some(id) = self.id(counter) {
            let _ = hostcalls::increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    fn value(&self, counter: Counter) -> u64 {
        self.id(counter).and_then(|id| hostcalls::get_metric(id).ok()).unwrap_or(0)
    }
}
