//! OTLP protobuf: the fields Fleet reads of `opentelemetry.proto.*`, declared with prost
//! derives (no `protoc` at build time). Unlisted fields are skipped by prost.

use super::{AnyValue, ExportRequest, KeyValue, Metric, NumberPoint, PointValue, ResourceMetrics};
use crate::error::FleetError;
use prost::Message;
use std::borrow::Cow;

pub(super) fn decode(body: &[u8]) -> Result<ExportRequest<'static>, FleetError> {
    let raw = ExportMetricsServiceRequest::decode(body).map_err(|e| FleetError::BadProtobuf(e.to_string()))?;
    Ok(ExportRequest { resource_metrics: raw.resource_metrics.into_iter().map(Into::into).collect() })
}

#[derive(Clone, PartialEq, Message)]
struct ExportMetricsServiceRequest {
    #[prost(message, repeated, tag = "1")]
    resource_metrics: Vec<PbResourceMetrics>,
}

#[derive(Clone, PartialEq, Message)]
struct PbResourceMetrics {
    #[prost(message, optional, tag = "1")]
    resource: Option<PbResource>,
    #[prost(message, repeated, tag = "2")]
    scope_metrics: Vec<PbScopeMetrics>,
}

#[derive(Clone, PartialEq, Message)]
struct PbResource {
    #[prost(message, repeated, tag = "1")]
    attributes: Vec<PbKeyValue>,
}

#[derive(Clone, PartialEq, Message)]
struct PbScopeMetrics {
    #[prost(message, repeated, tag = "2")]
    metrics: Vec<PbMetric>,
}

#[derive(Clone, PartialEq, Message)]
struct PbMetric {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(oneof = "PbData", tags = "5, 7")]
    data: Option<PbData>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum PbData {
    #[prost(message, tag = "5")]
    Gauge(PbPoints),
    #[prost(message, tag = "7")]
    Sum(PbPoints),
}

/// `Gauge` and `Sum` share field 1, `data_points`.
#[derive(Clone, PartialEq, Message)]
struct PbPoints {
    #[prost(message, repeated, tag = "1")]
    data_points: Vec<PbNumberDataPoint>,
}

#[derive(Clone, PartialEq, Message)]
struct PbNumberDataPoint {
    #[prost(message, repeated, tag = "7")]
    attributes: Vec<PbKeyValue>,
    #[prost(fixed64, tag = "3")]
    time_unix_nano: u64,
    #[prost(oneof = "PbNumber", tags = "4, 6")]
    value: Option<PbNumber>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum PbNumber {
    #[prost(double, tag = "4")]
    AsDouble(f64),
    #[prost(sfixed64, tag = "6")]
    AsInt(i64),
}

#[derive(Clone, PartialEq, Message)]
struct PbKeyValue {
    #[prost(string, tag = "1")]
    key: String,
    #[prost(message, optional, tag = "2")]
    value: Option<PbAnyValue>,
}

#[derive(Clone, PartialEq, Message)]
struct PbAnyValue {
    #[prost(oneof = "PbAny", tags = "1, 2, 3, 4")]
    value: Option<PbAny>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
enum PbAny {
    #[prost(string, tag = "1")]
    String(String),
    #[prost(bool, tag = "2")]
    Bool(bool),
    #[prost(int64, tag = "3")]
    Int(i64),
    #[prost(double, tag = "4")]
    Double(f64),
}

/// `ExportMetricsServiceResponse`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportMetricsServiceResponse {
    #[prost(message, optional, tag = "1")]
    pub partial_success: Option<ExportMetricsPartialSuccess>,
}

/// `ExportMetricsPartialSuccess`.
#[derive(Clone, PartialEq, Message)]
pub struct ExportMetricsPartialSuccess {
    #[prost(int64, tag = "1")]
    pub rejected_data_points: i64,
    #[prost(string, tag = "2")]
    pub error_message: String,
}

/// `google.rpc.Status`, the body of OTLP/HTTP protobuf error responses.
#[derive(Clone, PartialEq, Message)]
pub struct RpcStatus {
    #[prost(int32, tag = "1")]
    pub code: i32,
    #[prost(string, tag = "2")]
    pub message: String,
}

// === conversions into the model ===

impl From<PbResourceMetrics> for ResourceMetrics<'static> {
    fn from(raw: PbResourceMetrics) -> Self {
        let metrics = raw.scope_metrics.into_iter().flat_map(|s| s.metrics).map(Metric::from).collect();
        Self { attributes: key_values(raw.resource.map(|r| r.attributes).unwrap_or_default()), metrics }
    }
}

