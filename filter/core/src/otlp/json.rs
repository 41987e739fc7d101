//! OTLP/HTTP JSON (the protobuf JSON mapping: camelCase keys, int64 as number or string).

use super::{AnyValue, ExportRequest, KeyValue, Metric, NumberPoint, PointValue, ResourceMetrics};
use crate::error::FleetError;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::borrow::Cow;
use std::fmt;

/// The reference decoder (serde); `json_scan.rs` must agree with it on every input.
pub(super) fn decode(body: &[u8]) -> Result<ExportRequest<'_>, FleetError> {
    check_object(body)?;
    if nesting_depth(body) > MAX_DEPTH {
        return Err(too_deep());
    }
    let text = check_utf8(body)?;
    let raw: RawRequest = serde_json::from_str(text).map_err(|e| FleetError::BadJson(e.to_string()))?;
    Ok(ExportRequest { resource_metrics: raw.resource_metrics })
}

/// serde would also accept a struct spelled as a JSON list; OTLP bodies are objects.
pub(super) fn check_object(body: &[u8]) -> Result<(), FleetError> {
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') => Ok(()),
        _ => Err(FleetError::BadJson("the body must be a JSON object".into())),
    }
}

/// One bulk UTF-8 check is far cheaper than a check of every string.
pub(super) fn check_utf8(body: &[u8]) -> Result<&str, FleetError> {
    std::str::from_utf8(body).map_err(|e| FleetError::BadJson(format!("body is not UTF-8: {e}")))
}

/// The refusal of a body nested deeper than [`MAX_DEPTH`].
pub(super) fn too_deep() -> FleetError {
    FleetError::BadJson(format!("nesting deeper than {MAX_DEPTH} levels"))
}

/// OTLP metrics nest about ten levels; anything far deeper is an attack, refused
/// before parsing (serde skips unknown fields without a depth limit).
pub(super) const MAX_DEPTH: usize = 64;

/// The deepest `{`/`[` nesting outside strings.
pub(super) fn nesting_depth(body: &[u8]) -> usize {
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
struct RawRequest<'a> {
    #[serde(default, borrow)]
    resource_metrics: Vec<ResourceMetrics<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawResourceMetrics<'a> {
    #[serde(default, borrow)]
    resource: RawResource<'a>,
    #[serde(default, borrow)]
    scope_metrics: Vec<RawScopeMetrics<'a>>,
}

#[derive(Deserialize, Default)]
struct RawResource<'a> {
    #[serde(default, borrow)]
    attributes: Vec<KeyValue<'a>>,
}

#[derive(Deserialize)]
struct RawScopeMetrics<'a> {
    #[serde(default, borrow)]
    metrics: Vec<Metric<'a>>,
}

#[derive(Deserialize)]
struct RawMetric<'a> {
    #[serde(default, borrow)]
    name: Cow<'a, str>,
    #[serde(borrow)]
    gauge: Option<RawPoints<'a>>,
    #[serde(borrow)]
    sum: Option<RawPoints<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPoints<'a> {
    #[serde(default, borrow)]
    data_points: Vec<NumberPoint<'a>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPoint<'a> {
    #[serde(default, borrow)]
    attributes: Vec<KeyValue<'a>>,
    #[serde(borrow)]
    time_unix_nano: Option<Lenient<'a>>,
    #[serde(borrow)]
    as_double: Option<Lenient<'a>>,
    #[serde(borrow)]
    as_int: Option<Lenient<'a>>,
}

#[derive(Deserialize)]
struct RawKeyValue<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    #[serde(default, borrow)]
    value: RawAnyValue<'a>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawAnyValue<'a> {
    #[serde(borrow)]
    string_value: Option<Lenient<'a>>,
    #[serde(borrow)]
    int_value: Option<Lenient<'a>>,
    #[serde(borrow)]
    double_value: Option<Lenient<'a>>,
    #[serde(borrow)]
    bool_value: Option<Lenient<'a>>,
}

// === conversions into the model ===

/// Model types deserialize through their raw JSON shape; the conversion moves
/// the vectors it keeps instead of copying them.
macro_rules! deserialize_via {
    ($model:ident, $raw:ident) => {
        impl<'de: 'a, 'a> Deserialize<'de> for $model<'a> {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                $raw::deserialize(deserializer).map(Self::from)
            }
        }
    };
}

deserialize_via!(ResourceMetrics, RawResourceMetrics);
deserialize_via!(Metric, RawMetric);
deserialize_via!(NumberPoint, RawPoint);
deserialize_via!(KeyValue, RawKeyValue);

impl<'a> From<RawResourceMetrics<'a>> for ResourceMetrics<'a> {
    fn from(raw: RawResourceMetrics<'a>) -> Self {
        let mut scopes = raw.scope_metrics.into_iter();
        // Agents send one scope: keep its vector as is.
        let mut metrics = scopes.next().map(|s| s.metrics).unwrap_or_default();
        metrics.extend(scopes.flat_map(|s| s.metrics));
        Self { attributes: raw.resource.attributes, metrics }
    }
}

impl<'a> From<RawMetric<'a>> for Metric<'a> {
    fn from(raw: RawMetric<'a>) -> Self {
        metric(raw.name, raw.gauge.map(|p| p.data_points), raw.sum.map(|p| p.data_points))
    }
}

