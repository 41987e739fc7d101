//! The Fleet this process serves: the shared core over in-process memory,
//! the newest threshold book for request handling, and the periodic recompute.

use ingero_fleet_core::{Config, Fleet, MemoryCounters, MemoryStore, StoreError, ThresholdBook};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// The core service with the standalone's in-process store and counters.
pub type ServerFleet = Fleet<MemoryStore, MemoryCounters>;

/// What every request handler and the ticker share.
pub struct State {
    fleet: ServerFleet,
    book: RwLock<Arc<ThresholdBook>>,
    ready: AtomicBool,
}

impl State {
    /// A Fleet with every shared key created, not yet ready.
    pub fn new(config: Config) -> Result<Self, StoreError> {
        let fleet = Fleet::new(config, MemoryStore::default(), MemoryCounters::default());
        fleet.init()?;
        Ok(Self { fleet, book: RwLock::new(Arc::default()), ready: AtomicBool::new(false) })
    }

    /// The core service.
    pub fn fleet(&self) -> &ServerFleet {
        &self.fleet
    }

    /// The newest published book; handlers hold it for one request.
    pub fn book(&self) -> Arc<ThresholdBook> {
        // A poisoned lock still holds a whole Arc: writers only swap it.
        self.book.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the server takes traffic (listening and not shutting down).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Marks the server ready or draining.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// How often to tick: a quarter of the push interval, between 50 ms and 1 s,
    /// so a published threshold is at most one interval plus one tick old.
    pub fn tick_period(&self) -> Duration {
        (self.fleet.config().push_interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// One recompute attempt; the core decides whether this interval needs one.
    fn tick(&self, now_ms: u64) {
        match self.fleet.tick(now_ms) {
            Ok(Some(book)) => *self.book.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(book),
            Ok(None) => {}
            Err(e) => log::warn!("recompute failed: {e}"),
        }
    }
}

/// Ticks until shutdown; the recompute runs off the async workers.
pub async fn run_ticks(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(state.tick_period());
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = interval.tick() => {
                let state = state.clone();
                if let Err(e) = tokio::task::spawn_blocking(move || state.tick(now_ms())).await {
                    log::error!("recompute task failed: {e}");
                }
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Wall-clock milliseconds, the time base of node expiry.
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