impl From<PbMetric> for Metric<'static> {
    fn from(raw: PbMetric) -> Self {
        let points = match raw.data {
            Some(PbData::Gauge(p) | PbData::Sum(p)) => p.data_points,
            None => Vec::new(),
        };
        Self { name: Cow::Owned(raw.name), points: points.into_iter().map(NumberPoint::from).collect() }
    }
}

impl From<PbNumberDataPoint> for NumberPoint<'static> {
    fn from(raw: PbNumberDataPoint) -> Self {
        let value = match raw.value {
            Some(PbNumber::AsDouble(v)) => PointValue::Double(v),
            Some(PbNumber::AsInt(v)) => PointValue::Int(v),
            None => PointValue::Missing,
        };
        Self { attributes: key_values(raw.attributes), time_unix_nano: raw.time_unix_nano, value }
    }
}

fn key_values(raw: Vec<PbKeyValue>) -> Vec<KeyValue<'static>> {
    raw.into_iter()
        .map(|kv| {
            let value = match kv.value.and_then(|v| v.value) {
                Some(PbAny::String(s)) => AnyValue::String(Cow::Owned(s)),
                Some(PbAny::Bool(b)) => AnyValue::Bool(b),
                Some(PbAny::Int(i)) => AnyValue::Int(i),
                Some(PbAny::Double(d)) => AnyValue::Double(d),
                None => AnyValue::Other,
            };
            KeyValue { key: Cow::Owned(kv.key), value }
        })
        .collect()
}

/// Encodes the model back to protobuf, so tests can compare the two decoders.
#[cfg(test)]
pub(crate) fn encode_for_tests(req: &ExportRequest) -> Vec<u8> {
    let kvs = |attrs: &[KeyValue]| -> Vec<PbKeyValue> {
        attrs
            .iter()
            .map(|kv| PbKeyValue {
                key: kv.key.to_string(),
                value: Some(PbAnyValue {
                    value: match &kv.value {
                        AnyValue::String(s) => Some(PbAny::String(s.to_string())),
                        AnyValue::Int(i) => Some(PbAny::Int(*i)),
                        AnyValue::Double(d) => Some(PbAny::Double(*d)),
                        AnyValue::Bool(b) => Some(PbAny::Bool(*b)),
                        AnyValue::Other => None,
                    },
                }),
            })
            .collect()
    };
    let raw = ExportMetricsServiceRequest {
        resource_metrics: req
            .resource_metrics
            .iter()
            .map(|r| PbResourceMetrics {
                resource: Some(PbResource { attributes: kvs(&r.attributes) }),
                scope_metrics: vec![PbScopeMetrics {
                    metrics: r
                        .metrics
                        .iter()
                        .map(|m| PbMetric {
                            name: m.name.to_string(),
                            data: Some(PbData::Gauge(PbPoints {
                                data_points: m
                                    .points
                                    .iter()
                                    .map(|p| PbNumberDataPoint {
                                        attributes: kvs(&p.attributes),
                                        time_unix_nano: p.time_unix_nano,
                                        value: match p.value {
                                            PointValue::Double(v) => Some(PbNumber::AsDouble(v)),
                                            PointValue::Int(v) => Some(PbNumber::AsInt(v)),
                                            _ => None,
                                        },
                                    })
                                    .collect(),
                            })),
                        })
                        .collect(),
                }],
            })
            .collect(),
    };
    raw.encode_to_vec()
}
