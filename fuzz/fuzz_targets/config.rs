//! Plugin configurations: parse and validate.
#![no_main]

use ingero_fleet_core::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(parsed) = Config::from_json(data) {
        let _ = parsed.config.node_caps();
        let _ = parsed.config.node_ttl_ms();
    }
});
