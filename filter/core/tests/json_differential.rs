//! The OTLP JSON scanner against the serde reference: on every input, valid or
//! not, both decode to the same request or both refuse with the same error
//! variant and status (`ExportRequest::json_decoders_agree`); and the scanner's
//! reader of any JSON value (the configuration's) reads each input as
//! `serde_json::from_slice` does (`ExportRequest::json_values_agree`). Inputs: the
//! decoder tests' bodies, the JSON bodies of the bad-input suite
//! (tests/test_bad_input.py) built the same way, hand-picked corner cases of
//! serde's rules, and generated documents, valid and mutated.
//!
//! `PROPTEST_CASES=N` sets the generated cases per property (default 500; scripts/fuzz runs more).

use ingero_fleet_core::otlp::ExportRequest;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;

/// Asserts agreement on `body`; true when it decoded.
fn check(body: &[u8]) -> bool {
    let values = ExportRequest::json_values_agree(body);
    assert!(values.is_ok(), "value readers disagree on {:?}: {values:?}", String::from_utf8_lossy(body));
    let agreement = ExportRequest::json_decoders_agree(body);
    assert!(agreement.is_ok(), "decoders disagree on {:?}: {agreement:?}", String::from_utf8_lossy(body));
    agreement.unwrap_or(false)
}

// === a JSON tree rendered the way Python's json.dumps renders it ===

/// A JSON value with ordered (possibly repeated) keys; numbers are kept as their text.
#[derive(Debug, Clone)]
enum J {
    Raw(String),
    Str(String),
    Arr(Vec<J>),
    Obj(Vec<(String, J)>),
}

fn raw(text: &str) -> J {
    J::Raw(text.into())
}

fn s(text: &str) -> J {
    J::Str(text.into())
}

