//! Ingero Fleet as a proxy-wasm HTTP filter. Only host glue lives here; every
//! rule is in `ingero-fleet-core`.

mod http;
mod metrics;
mod root;
mod shared_data;

use proxy_wasm::types::LogLevel;

proxy_wasm::main! {{
    // Envoy filters by its own level; debug lines are off the request path (ticks).
    proxy_wasm::set_log_level(LogLevel::Debug);
    // A panic poisons this worker's VM: say so loudly before it aborts.
    std::panic::set_hook(Box::new(|info| {
        let _ = proxy_wasm::hostcalls::log(LogLevel::Critical, &format!("ingero-fleet panic: {info}"));
    }));
    proxy_wasm::set_root_context(|_| Box::new(root::FleetRoot::default()));
}}
