//! The whole request flow of the core against an in-memory store.

use super::*;
use crate::config::Recompute;
use crate::metrics::{Counter, MemoryCounters};
use crate::otlp::tests::agent_json;
use crate::reply::{COLD_START_BODY, QUORUM_HEADER, THRESHOLD_HEADER};
use crate::store::MemoryStore;

type TestFleet = Fleet<MemoryStore, MemoryCounters>;

const PUSH_INTERVAL_MS: u64 = 10_000;

fn fleet() -> TestFleet {
    let fleet = Fleet::new(Config::default(), MemoryStore::default(), MemoryCounters::default());
    assert_eq!(fleet.init(), Ok(()));
    fleet
}

fn head<'a>(method: &'a str, path: &'a str, content_type: Option<&'a str>) -> RequestHead<'a> {
    RequestHead { method, path, content_type, ..RequestHead::default() }
}

/// Sends a whole request, as a front door holding the body would.
fn send(fleet: &TestFleet, head: RequestHead, body: &[u8], now_ms: u64, _book: &ThresholdBook) -> Answer {
    fleet.handle(&head, body, now_ms).unwrap_or_else(|| unreachable!("not a Fleet route: {}", head.path))
}

fn push(fleet: &TestFleet, cluster: &str, node: &str, score: f64, now_ms: u64) -> Answer {
    let path = format!("/v1/metrics?cluster_id={cluster}");
    let body = agent_json(node, &score.to_string());
    send(fleet, head("POST", &path, Some("application/json")), body.as_bytes(), now_ms, &ThresholdBook::default())
}

fn query(fleet: &TestFleet, cluster: &str, book: &ThresholdBook) -> String {
    assert_eq!(*fleet.book(), *book, "the service answers from the newest book");
    let path = format!("/api/v1/threshold?cluster_id={cluster}");
    let answer = send(fleet, head("GET", &path, None), &[], 0, book);
    String::from_utf8_lossy(&answer.reply.body).into_owned()
}

#[test]
fn cold_start_then_quorum() {
    let fleet = fleet();
    let book = ThresholdBook::default();
    assert_eq!(query(&fleet, "c1", &book), COLD_START_BODY);
    for (i, score) in [0.9, 0.5, 0.95, 0.8].iter().enumerate() {
        assert_eq!(push(&fleet, "c1", &format!("n{i}"), *score, 1_000).reply.status, 200);
    }
    let book = fleet.tick(PUSH_INTERVAL_MS).ok().flatten().unwrap_or_default();
    assert_eq!(query(&fleet, "c1", &book), COLD_START_BODY, "4 of 5 nodes: no quorum");
    let _ = push(&fleet, "c1", "n4", 0.92, 2_000);
    assert_eq!(fleet.tick(PUSH_INTERVAL_MS + 1), Ok(None), "one recompute per interval");
    let book = fleet.tick(2 * PUSH_INTERVAL_MS).ok().flatten().unwrap_or_default();
    let expected = 0.9 - 2.0 * 1.4826 * 0.05;
    assert!(book.threshold("c1", "").is_some_and(|t| (t - expected).abs() < 1e-12));
    let answer: serde_json::Value = serde_json::from_str(&query(&fleet, "c1", &book)).unwrap_or_default();
    assert!(answer["threshold"].as_f64().is_some_and(|t| (t - expected).abs() < 1e-12), "{answer}");
    assert_eq!(answer["quorum_met"], true);
    assert_eq!(query(&fleet, "other", &book), COLD_START_BODY);
    assert_eq!(fleet.published_book(None).ok().flatten().map(|(b, _)| b), Some((*book).clone()));
}

#[test]
fn push_answers_carry_the_threshold_once_there_is_one() {
    let fleet = fleet();
    for i in 0..5 {
        let answer = push(&fleet, "c1", &format!("n{i}"), 0.9, 0);
        assert_eq!(answer.reply.header(THRESHOLD_HEADER), None, "never 0 before quorum");
        assert!(answer.outcome.accepted_push);
    }
    let book = fleet.tick(PUSH_INTERVAL_MS).ok().flatten().unwrap_or_default();
    let body = agent_json("n0", "0.9");
    let answer =
        send(&fleet, head("POST", "/v1/metrics?cluster_id=c1", Some("application/json")), body.as_bytes(), 1, &book);
    assert_eq!(answer.reply.header(THRESHOLD_HEADER), Some("0.9"));
    assert_eq!(answer.reply.header(QUORUM_HEADER), Some("true"));
    let bad = send(&fleet, head("POST", "/v1/metrics?cluster_id=c1", Some("text/plain")), b"x", 1, &book);
    assert_eq!((bad.reply.status, bad.reply.header(THRESHOLD_HEADER)), (415, Some("0.9")), "errors piggyback too");
}

