//! The Fleet this process serves: the shared core over in-process memory,
//! readiness, and the periodic recompute.

use ingero_fleet_core::{Config, Fleet, MemoryCounters, MemoryStore, StoreError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;

/// The core service with the standalone's in-process store and counters.
pub type ServerFleet = Fleet<MemoryStore, MemoryCounters>;

/// What every request handler and the ticker share.
pub struct State {
    fleet: ServerFleet,
    ready: AtomicBool,
}

impl State {
    /// A Fleet with every shared key created, not yet ready.
    pub fn new(config: Config) -> Result<Self, StoreError> {
        let fleet = Fleet::new(config, MemoryStore::default(), MemoryCounters::default());
        fleet.init()?;
        Ok(Self { fleet, ready: AtomicBool::new(false) })
    }

    /// The core service.
    pub fn fleet(&self) -> &ServerFleet {
        &self.fleet
    }

    /// Whether the server takes traffic (listening and not shutting down).
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Marks the server ready or draining.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// One recompute attempt; the core decides whether this interval needs one.
    fn tick(&self, now_ms: u64) {
        if let Err(e) = self.fleet.tick(now_ms) {
            log::warn!("recompute failed: {e}");
        }
    }
}

/// Ticks until shutdown; the recompute runs off the async workers.
pub async fn run_ticks(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(state.fleet().config().tick_period());
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
