//! Property tests of every decoder Fleet runs on untrusted input: OTLP JSON and
//! protobuf, gzip, query strings, configuration. None may panic, whatever the
//! bytes; valid input must come out exactly as it went in.
//!
//! `PROPTEST_CASES=100000 cargo test -p ingero-fleet-core --test decoders` runs
//! them longer (scripts/fuzz does, next to the cargo-fuzz targets).

use flate2::write::GzEncoder;
use ingero_fleet_core::config::{parse_duration, Config};
use ingero_fleet_core::ingress::{query_param, unpack_body};
use ingero_fleet_core::otlp::{BodyFormat, ExportRequest};
use ingero_fleet_core::FleetError;
use proptest::prelude::*;
use serde_json::Value;
use std::io::Write;

/// An agent-shaped OTLP JSON push of one node.
fn agent_json(cluster: &str, node: &str, score: &str) -> String {
    let s = |v: &str| serde_json::to_string(v).unwrap_or_default();
    format!(
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[
          {{"key":"ingero.node.id","value":{{"stringValue":{}}}}},
          {{"key":"ingero.cluster.id","value":{{"stringValue":{}}}}}]}},
         "scopeMetrics":[{{"scope":{{"name":"ingero.health"}},"metrics":[
          {{"name":"ingero.node.health_score","gauge":{{"dataPoints":[{{"timeUnixNano":"1700000000000000000",
            "asDouble":{score},"attributes":[{{"key":"ingero.node.state","value":{{"stringValue":"active"}}}}]}}]}}}}]}}]}}]}}"#,
        s(node),
        s(cluster)
    )
}

// === a minimal protobuf writer for the OTLP fields Fleet reads ===

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

fn field_bytes(tag: u64, bytes: &[u8], out: &mut Vec<u8>) {
    varint(tag << 3 | 2, out);
    varint(bytes.len() as u64, out);
    out.extend_from_slice(bytes);
}

fn string_attr(key: &str, value: &str) -> Vec<u8> {
    let mut any = Vec::new();
    field_bytes(1, value.as_bytes(), &mut any);
    let mut kv = Vec::new();
    field_bytes(1, key.as_bytes(), &mut kv);
    field_bytes(2, &any, &mut kv);
    kv
}

/// The same push as [`agent_json`], as `ExportMetricsServiceRequest` protobuf.
fn agent_protobuf(cluster: &str, node: &str, score: f64) -> Vec<u8> {
    let mut point = Vec::new();
    point.push(3 << 3 | 1); // time_unix_nano, fixed64
    point.extend_from_slice(&1_700_000_000_000_000_000u64.to_le_bytes());
    point.push(4 << 3 | 1); // as_double, double
    point.extend_from_slice(&score.to_le_bytes());
    field_bytes(7, &string_attr("ingero.node.state", "active"), &mut point);
    let mut gauge = Vec::new();
    field_bytes(1, &point, &mut gauge);
    let mut metric = Vec::new();
    field_bytes(1, b"ingero.node.health_score", &mut metric);
    field_bytes(5, &gauge, &mut metric);
    let mut scope = Vec::new();
    field_bytes(2, &metric, &mut scope);
    let mut resource = Vec::new();
    field_bytes(1, &string_attr("ingero.node.id", node), &mut resource);
    field_bytes(1, &string_attr("ingero.cluster.id", cluster), &mut resource);
    let mut rm = Vec::new();
    field_bytes(1, &resource, &mut rm);
    field_bytes(2, &scope, &mut rm);
    let mut request = Vec::new();
    field_bytes(1, &rm, &mut request);
    request
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = enc.write_all(data);
    enc.finish().unwrap_or_default()
}

/// `application/x-www-form-urlencoded`, escaping everything but unreserved bytes.
fn form_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => char::from(b).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A byte string with a few random edits: flips, cuts and insertions.
fn mutated(base: Vec<u8>) -> impl Strategy<Value = Vec<u8>> {
    let len = base.len().max(1);
    prop::collection::vec((0..len, any::<u8>(), 0u8..3), 1..8).prop_map(move |edits| {
        let mut bytes = base.clone();
        for (at, byte, kind) in edits {
            let at = at.min(bytes.len());
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.truncate(at),
                _ => bytes.insert(at, byte),
            }
        }
        bytes
    })
}