#[test]
fn nodes_expire_after_the_ttl() {
    let fleet = fleet();
    for i in 0..5 {
        let _ = push(&fleet, "c1", &format!("n{i}"), 0.9, 0);
    }
    let ttl = fleet.config().node_ttl_ms();
    let at_edge = (ttl / PUSH_INTERVAL_MS) * PUSH_INTERVAL_MS;
    let book = fleet.tick(at_edge).ok().flatten().unwrap_or_default();
    assert_eq!(book.cohort("c1", "").map(|s| s.active_nodes), Some(5));
    let book = fleet.tick(at_edge + PUSH_INTERVAL_MS).ok().flatten().unwrap_or_default();
    assert_eq!(book.cohort("c1", ""), None);
    assert_eq!(fleet.registry().tracked_nodes(), Ok(0));
}

#[test]
fn bad_requests_get_clear_errors_and_change_nothing() {
    let fleet = fleet();
    for i in 0..5 {
        let _ = push(&fleet, "c1", &format!("n{i}"), 0.9, 0);
    }
    let before = fleet.registry().records();
    let json = Some("application/json");
    let big = vec![b' '; fleet.config().max_body_bytes + 1];
    let cases: Vec<(RequestHead, &[u8], u16, &str)> = vec![
        (
            head("POST", "/v1/metrics", json),
            agent_json("n0", "0.1").replace("ingero.cluster.id", "x").into_bytes().leak(),
            400,
            "cluster_id is missing",
        ),
        (head("POST", "/v1/metrics", json), b"{\"resourceMetrics\":[]}", 400, "cluster_id is missing"),
        (head("POST", "/v1/metrics?cluster_id=c1", json), b"{\"resourceMetrics\":[{", 400, "invalid OTLP JSON"),
        (head("POST", "/v1/metrics?cluster_id=c1", json), b"", 400, "body is empty"),
        (head("POST", "/v1/metrics?cluster_id=%zz", json), b"{}", 400, "percent-encoded"),
        (head("POST", "/v1/metrics?cluster_id=c1", json), &big, 413, "max_body_bytes"),
        (head("POST", "/v1/metrics?cluster_id=c1", Some("text/csv")), b"a,b", 415, "Content-Type"),
        (head("POST", "/v1/metrics?cluster_id=c1", None), b"{}", 415, "Content-Type"),
        (head("GET", "/v1/metrics?cluster_id=c1", None), b"", 405, "use POST"),
        (head("POST", "/api/v1/threshold?cluster_id=c1", json), b"", 405, "use GET"),
        (head("GET", "/api/v1/threshold", None), b"", 400, "cluster_id is missing"),
        (
            RequestHead { content_encoding: Some("br"), ..head("POST", "/v1/metrics?cluster_id=c1", json) },
            b"{}",
            415,
            "Content-Encoding",
        ),
        (
            RequestHead { content_encoding: Some("gzip"), ..head("POST", "/v1/metrics?cluster_id=c1", json) },
            b"not gzip",
            400,
            "gzip",
        ),
    ];
    for (head, body, status, message) in cases {
        let answer = send(&fleet, head, body, 5, &ThresholdBook::default());
        let text = String::from_utf8_lossy(&answer.reply.body).into_owned();
        assert_eq!(answer.reply.status, status, "{} {}: {text}", head.method, head.path);
        assert!(text.contains(message), "{text} should name {message}");
        assert!(!answer.outcome.accepted_push);
    }
    assert_eq!(fleet.registry().records(), before);
}

#[test]
fn other_paths_pass_through() {
    let fleet = fleet();
    assert_eq!(fleet.decide(&head("GET", "/healthz", None), 0), HeadStep::Pass);
}

