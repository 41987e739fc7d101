//! OTLP/gRPC: `MetricsService/Export` on its own port. The call goes through
//! the same exchange as an HTTP push (the core reads the gRPC framing), so gRPC
//! and HTTP share one decoder, one set of limits and one set of counters; the
//! reply becomes a gRPC answer with the threshold as response metadata (contract §2).

use crate::http::receive;
use crate::state::State;
use axum::http;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use ingero_fleet_core::config::RouteSet;
use ingero_fleet_core::ingress::{grpc_frame, PUSH_PATH};
use ingero_fleet_core::otlp::RpcStatus;
use ingero_fleet_core::reply::{Reply, QUORUM_HEADER, THRESHOLD_HEADER};
use ingero_fleet_core::service::bearer_token;
use ingero_fleet_core::RequestHead;
use prost::Message;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use tonic::body::Body;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

/// The gRPC port serves pushes only.
const PUSHES_ONLY: RouteSet = RouteSet { push: true, api: false, metrics: false };

/// The one method Fleet serves.
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export";
/// Optional request metadata naming the cluster, like the HTTP `cluster_id` query parameter.
pub const CLUSTER_METADATA: &str = "cluster_id";

/// The gRPC service: every path, `Export` answered, the rest unimplemented.
pub fn service(
    state: Arc<State>,
) -> impl tower::Service<
    http::Request<Body>,
    Response = http::Response<Body>,
    Error = Infallible,
    Future = impl Future<Output = Result<http::Response<Body>, Infallible>> + Send,
> + Clone
       + Send
       + 'static {
    tower::service_fn(move |request: http::Request<Body>| {
        let state = state.clone();
        async move { Ok(export(&state, request).await) }
    })
}

/// One `Export` call through the core's exchange, like an HTTP push: the core
/// reads the gRPC framing and enforces (and counts) the body limit.
async fn export(state: &State, request: http::Request<Body>) -> http::Response<Body> {
    if request.uri().path() != EXPORT_PATH {
        return Status::unimplemented(format!("{} is not served here", request.uri().path())).into_http();
    }
    let (parts, body) = request.into_parts();
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let path = match header(CLUSTER_METADATA) {
        Some(cluster) => format!("{PUSH_PATH}?cluster_id={}", form_encode(cluster)),
        None => PUSH_PATH.to_owned(),
    };
    let head = RequestHead {
        method: "POST",
        path: &path,
        content_type: header("content-type"),
        grpc_encoding: header("grpc-encoding"),
        bearer: header("authorization").and_then(bearer_token),
        ..RequestHead::default()
    };
    match receive(state.fleet(), &head, body, PUSHES_ONLY).await {
        Ok(Some(reply)) => respond(reply),
        Ok(None) => Status::internal("the push route is not a Fleet route").into_http(),
        Err(e) => Status::cancelled(format!("request body not received: {e}")).into_http(),
    }
}

/// A protobuf reply as a gRPC answer: the response message with the threshold
/// as metadata, or the `google.rpc.Status` of a refusal.
fn respond(reply: Reply) -> http::Response<Body> {
    let mut metadata = MetadataMap::new();
    for (header, key) in [(THRESHOLD_HEADER, "ingero-threshold"), (QUORUM_HEADER, "ingero-quorum-met")] {
        if let Some(value) = reply.header(header).and_then(|v| MetadataValue::try_from(v).ok()) {
            metadata.insert(key, value);
        }
    }
    if reply.status != 200 {
        // The core's rpc codes are gRPC codes (google.rpc.Code).
        let status = RpcStatus::decode(reply.body.as_slice())
            .unwrap_or_else(|e| RpcStatus { code: Code::Internal as i32, message: format!("undecodable error: {e}") });
        return Status::with_metadata(Code::from(status.code), status.message, metadata).into_http();
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let body = Full::new(Bytes::from(grpc_frame(&reply.body))).with_trailers(async { Some(Ok(trailers)) });
    let mut response = http::Response::new(Body::new(body));
    *response.headers_mut() = metadata.into_headers();
    response.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/grpc"));
    response
}

/// Query-string encoding of a metadata value, decoded again by the core.
fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => char::from(b).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_cluster_ids_survive_the_query_string() {
        assert_eq!(form_encode("prod eu/1+x"), "prod%20eu%2F1%2Bx");
        let path = format!("/v1/metrics?cluster_id={}", form_encode("prod eu/1+x"));
        let decoded = ingero_fleet_core::ingress::query_param(&path, "cluster_id", 64);
        assert_eq!(decoded, Ok(Some("prod eu/1+x".to_owned())));
    }
}
