//! Property tests of a whole push through the service: a valid score is stored
//! exactly, every refused point is counted, and nothing pushed for one cluster
//! changes another cluster's records.

#[cfg(test)] // clippy allows unwrap and panic in tests (clippy.toml), also in their helpers
mod flow {
    use ingero_fleet_core::metrics::Counter;
    use ingero_fleet_core::node::NodeRecord;
    use ingero_fleet_core::DropReason;
    use ingero_fleet_core::{Answer, Config, CounterSink, Fleet, MemoryCounters, MemoryStore, RequestHead};
    use proptest::prelude::*;
    use serde_json::{json, Value};

    type TestFleet = Fleet<MemoryStore, MemoryCounters>;

    fn fleet() -> TestFleet {
        // A small registry (16 shards): init per case stays cheap.
        let config = Config { max_expected_nodes: 100, max_nodes_per_cluster: 100, ..Config::default() };
        let fleet = Fleet::new(config, MemoryStore::default(), MemoryCounters::default());
        fleet.init().unwrap();
        fleet
    }

    fn send(fleet: &TestFleet, cluster: &str, body: &[u8]) -> Option<Answer> {
        let path = format!("/v1/metrics?cluster_id={cluster}");
        let head = RequestHead {
            method: "POST",
            path: &path,
            content_type: Some("application/json"),
            content_length: Some(body.len()),
            ..RequestHead::default()
        };
        fleet.handle(&head, body, 1_000)
    }

    /// A score value as an agent or an attacker might spell it, and whether it is valid.
    #[derive(Debug, Clone)]
    enum Spelled {
        Valid(f64),
        Invalid(Value),
    }

    fn spelled() -> impl Strategy<Value = Spelled> {
        prop_oneof![
            (0.0f64..=1.0).prop_map(Spelled::Valid),
            prop_oneof![Just(0.0), Just(1.0)].prop_map(Spelled::Valid),
            prop_oneof![
                Just(json!("NaN")),
                Just(json!("Infinity")),
                Just(json!("-Infinity")),
                Just(json!("abc")),
                Just(json!(true)),
                Just(json!(null)),
                Just(json!({"v": 1})),
                Just(json!([0.5])),
                (1.0f64..1e300).prop_map(|v| json!(v + 1e-9)),
                (-1e300f64..-1e-9).prop_map(|v| json!(v)),
            ]
            .prop_map(Spelled::Invalid),
        ]
    }

    /// One resource per node, each with one health-score point.
    fn push_body(cluster: &str, points: &[(String, Spelled)]) -> Vec<u8> {
        let resources: Vec<Value> = points
            .iter()
            .map(|(node, value)| {
                let value = match value {
                    Spelled::Valid(v) => json!(v),
                    Spelled::Invalid(v) => v.clone(),
                };
                json!({
                    "resource": {"attributes": [
                        {"key": "ingero.node.id", "value": {"stringValue": node}},
                        {"key": "ingero.cluster.id", "value": {"stringValue": cluster}}]},
                    "scopeMetrics": [{"metrics": [{"name": "ingero.node.health_score",
                        "gauge": {"dataPoints": [{"asDouble": value, "timeUnixNano": "1"}]}}]}]
                })
            })
            .collect();
        json!({ "resourceMetrics": resources }).to_string().into_bytes()
    }

    fn rejected(answer: &Answer) -> u64 {
        let body: Value = serde_json::from_slice(&answer.reply.body).unwrap();
        body["partialSuccess"]["rejectedDataPoints"].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
    }

    fn records_of(fleet: &TestFleet, cluster: &str) -> Vec<NodeRecord> {
        let mut records: Vec<NodeRecord> =
            fleet.registry().records().unwrap().into_iter().filter(|r| r.cluster == cluster).collect();
        records.sort_by(|a, b| a.node.cmp(&b.node));
        records
    }

    proptest! {
        #[test]
        fn a_valid_score_is_stored_exactly(node in "[^\u{0}]{1,64}", score in 0.0f64..=1.0) {
            let fleet = fleet();
            let answer = send(&fleet, "c", &push_body("c", &[(node.clone(), Spelled::Valid(score))]));
            prop_assert_eq!(answer.map(|a| (a.reply.status, a.reply.body)), Some((200, b"{}".to_vec())));
            let records = records_of(&fleet, "c");
            prop_assert_eq!(records.len(), 1);
            prop_assert_eq!(&records[0].node, &node);
            prop_assert_eq!(records[0].score.to_bits(), score.to_bits());
        }

        #[test]
        fn every_refused_point_is_counted_and_none_is_stored(
            values in prop::collection::vec(spelled(), 1..40),
        ) {
            let fleet = fleet();
            let points: Vec<(String, Spelled)> =
                values.into_iter().enumerate().map(|(i, v)| (format!("n{i}"), v)).collect();
            let invalid = points.iter().filter(|(_, v)| matches!(v, Spelled::Invalid(_))).count() as u64;
            let answer = send(&fleet, "c", &push_body("c", &points));
            prop_assert!(answer.as_ref().is_some_and(|a| a.reply.status == 200));
            prop_assert_eq!(answer.as_ref().map(rejected), Some(invalid));
            prop_assert_eq!(fleet.counters().value(Counter::Dropped(DropReason::InvalidPoint)), invalid);
            let stored: Vec<(String, u64)> =
                records_of(&fleet, "c").into_iter().map(|r| (r.node, r.score.to_bits())).collect();
            let mut valid: Vec<(String, u64)> = points
                .iter()
                .filter_map(|(n, v)| match v {
                    Spelled::Valid(s) => Some((n.clone(), s.to_bits())),
                    Spelled::Invalid(_) => None,
                })
                .collect();
            valid.sort();
            prop_assert_eq!(stored, valid);
        }

        #[test]
        fn nothing_pushed_for_one_cluster_changes_another(
            junk in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..10),
            values in prop::collection::vec(spelled(), 1..10),
        ) {
            let fleet = fleet();
            let control: Vec<(String, Spelled)> = (0..5).map(|i| (format!("c{i}"), Spelled::Valid(0.9))).collect();
            let _ = send(&fleet, "control", &push_body("control", &control));
            let before = records_of(&fleet, "control");
            for body in &junk {
                let _ = send(&fleet, "other", body);
            }
            // The attribute names the control cluster, the query another: the query wins.
            let points: Vec<(String, Spelled)> =
                values.into_iter().enumerate().map(|(i, v)| (format!("c{i}"), v)).collect();
            let _ = send(&fleet, "other", &push_body("control", &points));
            prop_assert_eq!(records_of(&fleet, "control"), before);
        }
    }
}