fn text() -> impl Strategy<Value = String> {
    prop::collection::vec(any::<char>(), 0..40).prop_map(String::from_iter)
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        text().prop_map(Value::String),
        prop_oneof![Just("10s"), Just("1h"), Just("50ms"), Just("2.5"), Just("-1")].prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        let keys = prop_oneof![
            Just("threshold".to_owned()),
            Just("k".to_owned()),
            Just("ema_alpha".to_owned()),
            Just("quorum".to_owned()),
            Just("statistical_min".to_owned()),
            Just("push_interval".to_owned()),
            Just("ttl_multiplier".to_owned()),
            Just("max_expected_nodes".to_owned()),
            Just("max_clusters".to_owned()),
            Just("max_body_bytes".to_owned()),
            Just("listen".to_owned()),
            text(),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(keys, inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn json_decoder_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = ExportRequest::decode(BodyFormat::Json, &bytes);
    }

    #[test]
    fn json_decoder_never_panics_on_mangled_pushes(bytes in mutated(agent_json("c", "n", "0.5").into_bytes())) {
        let _ = ExportRequest::decode(BodyFormat::Json, &bytes);
    }

    #[test]
    fn protobuf_decoder_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = ExportRequest::decode(BodyFormat::Protobuf, &bytes);
    }

    #[test]
    fn protobuf_decoder_never_panics_on_mangled_pushes(bytes in mutated(agent_protobuf("c", "n", 0.5))) {
        let _ = ExportRequest::decode(BodyFormat::Protobuf, &bytes);
    }

    #[test]
    fn json_and_protobuf_decode_a_push_alike(cluster in text(), node in text(), score in any::<f64>()) {
        prop_assume!(score.is_finite());
        let json = agent_json(&cluster, &node, &serde_json::to_string(&score).unwrap_or_default());
        let from_json = ExportRequest::decode(BodyFormat::Json, json.as_bytes());
        let protobuf = agent_protobuf(&cluster, &node, score);
        let from_proto = ExportRequest::decode(BodyFormat::Protobuf, &protobuf);
        prop_assert!(from_json.is_ok(), "{:?}", from_json);
        prop_assert_eq!(from_json, from_proto);
    }

    #[test]
    fn gzip_unpacking_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512), limit in 0usize..4096) {
        let _ = unpack_body(&bytes, true, limit);
        let _ = unpack_body(&bytes, false, limit);
    }

    #[test]
    fn gzip_round_trips_within_the_limit_and_is_refused_past_it(
        data in prop::collection::vec(any::<u8>(), 0..4096),
        limit in 0usize..4096,
    ) {
        let packed = gzip(&data);
        let result = unpack_body(&packed, true, limit.max(packed.len()));
        if data.len() <= limit.max(packed.len()) {
            prop_assert_eq!(result.as_deref(), Ok(data.as_slice()));
        } else {
            prop_assert_eq!(result, Err(FleetError::BodyTooLarge { limit: limit.max(packed.len()) }));
        }
    }

    #[test]
    fn query_decoding_never_panics(query in ".*".prop_map(|s: String| s)) {
        let _ = query_param(&format!("/v1/metrics?{query}"), "cluster_id", 64);
    }

    #[test]
    fn query_decoding_never_panics_on_escapes(raw in prop::collection::vec(
        prop_oneof![Just("%"), Just("%2"), Just("%zz"), Just("%ff"), Just("%C3%A9"), Just("+"), Just("&"), Just("a")], 0..12,
    )) {
        let _ = query_param(&format!("/v1/metrics?cluster_id={}", raw.concat()), "cluster_id", 64);
    }

    #[test]
    fn form_encoded_ids_round_trip(id in text()) {
        let decoded = query_param(&format!("/v1/metrics?a=1&cluster_id={}&b=2", form_encode(&id)), "cluster_id", 1024);
        prop_assert_eq!(decoded, Ok(Some(id).filter(|i| !i.is_empty())));
    }

    #[test]
    fn config_parsing_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = Config::from_json(&bytes);
    }

    #[test]
    fn config_values_are_in_range_or_refused(value in json_value()) {
        if let Ok(parsed) = Config::from_value(&value) {
            let c = parsed.config;
            prop_assert!((1.0..=4.0).contains(&c.k));
            prop_assert!(c.ema_alpha > 0.0 && c.ema_alpha <= 1.0);
            prop_assert!(c.push_interval_ms() >= 100 && c.ttl_multiplier >= 2);
            prop_assert!(c.max_expected_nodes >= 1 && c.max_clusters >= 1 && c.max_nodes_per_cluster >= 1);
            prop_assert!(c.max_body_bytes >= 1024 && c.max_id_bytes >= 8 && c.max_points_per_push >= 1);
        }
    }

    #[test]
    fn duration_parsing_never_panics(text in text()) {
        let _ = parse_duration(&text);
    }
}
