//! OTLP/HTTP JSON read by a hand-written scanner, straight into the model.
//!
//! The serde decoder in `json.rs` is the reference: this scanner accepts exactly
//! the bodies it accepts and decodes them to the same `ExportRequest` (bit for
//! bit), and refuses every body it refuses with the same error variant
//! (`FleetError::BadJson`); only the text after "invalid OTLP JSON: " may differ.
//! `tests/json_differential.rs` and the fuzz target `otlp_json_differential`
//! check that. So it copies serde's rules, odd ones included:
//! - a struct may be a JSON object (unknown keys skipped, a repeated known key
//!   refused) or a list of its fields in declaration order (a missing field
//!   without a default refused, an extra element refused);
//! - `null` is "absent" only for the optional fields (values, `gauge`, `sum`);
//! - keys and read strings must be strict UTF-16 escapes (no lone surrogate),
//!   skipped strings only need well-formed escapes;
//! - numbers that are read follow serde_json's integer/float split and refuse
//!   an infinite float; skipped numbers are checked for syntax only.
//!
//! It is faster because it matches keys as bytes, skips unknown values without
//! visitors, borrows every string without escapes, and counts nesting while it
//! reads instead of in a pass of its own.

use super::json::{any_value, check_object, check_utf8, metric, number_point, too_deep, Lenient, MAX_DEPTH};
use super::{ExportRequest, KeyValue, NumberPoint, ResourceMetrics};
use crate::error::FleetError;
use serde_json::{Map, Number, Value};
use std::borrow::Cow;

pub(super) fn decode(body: &[u8]) -> Result<ExportRequest<'_>, FleetError> {
    check_object(body)?;
    let text = check_utf8(body)?;
    #[cfg(feature = "perf-guard-slowdown")]
    slowdown(body);
    let mut scanner = Scanner { text, bytes: body, pos: 0, depth: 0 };
    scanner.request().map_err(|fail| fail.into_error(body))
}

/// Any JSON document as the `serde_json::Value` that `serde_json::from_slice`
/// gives (`tests/json_differential.rs` checks that), read by this scanner so the
/// filter carries no JSON deserializer besides it. Nesting stops at 64 levels.
pub fn value(body: &[u8]) -> Result<Value, String> {
    let text = std::str::from_utf8(body).map_err(|e| format!("not UTF-8: {e}"))?;
    let mut scanner = Scanner { text, bytes: body, pos: 0, depth: 0 };
    let read = scanner.any().and_then(|value| match scanner.ws() {
        Some(_) => scanner.fail("trailing characters"),
        None => Ok(value),
    });
    read.map_err(|fail| fail.message(body))
}

/// A deliberate regression, compiled only with the `perf-guard-slowdown` feature
/// (never in a release or test build of the project): the separate nesting pass
/// the scanner saves. `docs/perf-guard.md` shows the CI guard catching it.
#[cfg(feature = "perf-guard-slowdown")]
fn slowdown(body: &[u8]) {
    std::hint::black_box(super::json::nesting_depth(std::hint::black_box(body)));
}

/// Why and where a body was refused.
struct Fail {
    at: usize,
    what: &'static str,
}

/// The message of a refusal that is not about a position in the body.
const TOO_DEEP: &str = "nesting too deep";

impl Fail {
    #[cold]
    fn into_error(self, body: &[u8]) -> FleetError {
        if self.what == TOO_DEEP {
            return too_deep();
        }
        FleetError::BadJson(self.message(body))
    }

    /// What was refused, and at which line and column.
    #[cold]
    fn message(self, body: &[u8]) -> String {
        if self.what == TOO_DEEP {
            return format!("nesting deeper than {MAX_DEPTH} levels");
        }
        let before = &body[..self.at.min(body.len())];
        let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
        let column = before.len() - before.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1) + 1;
        format!("{} at line {line} column {column}", self.what)
    }
}

type Scan<T> = Result<T, Fail>;

