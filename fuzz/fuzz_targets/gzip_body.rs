//! gzip bodies: inflate within a small limit (bombs must stop at it), then decode.
#![no_main]

use ingero_fleet_core::ingress::unpack_body;
use ingero_fleet_core::otlp::{BodyFormat, ExportRequest};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(body) = unpack_body(data, true, 64 * 1024) {
        assert!(body.len() <= 64 * 1024);
        let _ = ExportRequest::decode(BodyFormat::Json, &body);
    }
});
