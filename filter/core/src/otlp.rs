//! The subset of OTLP metrics Fleet reads, decoded from JSON or protobuf into one model.
//!
//! Structure is strict (a wrong shape is a 400), values are lenient: a score
//! of the wrong type must become a per-point rejection, not a failed push.

mod json;
mod json_scan;
mod proto;

pub use json_scan::value as json_value;

pub use proto::{ExportMetricsPartialSuccess, ExportMetricsServiceResponse, RpcStatus};

use crate::error::FleetError;
use std::borrow::Cow;

/// An `ExportMetricsServiceRequest`, reduced to what Fleet reads. Strings borrow
/// from the body where they can: decoding is the largest cost of a push.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ExportRequest<'a> {
    pub resource_metrics: Vec<ResourceMetrics<'a>>,
}

/// One resource (one agent) and its metrics, scopes flattened.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ResourceMetrics<'a> {
    pub attributes: Vec<KeyValue<'a>>,
    pub metrics: Vec<Metric<'a>>,
}

/// A gauge or sum with its number data points; other kinds have no points here.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Metric<'a> {
    pub name: Cow<'a, str>,
    pub points: Vec<NumberPoint<'a>>,
}

/// One number data point.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct NumberPoint<'a> {
    pub attributes: Vec<KeyValue<'a>>,
    pub time_unix_nano: u64,
    pub value: PointValue,
}

/// A data point's value as it arrived, valid or not.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum PointValue {
    Double(f64),
    Int(i64),
    /// A value that is not a number; the text says what it was.
    Invalid(String),
    #[default]
    Missing,
}

impl PointValue {
    /// The value as a float, or why it is not one.
    pub fn as_f64(&self) -> Result<f64, String> {
        match self {
            Self::Double(v) => Ok(*v),
            Self::Int(v) => Ok(*v as f64),
            Self::Invalid(what) => Err(what.clone()),
            Self::Missing => Err("no value".into()),
        }
    }
}

/// An attribute.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyValue<'a> {
    pub key: Cow<'a, str>,
    pub value: AnyValue<'a>,
}

/// An attribute value; arrays, maps and bytes are not read by Fleet.
#[derive(Debug, Clone, PartialEq, Default)]
pub enum AnyValue<'a> {
    String(Cow<'a, str>),
    Int(i64),
    Double(f64),
    Bool(bool),
    #[default]
    Other,
}

impl AnyValue<'_> {
    /// The value as text, when it is a string.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an integer, from an int, an integral double or a numeric string.
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Self::Int(v) => Some(*v),
            Self::Double(v) if v.fract() == 0.0 && v.is_finite() => Some(*v as i64),
            Self::String(s) => s.trim().parse().ok(),
            _ => None,
        }
    }
}

/// Looks up an attribute by key.
pub fn attribute<'v, 'a>(attributes: &'v [KeyValue<'a>], key: &str) -> Option<&'v AnyValue<'a>> {
    attributes.iter().find(|kv| kv.key == key).map(|kv| &kv.value)
}

/// The two OTLP/HTTP body encodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFormat {
    Json,
    Protobuf,
}

impl<'a> ExportRequest<'a> {
    /// Decodes a (decompressed) body.
    pub fn decode(format: BodyFormat, body: &'a [u8]) -> Result<Self, FleetError> {
        match format {
            BodyFormat::Json => json_scan::decode(body),
            BodyFormat::Protobuf => proto::decode(body),
        }
    }

    /// Decodes OTLP JSON with the hand-written scanner (`otlp/json_scan.rs`).
    pub fn decode_json_scan(body: &'a [u8]) -> Result<Self, FleetError> {
        json_scan::decode(body)
    }

    /// Decodes OTLP JSON with serde, the reference the scanner must agree with
    /// (differential test and fuzz target); not on the request path.
    pub fn decode_json_serde(body: &'a [u8]) -> Result<Self, FleetError> {
        json::decode(body)
    }

    /// Whether the scanner and the serde reference agree on `body`: `Ok(true)` when
    /// both decode it to the same request (compared bit for bit through `Debug`),
    /// `Ok(false)` when both refuse it with the same error variant and status
    /// (the message after the variant's prefix may differ), `Err` saying how they
    /// differ otherwise. The differential test and the fuzz target call it.
    pub fn json_decoders_agree(body: &[u8]) -> Result<bool, String> {
        match (json_scan::decode(body), json::decode(body)) {
            (Ok(scan), Ok(serde)) => {
                let (scan, serde) = (format!("{scan:?}"), format!("{serde:?}"));
                if scan == serde {
                    Ok(true)
                } else {
                    Err(format!("decoded differently:\n scan:  {scan}\n serde: {serde}"))
                }
            }
            (Err(scan), Err(serde)) => {
                if std::mem::discriminant(&scan) == std::mem::discriminant(&serde) && scan.status() == serde.status() {
                    Ok(false)
                } else {
                    Err(format!("refused differently: scan {scan:?}, serde {serde:?}"))
                }
            }
            (scan, serde) => Err(format!("one refused: scan {scan:?}, serde {serde:?}")),
        }
    }

    /// Whether [`json_value`] reads `body` as `serde_json::from_slice` does: `Ok(true)`
    /// when both give the same value (compared through `Debug`, so `-0.0` and
    /// integer kinds count), `Ok(false)` when both refuse it, or when the scanner
    /// alone refuses a document nested deeper than its limit; `Err` says how they
    /// differ otherwise. The differential test and the fuzz target call it.
    pub fn json_values_agree(body: &[u8]) -> Result<bool, String> {
        match (json_value(body), serde_json::from_slice::<serde_json::Value>(body)) {
            (Ok(scan), Ok(serde)) if format!("{scan:?}") == format!("{serde:?}") => Ok(true),
            (Err(_), Err(_)) => Ok(false),
            (Err(scan), Ok(_)) if scan.starts_with("nesting deeper than") => Ok(false),
            (scan, serde) => Err(format!("read differently: scan {scan:?}, serde {serde:?}")),
        }
    }

