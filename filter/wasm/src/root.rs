//! The root context: configuration, the periodic recompute, the worker's book.

use crate::http::FleetHttp;
use crate::metrics::HostCounters;
use crate::shared_data::HostSharedData;
use ingero_fleet_core::{Config, Fleet, ThresholdBook};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// What one worker's contexts share: the service, its counters and the
/// last threshold book this worker has seen.
pub struct Worker {
    pub fleet: Fleet<HostSharedData, HostCounters>,
    book: RefCell<(ThresholdBook, Option<u32>)>,
}

impl Worker {
    /// The newest book this worker has read.
    pub fn book(&self) -> std::cell::Ref<'_, ThresholdBook> {
        std::cell::Ref::map(self.book.borrow(), |(book, _)| book)
    }

    fn on_tick(&self) {
        let now = now_ms();
        match self.fleet.tick(now) {
            Ok(Some(book)) => *self.book.borrow_mut() = (book, None),
            Ok(None) => {
                let known = self.book.borrow().1;
                match self.fleet.published_book(known) {
                    Ok(Some((book, version))) => *self.book.borrow_mut() = (book, Some(version)),
                    Ok(None) => {}
                    Err(e) => log::warn!("ingero-fleet: cannot read the threshold book: {e}"),
                }
            }
            Err(e) => log::warn!("ingero-fleet: recompute failed: {e}"),
        }
    }
}

/// The plugin's root context, one per worker VM.
#[derive(Default)]
pub struct FleetRoot {
    worker: Option<Rc<Worker>>,
}

impl Context for FleetRoot {}

impl RootContext for FleetRoot {
    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default();
        let parsed = match Config::from_json(&bytes) {
            Ok(parsed) => parsed,
            Err(e) => {
                // Refuse the update; Envoy keeps the previous configuration, if any.
                log::error!("ingero-fleet: {e}");
                return false;
            }
        };
        for warning in &parsed.warnings {
            log::warn!("ingero-fleet: {warning}");
        }
        let tick = (parsed.config.push_interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(1));
        let fleet = Fleet::new(parsed.config, HostSharedData, HostCounters::define());
        if let Err(e) = fleet.init() {
            log::error!("ingero-fleet: cannot create shared data keys: {e}");
            return false;
        }
        self.worker = Some(Rc::new(Worker { fleet, book: RefCell::new((ThresholdBook::default(), None)) }));
        self.set_tick_period(tick);
        true
    }

    fn on_tick(&mut self) {
        if let Some(worker) = &self.worker {
            worker.on_tick();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(FleetHttp::new(worker)))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// Wall-clock milliseconds from the host.
pub fn now_ms() -> u64 {
    let now = proxy_wasm::hostcalls::get_current_time().unwrap_or(UNIX_EPOCH);
    now.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
