//! The root context: configuration and the periodic tick of one worker's VM.

use crate::http::{Envoy, FleetHttp};
use crate::metrics::HostCounters;
use crate::shared_data::HostSharedData;
use ingero_fleet_core::exchange::{answer_body_never_came, HeldPushes};
use ingero_fleet_core::{Config, Fleet, FleetError};
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::ContextType;
use std::cell::RefCell;
use std::rc::Rc;
use std::time::UNIX_EPOCH;

/// What one worker's contexts share: the service over Envoy's shared data,
/// and the pushes held at their headers that still wait for a body.
pub struct Worker {
    pub fleet: Fleet<HostSharedData, HostCounters>,
    pub held: RefCell<HeldPushes>,
}

/// The plugin's root context, one per worker VM.
#[derive(Default)]
pub struct FleetRoot {
    worker: Option<Rc<Worker>>,
}

impl Context for FleetRoot {}

impl RootContext for FleetRoot {
    fn on_vm_start(&mut self, _size: usize) -> bool {
        log::info!("ingero-fleet {} (proxy-wasm filter) starting", env!("CARGO_PKG_VERSION"));
        true
    }

    fn on_configure(&mut self, _size: usize) -> bool {
        let bytes = self.get_plugin_configuration().unwrap_or_default(); // none: the defaults
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
        let tick = parsed.config.tick_period();
        let fleet = Fleet::new(parsed.config, HostSharedData, HostCounters::define());
        if let Err(e) = fleet.init() {
            log::error!("ingero-fleet: cannot create shared data keys: {e}");
            return false;
        }
        self.worker = Some(Rc::new(Worker { fleet, held: RefCell::default() }));
        self.set_tick_period(tick);
        true
    }

    fn on_tick(&mut self) {
        if let Some(worker) = &self.worker {
            match worker.fleet.tick(now_ms()) {
                Ok(Some(book)) => log::debug!("ingero-fleet: recomputed interval {}", book.epoch),
                Ok(None) => {}
                Err(e) => log::warn!("ingero-fleet: recompute failed: {e}"),
            }
            // An Envoy that ignores the header pause never passes the body on.
            for id in worker.held.borrow_mut().overdue(now_ms()) {
                if proxy_wasm::hostcalls::set_effective_context(id).is_ok() {
                    log::error!("ingero-fleet: {}", FleetError::HeaderPauseIgnored);
                    answer_body_never_came(&worker.fleet, &mut Envoy { body_len: 0 });
                }
            }
        }
    }

    fn create_http_context(&self, context_id: u32) -> Option<Box<dyn HttpContext>> {
        let worker = self.worker.clone()?;
        Some(Box::new(FleetHttp::new(worker, context_id)))
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
