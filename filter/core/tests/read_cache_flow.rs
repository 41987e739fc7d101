//! `/metrics`' cohorts and the cluster listing are rendered once per published
//! book and then served from memory: however many clients poll, the shared
//! store is read (and the text built) once per book, not once per request
//! (issue 16 finding 6). A node listing shows the latest push.

#[cfg(test)] // clippy allows unwrap and panic in tests (clippy.toml), also in their helpers
mod reads {
    use ingero_fleet_core::store::SEED_BYTES;
    use ingero_fleet_core::{Config, Fleet, MemoryCounters, MemoryStore, RequestHead, SharedStore, StoreError};
    use serde_json::json;
    use std::cell::Cell;
    use std::rc::Rc;

    /// A store that counts the reads of registry and event shards.
    #[derive(Default)]
    struct Counting {
        inner: MemoryStore,
        shard_reads: Rc<Cell<u64>>,
    }

    impl SharedStore for Counting {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            if key.contains("/shard/") || key.contains("/events/") {
                self.shard_reads.set(self.shard_reads.get() + 1);
            }
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<(), StoreError> {
            self.inner.set(key, value, version)
        }
        fn entropy(&self) -> Result<[u8; SEED_BYTES], StoreError> {
            self.inner.entropy()
        }
    }

    fn get(fleet: &Fleet<Counting, MemoryCounters>, path: &str, now_ms: u64) -> Vec<u8> {
        let head = RequestHead { method: "GET", path, ..RequestHead::default() };
        let answer = fleet.handle(&head, &[], now_ms).unwrap();
        assert_eq!(answer.reply.status, 200, "{}", String::from_utf8_lossy(&answer.reply.body));
        answer.reply.body
    }

    fn push(fleet: &Fleet<Counting, MemoryCounters>, nodes: std::ops::Range<u32>, now_ms: u64) {
        let resources: Vec<_> = nodes
            .map(|i| {
                json!({"resource": {"attributes": [
                    {"key": "ingero.cluster.id", "value": {"stringValue": "c1"}},
                    {"key": "ingero.node.id", "value": {"stringValue": format!("n{i:03}")}}]},
                 "scopeMetrics": [{"metrics": [{"name": "ingero.node.health_score", "gauge": {"dataPoints": [
                    {"timeUnixNano": "1", "asDouble": 0.9}]}}]}]})
            })
            .collect();
        let body = json!({ "resourceMetrics": resources }).to_string();
        let head = RequestHead {
            method: "POST",
            path: "/v1/metrics",
            content_type: Some("application/json"),
            content_length: Some(body.len()),
            ..RequestHead::default()
        };
        assert_eq!(fleet.handle(&head, body.as_bytes(), now_ms).unwrap().reply.status, 200);
    }

    #[test]
    fn metrics_and_listings_are_rendered_once_per_book() {
        let config = Config { max_expected_nodes: 100, ..Config::default() };
        let interval = config.push_interval_ms();
        let store = Counting::default();
        let reads = store.shard_reads.clone();
        let store_reads = || reads.get();
        let fleet = Fleet::new(config, store, MemoryCounters::default());
        fleet.init().unwrap();
        push(&fleet, 0..30, 0);
        fleet.tick(interval).unwrap().unwrap();
        let now = interval + 1;
        let shards = u64::from(fleet.registry().shard_count());

        let before = store_reads();
        let first = get(&fleet, "/api/v1/clusters", now);
        let metrics = get(&fleet, "/metrics", now);
        assert_eq!(store_reads() - before, 1, "one event shard read for the one cluster listed");
        for _ in 0..50 {
            assert_eq!(get(&fleet, "/api/v1/clusters", now), first);
            assert_eq!(get(&fleet, "/metrics", now), metrics);
        }
        assert_eq!(store_reads() - before, 1, "every later poll of this book came from memory");
        let nodes_scan = store_reads();
        get(&fleet, "/api/v1/nodes?cluster_id=c1&limit=5", now);
        assert_eq!(store_reads() - nodes_scan, shards, "a node listing reads every shard: it shows the latest push");

        // The counters stay live between books; the cohorts and listings move with the next book.
        push(&fleet, 30..40, interval + 1);
        let again = String::from_utf8(get(&fleet, "/metrics", now)).unwrap();
        assert!(again.contains("ingero_fleet_total_pushes 2") && again.contains("ingero_fleet_tracked_nodes 40"));
        assert!(String::from_utf8(metrics)
            .unwrap()
            .contains("ingero_fleet_active_nodes{cluster_id=\"c1\",cgroup_path_hash=\"\"} 30"));
        fleet.tick(2 * interval).unwrap().unwrap();
        let next = 2 * interval + 1;
        let listed: serde_json::Value =
            serde_json::from_slice(&get(&fleet, "/api/v1/nodes?cluster_id=c1&limit=5", next)).unwrap();
        assert_eq!(listed["total"], 40);
        assert!(String::from_utf8(get(&fleet, "/metrics", next)).unwrap().contains("cgroup_path_hash=\"\"} 40"));
    }
}