#[test]
fn empty_push_is_accepted_and_counted() {
    let fleet = fleet();
    let answer = send(
        &fleet,
        head("POST", "/v1/metrics?cluster_id=test-hash", Some("application/json")),
        b"{\"resourceMetrics\":[]}",
        0,
        &ThresholdBook::default(),
    );
    assert_eq!((answer.reply.status, answer.reply.body.as_slice()), (200, &b"{}"[..]));
    assert!(answer.outcome.accepted_push);
}

#[test]
fn partial_rejections_keep_the_good_points() {
    let fleet = fleet();
    let answer = push(&fleet, "c1", "n1", 1.5, 0);
    assert_eq!(answer.reply.status, 200);
    assert!(String::from_utf8_lossy(&answer.reply.body).contains("\"rejectedDataPoints\":\"1\""));
    assert_eq!(answer.outcome.drops, vec![(DropReason::InvalidPoint, 1)]);
    assert_eq!(fleet.registry().records().map(|r| r.len()), Ok(0));
}

#[test]
fn the_node_cap_is_counted_not_crashed() {
    let config = Config { max_expected_nodes: 3, ..Config::default() };
    let fleet = Fleet::new(config, MemoryStore::default(), MemoryCounters::default());
    let _ = fleet.init();
    for i in 0..5 {
        let answer = push(&fleet, "c1", &format!("n{i}"), 0.9, 0);
        assert_eq!(answer.reply.status, 200);
        if i >= 3 {
            assert_eq!(answer.outcome.drops, vec![(DropReason::MaxExpectedNodes, 1)]);
            assert!(String::from_utf8_lossy(&answer.reply.body).contains("max_expected_nodes"));
        }
    }
    assert_eq!(fleet.registry().tracked_nodes(), Ok(3));
    assert_eq!(fleet.counters().value(Counter::Dropped(DropReason::MaxExpectedNodes)), 2);
    assert_eq!(fleet.counters().value(Counter::TotalPushes), 5);
}

