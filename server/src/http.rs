//! OTLP/HTTP, the threshold API and the metrics scrape: every HTTP port hands
//! each request to the core, plus liveness and readiness probes.

use crate::state::{now_ms, ServerFleet, State};
use axum::body::HttpBody;
use axum::extract::{Request, State as Shared};
use axum::http::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use ingero_fleet_core::config::RouteSet;
use ingero_fleet_core::reply::Reply;
use ingero_fleet_core::service::bearer_token;
use ingero_fleet_core::{Answer, Exchange, Flow, Host, RequestHead};
use std::sync::Arc;

/// Liveness probe path: the process serves HTTP.
pub const HEALTHZ: &str = "/healthz";
/// Readiness probe path: listening and not draining.
pub const READYZ: &str = "/readyz";

/// An HTTP port: the Fleet it serves and the routes its role allows.
#[derive(Clone)]
struct Port {
    state: Arc<State>,
    serves: RouteSet,
}

/// The router of an HTTP port serving the `serves` routes (and the probes).
pub fn router(state: Arc<State>, serves: RouteSet) -> Router {
    let port = Port { state, serves };
    Router::new().route(HEALTHZ, get(|| async { "ok\n" })).route(READYZ, get(readyz)).fallback(fleet).with_state(port)
}

async fn readyz(Shared(Port { state, .. }): Shared<Port>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

/// The core's routes over HTTP.
async fn fleet(Shared(Port { state, serves }): Shared<Port>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let header = |name| parts.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let head = RequestHead {
        method: parts.method.as_str(),
        path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        content_type: header(CONTENT_TYPE),
        content_encoding: header(CONTENT_ENCODING),
        content_length: header(CONTENT_LENGTH).and_then(|v| v.trim().parse().ok()),
        bearer: header(AUTHORIZATION).and_then(bearer_token),
        ..RequestHead::default()
    };
    match receive(state.fleet(), &head, body, serves).await {
        Ok(Some(reply)) => send(reply),
        Ok(None) => (StatusCode::NOT_FOUND, "not found\n").into_response(),
        Err(e) => {
            // The client broke the request (disconnect, bad chunking): it costs this connection only.
            log::debug!("request body not received: {e}");
            (StatusCode::BAD_REQUEST, "incomplete request body\n").into_response()
        }
    }
}

/// Drives the core's exchange frame by frame, so the core decides when a body
/// is too large; the core's reply, or `None` when the request is not Fleet's.
pub async fn receive<B>(
    fleet: &ServerFleet,
    head: &RequestHead<'_>,
    mut body: B,
    serves: RouteSet,
) -> Result<Option<Reply>, B::Error>
where
    B: HttpBody<Data = Bytes> + Unpin,
{
    let mut exchange = Exchange::default();
    let mut received = Received { head, body: Vec::new(), reply: None, serves };
    let mut flow = exchange.on_request_headers(fleet, &mut received, head, false);
    while matches!(flow, Flow::Hold | Flow::HoldBody) {
        flow = match body.frame().await.transpose()? {
            Some(frame) => {
                if let Ok(data) = frame.into_data() {
                    received.body.extend_from_slice(&data);
                }
                exchange.on_request_body(fleet, &mut received, false)
            }
            None => exchange.on_request_body(fleet, &mut received, true),
        };
    }
    Ok(received.reply)
}

/// The request as received so far, and the core's reply once it sends one.
struct Received<'h> {
    head: &'h RequestHead<'h>,
    body: Vec<u8>,
    reply: Option<Reply>,
    serves: RouteSet,
}

impl Host for Received<'_> {
    fn body_len(&self) -> usize {
        self.body.len()
    }

    fn body(&self) -> Result<Vec<u8>, String> {
        Ok(self.body.clone())
    }

    fn send_reply(&mut self, answer: &Answer) {
        // Refusals are logged here, where the request is known.
        self.reply = Some(crate::refusals::note(self.head, answer));
    }

    fn add_response_header(&mut self, _name: &'static str, _value: &str) {}

    fn now_ms(&self) -> u64 {
        now_ms()
    }

    // The server turns a reply into a gRPC answer where the head is a gRPC call.
    fn answers_grpc(&self) -> bool {
        true
    }

    fn serves(&self) -> RouteSet {
        self.serves
    }
}

/// The core's reply as an HTTP response.
fn send(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, reply.body).into_response();
    let headers = response.headers_mut();
    for (name, value) in reply.headers {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::try_from(value)) {
            headers.insert(name, value);
        }
    }
    response
}
