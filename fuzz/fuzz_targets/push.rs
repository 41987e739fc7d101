//! A whole push through the service, head to stored records: the first byte
//! picks content type and encoding, the rest is the body.
#![no_main]

use ingero_fleet_core::{Config, Fleet, MemoryCounters, MemoryStore, RequestHead};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, body)) = data.split_first() else { return };
    let config = Config { max_expected_nodes: 64, max_nodes_per_cluster: 16, max_clusters: 4, ..Config::default() };
    let fleet = Fleet::new(config, MemoryStore::new(4), MemoryCounters::default());
    let _ = fleet.init();
    let head = RequestHead {
        method: "POST",
        path: if selector & 4 == 0 { "/v1/metrics?cluster_id=fuzz" } else { "/v1/metrics" },
        content_type: Some(if selector & 1 == 0 { "application/json" } else { "application/x-protobuf" }),
        content_encoding: (selector & 2 != 0).then_some("gzip"),
        content_length: Some(body.len()),
        ..RequestHead::default()
    };
    if let Some(answer) = fleet.handle(&head, body, 1_000) {
        assert!(matches!(answer.reply.status, 200 | 400 | 413 | 429));
        let _ = fleet.tick(20_000);
    }
});
