//! OTLP/HTTP, the threshold API and the metrics scrape: every HTTP port hands
//! each request to the core, plus liveness and readiness probes.

use crate::state::{now_ms, State};
use axum::body::Body;
use axum::extract::{Request, State as Shared};
use axum::http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use ingero_fleet_core::reply::Reply;
use ingero_fleet_core::{HeadStep, RequestHead};
use std::sync::Arc;

/// Liveness probe path: the process serves HTTP.
pub const HEALTHZ: &str = "/healthz";
/// Readiness probe path: listening and not draining.
pub const READYZ: &str = "/readyz";

/// The router every HTTP port serves.
pub fn router(state: Arc<State>) -> Router {
    Router::new().route(HEALTHZ, get(|| async { "ok\n" })).route(READYZ, get(readyz)).fallback(fleet).with_state(state)
}

async fn readyz(Shared(state): Shared<Arc<State>>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n").into_response()
    }
}

/// The core's routes: head first, then the body if the core asks for it.
async fn fleet(Shared(state): Shared<Arc<State>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let header = |name| parts.headers.get(name).and_then(|v: &HeaderValue| v.to_str().ok());
    let head = RequestHead {
        method: parts.method.as_str(),
        path: parts.uri.path_and_query().map_or("/", |p| p.as_str()),
        content_type: header(CONTENT_TYPE),
        content_encoding: header(CONTENT_ENCODING),
        content_length: header(CONTENT_LENGTH).and_then(|v| v.trim().parse().ok()),
    };
    let fleet = state.fleet();
    let push = match fleet.on_head(&head, &state.book()) {
        HeadStep::Pass => return (StatusCode::NOT_FOUND, "not found\n").into_response(),
        HeadStep::Answer(answer) => return send(crate::refusals::note(&head, answer)),
        HeadStep::ReadBody(push) => push,
    };
    let answer = match read_body(body, fleet.config().max_body_bytes).await {
        Ok(Some(bytes)) => fleet.on_body(&push, &bytes, now_ms(), &state.book()),
        Ok(None) => fleet.body_too_large(&push, &state.book()),
        Err(e) => {
            // The client broke the request (disconnect, bad chunking): it costs this connection only.
            log::debug!("request body not received: {e}");
            return (StatusCode::BAD_REQUEST, "incomplete request body\n").into_response();
        }
    };
    send(crate::refusals::note(&head, answer))
}

/// The whole body, or `None` as soon as it grows past `limit` bytes.
async fn read_body(mut body: Body, limit: usize) -> Result<Option<Vec<u8>>, axum::Error> {
    let mut bytes = Vec::new();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            if bytes.len() + data.len() > limit {
                return Ok(None);
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(Some(bytes))
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
