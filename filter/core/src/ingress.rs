//! Reading a request's head and body: routes, query parameters, content type and
//! encoding, size limits. Pure functions over strings and bytes.

use crate::config::RouteSet;
use crate::error::FleetError;
use crate::otlp::BodyFormat;
use flate2::read::GzDecoder;
use std::borrow::Cow;
use std::io::Read;

/// The OTLP/HTTP metrics path.
pub const PUSH_PATH: &str = "/v1/metrics";
/// The threshold API path.
pub const THRESHOLD_PATH: &str = "/api/v1/threshold";
/// The Prometheus scrape path.
pub const METRICS_PATH: &str = "/metrics";
/// The cluster listing.
pub const CLUSTERS_PATH: &str = "/api/v1/clusters";
/// The node listing of one cluster.
pub const NODES_PATH: &str = "/api/v1/nodes";
/// The dashboard page.
pub const DASHBOARD_PATH: &str = "/";

/// The requests Fleet answers itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Push,
    Threshold,
    Metrics,
    Clusters,
    Nodes,
    Dashboard,
}

impl Route {
    /// The route of a request path (query included), if it is one of Fleet's.
    pub fn of(path: &str) -> Option<Self> {
        match path.split_once('?').map_or(path, |(p, _)| p) {
            PUSH_PATH => Some(Self::Push),
            THRESHOLD_PATH => Some(Self::Threshold),
            METRICS_PATH => Some(Self::Metrics),
            CLUSTERS_PATH => Some(Self::Clusters),
            NODES_PATH => Some(Self::Nodes),
            DASHBOARD_PATH => Some(Self::Dashboard),
            _ => None,
        }
    }

    /// Whether a listener serving `routes` answers this route.
    pub fn served_by(self, routes: RouteSet) -> bool {
        match self {
            Self::Push => routes.push,
            Self::Metrics => routes.metrics,
            Self::Threshold | Self::Clusters | Self::Nodes | Self::Dashboard => routes.api,
        }
    }

    /// The one method this route accepts.
    pub fn method(self) -> &'static str {
        match self {
            Self::Push => "POST",
            _ => "GET",
        }
    }
}

/// The decoded value of query parameter `name` (form encoding: `+` is a space).
/// Empty values count as absent; bad escapes and non-UTF-8 are errors.
pub fn query_param(path: &str, name: &'static str, max_bytes: usize) -> Result<Option<String>, FleetError> {
    let Some((_, query)) = path.split_once('?') else { return Ok(None) };
    let Some(raw) = query.split('&').find_map(|pair| pair.strip_prefix(name)?.strip_prefix('=')) else {
        return Ok(None);
    };
    let value = percent_decode(raw).ok_or(FleetError::BadQueryEncoding { name })?;
    if value.len() > max_bytes {
        return Err(FleetError::IdTooLong { name, limit: max_bytes });
    }
    Ok(Some(value).filter(|v| !v.is_empty()))
}

/// Strict `application/x-www-form-urlencoded` decoding of one value.
fn percent_decode(raw: &str) -> Option<String> {
    let mut out = Vec::with_capacity(raw.len());
    let mut bytes = raw.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'+' => b' ',
            b'%' => {
                let hi = char::from(bytes.next()?).to_digit(16)?;
                let lo = char::from(bytes.next()?).to_digit(16)?;
                u8::try_from(hi * 16 + lo).ok()?
            }
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

/// How the message sits in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// The body is the message (OTLP/HTTP).
    Plain,
    /// One length-prefixed gRPC message (OTLP/gRPC `Export`).
    Grpc,
}

/// The body format named by a `Content-Type` header, and its framing.
pub fn body_format(content_type: Option<&str>) -> Result<(BodyFormat, Framing), FleetError> {
    let value = content_type.unwrap_or("");
    let essence = value.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok((BodyFormat::Json, Framing::Plain)),
        "application/x-protobuf" | "application/protobuf" => Ok((BodyFormat::Protobuf, Framing::Plain)),
        "application/grpc" | "application/grpc+proto" => Ok((BodyFormat::Protobuf, Framing::Grpc)),
        _ => Err(FleetError::UnsupportedContentType(value.to_owned())),
    }
}

/// The message of a unary gRPC body (a 1-byte compressed flag, a 4-byte big-endian
/// length, the message) and whether it is compressed.
pub fn grpc_message(body: &[u8]) -> Result<(&[u8], bool), FleetError> {
    let bad = |why: &str| FleetError::BadGrpcFrame(why.to_owned());
    let (prefix, rest) = body.split_at_checked(5).ok_or_else(|| bad("shorter than the 5-byte message prefix"))?;
    let compressed = match prefix[0] {
        0 => false,
        1 => true,
        flag => return Err(bad(&format!("compressed flag {flag} is neither 0 nor 1"))),
    };
    let length = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]) as usize;
    match rest.len().cmp(&length) {
        std::cmp::Ordering::Equal => Ok((rest, compressed)),
        std::cmp::Ordering::Less => Err(bad("the message is shorter than its prefix says")),
        std::cmp::Ordering::Greater => Err(bad("more than one message in a unary call")),
    }
}

/// A unary gRPC response body: the message behind its 5-byte prefix, uncompressed.
pub fn grpc_frame(message: &[u8]) -> Vec<u8> {
    let mut framed = Vec::with_capacity(message.len() + 5);
    framed.push(0);
    framed.extend_from_slice(&u32::try_from(message.len()).unwrap_or(u32::MAX).to_be_bytes());
    framed.extend_from_slice(message);
    framed
}

