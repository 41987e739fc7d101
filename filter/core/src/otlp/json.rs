//! OTLP/HTTP JSON (the protobuf JSON mapping: camelCase keys, int64 as number or string).

use super::{AnyValue, ExportRequest, KeyValue, Metric, NumberPoint, PointValue, ResourceMetrics};
use crate::error::FleetError;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::fmt;

pub(super) fn decode(body: &[u8]) -> Result<ExportRequest, FleetError> {
    // serde would also accept a struct spelled as a JSON list; OTLP bodies are objects.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(FleetError::BadJson("the body must be a JSON object".into()));
    }
    if nesting_depth(body) > MAX_DEPTH {
        return Err(FleetError::BadJson(format!("nesting deeper than {MAX_DEPTH} levels")));
    }
    let raw: RawRequest = serde_json::from_slice(body).map_err(|e| FleetError::BadJson(e.to_string()))?;
    Ok(ExportRequest { resource_metrics: raw.resource_metrics.into_iter().map(Into::into).collect() })
}

/// OTLP metrics nest about ten levels; anything far deeper is an attack, refused
/// before parsing (serde skips unknown fields without a depth limit).
const MAX_DEPTH: usize = 64;

/// The deepest `{`/`[` nesting outside strings.
fn nesting_depth(body: &[u8]) -> usize {
    let (mut depth, mut deepest, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in body {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'{' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    deepest
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawRequest {
    #[serde(default)]
    resource_metrics: Vec<RawResourceMetrics>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawResourceMetrics {
    #[serde(default)]
    resource: RawResource,
    #[serde(default)]
    scope_metrics: Vec<RawScopeMetrics>,
}

#[derive(Deserialize, Default)]
struct RawResource {
    #[serde(default)]
    attributes: Vec<RawKeyValue>,
}

#[derive(Deserialize)]
struct RawScopeMetrics {
    #[serde(default)]
    metrics: Vec<RawMetric>,
}

#[derive(Deserialize)]
struct RawMetric {
    #[serde(default)]
    name: String,
    gauge: Option<RawPoints>,
    sum: Option<RawPoints>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPoints {
    #[serde(default)]
    data_points: Vec<RawPoint>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPoint {
    #[serde(default)]
    attributes: Vec<RawKeyValue>,
    time_unix_nano: Option<Lenient>,
    as_double: Option<Lenient>,
    as_int: Option<Lenient>,
}

#[derive(Deserialize)]
struct RawKeyValue {
    key: String,
    #[serde(default)]
    value: RawAnyValue,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawAnyValue {
    string_value: Option<Lenient>,
    int_value: Option<Lenient>,
    double_value: Option<Lenient>,
    bool_value: Option<Lenient>,
}

// === conversions into the model ===

impl From<RawResourceMetrics> for ResourceMetrics {
    fn from(raw: RawResourceMetrics) -> Self {
        let metrics = raw.scope_metrics.into_iter().flat_map(|s| s.metrics).map(Metric::from).collect();
        Self { attributes: key_values(raw.resource.attributes), metrics }
    }
}

impl From<RawMetric> for Metric {
    fn from(raw: RawMetric) -> Self {
        let points = raw.gauge.or(raw.sum).map(|p| p.data_points).unwrap_or_default();
        Self { name: raw.name, points: points.into_iter().map(NumberPoint::from).collect() }
    }
}

impl From<RawPoint> for NumberPoint {
    fn from(raw: RawPoint) -> Self {
        let value = match (raw.as_double, raw.as_int) {
            (Some(v), _) => v.into_double(),
            (None, Some(v)) => v.into_int(),
            (None, None) => PointValue::Missing,
        };
        let time_unix_nano = match raw.time_unix_nano {
            Some(Lenient::Int(t)) => u64::try_from(t).unwrap_or(0),
            Some(Lenient::Text(t)) => t.trim().parse().unwrap_or(0),
            _ => 0,
        };
        Self { attributes: key_values(raw.attributes), time_unix_nano, value }
    }
}

fn key_values(raw: Vec<RawKeyValue>) -> Vec<KeyValue> {
    raw.into_iter().map(|kv| KeyValue { key: kv.key, value: kv.value.into() }).collect()
}

impl From<RawAnyValue> for AnyValue {
    fn from(raw: RawAnyValue) -> Self {
        if let Some(Lenient::Text(s)) = raw.string_value {
            return AnyValue::String(s);
        }
        if let Some(PointValue::Int(i)) = raw.int_value.map(Lenient::into_int) {
            return AnyValue::Int(i);
        }
        if let Some(PointValue::Double(d)) = raw.double_value.map(Lenient::into_double) {
            return AnyValue::Double(d);
        }
        match raw.bool_value {
            Some(Lenient::Bool(b)) => AnyValue::Bool(b),
            _ => AnyValue::Other,
        }
    }
}

// === impl Lenient ===

/// Any JSON value, kept as far as Fleet cares; structure errors inside it are impossible.
enum Lenient {
    Int(i64),
    Float(f64),
    Text(String),
    Bool(bool),
    /// An object, list or out-of-range number; the text names it.
    Other(&'static str),
}

impl Lenient {
    fn into_double(self) -> PointValue {
        match self {
            Self::Int(i) => PointValue::Double(i as f64),
            Self::Float(f) => PointValue::Double(f),
            // The protobuf JSON mapping spells non-finite doubles as strings.
            Self::Text(t) => match t.as_str() {
                "NaN" => PointValue::Double(f64::NAN),
                "Infinity" => PointValue::Double(f64::INFINITY),
                "-Infinity" => PointValue::Double(f64::NEG_INFINITY),
                _ => match t.trim().parse::<f64>() {
                    Ok(v)
                        if !t.trim().is_empty()
                            && t.trim().bytes().all(|b| b.is_ascii_digit() || b".+-eE".contains(&b)) =>
                    {
                        PointValue::Double(v)
                    }
                    _ => PointValue::Invalid(format!("the string {t:?}")),
                },
            },
            other => other.describe(),
        }
    }

    fn into_int(self) -> PointValue {
        match self {
            Self::Int(i) => PointValue::Int(i),
            Self::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => PointValue::Int(f as i64),
            Self::Text(t) => match t.trim().parse::<i64>() {
                Ok(i) => PointValue::Int(i),
                Err(_) => PointValue::Invalid(format!("the string {t:?}")),
            },
            other => other.describe(),
        }
    }

    fn describe(self) -> PointValue {
        PointValue::Invalid(match self {
            Self::Bool(_) => "a boolean".into(),
            Self::Float(f) => format!("the number {f}"),
            Self::Other(what) => what.into(),
            Self::Int(i) => format!("the number {i}"),
            Self::Text(t) => format!("the string {t:?}"),
        })
    }
}

impl<'de> Deserialize<'de> for Lenient {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor)
    }
}

struct LenientVisitor;

impl<'de> Visitor<'de> for LenientVisitor {
    type Value = Lenient;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Lenient, E> {
        Ok(Lenient::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Lenient, E> {
        Ok(i64::try_from(v).map_or(Lenient::Float(v as f64), Lenient::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Lenient, E> {
        Ok(Lenient::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Lenient, E> {
        Ok(Lenient::Text(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Lenient, E> {
        Ok(Lenient::Text(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Lenient, E> {
        Ok(Lenient::Bool(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Lenient, E> {
        Ok(Lenient::Other("null"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Lenient, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Lenient::Other("an object"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Lenient, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Lenient::Other("a list"))
    }
}
