//! Request paths: routing and the percent-decoding of query parameters.
#![no_main]

use ingero_fleet_core::ingress::{query_param, Route};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|path: &str| {
    let _ = Route::of(path);
    for name in ["cluster_id", "cgroup_path_hash"] {
        if let Ok(Some(value)) = query_param(path, name, 256) {
            assert!(!value.is_empty() && value.len() <= 256);
        }
    }
});