/// A metric from its JSON fields as read: a gauge's points win over a sum's;
/// shared with the scanner (`json_scan.rs`).
pub(super) fn metric<'a>(
    name: Cow<'a, str>,
    gauge: Option<Vec<NumberPoint<'a>>>,
    sum: Option<Vec<NumberPoint<'a>>>,
) -> Metric<'a> {
    Metric { name, points: gauge.or(sum).unwrap_or_default() }
}

impl<'a> From<RawKeyValue<'a>> for KeyValue<'a> {
    fn from(raw: RawKeyValue<'a>) -> Self {
        Self { key: raw.key, value: raw.value.into() }
    }
}

impl<'a> From<RawPoint<'a>> for NumberPoint<'a> {
    fn from(raw: RawPoint<'a>) -> Self {
        number_point(raw.attributes, raw.time_unix_nano, raw.as_double, raw.as_int)
    }
}

/// A data point from its JSON fields as read; shared with the scanner (`json_scan.rs`).
pub(super) fn number_point<'a>(
    attributes: Vec<KeyValue<'a>>,
    time_unix_nano: Option<Lenient<'a>>,
    as_double: Option<Lenient<'a>>,
    as_int: Option<Lenient<'a>>,
) -> NumberPoint<'a> {
    let value = match (as_double, as_int) {
        (Some(v), _) => v.into_double(),
        (None, Some(v)) => v.into_int(),
        (None, None) => PointValue::Missing,
    };
    let time_unix_nano = match time_unix_nano {
        Some(Lenient::Int(t)) => u64::try_from(t).unwrap_or(0),
        Some(Lenient::Text(t)) => parse_u64(&t).unwrap_or(0),
        _ => 0,
    };
    NumberPoint { attributes, time_unix_nano, value }
}

/// `text.trim().parse::<u64>()`, with a fast path for the usual plain digits.
fn parse_u64(text: &str) -> Option<u64> {
    if (1..=19).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_digit()) {
        // At most 19 digits: no overflow.
        return Some(text.bytes().fold(0, |n, b| n * 10 + u64::from(b - b'0')));
    }
    text.trim().parse().ok()
}

impl<'a> From<RawAnyValue<'a>> for AnyValue<'a> {
    fn from(raw: RawAnyValue<'a>) -> Self {
        any_value(raw.string_value, raw.int_value, raw.double_value, raw.bool_value)
    }
}

/// An attribute value from its JSON fields as read (the first usable one wins);
/// shared with the scanner (`json_scan.rs`).
pub(super) fn any_value<'a>(
    string_value: Option<Lenient<'a>>,
    int_value: Option<Lenient<'a>>,
    double_value: Option<Lenient<'a>>,
    bool_value: Option<Lenient<'a>>,
) -> AnyValue<'a> {
    if let Some(Lenient::Text(s)) = string_value {
        return AnyValue::String(s);
    }
    if let Some(PointValue::Int(i)) = int_value.map(Lenient::into_int) {
        return AnyValue::Int(i);
    }
    if let Some(PointValue::Double(d)) = double_value.map(Lenient::into_double) {
        return AnyValue::Double(d);
    }
    match bool_value {
        Some(Lenient::Bool(b)) => AnyValue::Bool(b),
        _ => AnyValue::Other,
    }
}

// === impl Lenient ===

/// Any JSON value, kept as far as Fleet cares; structure errors inside it are impossible.
pub(super) enum Lenient<'a> {
    Int(i64),
    Float(f64),
    Text(Cow<'a, str>),
    Bool(bool),
    /// An object, list or out-of-range number; the text names it.
    Other(&'static str),
}

impl Lenient<'_> {
    fn into_double(self) -> PointValue {
        match self {
            Self::Int(i) => PointValue::Double(i as f64),
            Self::Float(f) => PointValue::Double(f),
            // The protobuf JSON mapping spells non-finite doubles as strings.
            Self::Text(t) => match t.as_ref() {
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

impl<'de: 'a, 'a> Deserialize<'de> for Lenient<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(LenientVisitor(std::marker::PhantomData))
    }
}

struct LenientVisitor<'a>(std::marker::PhantomData<&'a ()>);

impl<'de: 'a, 'a> Visitor<'de> for LenientVisitor<'a> {
    type Value = Lenient<'a>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Lenient<'a>, E> {
        Ok(Lenient::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Lenient<'a>, E> {
        Ok(i64::try_from(v).map_or(Lenient::Float(v as f64), Lenient::Int))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Lenient<'a>, E> {
        Ok(Lenient::Float(v))
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Lenient<'a>, E> {
        Ok(Lenient::Text(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Lenient<'a>, E> {
        Ok(Lenient::Text(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Lenient<'a>, E> {
        Ok(Lenient::Text(Cow::Owned(v)))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Lenient<'a>, E> {
        Ok(Lenient::Bool(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Lenient<'a>, E> {
        Ok(Lenient::Other("null"))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Lenient<'a>, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Lenient::Other("an object"))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Lenient<'a>, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Lenient::Other("a list"))
    }
}
