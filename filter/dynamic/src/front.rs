//! Process-wide Fleet state: Envoy loads the module once per process, so every
//! worker thread shares one node store, one set of counters and one published
//! threshold book per filter name (what a `vm_id` is to the wasm filter).
#![forbid(unsafe_code)]

use ingero_fleet_core::metrics::Counter;
use ingero_fleet_core::{Config, CounterSink, Fleet, MemoryCounters, MemoryStore};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

/// Lock stripes of the node store: enough that four to sixteen workers rarely meet on one.
const STORE_STRIPES: usize = 256;

/// The counters of one filter name, kept across configuration updates.
#[derive(Clone, Default)]
pub struct SharedCounters(Arc<MemoryCounters>);

impl CounterSink for SharedCounters {
    fn add(&self, counter: Counter, n: u64) {
        self.0.add(counter, n);
    }

    fn value(&self, counter: Counter) -> u64 {
        self.0.value(counter)
    }
}

/// What outlives a configuration update: the nodes and the counters.
#[derive(Clone)]
struct Backend {
    store: Arc<MemoryStore>,
    counters: SharedCounters,
}

/// One filter configuration's view of Fleet, shared by every worker.
pub struct Front {
    fleet: Fleet<Arc<MemoryStore>, SharedCounters>,
    /// The ticker's last failure, logged by the next request hook: Envoy's log
    /// callback belongs to its own threads.
    ticker_warning: Mutex<Option<String>>,
}

/// Every live front by filter name, with the backend it uses.
type Registry = Mutex<HashMap<String, (Backend, Arc<Front>)>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

impl Front {
    /// The front of filter `name` for a JSON configuration: the existing one if
    /// the configuration is unchanged, else a new one over the same backend.
    pub fn configure(name: &str, json: &[u8]) -> Result<(Arc<Front>, Vec<String>), String> {
        let parsed = Config::from_json(json).map_err(|e| e.to_string())?;
        let mut fronts = registry().lock().unwrap_or_else(PoisonError::into_inner);
        let backend = match fronts.get(name) {
            Some((_, front)) if *front.fleet.config() == parsed.config => return Ok((front.clone(), parsed.warnings)),
            Some((backend, _)) => backend.clone(),
            None => Backend { store: Arc::new(MemoryStore::new(STORE_STRIPES)), counters: SharedCounters::default() },
        };
        let fleet = Fleet::new(parsed.config, backend.store.clone(), backend.counters.clone());
        fleet.init().map_err(|e| format!("cannot create the store keys: {e}"))?;
        let front = Arc::new(Front { fleet, ticker_warning: Mutex::default() });
        spawn_ticker(&front).map_err(|e| format!("cannot start the recompute thread: {e}"))?;
        fronts.insert(name.to_owned(), (backend, front.clone()));
        Ok((front, parsed.warnings))
    }

    /// The core service.
    pub fn fleet(&self) -> &Fleet<Arc<MemoryStore>, SharedCounters> {
        &self.fleet
    }

    /// The ticker's failure not yet logged, if any.
    pub fn take_warning(&self) -> Option<String> {
        self.ticker_warning.try_lock().ok().and_then(|mut w| w.take())
    }
}

/// Ticks on a thread of its own while the front lives, so no request waits for a recompute.
fn spawn_ticker(front: &Arc<Front>) -> std::io::Result<()> {
    let weak = Arc::downgrade(front);
    let period = front.fleet.config().tick_period();
    std::thread::Builder::new().name("ingero-fleet-tick".into()).spawn(move || {
        while let Some(front) = weak.upgrade() {
            if let Err(e) = front.fleet.tick(now_ms()) {
                *front.ticker_warning.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(format!("recompute failed: {e}"));
            }
            drop(front);
            std::thread::sleep(period);
        }
    })?;
    Ok(())
}

/// Wall-clock milliseconds, the time base of node expiry.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn equal_configurations_share_one_front_and_updates_keep_the_counters() {
        let (a, _) = Front::configure("t-share", br#"{"push_interval":"1s"}"#).unwrap_or_else(|e| unreachable!("{e}"));
        let (b, _) = Front::configure("t-share", br#"{"push_interval":"1s"}"#).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(Arc::ptr_eq(&a, &b));
        a.fleet().counters().add(Counter::TotalPushes, 3);
        let (c, _) = Front::configure("t-share", br#"{"push_interval":"2s"}"#).unwrap_or_else(|e| unreachable!("{e}"));
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.fleet().counters().value(Counter::TotalPushes), 3);
        let (other, _) = Front::configure("t-other", b"{}").unwrap_or_else(|e| unreachable!("{e}"));
        assert_eq!(other.fleet().counters().value(Counter::TotalPushes), 0);
    }

    #[test]
    fn an_invalid_configuration_names_the_key() {
        let error = Front::configure("t-bad", br#"{"threshold":{"k":9}}"#).err().unwrap_or_default();
        assert!(error.contains("threshold.k"), "{error}");
    }

    #[test]
    fn the_ticker_recomputes_without_requests() {
        let (front, _) =
            Front::configure("t-ticker", br#"{"push_interval":"100ms"}"#).unwrap_or_else(|e| unreachable!("{e}"));
        let first = now_ms() / 100;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while front.fleet().book().epoch < first + 2 {
            assert!(std::time::Instant::now() < deadline, "the ticker never published a book");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