    /// Number of data points in the request.
    pub fn point_count(&self) -> usize {
        self.resource_metrics.iter().flat_map(|r| &r.metrics).map(|m| m.points.len()).sum()
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A realistic agent push as OTLP JSON, the way the Ingero agent sends it.
    pub fn agent_json(node: &str, score: &str) -> String {
        format!(
            r#"{{"resourceMetrics":[{{"resource":{{"attributes":[
              {{"key":"ingero.node.id","value":{{"stringValue":"{node}"}}}},
              {{"key":"ingero.cluster.id","value":{{"stringValue":"c1"}}}},
              {{"key":"ingero.world_size","value":{{"intValue":"8"}}}},
              {{"key":"ingero.node.rank","value":{{"intValue":3}}}}]}},
             "scopeMetrics":[{{"scope":{{"name":"ingero.health"}},"metrics":[
              {{"name":"ingero.node.health_score","gauge":{{"dataPoints":[{{"timeUnixNano":"1700000000000000000",
                "asDouble":{score},"attributes":[{{"key":"ingero.node.state","value":{{"stringValue":"active"}}}},
                {{"key":"ingero.cgroup_path_hash","value":{{"stringValue":""}}}}]}}]}}}},
              {{"name":"ingero.node.throughput_ratio","gauge":{{"dataPoints":[{{"timeUnixNano":1700000000000000000,"asDouble":0.97}}]}}}},
              {{"name":"ingero.node.pushes_total","sum":{{"aggregationTemporality":2,"isMonotonic":true,
                "dataPoints":[{{"asInt":"12","timeUnixNano":"1700000000000000000"}}]}}}}]}}]}}]}}"#
        )
    }

    #[test]
    fn json_and_protobuf_decode_to_the_same_model() {
        let body = agent_json("n1", "0.93");
        let from_json = ExportRequest::decode(BodyFormat::Json, body.as_bytes()).unwrap_or_default();
        let bytes = proto::encode_for_tests(&from_json);
        let from_proto = ExportRequest::decode(BodyFormat::Protobuf, &bytes).unwrap_or_default();
        assert_eq!(from_json.resource_metrics.len(), 1);
        assert_eq!(from_json, from_proto);
        let metrics = &from_json.resource_metrics[0].metrics;
        assert_eq!(metrics[0].points[0].value, PointValue::Double(0.93));
        assert_eq!(metrics[0].points[0].time_unix_nano, 1_700_000_000_000_000_000);
        assert_eq!(metrics[2].points[0].value, PointValue::Int(12));
        assert_eq!(
            attribute(&from_json.resource_metrics[0].attributes, "ingero.world_size").and_then(AnyValue::as_i64),
            Some(8)
        );
    }

    #[test]
    fn values_of_the_wrong_type_are_kept_as_invalid() {
        for (raw, expect) in [
            ("\"0.5\"", PointValue::Double(0.5)),
            ("\"NaN\"", PointValue::Double(f64::NAN)),
            ("\"Infinity\"", PointValue::Double(f64::INFINITY)),
            ("\"abc\"", PointValue::Invalid("the string \"abc\"".into())),
            ("true", PointValue::Invalid("a boolean".into())),
            ("{\"a\":1}", PointValue::Invalid("an object".into())),
            ("[1]", PointValue::Invalid("a list".into())),
            ("null", PointValue::Missing),
        ] {
            let body = agent_json("n1", raw);
            let req = ExportRequest::decode(BodyFormat::Json, body.as_bytes()).unwrap_or_default();
            let got = &req.resource_metrics[0].metrics[0].points[0].value;
            match (got, &expect) {
                (PointValue::Double(a), PointValue::Double(b)) if a.is_nan() && b.is_nan() => {}
                _ => assert_eq!(got, &expect, "for {raw}"),
            }
        }
    }

    #[test]
    fn bad_shapes_are_whole_request_errors() {
        for body in ["", "[]", "{\"resourceMetrics\":{}}", "{\"resourceMetrics\":[", "nul", "\"x\""] {
            assert!(
                matches!(ExportRequest::decode(BodyFormat::Json, body.as_bytes()), Err(FleetError::BadJson(_))),
                "{body}"
            );
        }
        let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
        let body = format!("{{\"resourceMetrics\":[{{\"resource\":{{\"attributes\":[{{\"key\":\"k\",\"value\":{{\"arrayValue\":{deep}}}}}]}}}}]}}");
        assert!(matches!(ExportRequest::decode(BodyFormat::Json, body.as_bytes()), Err(FleetError::BadJson(_))));
        assert!(matches!(
            ExportRequest::decode(BodyFormat::Json, b"{\"resourceMetrics\":[]}\xff"),
            Err(FleetError::BadJson(_))
        ));
        assert!(matches!(
            ExportRequest::decode(BodyFormat::Protobuf, b"\x0a\x05\x01"),
            Err(FleetError::BadProtobuf(_))
        ));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let body = r#"{"resourceMetrics":[{"schemaUrl":"x","resource":{"attributes":[],"droppedAttributesCount":0},
            "scopeMetrics":[{"scope":{"name":"s","version":"1"},"metrics":[{"name":"h","histogram":{"dataPoints":[{"count":"1"}]}}]}]}],"future":1}"#;
        let req = ExportRequest::decode(BodyFormat::Json, body.as_bytes()).unwrap_or_default();
        assert_eq!(req.resource_metrics[0].metrics[0].name, "h");
        assert!(req.resource_metrics[0].metrics[0].points.is_empty());
    }
}
