//! OTLP protobuf bodies: decode, then validate every point as a push would.
#![no_main]

use ingero_fleet_core::otlp::{BodyFormat, ExportRequest};
use ingero_fleet_core::push::extract;
use ingero_fleet_core::Config;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = ExportRequest::decode(BodyFormat::Protobuf, data) {
        let _ = extract(request, None, &Config::default());
    }
});
