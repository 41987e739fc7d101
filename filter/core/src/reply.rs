//! The bodies and headers Fleet answers with (contract §1–3).

use crate::error::FleetError;
use crate::otlp::{BodyFormat, ExportMetricsPartialSuccess, ExportMetricsServiceResponse, RpcStatus};
use crate::threshold::ThresholdSnapshot;
use prost::Message;
use serde::Serialize;

/// The threshold API's answer for cold start, unknown clusters and missing quorum, byte for byte.
pub const COLD_START_BODY: &str = r#"{"threshold":0,"quorum_met":false}"#;
/// Response header carrying the cohort's threshold on push responses.
pub const THRESHOLD_HEADER: &str = "x-ingero-threshold";
/// Response header saying whether the cohort has quorum.
pub const QUORUM_HEADER: &str = "x-ingero-quorum-met";

const JSON: &str = "application/json";
const PROTOBUF: &str = "application/x-protobuf";

/// The threshold API body once quorum is met; the agent reads the first two fields.
#[derive(Serialize)]
struct ThresholdAnswer {
    threshold: f64,
    quorum_met: bool,
    active_nodes: u32,
    stragglers: u32,
}

/// A complete HTTP answer, ready for any front door to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(&'static str, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    fn new(status: u16, content_type: &str, body: Vec<u8>) -> Self {
        Self { status, headers: vec![("content-type", content_type.to_owned())], body }
    }

    /// `GET /api/v1/threshold` for a cohort (absent: unknown cohort).
    pub fn threshold(snapshot: Option<&ThresholdSnapshot>) -> Self {
        let body = match snapshot.and_then(|s| s.threshold.map(|t| (t, s))) {
            Some((threshold, s)) => serde_json::to_string(&ThresholdAnswer {
                threshold,
                quorum_met: true,
                active_nodes: s.active_nodes,
                stragglers: s.stragglers,
            })
            .unwrap_or_else(|_| COLD_START_BODY.to_owned()),
            None => COLD_START_BODY.to_owned(),
        };
        Self::new(200, JSON, body.into_bytes())
    }

    /// A JSON document.
    pub fn json(body: Vec<u8>) -> Self {
        Self::new(200, JSON, body)
    }

    /// An HTML page.
    pub fn html(page: &str) -> Self {
        Self::new(200, "text/html; charset=utf-8", page.as_bytes().to_vec())
    }

    /// A Prometheus scrape.
    pub fn metrics(text: String) -> Self {
        Self::new(200, "text/plain; version=0.0.4; charset=utf-8", text.into_bytes())
    }

    /// An accepted push: an empty `ExportMetricsServiceResponse`, or `partialSuccess`.
    pub fn pushed(format: BodyFormat, rejected: u64, message: Option<&str>) -> Self {
        let partial = (rejected > 0).then(|| ExportMetricsPartialSuccess {
            rejected_data_points: i64::try_from(rejected).unwrap_or(i64::MAX),
            error_message: message.unwrap_or_default().to_owned(),
        });
        match format {
            BodyFormat::Json => {
                let body = match &partial {
                    // int64 is a string in the OTLP JSON mapping.
                    Some(p) => serde_json::json!({"partialSuccess": {
                        "rejectedDataPoints": p.rejected_data_points.to_string(),
                        "errorMessage": p.error_message,
                    }})
                    .to_string(),
                    None => "{}".to_owned(),
                };
                Self::new(200, JSON, body.into_bytes())
            }
            BodyFormat::Protobuf => {
                let body = ExportMetricsServiceResponse { partial_success: partial }.encode_to_vec();
                Self::new(200, PROTOBUF, body)
            }
        }
    }

    /// A failed request: a `google.rpc.Status` in the request's encoding (JSON when unknown).
    pub fn error(format: BodyFormat, error: &FleetError) -> Self {
        let status = RpcStatus { code: error.rpc_code(), message: error.to_string() };
        let mut reply = match format {
            BodyFormat::Json => {
                let body = serde_json::json!({"code": status.code, "message": status.message}).to_string();
                Self::new(error.status(), JSON, body.into_bytes())
            }
            BodyFormat::Protobuf => Self::new(error.status(), PROTOBUF, status.encode_to_vec()),
        };
        if let FleetError::MethodNotAllowed { allowed, .. } = error {
            reply.headers.push(("allow", (*allowed).to_owned()));
        }
        if let Some(seconds) = error.retry_after() {
            reply.headers.push(("retry-after", seconds.to_string()));
        }
        reply
    }

    /// Adds the threshold piggyback headers when the cohort has a valid threshold;
    /// before quorum both are omitted, never sent as 0.
    pub fn with_piggyback(mut self, threshold: Option<f64>) -> Self {
        if let Some(t) = threshold {
            self.headers.push((THRESHOLD_HEADER, t.to_string()));
            self.headers.push((QUORUM_HEADER, "true".to_owned()));
        }
        self
    }

    /// The value of a header this reply carries.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cold_start_is_byte_exact() {
        let r = Reply::threshold(None);
        assert_eq!((r.status, r.body.as_slice()), (200, COLD_START_BODY.as_bytes()));
        assert_eq!(r.header("Content-Type"), Some("application/json"));
    }

    #[test]
    fn partial_success_uses_string_int64() {
        let r = Reply::pushed(BodyFormat::Json, 2, Some("bad"));
        assert_eq!(r.body, br#"{"partialSuccess":{"errorMessage":"bad","rejectedDataPoints":"2"}}"#.to_vec());
        assert_eq!(Reply::pushed(BodyFormat::Json, 0, None).body, b"{}".to_vec());
        assert!(Reply::pushed(BodyFormat::Protobuf, 0, None).body.is_empty());
    }

    #[test]
    fn piggyback_is_omitted_without_quorum() {
        assert_eq!(Reply::pushed(BodyFormat::Json, 0, None).with_piggyback(None).header(THRESHOLD_HEADER), None);
        let r = Reply::pushed(BodyFormat::Json, 0, None).with_piggyback(Some(0.85));
        assert_eq!((r.header(THRESHOLD_HEADER), r.header(QUORUM_HEADER)), (Some("0.85"), Some("true")));
    }

    #[test]
    fn errors_name_the_problem() {
        let r = Reply::error(BodyFormat::Json, &FleetError::MissingClusterId);
        assert_eq!(r.status, 400);
        assert!(String::from_utf8_lossy(&r.body).contains("cluster_id is missing"));
        let r = Reply::error(BodyFormat::Json, &FleetError::MethodNotAllowed { method: "GET".into(), allowed: "POST" });
        assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    }
}