/// Whether a `Content-Encoding` header names gzip; identity and none are plain.
pub fn is_gzip(content_encoding: Option<&str>) -> Result<bool, FleetError> {
    match content_encoding.map(|e| e.trim().to_ascii_lowercase()).as_deref() {
        None | Some("") | Some("identity") => Ok(false),
        Some("gzip") | Some("x-gzip") => Ok(true),
        Some(_) => Err(FleetError::UnsupportedEncoding(content_encoding.unwrap_or("").to_owned())),
    }
}

/// The body as the decoder should see it: inflated if gzip, within `limit` bytes.
pub fn unpack_body(body: &[u8], gzip: bool, limit: usize) -> Result<Cow<'_, [u8]>, FleetError> {
    if body.len() > limit {
        return Err(FleetError::BodyTooLarge { limit });
    }
    if !gzip {
        return Ok(Cow::Borrowed(body));
    }
    let mut out = Vec::with_capacity(body.len().saturating_mul(4).min(limit));
    // Read one byte past the limit so an oversized stream is detected, not truncated.
    GzDecoder::new(body)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| FleetError::BadGzip(e.to_string()))?;
    if out.len() > limit {
        return Err(FleetError::BodyTooLarge { limit });
    }
    Ok(Cow::Owned(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::GzEncoder;
    use std::io::Write;

    #[test]
    fn routes_ignore_the_query() {
        assert_eq!(Route::of("/v1/metrics?cluster_id=a"), Some(Route::Push));
        assert_eq!(Route::of("/api/v1/threshold"), Some(Route::Threshold));
        assert_eq!(Route::of("/v1/metricsx"), None);
        assert_eq!(Route::of("/"), Some(Route::Dashboard));
        assert_eq!(Route::of("/index.html"), None);
    }

    #[test]
    fn cluster_ids_are_form_decoded() {
        let q = |p| query_param(p, "cluster_id", 16);
        assert_eq!(q("/v1/metrics?cluster_id=prod%20eu+1"), Ok(Some("prod eu 1".into())));
        assert_eq!(q("/v1/metrics?x=1&cluster_id=a%2Fb"), Ok(Some("a/b".into())));
        assert_eq!(q("/v1/metrics?my_cluster_id=a"), Ok(None));
        assert_eq!(q("/v1/metrics?cluster_id="), Ok(None));
        assert_eq!(q("/v1/metrics"), Ok(None));
        let bad = Err(FleetError::BadQueryEncoding { name: "cluster_id" });
        assert_eq!(q("/v1/metrics?cluster_id=%zz"), bad);
        assert_eq!(q("/v1/metrics?cluster_id=%4"), bad);
        assert_eq!(q("/v1/metrics?cluster_id=%ff"), bad);
        assert_eq!(
            q("/v1/metrics?cluster_id=aaaaaaaaaaaaaaaaa"),
            Err(FleetError::IdTooLong { name: "cluster_id", limit: 16 })
        );
    }

    #[test]
    fn content_types() {
        assert_eq!(body_format(Some("application/json; charset=utf-8")), Ok((BodyFormat::Json, Framing::Plain)));
        assert_eq!(body_format(Some("Application/X-Protobuf")), Ok((BodyFormat::Protobuf, Framing::Plain)));
        assert_eq!(body_format(Some("application/grpc")), Ok((BodyFormat::Protobuf, Framing::Grpc)));
        assert!(matches!(body_format(Some("text/plain")), Err(FleetError::UnsupportedContentType(_))));
        assert!(matches!(body_format(None), Err(FleetError::UnsupportedContentType(_))));
        assert_eq!(is_gzip(Some("gzip")), Ok(true));
        assert_eq!(is_gzip(None), Ok(false));
        assert!(matches!(is_gzip(Some("br")), Err(FleetError::UnsupportedEncoding(_))));
    }

    #[test]
    fn grpc_messages_are_unframed_strictly() {
        let framed = grpc_frame(b"abc");
        assert_eq!(grpc_message(&framed), Ok((&b"abc"[..], false)));
        let mut compressed = framed.clone();
        compressed[0] = 1;
        assert_eq!(grpc_message(&compressed), Ok((&b"abc"[..], true)));
        for bad in [&framed[..4], &framed[..7], &[framed.as_slice(), b"x"].concat(), &[2, 0, 0, 0, 0][..]] {
            assert!(matches!(grpc_message(bad), Err(FleetError::BadGrpcFrame(_))), "{bad:?}");
        }
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = GzEncoder::new(Vec::new(), flate2::Compression::default());
        let _ = enc.write_all(data);
        enc.finish().unwrap_or_default()
    }

    #[test]
    fn gzip_bodies_are_inflated_within_the_limit() {
        let body = gzip(b"{\"resourceMetrics\":[]}");
        assert_eq!(unpack_body(&body, true, 1024).as_deref(), Ok(&b"{\"resourceMetrics\":[]}"[..]));
        let bomb = gzip(&vec![b' '; 1 << 20]);
        assert!(bomb.len() < 4096);
        assert_eq!(unpack_body(&bomb, true, 4096), Err(FleetError::BodyTooLarge { limit: 4096 }));
        assert!(matches!(unpack_body(b"not gzip", true, 1024), Err(FleetError::BadGzip(_))));
        assert_eq!(unpack_body(&[0; 2000], false, 1024), Err(FleetError::BodyTooLarge { limit: 1024 }));
    }
}