fn obj(entries: Vec<(&str, J)>) -> J {
    J::Obj(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

impl J {
    /// Python's `json.dumps` (separators ", " and ": ", non-ASCII escaped).
    fn py(&self) -> String {
        match self {
            J::Raw(text) => text.clone(),
            J::Str(text) => py_string(text),
            J::Arr(items) => format!("[{}]", items.iter().map(J::py).collect::<Vec<_>>().join(", ")),
            J::Obj(entries) => format!(
                "{{{}}}",
                entries.iter().map(|(k, v)| format!("{}: {}", py_string(k), v.py())).collect::<Vec<_>>().join(", ")
            ),
        }
    }

    fn get(&mut self, key: &str) -> Option<&mut J> {
        match self {
            J::Obj(entries) => entries.iter_mut().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    fn at(&mut self, index: usize) -> Option<&mut J> {
        match self {
            J::Arr(items) => items.get_mut(index),
            _ => None,
        }
    }
}

fn py_string(text: &str) -> String {
    let mut out = String::from("\"");
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\x08' => out.push_str("\\b"),
            '\x0c' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
    out
}

fn attr(key: &str, value: J) -> J {
    obj(vec![("key", s(key)), ("value", value)])
}

fn string_value(text: &str) -> J {
    obj(vec![("stringValue", s(text))])
}

/// tests/fleet.py `agent_push` as a tree: node id, score text, cluster, cohort.
fn agent_push(node: &str, score: &str, cluster: Option<&str>, cohort: &str) -> J {
    let mut attrs = vec![attr("ingero.node.id", string_value(node))];
    if let Some(cluster) = cluster {
        attrs.push(attr("ingero.cluster.id", string_value(cluster)));
    }
    let gauge = |name: &str, value: &str, extra: Vec<J>| {
        obj(vec![
            ("name", s(name)),
            (
                "gauge",
                obj(vec![(
                    "dataPoints",
                    J::Arr(vec![obj(vec![
                        ("timeUnixNano", s("1700000000123456789")),
                        ("asDouble", raw(value)),
                        ("attributes", J::Arr(extra)),
                    ])]),
                )]),
            ),
        ])
    };
    let metrics = vec![
        gauge(
            "ingero.node.health_score",
            score,
            vec![
                attr("ingero.node.state", string_value("active")),
                attr("ingero.workload_type", string_value("training")),
                attr("ingero.cgroup_path_hash", string_value(cohort)),
            ],
        ),
        gauge("ingero.node.throughput_ratio", "0.97", vec![]),
        gauge("ingero.node.compute_efficiency", "0.91", vec![]),
        gauge("ingero.node.memory_headroom", "0.4", vec![]),
        gauge("ingero.node.cpu_availability", "0.8", vec![]),
        gauge("ingero.node.degradation_warning", "0.0", vec![]),
        gauge("ingero.agent.fleet_reachable", "1.0", vec![]),
        gauge(
            "ingero.node.info",
            "1.0",
            vec![attr("gpu_model", string_value("H100")), attr("gpu_count", obj(vec![("intValue", s("8"))]))],
        ),
    ];
    obj(vec![(
        "resourceMetrics",
        J::Arr(vec![obj(vec![
            ("resource", obj(vec![("attributes", J::Arr(attrs))])),
            (
                "scopeMetrics",
                J::Arr(vec![obj(vec![
                    ("scope", obj(vec![("name", s("ingero.health"))])),
                    ("metrics", J::Arr(metrics)),
                ])]),
            ),
        ])]),
    )])
}

/// `poison()` of the bad-input suite: a push for the control cluster.
fn poison() -> J {
    agent_push("n0", "0.0", Some("control"), "")
}

fn resource_attrs(doc: &mut J) -> Option<&mut Vec<J>> {
    match doc.get("resourceMetrics")?.at(0)?.get("resource")?.get("attributes")? {
        J::Arr(items) => Some(items),
        _ => None,
    }
}

fn first_point(doc: &mut J) -> Option<&mut J> {
    doc.get("resourceMetrics")?
        .at(0)?
        .get("scopeMetrics")?
        .at(0)?
        .get("metrics")?
        .at(0)?
        .get("gauge")?
        .get("dataPoints")?
        .at(0)
}

fn is_key(item: &J, key: &str) -> bool {
    matches!(item, J::Obj(entries) if entries.iter().any(|(k, v)| k == "key" && matches!(v, J::Str(t) if t == key)))
}

/// `with_resource_attr` of the bad-input suite.
fn with_resource_attr(mut doc: J, key: &str, value: Option<J>) -> J {
    if let Some(attrs) = resource_attrs(&mut doc) {
        attrs.retain(|a| !is_key(a, key));
        if let Some(value) = value {
            attrs.push(attr(key, value));
        }
    }
    doc
}

/// `with_point_attr` of the bad-input suite.
fn with_point_attr(mut doc: J, key: &str, value: J) -> J {
    if let Some(J::Arr(attrs)) = first_point(&mut doc).and_then(|p| p.get("attributes")) {
        attrs.retain(|a| !is_key(a, key));
        attrs.push(attr(key, value));
    }
    doc
}

/// `score_as` of the bad-input suite: the score spelled as raw JSON text.
fn score_as(text: &str) -> Vec<u8> {
    poison().py().replace("\"asDouble\": 0.0", &format!("\"asDouble\": {text}")).into_bytes()
}

/// `many_points` of the bad-input suite.
fn many_points(n: usize) -> Vec<u8> {
    let mut doc = agent_push("many", "0.0", Some("control"), "");
    let point = first_point(&mut doc).cloned().unwrap_or(J::Arr(vec![]));
    let metric = obj(vec![
        ("name", s("ingero.node.health_score")),
        ("gauge", obj(vec![("dataPoints", J::Arr(vec![point; n]))])),
    ]);
    if let Some(metrics) = doc
        .get("resourceMetrics")
        .and_then(|r| r.at(0))
        .and_then(|r| r.get("scopeMetrics"))
        .and_then(|s| s.at(0))
        .and_then(|s| s.get("metrics"))
    {
        *metrics = J::Arr(vec![metric]);
    }
    doc.py().into_bytes()
}

fn nested(depth: usize) -> Vec<u8> {
    let inner = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    format!(
        r#"{{"resourceMetrics":[{{"resource":{{"attributes":[{{"key":"k","value":{{"arrayValue":{inner}}}}}]}}}}]}}"#
    )
    .into_bytes()
}

/// Every JSON body of tests/test_bad_input.py's table, as the decoder would see it.
fn bad_input_bodies() -> Vec<(&'static str, Vec<u8>)> {
    let p = poison().py().into_bytes();
    let cut = |n: usize| p[..p.len() - n].to_vec();
    vec![
        ("truncated JSON", cut(7)),
        ("JSON cut in half", p[..p.len() / 2].to_vec()),
        ("not JSON", b"garbage".to_vec()),
        ("JSON list", b"[]".to_vec()),
        ("JSON string", b"\"resourceMetrics\"".to_vec()),
        ("whitespace only", b"   \n".to_vec()),
        ("resourceMetrics is an object", br#"{"resourceMetrics":{}}"#.to_vec()),
        ("resourceMetrics is a string", br#"{"resourceMetrics":"x"}"#.to_vec()),
        ("resource is a number", br#"{"resourceMetrics":[1]}"#.to_vec()),
        ("attributes are a string", br#"{"resourceMetrics":[{"resource":{"attributes":"x"}}]}"#.to_vec()),
        ("trailing garbage", br#"{"resourceMetrics":[]} x"#.to_vec()),
        (
            "invalid UTF-8",
            poison()
                .py()
                .replace("\"n0\"", "\"n\u{1}\"")
                .into_bytes()
                .iter()
                .map(|&b| if b == 1 { 0xff } else { b })
                .collect(),
        ),
        ("bare NaN literal", score_as("NaN")),
        ("deeply nested lists", nested(20_000)),
        ("deeply nested objects", [b"{\"a\":".repeat(8000), b"1".to_vec(), b"}".repeat(8000)].concat()),
        ("empty body", Vec::new()),
        ("body over max_body_bytes", [p.clone(), b" ".repeat(70_000)].concat()),
        ("points over max_points_per_push", many_points(101)),
        ("no cluster anywhere", agent_push("n0", "0.0", None, "").py().into_bytes()),
        ("NaN score", score_as("\"NaN\"")),
        ("+Infinity score", score_as("\"Infinity\"")),
        ("-Infinity score", score_as("\"-Infinity\"")),
        ("score above 1", score_as("1.5")),
        ("negative score", score_as("-0.1")),
        ("huge score", score_as("1e308")),
        ("score is text", score_as("\"abc\"")),
        ("score is a boolean", score_as("true")),
        ("score is null", score_as("null")),
        ("score is an object", score_as("{\"v\":0}")),
        ("score is a list", score_as("[0]")),
        (
            "unknown node state",
            with_point_attr(poison(), "ingero.node.state", string_value("asleep")).py().into_bytes(),
        ),
        (
            "node state of the wrong type",
            with_point_attr(poison(), "ingero.node.state", obj(vec![("intValue", s("1"))])).py().into_bytes(),
        ),
        ("missing node id", with_resource_attr(poison(), "ingero.node.id", None).py().into_bytes()),
        ("empty node id", agent_push("", "0.0", Some("control"), "").py().into_bytes()),
        (
            "node id of the wrong type",
            with_resource_attr(poison(), "ingero.node.id", Some(obj(vec![("intValue", s("7"))]))).py().into_bytes(),
        ),
        ("node id over max_id_bytes", agent_push(&"n".repeat(65), "0.0", Some("control"), "").py().into_bytes()),
        ("cohort over max_id_bytes", agent_push("n0", "0.0", Some("control"), &"h".repeat(65)).py().into_bytes()),
        ("cluster attribute over max_id_bytes", agent_push("n0", "0.0", Some(&"c".repeat(65)), "").py().into_bytes()),
        ("query wins over the attribute", p.clone()),
        ("empty push", br#"{"resourceMetrics":[]}"#.to_vec()),
        ("POST on the threshold API", b"{}".to_vec()),
        ("the control pushes", agent_push("n3", "0.86", Some("control"), "").py().into_bytes()),
    ]
}

#[test]
fn bad_input_suite_bodies_agree() {
    let bodies = bad_input_bodies();
    let decoded = bodies.iter().filter(|(_, body)| check(body)).count();
    // The refusals of the suite stay refusals, its accepted pushes stay accepted.
    for (name, body) in &bodies {
        let refused = ExportRequest::decode_json_scan(body).is_err();
        let expected = matches!(
            *name,
            "truncated JSON"
                | "JSON cut in half"
                | "not JSON"
                | "JSON list"
                | "JSON string"
                | "whitespace only"
                | "resourceMetrics is an object"
                | "resourceMetrics is a string"
                | "resource is a number"
                | "attributes are a string"
                | "trailing garbage"
                | "invalid UTF-8"
                | "bare NaN literal"
                | "deeply nested lists"
                | "deeply nested objects"
                | "empty body"
        );
        assert_eq!(refused, expected, "{name}");
    }
    println!("bad-input bodies: {} ({decoded} decoded, {} refused by both)", bodies.len(), bodies.len() - decoded);
}

#[test]
fn the_refusal_messages_the_suite_checks_are_the_same() {
    for (name, body, message) in [
        ("JSON list", b"[]".to_vec(), "must be a JSON object"),
        ("whitespace only", b"   \n".to_vec(), "must be a JSON object"),
        ("deeply nested lists", nested(20_000), "nesting deeper"),
        ("garbage", b"garbage".to_vec(), "invalid OTLP JSON"),
    ] {
        for decoded in [ExportRequest::decode_json_scan(&body), ExportRequest::decode_json_serde(&body)] {
            let text = decoded.map(|_| String::new()).unwrap_or_else(|e| e.to_string());
            assert!(text.contains(message), "{name}: {text}");
        }
    }
}

/// The bodies of the decoder unit tests (src/otlp.rs, tests/decoders.rs) and
/// corner cases of serde's rules that the scanner copies.
fn corner_cases() -> Vec<String> {
    let agent = |score: &str| agent_push("n1", score, Some("c1"), "").py();
    let mut out: Vec<String> = [
        "\"0.5\"",
        "\"NaN\"",
        "\"Infinity\"",
        "\"-Infinity\"",
        "\"abc\"",
        "true",
        "false",
        "{\"a\":1}",
        "[1]",
        "null",
        "0",
        "-0",
        "-0.0",
        "1",
        "0.93",
        "1e308",
        "1e309",
        "-1e309",
        "1e-400",
        "1E5",
        "1.5e+3",
        "2.5E-3",
        "18446744073709551615",
        "18446744073709551616",
        "9223372036854775807",
        "9223372036854775808",
        "-9223372036854775808",
        "-9223372036854775809",
        "123456789012345678901234567890",
        "0.1234567890123456789012",
        "0.30000000000000004",
        "9007199254740993.0",
        "4.9e-324",
        "2.2250738585072014e-308",
        "01",
        "1.",
        ".5",
        "-",
        "+1",
        "1e",
        "1e+",
        "--1",
        "0x10",
        "\"0.5 \"",
        "\" 0.5\"",
        "\"1e3\"",
        "\"-\"",
        "\"\"",
        "\"0x1\"",
        "\"+.5\"",
        "[]",
        "{}",
        "[[[]]]",
        "{\"\\ud800\":1}",
        "[\"\\ud800\"]",
        "\"\\ud800\"",
        "\"\\ud83d\\ude00\"",
        "\"\\u00e9\"",
        "nul",
        "tru",
        "truex",
    ]
    .iter()
    .map(|raw| agent(raw))
    .collect();
    for body in [
        "", "[]", "{}", " {} ", "\t{}\n", "\u{c}{}", "{\"resourceMetrics\":{}}", "{\"resourceMetrics\":[", "nul", "\"x\"",
        "{\"resourceMetrics\":null}", "{\"resourceMetrics\":[]}\u{0}", "{\"resourceMetrics\":[],}", "{,}", "{\"a\"}",
        "{\"a\":}", "{\"a\":1 \"b\":2}", "{\"resourceMetrics\":[],\"resourceMetrics\":[]}", "{\"future\":1,\"future\":2}",
        "{\"resource\\u004detrics\":[{}]}", "{\"\\ud800\":1}", "{\"x\":{\"\\ud800\":1}}", "{\"x\":\"\\ud800\"}",
        "{\"x\":\"\\u12\"}", "{\"x\":\"\\q\"}", "{\"x\":\"a\u{1}b\"}", "{\"x\":1e999}", "{\"x\":01}", "{\"x\":-}",
        "{\"x\":[1,]}", "{\"x\":[,1]}", "{\"x\":{\"a\":1,}}", "{\"x\":tru}", "{\"x\":nulll}",
        // Structs in list form, as serde accepts them.
        "{\"resourceMetrics\":[[]]}",
        "{\"resourceMetrics\":[[{\"attributes\":[[\"k\",{\"stringValue\":\"v\"}]]}]]}",
        "{\"resourceMetrics\":[[[[[\"k\"]]],[[[[\"m\",[[[[],\"1\",0.5,null]]],null]]]]]]}",
        "{\"resourceMetrics\":[[[[[\"k\",[null,null,null,true]]]],[[[[\"m\",null,[[[[],null,null,7]]]]]]]]]}",
        "{\"resourceMetrics\":[[[[[\"k\",[null,null,null]]]]]]}",
        "{\"resourceMetrics\":[[[[[\"k\",[null,null,null,true,1]]]]]]}",
        "{\"resourceMetrics\":[[[[[]]]]]}",
        "{\"resourceMetrics\":[[[[[\"k\"],]]]]}",
        "{\"resourceMetrics\":[[[],[[[[\"m\",null]]]]]]}",
        "{\"resourceMetrics\":[[[],[[[[\"m\",null,null]]]]]]}",
        "{\"resourceMetrics\":[[[],[[[[\"m\",[],null]]]]]]}",
        "{\"resourceMetrics\":[[[],[[[[\"m\",[[[[], null, null]]],null]]]]]]}",
        "{\"resourceMetrics\":[[{},[],1]]}",
        "{\"resourceMetrics\":[[{},[] ]]}",
        // null where only some fields may be null.
        "{\"resourceMetrics\":[{\"resource\":null}]}",
        "{\"resourceMetrics\":[{\"scopeMetrics\":null}]}",
        "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{\"name\":null}]}]}]}",
        "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{\"gauge\":null,\"sum\":{\"dataPoints\":[{\"asInt\":\"3\"}]}}]}]}]}",
        "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{\"gauge\":{\"dataPoints\":[{\"asInt\":1}]},\"sum\":{\"dataPoints\":[{\"asInt\":2}]}}]}]}]}",
        "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{\"gauge\":{\"dataPoints\":[]},\"gauge\":null}]}]}]}",
        "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{\"sum\":{\"dataPoints\":[{\"asDouble\":null,\"asInt\":\"9\",\"timeUnixNano\":null}]}}]}]}]}",
        "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{\"sum\":{\"dataPoints\":[{\"timeUnixNano\":-5}]}}]}]}]}",
        "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{\"sum\":{\"dataPoints\":[{\"timeUnixNano\":\" 17 \"}]}}]}]}]}",
        "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{\"sum\":{\"dataPoints\":[{\"timeUnixNano\":1.5e3}]}}]}]}]}",
        "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{\"sum\":{\"dataPoints\":[{\"attributes\":null}]}}]}]}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"value\":{\"stringValue\":\"v\"}}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":\"k\"}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":\"k\",\"value\":null}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":\"k\",\"value\":{\"stringValue\":null,\"intValue\":\"x\",\"doubleValue\":\"2\",\"boolValue\":1}}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":\"k\",\"value\":{\"stringValue\":1,\"intValue\":2.0,\"boolValue\":true}}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":\"k\",\"value\":{\"intValue\":9.0e15}}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":\"k\",\"value\":{\"boolValue\":false,\"boolValue\":true}}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":\"k\",\"value\":{\"arrayValue\":{\"values\":[{\"x\":\"\\ud800\"}]}}}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":\"k\\n\\\"\\u00e9\\ud83d\\ude00\",\"value\":{\"stringValue\":\"a\\/b\\\\c\\b\\f\\r\\t\"}}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":\"k\",\"value\":{\"stringValue\":\"\\ud800x\"}}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":\"k\",\"value\":{\"stringValue\":\"\\udc00\"}}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":\"k\",\"value\":{\"stringValue\":\"\\ud800\\n\"}}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":\"k\",\"value\":{\"stringValue\":\"\\ud800\\ud800\"}}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":\"k\",\"value\":{\"stringValue\":\"\\u0000\"}}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":\"k\",\"value\":{\"doubleValue\":{\"\\ud800\":1}}}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":\"k\",\"value\":{\"doubleValue\":[{\"\\ud800\":1e999}]}}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[{\"key\":\"k\",\"value\":{\"doubleValue\":1e999}}]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{\"attributes\":[],\"attributes\":[]}}]}",
        "{\"resourceMetrics\":[{\"resource\":{},\"resource\":{}}]}",
        "{\"resourceMetrics\":[{\"scopeMetrics\":[{\"metrics\":[{\"name\":\"a\"}]},{\"metrics\":[{\"name\":\"b\"}]}]}]}",
        "{\"resourceMetrics\":[{\"schemaUrl\":\"x\",\"resource\":{\"attributes\":[],\"droppedAttributesCount\":0},\"scopeMetrics\":[{\"scope\":{\"name\":\"s\",\"version\":\"1\"},\"metrics\":[{\"name\":\"h\",\"histogram\":{\"dataPoints\":[{\"count\":\"1\"}]}}]}]}],\"future\":1}",
    ] {
        out.push(body.to_owned());
    }
    let deep = |n: usize| {
        format!("{{\"resourceMetrics\":[{{\"resource\":{{\"attributes\":[{{\"key\":\"k\",\"value\":{{\"arrayValue\":{}{}}}}}]}}}}]}}", "[".repeat(n), "]".repeat(n))
    };
    for n in [50, 58, 59, 60, 61, 62, 5000] {
        out.push(deep(n));
    }
    out
}

#[test]
fn decoder_test_bodies_and_corner_cases_agree() {
    let cases = corner_cases();
    let decoded = cases.iter().filter(|body| check(body.as_bytes())).count();
    assert!(!check(b"{\"resourceMetrics\":[]}\xff"));
    assert!(decoded > 40 && decoded < cases.len(), "{decoded} of {}", cases.len());
    println!("corner cases: {} ({decoded} decoded)", cases.len());
}

// === generated documents ===

fn config() -> ProptestConfig {
    let mut config = ProptestConfig::default();
    if std::env::var("PROPTEST_CASES").is_err() {
        config.cases = 500;
    }
    config
}

/// Number spellings, valid and not, that stress serde_json's number rules.
fn number_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<u64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| format!("{v:?}")),
        any::<f64>().prop_filter("finite", |v| v.is_finite()).prop_map(|v| format!("{v:e}")),
        (0u64..1_000_000, 0usize..30).prop_map(|(v, frac)| format!("0.{v:0frac$}")),
        ("-?(0|[1-9][0-9]{0,25})(\\.[0-9]{1,25})?([eE][+-]?[0-9]{1,4})?").prop_map(|s| s),
        prop::sample::select(vec!["-0", "0", "1e400", "-1e400", "1e-400", "01", "1.", ".5", "-", "1e", "2.5E+3"])
            .prop_map(str::to_owned),
    ]
}

/// Strings, some with escapes, surrogate pairs and lone surrogates.
fn string_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z.]{0,12}".prop_map(|s| py_string(&s)),
        any::<String>().prop_map(|s| py_string(&s)),
        any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap_or_default()),
        prop::sample::select(vec![
            "\"\\ud800\"",
            "\"\\udc00\"",
            "\"\\ud83d\\ude00\"",
            "\"a\\u00e9\"",
            "\"\\/\"",
            "\"\\x\"",
            "\"\\u12g4\"",
            "\"NaN\"",
            "\"Infinity\"",
            "\"-Infinity\"",
            "\" 42 \"",
            "\"1e3\"",
            "\"0.5\"",
        ])
        .prop_map(str::to_owned),
    ]
}

/// Any JSON value (as text): leaves, lists and objects, keys valid or not.
fn any_json() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        number_text(),
        string_text(),
        prop::sample::select(vec!["null", "true", "false"]).prop_map(str::to_owned),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((string_text(), inner), 0..4).prop_map(|entries| {
                let entries: Vec<String> = entries.into_iter().map(|(k, v)| format!("{k}:{v}")).collect();
                format!("{{{}}}", entries.join(","))
            }),
        ]
    })
}