#[test]
fn metrics_are_scraped_from_the_same_service() {
    let fleet = fleet();
    for i in 0..5 {
        let _ = push(&fleet, "c1", &format!("n{i}"), 0.9, 0);
    }
    let _ = push(&fleet, "c1", "n9", 7.0, 0);
    let book = fleet.tick(PUSH_INTERVAL_MS).ok().flatten().unwrap_or_default();
    let answer = send(&fleet, head("GET", "/metrics", None), &[], 0, &book);
    let text = String::from_utf8_lossy(&answer.reply.body).into_owned();
    assert_eq!(answer.reply.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    for line in [
        "ingero_fleet_total_pushes 6",
        "ingero_fleet_dropped_total{reason=\"invalid_point\"} 1",
        "ingero_fleet_tracked_nodes 5",
        "ingero_fleet_active_nodes{cluster_id=\"c1\",cgroup_path_hash=\"\"} 5",
        "ingero_fleet_threshold{cluster_id=\"c1\",cgroup_path_hash=\"\"} 0.9",
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in {text}");
    }
}

fn get_json(fleet: &TestFleet, path: &str, book: &ThresholdBook) -> (u16, serde_json::Value) {
    let answer = send(fleet, head("GET", path, None), &[], 0, book);
    (answer.reply.status, serde_json::from_slice(&answer.reply.body).unwrap_or_default())
}

#[test]
fn listings_follow_pushes_state_changes_and_expiry() {
    let fleet = fleet();
    for (i, score) in [0.9, 0.91, 0.92, 0.93, 0.94, 0.3].iter().enumerate() {
        let _ = push(&fleet, "c1", &format!("n{i}"), *score, 0);
    }
    let _ = push(&fleet, "c2", "other", 0.5, 0);
    let event = agent_json("n5", "0.3").replace(
        r#"{"name":"ingero.node.throughput_ratio""#,
        r#"{"name":"ingero.node.straggler_event","gauge":{"dataPoints":[{"asDouble":1,"timeUnixNano":"5","attributes":[
            {"key":"threshold","value":{"doubleValue":0.8}},{"key":"score","value":{"doubleValue":0.3}},
            {"key":"dominant_signal","value":{"stringValue":"nccl"}},{"key":"ingero.event.id","value":{"stringValue":"e1"}}]}]}},
            {"name":"ingero.node.throughput_ratio""#,
    );
    let answer = send(
        &fleet,
        head("POST", "/v1/metrics?cluster_id=c1", Some("application/json")),
        event.as_bytes(),
        0,
        &ThresholdBook::default(),
    );
    assert_eq!(answer.outcome.straggler_events, 1);
    let book = fleet.tick(PUSH_INTERVAL_MS).ok().flatten().unwrap_or_default();

    let (status, clusters) = get_json(&fleet, "/api/v1/clusters", &book);
    assert_eq!((status, clusters["total"].as_u64()), (200, Some(2)));
    let c1 = &clusters["clusters"][0];
    assert_eq!(
        (c1["cluster_id"].as_str(), c1["active_nodes"].as_u64(), c1["quorum_met"].as_bool()),
        (Some("c1"), Some(6), Some(true))
    );
    assert_eq!(c1["stragglers"].as_u64(), Some(1));
    assert_eq!(c1["world_size"].as_u64(), Some(8));
    assert_eq!(c1["recent_straggler_events"][0]["dominant_signal"].as_str(), Some("nccl"));
    assert_eq!(clusters["clusters"][1]["quorum_met"].as_bool(), Some(false));

    let (_, nodes) = get_json(&fleet, "/api/v1/nodes?cluster_id=c1", &book);
    assert_eq!(nodes["total"].as_u64(), Some(6));
    let n5 = &nodes["nodes"][5];
    assert_eq!(
        (n5["node_id"].as_str(), n5["straggler"].as_bool(), n5["score"].as_f64()),
        (Some("n5"), Some(true), Some(0.3))
    );
    assert_eq!(n5["rank"].as_i64(), Some(3));
    assert_eq!(n5["gauges"]["ingero.node.throughput_ratio"].as_f64(), Some(0.97));
    assert_eq!(nodes["nodes"][0]["straggler"].as_bool(), Some(false));

    // A node that turns idle is listed with its new state and stops counting.
    let idle = agent_json("n0", "0.9").replace("\"active\"", "\"idle\"");
    let _ = send(
        &fleet,
        head("POST", "/v1/metrics?cluster_id=c1", Some("application/json")),
        idle.as_bytes(),
        PUSH_INTERVAL_MS,
        &book,
    );
    let book = fleet.tick(2 * PUSH_INTERVAL_MS).ok().flatten().unwrap_or_default();
    let (_, nodes) = get_json(&fleet, "/api/v1/nodes?cluster_id=c1&limit=2", &book);
    assert_eq!((nodes["nodes"][0]["state"].as_str(), nodes["next_offset"].as_u64()), (Some("idle"), Some(2)));
    assert_eq!(nodes["nodes"].as_array().map(Vec::len), Some(2));
    let (_, clusters) = get_json(&fleet, "/api/v1/clusters", &book);
    assert_eq!(clusters["clusters"][0]["active_nodes"].as_u64(), Some(5));

    // Past the TTL only n0 (pushed later) is left.
    let book = fleet.tick(fleet.config().node_ttl_ms() + PUSH_INTERVAL_MS).ok().flatten().unwrap_or_default();
    let (_, nodes) = get_json(&fleet, "/api/v1/nodes?cluster_id=c1", &book);
    assert_eq!(nodes["total"].as_u64(), Some(1));

    assert_eq!(get_json(&fleet, "/api/v1/nodes", &book).0, 400);
    assert_eq!(get_json(&fleet, "/api/v1/clusters?limit=5000", &book).0, 400);
    let page = send(&fleet, head("GET", "/", None), &[], 0, &book);
    assert_eq!(page.reply.header("content-type"), Some("text/html; charset=utf-8"));
}

#[test]
fn request_heads_come_from_header_lists() {
    let headers = [
        (":method", "POST"),
        (":path", "/v1/metrics?cluster_id=c"),
        ("Content-Type", "application/json"),
        ("content-encoding", "gzip"),
        ("content-length", " 42"),
        ("x-other", "1"),
    ];
    let head = RequestHead::from_headers(headers);
    assert_eq!((head.method, head.path), ("POST", "/v1/metrics?cluster_id=c"));
    assert_eq!(
        (head.content_type, head.content_encoding, head.content_length),
        (Some("application/json"), Some("gzip"), Some(42))
    );
    assert_eq!(RequestHead::from_headers([]).content_type, None);
}

