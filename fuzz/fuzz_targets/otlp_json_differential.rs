//! OTLP JSON bodies through both decoders: the hand-written scanner (the request
//! path) and the serde reference must agree on every input, valid or not
//! (`ExportRequest::json_decoders_agree`: same request, or the same error variant),
//! and the scanner's reader of any JSON value agrees with `serde_json::from_slice`.
#![no_main]

use ingero_fleet_core::otlp::ExportRequest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(how) = ExportRequest::json_decoders_agree(data) {
        panic!("the JSON decoders disagree on {:?}: {how}", String::from_utf8_lossy(data));
    }
    if let Err(how) = ExportRequest::json_values_agree(data) {
        panic!("the JSON value readers disagree on {:?}: {how}", String::from_utf8_lossy(data));
    }
});