/// Field bitmasks: which fields of a struct serde requires in its list form.
const NONE_REQUIRED: u8 = 0;

struct Scanner<'a> {
    text: &'a str,
    bytes: &'a [u8],
    pos: usize,
    depth: usize,
}

impl<'a> Scanner<'a> {
    // === the OTLP structure ===

    fn request(&mut self) -> Scan<ExportRequest<'a>> {
        if self.ws() != Some(b'{') {
            return self.fail("expected an object");
        }
        let mut resource_metrics = Vec::new();
        self.record(["resourceMetrics"], NONE_REQUIRED, |s, _| {
            s.list(|s| {
                resource_metrics.push(s.resource_metrics()?);
                Ok(())
            })
        })?;
        if self.ws().is_some() {
            return self.fail("trailing characters");
        }
        Ok(ExportRequest { resource_metrics })
    }

    fn resource_metrics(&mut self) -> Scan<ResourceMetrics<'a>> {
        let (mut attributes, mut metrics) = (Vec::new(), Vec::new());
        self.record(["resource", "scopeMetrics"], NONE_REQUIRED, |s, field| match field {
            0 => s.record(["attributes"], NONE_REQUIRED, |s, _| {
                attributes = s.key_values()?;
                Ok(())
            }),
            // Scopes are flattened: their metrics follow each other in order.
            _ => s.list(|s| {
                s.record(["metrics"], NONE_REQUIRED, |s, _| {
                    s.list(|s| {
                        if metrics.is_empty() {
                            // An agent sends about a dozen: one allocation instead of three.
                            metrics.reserve(16);
                        }
                        metrics.push(s.metric()?);
                        Ok(())
                    })
                })
            }),
        })?;
        Ok(ResourceMetrics { attributes, metrics })
    }

    fn metric(&mut self) -> Scan<super::Metric<'a>> {
        let (mut name, mut gauge, mut sum) = (Cow::Borrowed(""), None, None);
        self.record(["name", "gauge", "sum"], 0b110, |s, field| {
            match field {
                0 => name = s.string()?,
                1 => gauge = s.points()?,
                _ => sum = s.points()?,
            }
            Ok(())
        })?;
        Ok(metric(name, gauge, sum))
    }

    /// An optional `Gauge` or `Sum`: its data points.
    fn points(&mut self) -> Scan<Option<Vec<NumberPoint<'a>>>> {
        if self.ws() == Some(b'n') {
            return self.literal(b"null").map(|()| None);
        }
        let mut points = Vec::new();
        self.record(["dataPoints"], NONE_REQUIRED, |s, _| {
            s.list(|s| {
                points.push(s.point()?);
                Ok(())
            })
        })?;
        Ok(Some(points))
    }

    fn point(&mut self) -> Scan<NumberPoint<'a>> {
        let mut attributes = Vec::new();
        let (mut time, mut as_double, mut as_int) = (None, None, None);
        self.record(["attributes", "timeUnixNano", "asDouble", "asInt"], 0b1110, |s, field| {
            match field {
                0 => attributes = s.key_values()?,
                1 => time = s.optional_value()?,
                2 => as_double = s.optional_value()?,
                _ => as_int = s.optional_value()?,
            }
            Ok(())
        })?;
        Ok(number_point(attributes, time, as_double, as_int))
    }

    fn key_values(&mut self) -> Scan<Vec<KeyValue<'a>>> {
        let mut out = Vec::new();
        self.list(|s| {
            if out.is_empty() {
                // A resource has about eight: one allocation instead of two.
                out.reserve(8);
            }
            out.push(s.key_value()?);
            Ok(())
        })?;
        Ok(out)
    }

    fn key_value(&mut self) -> Scan<KeyValue<'a>> {
        let mut key = None;
        let mut values: [Option<Lenient<'a>>; 4] = [None, None, None, None];
        self.record(["key", "value"], 0b01, |s, field| match field {
            0 => {
                key = Some(s.string()?);
                Ok(())
            }
            _ => s.record(["stringValue", "intValue", "doubleValue", "boolValue"], 0b1111, |s, kind| {
                values[kind] = s.optional_value()?;
                Ok(())
            }),
        })?;
        let Some(key) = key else {
            return self.fail("missing field `key`");
        };
        let [string, int, double, boolean] = values;
        Ok(KeyValue { key, value: any_value(string, int, double, boolean) })
    }

    // === serde's shapes ===

    /// A struct as serde's derive reads it from JSON: an object, or a list of the
    /// fields in order. `field(scanner, index)` reads the value of field `index`;
    /// bit `index` of `required` says the list form must have that field.
    fn record<const N: usize>(
        &mut self,
        names: [&str; N],
        required: u8,
        mut field: impl FnMut(&mut Self, usize) -> Scan<()>,
    ) -> Scan<()> {
        match self.ws() {
            Some(b'{') => {
                let mut seen = 0u8;
                self.open()?;
                if self.first_key()? {
                    return Ok(());
                }
                loop {
                    let index = self.field_name(&names)?;
                    self.colon()?;
                    match index {
                        Some(index) if seen & (1 << index) != 0 => return self.fail("duplicate field"),
                        Some(index) => {
                            seen |= 1 << index;
                            field(self, index)?;
                        }
                        None => self.skip()?,
                    }
                    if self.next_key()? {
                        return Ok(());
                    }
                }
            }
            Some(b'[') => {
                self.open()?;
                let mut ended = false;
                for index in 0..N {
                    if !ended {
                        match self.ws() {
                            Some(b']') => ended = true,
                            Some(b',') if index > 0 => self.pos += 1,
                            _ if index == 0 => {}
                            _ => return self.fail("expected `,` or `]`"),
                        }
                    }
                    if !ended {
                        field(self, index)?;
                    } else if required & (1 << index) != 0 {
                        return self.fail("invalid length: a field is missing from the list");
                    }
                }
                if self.ws() != Some(b']') {
                    return self.fail("trailing elements in a struct list");
                }
                self.pos += 1;
                self.depth -= 1;
                Ok(())
            }
            _ => self.fail("invalid type: expected a struct"),
        }
    }

    /// A key at its `"`: the index of the field it names, if any. The field names
    /// are plain ASCII, so a key spelled exactly as one is that field: compared
    /// in place, it needs no scan; any other key is read strictly and compared.
    #[inline(always)]
    fn field_name<const N: usize>(&mut self, names: &[&str; N]) -> Scan<Option<usize>> {
        let at = self.pos + 1;
        for (index, name) in names.iter().enumerate() {
            let end = at + name.len();
            if self.bytes.get(at..end) == Some(name.as_bytes()) && self.bytes.get(end) == Some(&b'"') {
                self.pos = end + 1;
                return Ok(Some(index));
            }
        }
        let key = self.strict_string()?;
        Ok(names.iter().position(|name| *name == key))
    }

    /// A JSON list; `element` reads each element.
    fn list(&mut self, mut element: impl FnMut(&mut Self) -> Scan<()>) -> Scan<()> {
        if self.ws() != Some(b'[') {
            return self.fail("invalid type: expected a list");
        }
        self.open()?;
        if self.ws() == Some(b']') {
            self.pos += 1;
            self.depth -= 1;
            return Ok(());
        }
        loop {
            element(self)?;
            match self.ws() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                _ => return self.fail("expected `,` or `]`"),
            }
        }
    }

    /// A JSON object at `{`; keys are read strictly, `entry(scanner, key)` reads each value.
    fn object(&mut self, mut entry: impl FnMut(&mut Self, Cow<'a, str>) -> Scan<()>) -> Scan<()> {
        self.open()?;
        if self.first_key()? {
            return Ok(());
        }
        loop {
            let key = self.strict_string()?;
            self.colon()?;
            entry(self, key)?;
            if self.next_key()? {
                return Ok(());
            }
        }
    }

    /// Just after `{`: true when the object is empty (its `}` read), else at the first key.
    #[inline(always)]
    fn first_key(&mut self) -> Scan<bool> {
        match self.ws() {
            Some(b'}') => {
                self.pos += 1;
                self.depth -= 1;
                Ok(true)
            }
            Some(b'"') => Ok(false),
            _ => self.fail("key must be a string"),
        }
    }

    /// The `:` after a key.
    #[inline(always)]
    fn colon(&mut self) -> Scan<()> {
        if self.ws() != Some(b':') {
            return self.fail("expected `:`");
        }
        self.pos += 1;
        Ok(())
    }

    /// After a member's value: true when `}` ended the object, else at the next key.
    #[inline(always)]
    fn next_key(&mut self) -> Scan<bool> {
        match self.ws() {
            Some(b',') => {
                self.pos += 1;
                if self.ws() != Some(b'"') {
                    return self.fail("key must be a string");
                }
                Ok(false)
            }
            Some(b'}') => {
                self.pos += 1;
                self.depth -= 1;
                Ok(true)
            }
            _ => self.fail("expected `,` or `}`"),
        }
    }

    /// Steps into a `{` or `[`, counting the nesting.
    fn open(&mut self) -> Scan<()> {
        self.pos += 1;
        self.depth += 1;
        if self.depth > MAX_DEPTH {
            return self.fail(TOO_DEEP);
        }
        Ok(())
    }

    // === values ===

    /// A string value (a metric name, an attribute key).
    fn string(&mut self) -> Scan<Cow<'a, str>> {
        if self.ws() != Some(b'"') {
            return self.fail("invalid type: expected a string");
        }
        self.strict_string()
    }

    /// An optional value of any type (`null` is absent), kept as serde's `Lenient` keeps it.
    fn optional_value(&mut self) -> Scan<Option<Lenient<'a>>> {
        match self.ws() {
            Some(b'n') => self.literal(b"null").map(|()| None),
            Some(b'"') => Ok(Some(Lenient::Text(self.strict_string()?))),
            Some(b'-' | b'0'..=b'9') => self.number().map(Some),
            Some(b't') => self.literal(b"true").map(|()| Some(Lenient::Bool(true))),
            Some(b'f') => self.literal(b"false").map(|()| Some(Lenient::Bool(false))),
            Some(b'[') => self.list(Self::skip).map(|()| Some(Lenient::Other("a list"))),
            Some(b'{') => self.object(|s, _| s.skip()).map(|()| Some(Lenient::Other("an object"))),
            _ => self.fail("expected value"),
        }
    }

    /// Any value, kept whole.
    fn any(&mut self) -> Scan<Value> {
        Ok(match self.ws() {
            Some(b'"') => Value::String(self.strict_string()?.into_owned()),
            Some(b'-' | b'0'..=b'9') => {
                let start = self.pos;
                match self.number()? {
                    Lenient::Int(i) => Value::from(i),
                    // serde_json keeps a whole number above i64::MAX exactly, as a u64.
                    Lenient::Float(f) => match self.slice(start, self.pos)?.parse::<u64>() {
                        Ok(u) => Value::from(u),
                        Err(_) => match Number::from_f64(f) {
                            Some(n) => Value::Number(n),
                            None => return self.fail("number out of range"),
                        },
                    },
                    _ => return self.fail("invalid number"),
                }
            }
            Some(b'n') => self.literal(b"null").map(|()| Value::Null)?,
            Some(b't') => self.literal(b"true").map(|()| Value::Bool(true))?,
            Some(b'f') => self.literal(b"false").map(|()| Value::Bool(false))?,
            Some(b'[') => {
                let mut items = Vec::new();
                self.list(|s| {
                    items.push(s.any()?);
                    Ok(())
                })?;
                Value::Array(items)
            }
            Some(b'{') => {
                let mut map = Map::new();
                self.object(|s, key| {
                    map.insert(key.into_owned(), s.any()?);
                    Ok(())
                })?;
                Value::Object(map)
            }
            _ => return self.fail("expected value"),
        })
    }

    /// Skips any value as serde_json's `ignore_value` does: syntax only, lenient escapes.
    fn skip(&mut self) -> Scan<()> {
        match self.ws() {
            Some(b'"') => self.skip_string(),
            Some(b'-' | b'0'..=b'9') => self.skip_number(),
            Some(b'n') => self.literal(b"null"),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'[') => self.list(Self::skip),
            Some(b'{') => {
                self.open()?;
                if self.ws() == Some(b'}') {
                    self.pos += 1;
                    self.depth -= 1;
                    return Ok(());
                }
                loop {
                    if self.ws() != Some(b'"') {
                        return self.fail("key must be a string");
                    }
                    self.skip_string()?;
                    if self.ws() != Some(b':') {
                        return self.fail("expected `:`");
                    }
                    self.pos += 1;
                    self.skip()?;
                    match self.ws() {
                        Some(b',') => self.pos += 1,
                        Some(b'}') => {
                            self.pos += 1;
                            self.depth -= 1;
                            return Ok(());
                        }
                        _ => return self.fail("expected `,` or `}`"),
                    }
                }
            }
            _ => self.fail("expected value"),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Scan<()> {
        if self.bytes.get(self.pos..self.pos + word.len()) == Some(word) {
            self.pos += word.len();
            Ok(())
        } else {
            self.fail("expected ident")
        }
    }

    // === strings ===

    /// A string at its `"`, escapes checked as serde_json reads a `str`: borrowed
    /// from the body unless it has escapes.
    fn strict_string(&mut self) -> Scan<Cow<'a, str>> {
        let start = self.pos + 1;
        let end = self.string_end(start)?;
        if self.bytes[end] == b'"' {
            self.pos = end + 1;
            return self.slice(start, end).map(Cow::Borrowed);
        }
        self.escaped_string(start, end)
    }

    /// The index of the first `"` or `\` from `at`; a control character or the end is an error.
    #[inline]
    fn string_end(&mut self, mut at: usize) -> Scan<usize> {
        // Eight bytes at a time while none of them is special (SWAR).
        const ONES: u64 = u64::MAX / 255;
        while let Some(chunk) = self.bytes.get(at..at + 8) {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let v = u64::from_le_bytes(word);
            let control = v.wrapping_sub(ONES * 0x20) & !v;
            let quote = (v ^ (ONES * u64::from(b'"'))).wrapping_sub(ONES) & !(v ^ (ONES * u64::from(b'"')));
            let backslash = (v ^ (ONES * u64::from(b'\\'))).wrapping_sub(ONES) & !(v ^ (ONES * u64::from(b'\\')));
            let hits = (control | quote | backslash) & (ONES << 7);
            if hits != 0 {
                at += (hits.trailing_zeros() / 8) as usize;
                break;
            }
            at += 8;
        }
        loop {
            match self.bytes.get(at) {
                Some(b'"' | b'\\') => return Ok(at),
                Some(&b) if b < 0x20 => {
                    self.pos = at;
                    return self.fail("control character while parsing a string");
                }
                Some(_) => at += 1,
                None => {
                    self.pos = at;
                    return self.fail("EOF while parsing a string");
                }
            }
        }
    }

    /// The rest of a string with escapes, from `start` with the first `\` at `at`.
    #[cold]
    fn escaped_string(&mut self, start: usize, mut at: usize) -> Scan<Cow<'a, str>> {
        let mut out = String::with_capacity(at - start + 16);
        let mut from = start;
        loop {
            // bytes[at] is `"` or `\`.
            out.push_str(self.slice(from, at)?);
            if self.bytes[at] == b'"' {
                self.pos = at + 1;
                return Ok(Cow::Owned(out));
            }
            self.pos = at + 1;
            let Some(&kind) = self.bytes.get(at + 1) else {
                return self.fail("EOF while parsing a string");
            };
            self.pos = at + 2;
            match kind {
                b'"' => out.push('"'),
                b'\\' => out.push('\\'),
                b'/' => out.push('/'),
                b'b' => out.push('\x08'),
                b'f' => out.push('\x0c'),
                b'n' => out.push('\n'),
                b'r' => out.push('\r'),
                b't' => out.push('\t'),
                b'u' => {
                    let unit = self.hex4()?;
                    let code = match unit {
                        0xDC00..=0xDFFF => return self.fail("lone leading surrogate in hex escape"),
                        0xD800..=0xDBFF => {
                            if self.bytes.get(self.pos..self.pos + 2) != Some(b"\\u") {
                                self.pos += 1;
                                return self.fail("unexpected end of hex escape");
                            }
                            self.pos += 2;
                            let low = self.hex4()?;
                            if !(0xDC00..=0xDFFF).contains(&low) {
                                return self.fail("lone leading surrogate in hex escape");
                            }
                            0x1_0000 + ((u32::from(unit) - 0xD800) << 10 | (u32::from(low) - 0xDC00))
                        }
                        _ => u32::from(unit),
                    };
                    match char::from_u32(code) {
                        Some(c) => out.push(c),
                        None => return self.fail("invalid unicode code point"),
                    }
                }
                _ => return self.fail("invalid escape"),
            }
            from = self.pos;
            at = self.string_end(from)?;
        }
    }

    /// Four hex digits of a `\u` escape.
    fn hex4(&mut self) -> Scan<u16> {
        let mut unit = 0u16;
        for _ in 0..4 {
            let digit = match self.bytes.get(self.pos) {
                Some(&b) => (b as char).to_digit(16),
                None => return self.fail("EOF while parsing a string"),
            };
            self.pos += 1;
            match digit {
                Some(d) => unit = unit << 4 | d as u16,
                None => return self.fail("invalid escape"),
            }
        }
        Ok(unit)
    }

    /// Skips a string at its `"` as serde_json's `ignore_str` does (lone surrogates pass).
    fn skip_string(&mut self) -> Scan<()> {
        let mut at = self.string_end(self.pos + 1)?;
        loop {
            if self.bytes[at] == b'"' {
                self.pos = at + 1;
                return Ok(());
            }
            self.pos = at + 1;
            match self.bytes.get(at + 1) {
                None => return self.fail("EOF while parsing a string"),
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.pos = at + 2,
                Some(b'u') => {
                    self.pos = at + 2;
                    self.hex4()?;
                }
                Some(_) => return self.fail("invalid escape"),
            }
            at = self.string_end(self.pos)?;
        }
    }

    // === numbers ===

    /// A number that is read: serde_json's split into an integer (`i64`, or a
    /// float past it) and a float, and its refusal of an infinite float.
    fn number(&mut self) -> Scan<Lenient<'a>> {
        let start = self.pos;
        let negative = self.bytes[start] == b'-';
        if negative {
            self.pos += 1;
        }
        let mut significand: u64 = 0;
        let mut overflow = false;
        match self.bytes.get(self.pos) {
            Some(b'0') => {
                self.pos += 1;
                if matches!(self.bytes.get(self.pos), Some(b'0'..=b'9')) {
                    return self.fail("invalid number");
                }
            }
            Some(b'1'..=b'9') => {
                while let Some(&b @ b'0'..=b'9') = self.bytes.get(self.pos) {
                    self.pos += 1;
                    match significand.checked_mul(10).and_then(|v| v.checked_add(u64::from(b - b'0'))) {
                        Some(v) => significand = v,
                        None => overflow = true,
                    }
                }
            }
            _ => return self.fail("invalid number"),
        }
        let mut fraction_digits = 0usize;
        let dot = self.bytes.get(self.pos) == Some(&b'.');
        if dot {
            self.pos += 1;
            while let Some(&b @ b'0'..=b'9') = self.bytes.get(self.pos) {
                self.pos += 1;
                fraction_digits += 1;
                match significand.checked_mul(10).and_then(|v| v.checked_add(u64::from(b - b'0'))) {
                    Some(v) => significand = v,
                    None => overflow = true,
                }
            }
            if fraction_digits == 0 {
                return self.fail("invalid number");
            }
        }
        let exponent = matches!(self.bytes.get(self.pos), Some(b'e' | b'E'));
        if exponent {
            self.skip_exponent()?;
        }
        if !dot && !exponent && !overflow {
            // serde_json: a u64 visits as u64 (i64 if it fits), a negative as i64
            // unless it underflows or is -0.
            return Ok(if negative {
                let neg = (significand as i64).wrapping_neg();
                if neg >= 0 {
                    Lenient::Float(-(significand as f64))
                } else {
                    Lenient::Int(neg)
                }
            } else {
                i64::try_from(significand).map_or(Lenient::Float(significand as f64), Lenient::Int)
            });
        }
        if !exponent && !overflow && significand <= 1 << 53 && fraction_digits < POW10.len() {
            // Exact operands, one correctly rounded division: the correctly rounded
            // value, as serde_json's float_roundtrip parser gives.
            let value = significand as f64 / POW10[fraction_digits];
            return Ok(Lenient::Float(if negative { -value } else { value }));
        }
        // Long or exponent forms are rare: Rust's parser rounds them correctly, as
        // serde_json's float_roundtrip does, and an infinite value is refused as serde_json refuses it.
        match self.slice(start, self.pos)?.parse::<f64>() {
            Ok(value) if value.is_finite() => Ok(Lenient::Float(value)),
            _ => self.fail("number out of range"),
        }
    }

    /// Skips a number that is not read: syntax only, as serde_json's `ignore_integer`.
    fn skip_number(&mut self) -> Scan<()> {
        if self.bytes[self.pos] == b'-' {
            self.pos += 1;
        }
        match self.bytes.get(self.pos) {
            Some(b'0') => {
                self.pos += 1;
                if matches!(self.bytes.get(self.pos), Some(b'0'..=b'9')) {
                    return self.fail("invalid number");
                }
            }
            Some(b'1'..=b'9') => self.skip_digits(),
            _ => return self.fail("invalid number"),
        }
        if self.bytes.get(self.pos) == Some(&b'.') {
            self.pos += 1;
            let from = self.pos;
            self.skip_digits();
            if self.pos == from {
                return self.fail("invalid number");
            }
        }
        if matches!(self.bytes.get(self.pos), Some(b'e' | b'E')) {
            self.skip_exponent()?;
        }
        Ok(())
    }

    /// `e`/`E`, an optional sign, at least one digit.
    fn skip_exponent(&mut self) -> Scan<()> {
        self.pos += 1;
        if matches!(self.bytes.get(self.pos), Some(b'+' | b'-')) {
            self.pos += 1;
        }
        let from = self.pos;
        self.skip_digits();
        if self.pos == from {
            return self.fail("invalid number");
        }
        Ok(())
    }

    fn skip_digits(&mut self) {
        while matches!(self.bytes.get(self.pos), Some(b'0'..=b'9')) {
            self.pos += 1;
        }
    }

    // === bytes ===

    /// Skips JSON whitespace; the next byte, if any.
    #[inline]
    fn ws(&mut self) -> Option<u8> {
        while let Some(&b) = self.bytes.get(self.pos) {
            match b {
                b' ' | b'\n' | b'\t' | b'\r' => self.pos += 1,
                _ => return Some(b),
            }
        }
        None
    }

    /// The body's text from `start` to `end`, both next to ASCII bytes the scanner
    /// stopped at, so on character boundaries (the error cannot happen).
    #[inline]
    fn slice(&self, start: usize, end: usize) -> Scan<&'a str> {
        match self.text.get(start..end) {
            Some(text) => Ok(text),
            None => self.fail("not on a character boundary"),
        }
    }

    #[cold]
    fn fail<T>(&self, what: &'static str) -> Scan<T> {
        Err(Fail { at: self.pos, what })
    }
}

/// Powers of ten that are exact in an `f64`.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20,
    1e21, 1e22,
];