/// A struct of `fields` (name, value strategy) as serde reads it: an object with
/// some fields left out, repeated or joined by unknown ones, or rarely a list.
fn record(fields: Vec<(&'static str, BoxedStrategy<String>)>) -> BoxedStrategy<String> {
    let n = fields.len();
    let values: Vec<BoxedStrategy<String>> = fields.iter().map(|(_, v)| v.clone()).collect();
    let names: Vec<&'static str> = fields.iter().map(|(k, _)| *k).collect();
    (values, prop::collection::vec(0u8..10, n), prop::collection::vec(any_json(), 0..2), 0u8..20)
        .prop_map(move |(values, modes, unknown, shape)| {
            if shape == 0 {
                // The list form: the fields in order, sometimes one short.
                let keep = if modes[0] < 5 { n } else { n.saturating_sub(1) };
                return format!("[{}]", values[..keep].join(","));
            }
            let mut entries = Vec::new();
            for ((name, value), mode) in names.iter().zip(&values).zip(&modes) {
                match mode {
                    0 => {}
                    1 => entries.push(format!("\"{name}\":null")),
                    2 => {
                        entries.push(format!("\"{name}\":{value}"));
                        entries.push(format!("\"{name}\":{value}"));
                    }
                    _ => entries.push(format!("\"{name}\":{value}")),
                }
            }
            for (i, value) in unknown.iter().enumerate() {
                entries.insert(i.min(entries.len()), format!("\"unknown{i}\":{value}"));
            }
            if shape == 1 {
                entries.reverse();
            }
            format!("{{{}}}", entries.join(if shape == 2 { " ,\n\t" } else { "," }))
        })
        .boxed()
}

fn list_of(element: BoxedStrategy<String>, max: usize) -> BoxedStrategy<String> {
    prop::collection::vec(element, 0..max).prop_map(|items| format!("[{}]", items.join(","))).boxed()
}

fn value_field() -> BoxedStrategy<String> {
    prop_oneof![4 => number_text(), 4 => string_text(), 1 => any_json()].boxed()
}

/// An OTLP metrics request, mostly well-formed, with serde's odd shapes mixed in.
fn otlp_document() -> BoxedStrategy<String> {
    let any_value = record(vec![
        ("stringValue", value_field()),
        ("intValue", value_field()),
        ("doubleValue", value_field()),
        ("boolValue", prop_oneof![Just("true".to_owned()), Just("false".to_owned()), value_field()].boxed()),
    ]);
    let key_value = record(vec![("key", string_text().boxed()), ("value", any_value)]);
    let attributes = list_of(key_value, 4);
    let point = record(vec![
        ("attributes", attributes.clone()),
        ("timeUnixNano", value_field()),
        ("asDouble", value_field()),
        ("asInt", value_field()),
    ]);
    let points = record(vec![("dataPoints", list_of(point, 3))]);
    let metric = record(vec![("name", string_text().boxed()), ("gauge", points.clone()), ("sum", points)]);
    let scope = record(vec![("metrics", list_of(metric, 4))]);
    let resource = record(vec![("attributes", attributes)]);
    let resource_metrics = record(vec![("resource", resource), ("scopeMetrics", list_of(scope, 2))]);
    (list_of(resource_metrics, 3), prop::collection::vec(any_json(), 0..2))
        .prop_map(|(rms, unknown)| {
            let mut entries = vec![format!("\"resourceMetrics\":{rms}")];
            entries.extend(unknown.iter().map(|u| format!("\"extra\":{u}")));
            format!("{{{}}}", entries.join(","))
        })
        .boxed()
}

/// A byte string with a few random edits, biased to JSON's own bytes.
fn mutated(base: BoxedStrategy<String>) -> impl Strategy<Value = Vec<u8>> {
    let byte = prop_oneof![any::<u8>(), prop::sample::select(b"{}[],:\"\\0123456789.eE-+ntfu ".to_vec()),];
    (base, prop::collection::vec((any::<prop::sample::Index>(), byte, 0u8..4), 1..6)).prop_map(|(base, edits)| {
        let mut bytes = base.into_bytes();
        for (at, byte, kind) in edits {
            let at = at.index(bytes.len() + 1);
            match kind {
                0 if at < bytes.len() => bytes[at] = byte,
                1 => bytes.truncate(at),
                2 if at < bytes.len() => {
                    bytes.remove(at);
                }
                _ => bytes.insert(at, byte),
            }
        }
        bytes
    })
}

fn agent_body() -> BoxedStrategy<String> {
    ("[a-z0-9-]{0,12}", number_text(), "[a-z]{0,4}")
        .prop_map(|(node, score, cohort)| agent_push(&node, &score, Some("c"), &cohort).py())
        .boxed()
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn generated_documents_agree(body in otlp_document()) {
        let _ = check(body.as_bytes());
    }

    #[test]
    fn agent_pushes_agree(body in agent_body()) {
        let _ = check(body.as_bytes());
    }

    #[test]
    fn mutated_documents_agree(body in mutated(otlp_document())) {
        let _ = check(&body);
    }

    #[test]
    fn mutated_agent_pushes_agree(body in mutated(agent_body())) {
        let _ = check(&body);
    }

    #[test]
    fn arbitrary_json_agrees(body in any_json()) {
        let _ = check(body.as_bytes());
        let _ = check(format!("{{\"resourceMetrics\":{body}}}").as_bytes());
    }

    #[test]
    fn arbitrary_bytes_agree(body in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = check(&body);
    }
}

/// How many generated documents of each kind decode: the generators must reach
/// both outcomes, or the properties above test only one side.
#[test]
fn generators_reach_both_outcomes() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let (mut decoded, mut refused) = (0, 0);
    for _ in 0..500 {
        if let Ok(tree) = otlp_document().new_tree(&mut runner) {
            if check(tree.current().as_bytes()) {
                decoded += 1;
            } else {
                refused += 1;
            }
        }
    }
    println!("generated documents: {decoded} decoded, {refused} refused");
    assert!(decoded > 50 && refused > 50, "{decoded} decoded, {refused} refused");
}
