//! Every way a request can fail, and the one place that maps each to an HTTP status.

use thiserror::Error;

/// A whole-request failure; per-point problems are `partialSuccess`, not errors.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum FleetError {
    #[error("cluster_id is missing: add ?cluster_id=<id> or the ingero.cluster.id resource attribute")]
    MissingClusterId,
    #[error("{name} is not valid percent-encoded UTF-8")]
    BadQueryEncoding { name: &'static str },
    #[error("{name} must be {expected}")]
    BadQueryValue { name: &'static str, expected: &'static str },
    #[error("{name} is longer than max_id_bytes ({limit} bytes)")]
    IdTooLong { name: &'static str, limit: usize },
    #[error("request body is empty (an empty push is {{\"resourceMetrics\":[]}})")]
    EmptyBody,
    #[error("invalid OTLP JSON: {0}")]
    BadJson(String),
    #[error("invalid OTLP protobuf: {0}")]
    BadProtobuf(String),
    #[error("invalid gRPC message: {0}")]
    BadGrpcFrame(String),
    #[error(
        "OTLP/gRPC is not answered here: push OTLP/HTTP (/v1/metrics) to this port, or gRPC to the standalone server"
    )]
    GrpcNotServed,
    #[error("invalid gzip body: {0}")]
    BadGzip(String),
    #[error("request body exceeds max_body_bytes ({limit} bytes)")]
    BodyTooLarge { limit: usize },
    #[error("push has more than max_points_per_push ({limit}) data points")]
    TooManyPoints { limit: usize },
    #[error("push has more than max_resources_per_push ({limit}) resources")]
    TooManyResources { limit: usize },
    #[error("new cluster refused: max_clusters ({limit}) clusters already have tracked nodes")]
    TooManyClusters { limit: u32, retry_after_s: u32 },
    #[error("unsupported Content-Type {0:?}: use application/json or application/x-protobuf")]
    UnsupportedContentType(String),
    #[error("unsupported Content-Encoding {0:?}: use identity or gzip")]
    UnsupportedEncoding(String),
    #[error("this push carries no identity allowed to push (push_identities): send Authorization: Bearer <token> or a client certificate")]
    NoIdentity,
    #[error("this identity may not push cluster {0:?} (push_identities)")]
    ClusterNotAllowed(String),
    #[error("method {method} is not allowed here: use {allowed}")]
    MethodNotAllowed { method: String, allowed: &'static str },
    #[error("fleet state is busy, retry later")]
    Busy,
    #[error("shared data unavailable: {0}")]
    SharedData(String),
    #[error("the proxy could not hand over the request body: {0}")]
    Host(String),
    #[error("Envoy held this push at its headers and never passed its body to the filter: set allow_on_headers_stop_iteration: true in the Wasm filter's config (Envoy >= 1.35), or \"pause_on_headers\": false in the plugin configuration")]
    HeaderPauseIgnored,
    /// An answer could not be serialized: a bug, never answered with an empty body.
    #[error("cannot render the answer: {0}")]
    Render(String),
}

impl FleetError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> u16 {
        match self {
            Self::MissingClusterId
            | Self::BadQueryEncoding { .. }
            | Self::BadQueryValue { .. }
            | Self::IdTooLong { .. }
            | Self::EmptyBody
            | Self::BadJson(_)
            | Self::BadProtobuf(_)
            | Self::BadGzip(_)
            | Self::BadGrpcFrame(_) => 400,
            Self::BodyTooLarge { .. } | Self::TooManyPoints { .. } | Self::TooManyResources { .. } => 413,
            Self::UnsupportedContentType(_) | Self::UnsupportedEncoding(_) | Self::GrpcNotServed => 415,
            Self::MethodNotAllowed { .. } => 405,
            Self::NoIdentity | Self::ClusterNotAllowed(_) => 403,
            Self::TooManyClusters { .. } => 429,
            Self::Busy | Self::SharedData(_) | Self::Host(_) => 503,
            Self::HeaderPauseIgnored | Self::Render(_) => 500,
        }
    }

    /// The `google.rpc.Code` OTLP error bodies carry for this error.
    pub fn rpc_code(&self) -> i32 {
        match self.status() {
            503 => 14,      // UNAVAILABLE
            500 => 13,      // INTERNAL
            403 => 7,       // PERMISSION_DENIED
            413 | 429 => 8, // RESOURCE_EXHAUSTED
            _ => 3,         // INVALID_ARGUMENT
        }
    }

    /// Seconds a client should wait before retrying, for load-shedding answers.
    pub fn retry_after(&self) -> Option<u32> {
        match self {
            Self::TooManyClusters { retry_after_s, .. } => Some(*retry_after_s),
            _ => (self.status() == 503).then_some(1),
        }
    }
}
