//! Process-wide Fleet state: Envoy loads the module once per process, so every
//! worker thread shares one node store, one set of counters and one published
//! threshold book per filter name (what a `vm_id` is to the wasm filter).
#![forbid(unsafe_code)]

use ingero_fleet_core::metrics::Counter;
use ingero_fleet_core::{Config, CounterSink, Fleet, MemoryCounters, MemoryStore, ThresholdBook};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

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

/// The newest threshold book this front has read, and its store version.
#[derive(Default)]
struct Published {
    book: Arc<ThresholdBook>,
    version: Option<u32>,
}

/// One filter configuration's view of Fleet, shared by every worker.
pub struct Front {
    fleet: Fleet<Arc<MemoryStore>, SharedCounters>,
    published: RwLock<Published>,
    /// The last push interval whose book this front holds; requests in it skip the refresh.
    seen_epoch: AtomicU64,
    /// What the ticker thread could not do, for the next request to log.
    ticker_warning: Mutex<Option<String>>,
}

/// Every filter name's backend and newest front, for the life of the process.
type Registry = Mutex<HashMap<String, (Backend, Arc<Front>)>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

impl Front {
    /// The front for filter `name` with the JSON configuration `json`: an equal
    /// configuration reuses the running front, a new one keeps the stored nodes
    /// and counters. Returns the warnings to log, or why the configuration is refused.
    pub fn configure(name: &str, json: &[u8]) -> Result<(Arc<Front>, Vec<String>), String> {
        let parsed = Config::from_json(json).map_err(|e| e.to_string())?;
        // A panic while holding the lock cannot leave the map half-written: inserts are single calls.
        let mut fronts = registry().lock().unwrap_or_else(PoisonError::into_inner);
        let backend = match fronts.get(name) {
            Some((_, front)) if *front.fleet.config() == parsed.config => return Ok((front.clone(), parsed.warnings)),
            Some((backend, _)) => backend.clone(),
            None => Backend { store: Arc::new(MemoryStore::new(STORE_STRIPES)), counters: SharedCounters::default() },
        };
        let fleet = Fleet::new(parsed.config, backend.store.clone(), backend.counters.clone());
        fleet.init().map_err(|e| format!("cannot create the store keys: {e}"))?;
        let front = Arc::new(Front {
            fleet,
            published: RwLock::default(),
            seen_epoch: AtomicU64::new(0),
            ticker_warning: Mutex::default(),
        });
        spawn_ticker(&front).map_err(|e| format!("cannot start the recompute thread: {e}"))?;
        fronts.insert(name.to_owned(), (backend, front.clone()));
        Ok((front, parsed.warnings))
    }

    /// The service.
    pub fn fleet(&self) -> &Fleet<Arc<MemoryStore>, SharedCounters> {
        &self.fleet
    }

    /// The current threshold book. The ticker thread recomputes it; a request
    /// does so itself only when the ticker is a whole push interval late. Returns
    /// a warning to log when a refresh failed.
    pub fn book(&self, now_ms: u64) -> (Arc<ThresholdBook>, Option<String>) {
        let epoch = now_ms / self.fleet.config().push_interval_ms();
        let warning = if self.seen_epoch.load(Ordering::Acquire).saturating_add(1) < epoch {
            self.refresh(now_ms, epoch)
        } else {
            self.ticker_warning.try_lock().ok().and_then(|mut w| w.take())
        };
        (self.published.read().unwrap_or_else(PoisonError::into_inner).book.clone(), warning)
    }

    /// One ticker step: refresh when a new push interval has begun.
    fn tick(&self, now_ms: u64) {
        let epoch = now_ms / self.fleet.config().push_interval_ms();
        if self.seen_epoch.load(Ordering::Acquire) < epoch {
            if let Some(warning) = self.refresh(now_ms, epoch) {
                *self.ticker_warning.lock().unwrap_or_else(PoisonError::into_inner) = Some(warning);
            }
        }
    }

    /// The slow path, a few requests per push interval: the first caller of the
    /// interval recomputes; the others pick the new book up once it is published.
    fn refresh(&self, now_ms: u64, epoch: u64) -> Option<String> {
        let known = self.published.read().unwrap_or_else(PoisonError::into_inner).version;
        let fresh = match self.fleet.tick(now_ms) {
            Ok(Some(book)) => {
                // The store version is read on the next refresh; the book itself is current.
                self.publish(Published { book: Arc::new(book), version: known });
                true
            }
            Ok(None) => match self.fleet.published_book(known) {
                Ok(Some((book, version))) => {
                    let current = book.epoch >= epoch;
                    self.publish(Published { book: Arc::new(book), version: Some(version) });
                    current
                }
                Ok(None) => false,
                Err(e) => return Some(format!("cannot read the threshold book: {e}")),
            },
            Err(e) => {
                // This interval's recompute failed; try again in the next one.
                self.seen_epoch.fetch_max(epoch, Ordering::AcqRel);
                return Some(format!("recompute failed: {e}"));
            }
        };
        if fresh {
            self.seen_epoch.fetch_max(epoch, Ordering::AcqRel);
        }
        None
    }

    fn publish(&self, next: Published) {
        let mut published = self.published.write().unwrap_or_else(PoisonError::into_inner);
        // Two workers may refresh at once: never replace a newer book with an older one.
        if next.book.epoch >= published.book.epoch {
            *published = next;
        }
    }
}

/// Starts the thread that recomputes `front`'s thresholds, so no request waits
/// for a recompute; it ends once the front is replaced and no stream holds it.
fn spawn_ticker(front: &Arc<Front>) -> std::io::Result<()> {
    let weak = Arc::downgrade(front);
    let period = (front.fleet.config().push_interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
    std::thread::Builder::new().name("ingero-fleet-tick".into()).spawn(move || {
        while let Some(front) = weak.upgrade() {
            front.tick(now_ms());
            drop(front);
            std::thread::sleep(period);
        }
    })?;
    Ok(())
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn requests_recompute_only_when_the_ticker_is_a_whole_interval_late() {
        const HOUR: u64 = 3_600_000;
        let (front, _) =
            Front::configure("t-book", br#"{"push_interval":"1h"}"#).unwrap_or_else(|e| unreachable!("{e}"));
        // Hours ahead of the ticker's clock, so only these calls can move the book.
        let start = (now_ms() / HOUR + 10) * HOUR;
        let (book, warning) = front.book(start);
        assert_eq!((book.epoch, warning), (start / HOUR, None));
        assert_eq!(front.book(start + HOUR - 1).0.epoch, start / HOUR, "same interval: no recompute");
        assert_eq!(front.book(start + HOUR).0.epoch, start / HOUR, "the next interval is the ticker's");
        assert_eq!(front.book(start + 2 * HOUR).0.epoch, start / HOUR + 2, "the ticker is late: recompute");
    }

    #[test]
    fn the_ticker_recomputes_without_requests() {
        let (front, _) =
            Front::configure("t-ticker", br#"{"push_interval":"100ms"}"#).unwrap_or_else(|e| unreachable!("{e}"));
        let first = now_ms() / 100;
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while front.published.read().map(|p| p.book.epoch).unwrap_or(0) < first + 2 {
            assert!(std::time::Instant::now() < deadline, "the ticker never published a book");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
