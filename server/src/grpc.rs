//! OTLP/gRPC: `MetricsService/Export` on its own port. The request message is
//! handed to the core as an `application/x-protobuf` push, so gRPC and HTTP
//! share one decoder and one set of rules; the reply becomes a gRPC answer
//! with the threshold as response metadata (contract §2).

use crate::state::{now_ms, State};
use axum::http;
use bytes::{Buf, BufMut, Bytes};
use ingero_fleet_core::ingress::PUSH_PATH;
use ingero_fleet_core::otlp::RpcStatus;
use ingero_fleet_core::reply::{Reply, QUORUM_HEADER, THRESHOLD_HEADER};
use ingero_fleet_core::{HeadStep, RequestHead};
use prost::Message;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use tonic::body::Body;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::server::Grpc;
use tonic::{Code, Status};

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
        async move {
            if request.uri().path() != EXPORT_PATH {
                return Ok(Status::unimplemented(format!("{} is not served here", request.uri().path())).into_http());
            }
            let limit = state.fleet().config().max_body_bytes;
            let export = tower::service_fn(move |message| std::future::ready(export(&state, message)));
            let mut grpc = Grpc::new(RawMessage)
                .accept_compressed(CompressionEncoding::Gzip)
                .send_compressed(CompressionEncoding::Gzip)
                .max_decoding_message_size(limit);
            Ok(grpc.unary(export, request).await)
        }
    })
}

/// One `Export` call through the core.
fn export(state: &State, request: tonic::Request<Bytes>) -> Result<tonic::Response<Bytes>, Status> {
    let path = match request.metadata().get(CLUSTER_METADATA).and_then(|v| v.to_str().ok()) {
        Some(cluster) => format!("{PUSH_PATH}?cluster_id={}", form_encode(cluster)),
        None => PUSH_PATH.to_owned(),
    };
    let message = request.get_ref();
    let head = RequestHead {
        method: "POST",
        path: &path,
        content_type: Some("application/x-protobuf"),
        content_encoding: None,
        content_length: Some(message.len()),
    };
    let book = state.book();
    let answer = match state.fleet().on_head(&head, &book) {
        HeadStep::ReadBody(push) => state.fleet().on_body(&push, message, now_ms(), &book),
        HeadStep::Answer(answer) => answer,
        HeadStep::Pass => return Err(Status::internal("the push route is not a Fleet route")),
    };
    respond(crate::refusals::note(&head, answer))
}

/// A protobuf reply as a gRPC answer: the body is the response message or a `google.rpc.Status`.
fn respond(reply: Reply) -> Result<tonic::Response<Bytes>, Status> {
    let mut metadata = MetadataMap::new();
    for (header, key) in [(THRESHOLD_HEADER, "ingero-threshold"), (QUORUM_HEADER, "ingero-quorum-met")] {
        if let Some(value) = reply.header(header).and_then(|v| MetadataValue::try_from(v).ok()) {
            metadata.insert(key, value);
        }
    }
    if reply.status == 200 {
        let mut response = tonic::Response::new(Bytes::from(reply.body));
        *response.metadata_mut() = metadata;
        return Ok(response);
    }
    // The core's rpc codes are gRPC codes (google.rpc.Code).
    let status = RpcStatus::decode(reply.body.as_slice())
        .unwrap_or_else(|_| RpcStatus { code: Code::Internal as i32, message: "undecodable error".into() });
    Err(Status::with_metadata(Code::from(status.code), status.message, metadata))
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

// === impl RawMessage ===

/// A codec that passes message bytes through untouched: the core decodes them.
#[derive(Debug, Clone, Copy, Default)]
struct RawMessage;

impl Codec for RawMessage {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawMessage;
    type Decoder = RawMessage;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for RawMessage {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawMessage {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
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