#[test]
fn identities_bind_pushes_to_their_clusters() {
    let config = Config::from_json(
        br#"{"push_identities": {"token:s3cret": ["c2"], "spiffe://gpu/agent": ["*"], "token:other": ["c1"]}}"#,
    )
    .map(|p| p.config)
    .unwrap_or_else(|e| unreachable!("{e}"));
    let fleet = Fleet::new(config, MemoryStore::default(), MemoryCounters::default());
    assert_eq!(fleet.init(), Ok(()));
    let body = agent_json("n1", "0.9"); // names cluster c1 in its resource
    let status = |path: &str, bearer: Option<&str>, peer: Option<&str>| {
        let head = RequestHead { bearer, peer, ..head("POST", path, Some("application/json")) };
        fleet
            .handle(&head, body.as_bytes(), 1_000)
            .map(|a| (a.reply.status, String::from_utf8_lossy(&a.reply.body).into_owned()))
    };
    let (code, message) = status("/v1/metrics?cluster_id=c2", None, None).unwrap_or_default();
    assert_eq!(code, 403);
    assert!(message.contains("no identity allowed to push"), "{message}");
    assert_eq!(status("/v1/metrics?cluster_id=c2", Some("s3cret"), None).map(|s| s.0), Some(200));
    assert_eq!(status("/v1/metrics?cluster_id=c2", Some("s3creT"), None).map(|s| s.0), Some(403));
    let (code, message) = status("/v1/metrics?cluster_id=c1", Some("s3cret"), None).unwrap_or_default();
    assert!(code == 403 && message.contains("may not push cluster") && message.contains("c1"), "{message}");
    // Without cluster_id the cluster named in the body is bound just the same.
    assert_eq!(status("/v1/metrics", Some("s3cret"), None).map(|s| s.0), Some(403));
    assert_eq!(status("/v1/metrics", Some("other"), None).map(|s| s.0), Some(200));
    assert_eq!(status("/v1/metrics?cluster_id=any", None, Some("spiffe://gpu/agent")).map(|s| s.0), Some(200));
    assert_eq!(fleet.counters().value(Counter::Dropped(DropReason::Forbidden)), 4);
    assert_eq!(RequestHead::from_headers([("authorization", "Bearer abc")]).bearer, Some("abc"));
    assert!(Config::from_json(br#"{"push_identities": {"token:x": []}}"#).is_err(), "an empty cluster list");
}

#[test]
fn a_deferred_instance_leaves_the_recompute_to_the_singleton_unless_it_is_late() {
    let store = std::sync::Arc::new(MemoryStore::default());
    let make = |recompute| {
        let config = Config { recompute, ..Config::default() };
        Fleet::new(config, store.clone(), MemoryCounters::default())
    };
    let (singleton, worker) = (make(Recompute::Singleton), make(Recompute::Deferred));
    assert_eq!(singleton.init(), Ok(()));
    let recomputed = |fleet: &Fleet<_, _>, now| fleet.tick(now).map(|book| book.is_some());
    assert_eq!(recomputed(&worker, PUSH_INTERVAL_MS), Ok(false), "the singleton's interval");
    assert_eq!(recomputed(&singleton, PUSH_INTERVAL_MS), Ok(true));
    assert_eq!(recomputed(&worker, 2 * PUSH_INTERVAL_MS), Ok(false), "the singleton is one interval behind");
    assert_eq!(recomputed(&worker, 3 * PUSH_INTERVAL_MS), Ok(true), "two behind: the worker steps in");
    assert_eq!(recomputed(&singleton, 3 * PUSH_INTERVAL_MS), Ok(false), "once per interval, whoever runs it");
    assert_eq!(worker.book().epoch, 3, "the worker holds the book it published");
}

#[test]
fn a_push_refused_from_its_head_is_answered_in_its_own_encoding() {
    let fleet = fleet();
    let head = RequestHead {
        content_encoding: Some("br"),
        ..head("POST", "/v1/metrics?cluster_id=c1", Some("application/x-protobuf"))
    };
    let answer = fleet.handle(&head, b"x", 0).unwrap_or_else(|| unreachable!("a Fleet route"));
    assert_eq!(answer.reply.status, 415);
    assert_eq!(answer.reply.header("content-type"), Some("application/x-protobuf"));
    let status = <crate::otlp::RpcStatus as prost::Message>::decode(answer.reply.body.as_slice()).map(|s| s.message);
    let status = status.unwrap_or_else(|e| unreachable!("{e}"));
    assert!(status.contains("Content-Encoding"), "{status}");
}

/// A store that notes every key read.
#[derive(Default)]
struct ReadLog {
    store: MemoryStore,
    reads: std::sync::Mutex<Vec<String>>,
}

impl SharedStore for ReadLog {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        self.reads.lock().unwrap_or_else(PoisonError::into_inner).push(key.to_owned());
        self.store.get(key)
    }

    fn set(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<(), StoreError> {
        self.store.set(key, value, version)
    }

    fn entropy(&self) -> Result<[u8; crate::store::SEED_BYTES], StoreError> {
        self.store.entropy()
    }
}

#[test]
fn a_push_reads_only_its_shard_once_the_seed_is_known() {
    let fleet = Fleet::new(Config::default(), ReadLog::default(), MemoryCounters::default());
    assert_eq!(fleet.init(), Ok(()));
    let reads = || std::mem::take(&mut *fleet.store.reads.lock().unwrap_or_else(PoisonError::into_inner));
    let _ = reads();
    let body = agent_json("n1", "0.9");
    let head = head("POST", "/v1/metrics?cluster_id=c1", Some("application/json"));
    assert_eq!(fleet.handle(&head, body.as_bytes(), 1_000).map(|a| a.reply.status), Some(200));
    let read = reads();
    assert!(!read.contains(&crate::seed::seed_key()), "the seed is read once, at init: {read:?}");
    // The node's shard, then the cluster table to admit the new node.
    assert_eq!(read.len(), 2, "{read:?}");
    assert_eq!(fleet.handle(&head, body.as_bytes(), 2_000).map(|a| a.reply.status), Some(200));
    assert_eq!(reads().len(), 1, "an update reads its shard only");
}

#[test]
fn a_seed_replaced_by_a_racing_init_is_picked_up_on_the_next_tick() {
    let fleet = fleet();
    let first = fleet.registry().seed();
    // Another VM's init overwrote the placeholder and wrote its own seed after this one's.
    let other = crate::seed::HashSeed::from_bytes([7; crate::store::SEED_BYTES]);
    assert_ne!(first, Ok(other));
    assert_eq!(fleet.store.set(&crate::seed::seed_key(), &other.to_bytes(), None), Ok(()));
    assert_eq!(fleet.registry().seed(), first, "pushes use the seed read at init until the next tick");
    let _ = fleet.tick(PUSH_INTERVAL_MS);
    assert_eq!(fleet.registry().seed(), Ok(other), "every worker converges on the stored seed");
}

#[test]
fn a_retuned_k_applies_from_the_next_recompute() {
    let fleet = fleet();
    for (i, score) in [0.9, 0.5, 0.95, 0.8, 0.92].iter().enumerate() {
        assert_eq!(push(&fleet, "c1", &format!("n{i}"), *score, 1_000).reply.status, 200);
    }
    let raw = |k: f64| 0.9 - k * 1.4826 * 0.05; // median 0.9, MAD 0.05
    let book = fleet.tick(PUSH_INTERVAL_MS).ok().flatten().unwrap_or_default();
    assert!(book.threshold("c1", "").is_some_and(|t| (t - raw(2.0)).abs() < 1e-12), "the first book, at k 2");
    let new = Config { k: 3.0, ema_alpha: 1.0, ..Config::default() };
    assert_eq!(fleet.retune(&new), ["threshold.k", "threshold.ema_alpha"]);
    assert_eq!(fleet.retune(&new), Vec::<&str>::new(), "nothing changes twice");
    let book = fleet.tick(2 * PUSH_INTERVAL_MS).ok().flatten().unwrap_or_default();
    assert!(book.threshold("c1", "").is_some_and(|t| (t - raw(3.0)).abs() < 1e-12), "{:?}", book.threshold("c1", ""));
    assert_eq!(fleet.config().k, 2.0, "the configuration it was built with is unchanged");
    assert_eq!((fleet.config_in_force().k, fleet.config_in_force().ema_alpha), (3.0, 1.0));
}
