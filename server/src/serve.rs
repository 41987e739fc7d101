//! Serving one port: accept connections up to a cap, speak TLS when configured
//! (refusing plain HTTP with a readable answer), HTTP/1.1 and HTTP/2 with
//! header, body and idle timeouts, and a cap on requests in flight. Every
//! port (OTLP/HTTP, OTLP/gRPC, API, metrics) goes through here, so each limit
//! is written once.

use crate::body::{self, Cut, CutFlag, Guarded};
use crate::limits::Limits;
use crate::listener::{Listener, Stream};
use crate::refusals;
use crate::shutdown;
use crate::tls::{self, Tls};
use axum::body::Body;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::Instrument;

/// A request handler: the router of an HTTP port or the gRPC service.
pub type Handler = Arc<dyn Fn(Request<Body>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> + Send + Sync>;

/// After an idle connection is asked to close, how long it gets before it is dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// At shutdown, how long a connection may take to finish (the process's drain timeout is shorter).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);
/// Pause after a failed accept (such as too many open files), so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// One listening port and how to serve it.
pub struct Port {
    /// The configuration key of its address, e.g. `otlp_http`; names it in logs.
    pub name: &'static str,
    pub listener: Listener,
    pub handler: Handler,
    /// TLS settings when this port serves TLS.
    pub tls: Option<Arc<Tls>>,
    /// Errors decided here (busy, timeout) are sent as gRPC statuses.
    pub grpc: bool,
}

/// An HTTP port's handler: an axum router.
pub fn http_handler(router: axum::Router) -> Handler {
    Arc::new(move |request: Request<Body>| {
        let router = router.clone();
        Box::pin(async move {
            match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        })
    })
}

/// The gRPC port's handler: a tonic service.
pub fn grpc_handler<S>(service: S) -> Handler
where
    S: tower::Service<Request<tonic::body::Body>, Response = Response<tonic::body::Body>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
{
    Arc::new(move |request: Request<Body>| {
        let service = service.clone();
        Box::pin(async move {
            match service.oneshot(request.map(tonic::body::Body::new)).await {
                Ok(response) => response.map(Body::new),
                Err(never) => match never {},
            }
        })
    })
}

/// The metrics port's handler: the core's `/metrics` text plus this server's own
/// counters (connections and requests cut by the limits above).
pub fn with_server_metrics(inner: Handler) -> Handler {
    Arc::new(move |request: Request<Body>| {
        let scrape = request.method() == axum::http::Method::GET && request.uri().path() == "/metrics";
        let response = inner(request);
        Box::pin(async move {
            let response = response.await;
            if !scrape || response.status() != StatusCode::OK {
                return response;
            }
            let (parts, body) = response.into_parts();
            match axum::body::to_bytes(body, usize::MAX).await {
                Ok(text) => {
                    let mut text = text.to_vec();
                    text.extend_from_slice(refusals::metrics().as_bytes());
                    let mut parts = parts;
                    parts.headers.remove(header::CONTENT_LENGTH);
                    Response::from_parts(parts, Body::from(text))
                }
                Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("metrics not rendered: {e}")),
            }
        })
    })
}

/// What every connection of a port shares.
struct Shared {
    name: &'static str,
    handler: Handler,
    tls: Option<Arc<Tls>>,
    grpc: bool,
    limits: Limits,
    in_flight: Arc<Semaphore>,
    /// Request body bytes this port may hold, in [`body::UNIT`]s.
    buffered: Arc<Semaphore>,
    http: auto::Builder<SpanExecutor>,
}

/// Serves `port` until `stop` turns true, then lets its connections finish.
pub async fn run(port: Port, limits: Limits, stop: watch::Receiver<bool>) -> std::io::Result<()> {
    let Port { name, listener, handler, tls, grpc } = port;
    let mut http = auto::Builder::new(SpanExecutor);
    http.http1().timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    http.http2().timer(TokioTimer::new()).max_concurrent_streams(limits.max_concurrent_streams);
    let in_flight = Arc::new(Semaphore::new(limits.max_in_flight));
    let buffered = Arc::new(Semaphore::new(limits.max_buffered_bytes / body::UNIT));
    let shared = Arc::new(Shared { name, handler, tls, grpc, limits, in_flight, buffered, http });
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown::announced(stop.clone()) => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                let Ok(permit) = connections.clone().try_acquire_owned() else {
                    tracing::debug!(port = name, %peer, "connection refused: limits.max_connections reached");
                    refusals::connection(name, "max_connections");
                    drop(stream);
                    continue;
                };
                let span = tracing::debug_span!("conn", port = name, %peer);
                let task = connection(shared.clone(), stream, stop.clone());
                tasks.spawn(
                    async move {
                        task.await;
                        drop(permit);
                    }
                    .instrument(span),
                );
            }
            Err(e) => {
                tracing::debug!(port = name, "accept failed: {e}");
                refusals::connection(name, "accept_failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
        while tasks.try_join_next().is_some() {}
    }
    drop(listener);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

/// One accepted connection: TLS first where configured, then HTTP.
async fn connection(shared: Arc<Shared>, stream: Stream, stop: watch::Receiver<bool>) {
    let tcp = match stream {
        Stream::Tcp(tcp) => tcp,
        // A Unix socket never serves TLS (refused at bind): its file's permissions guard it.
        Stream::Unix(unix) => return serve_http(shared, TokioIo::new(unix), stop).await,
    };
    tls_or_plain(shared, tcp, stop).await;
}

async fn tls_or_plain(shared: Arc<Shared>, tcp: TcpStream, stop: watch::Receiver<bool>) {
    let _ = tcp.set_nodelay(true);
    let Some(tls) = shared.tls.clone() else {
        return serve_http(shared, TokioIo::new(tcp), stop).await;
    };
    let deadline = shared.limits.header_read_timeout;
    let mut first = [0u8; 1];
    match tokio::time::timeout(deadline, tcp.peek(&mut first)).await {
        Ok(Ok(1)) if tls::looks_like_tls(first[0]) => {}
        Ok(Ok(1)) => {
            tracing::debug!("plain HTTP on a TLS port: refused");
            refusals::connection(shared.name, "plain_http_on_tls_port");
            let mut tcp = tcp;
            let _ = tcp.write_all(tls::PLAIN_HTTP_REFUSAL).await;
            let _ = tcp.shutdown().await;
            return;
        }
        Ok(_) => return, // closed before sending anything
        Err(_) => {
            refusals::connection(shared.name, "header_read_timeout");
            return;
        }
    }
    match tokio::time::timeout(deadline, tls.acceptor().accept(tcp)).await {
        Ok(Ok(stream)) => serve_http(shared, TokioIo::new(stream), stop).await,
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake failed: {e}");
            refusals::connection(shared.name, "tls_handshake_failed");
        }
        Err(_) => {
            tracing::debug!("TLS handshake not finished within limits.header_read_timeout");
            refusals::connection(shared.name, "header_read_timeout");
        }
    }
}

/// HTTP/1.1 or HTTP/2 on one connection until the client closes it, it is idle
/// for `idle_timeout`, or the server shuts down.
async fn serve_http<I>(shared: Arc<Shared>, io: TokioIo<I>, mut stop: watch::Receiver<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let service = {
        let (shared, activity) = (shared.clone(), activity.clone());
        hyper::service::service_fn(move |request| {
            let (shared, activity) = (shared.clone(), activity.clone());
            async move { Ok::<_, Infallible>(answer(&shared, &activity, request).await) }
        })
    };
    let connection = shared.http.serve_connection(io, service);
    tokio::pin!(connection);
    let idle_timeout = shared.limits.idle_timeout;
    let mut closing: Option<Instant> = None;
    loop {
        let give_up = closing.map(|since| since + CLOSE_GRACE);
        tokio::select! {
            done = connection.as_mut() => {
                if let Err(e) = done {
                    // hyper's own header_read_timeout ends the connection with a timeout error.
                    if e.downcast_ref::<hyper::Error>().is_some_and(hyper::Error::is_timeout) {
                        refusals::connection(shared.name, "header_read_timeout");
                    }
                    tracing::debug!("connection ended: {e}");
                }
                return;
            }
            _ = stop.changed(), if closing.is_none() => {
                // Shutting down (or the sender is gone): in-flight requests finish within the
                // server's drain timeout, which ends the process anyway.
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now() + SHUTDOWN_GRACE);
            }
            () = activity.idle_for(idle_timeout), if closing.is_none() => {
                // Normal for keep-alive clients, so not part of the warning summary.
                tracing::debug!("idle for {idle_timeout:?} (limits.idle_timeout): closing");
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            () = sleep_until(give_up), if give_up.is_some() => return,
        }
    }
}

async fn sleep_until(when: Option<Instant>) {
    if let Some(when) = when {
        tokio::time::sleep_until(when.into()).await;
    }
}

/// One request: counted against the port's in-flight cap, its body charged to the
/// port's buffer budget and watched for stalls, and cut at the body timeout.
async fn answer(shared: &Shared, activity: &Activity, request: Request<Incoming>) -> Response<Body> {
    let _busy = activity.begin();
    let Ok(_permit) = shared.in_flight.clone().try_acquire_owned() else {
        tracing::debug!(path = request.uri().path(), "request refused: limits.max_in_flight reached");
        refusals::connection(shared.name, "max_in_flight");
        return busy(shared, "too many requests in flight on this port (limits.max_in_flight)");
    };
    let cut = Arc::new(CutFlag::default());
    let stall = shared.limits.body_stall_timeout;
    let request = request.map(|b| Body::new(Guarded::new(b, shared.buffered.clone(), stall, cut.clone())));
    let response = tokio::time::timeout(shared.limits.body_timeout, (shared.handler)(request)).await;
    match (response, cut.get()) {
        (_, Some(Cut::Budget)) => {
            tracing::debug!("request refused: limits.max_buffered_bytes reached");
            refusals::connection(shared.name, "max_buffered_bytes");
            busy(shared, "this port holds too many request bytes at once (limits.max_buffered_bytes)")
        }
        (_, Some(Cut::Stalled)) => {
            tracing::debug!("request body stalled for {stall:?}: cut");
            refusals::connection(shared.name, "body_stall_timeout");
            timed_out(shared, format!("request body stalled for {stall:?} (limits.body_stall_timeout)"))
        }
        (Ok(response), None) => response,
        (Err(_), None) => {
            tracing::debug!("request not complete within limits.body_timeout: cut");
            refusals::connection(shared.name, "body_timeout");
            let limit = shared.limits.body_timeout;
            timed_out(shared, format!("request not received within {limit:?} (limits.body_timeout)"))
        }
    }
}

fn busy(shared: &Shared, message: &str) -> Response<Body> {
    if shared.grpc {
        return tonic::Status::unavailable(message).into_http::<Body>();
    }
    let mut response = text(StatusCode::SERVICE_UNAVAILABLE, message.to_owned());
    response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    response
}

fn timed_out(shared: &Shared, message: String) -> Response<Body> {
    if shared.grpc {
        return tonic::Status::deadline_exceeded(message).into_http::<Body>();
    }
    let mut response = text(StatusCode::REQUEST_TIMEOUT, message);
    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

fn text(status: StatusCode, message: String) -> Response<Body> {
    let mut response = Response::new(Body::from(message + "\n"));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    response
}

// === impl Activity ===

/// Requests in flight on one connection and when the last one ended.
struct Activity {
    start: Instant,
    in_flight: AtomicUsize,
    /// Milliseconds after `start` at which the connection was last busy.
    last_ms: AtomicU64,
}

/// Marks a request finished when dropped, whether it completed or was cancelled.
struct Busy<'a>(&'a Activity);

impl Activity {
    fn new() -> Self {
        Self { start: Instant::now(), in_flight: AtomicUsize::new(0), last_ms: AtomicU64::new(0) }
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn begin(&self) -> Busy<'_> {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Busy(self)
    }

    /// Resolves once no request has been in flight for `limit`.
    async fn idle_for(&self, limit: Duration) {
        let limit_ms = u64::try_from(limit.as_millis()).unwrap_or(u64::MAX);
        loop {
            let idle_ms = self.now_ms().saturating_sub(self.last_ms.load(Ordering::SeqCst));
            if self.in_flight.load(Ordering::SeqCst) == 0 && idle_ms >= limit_ms {
                return;
            }
            let wait = if self.in_flight.load(Ordering::SeqCst) > 0 { limit_ms } else { limit_ms - idle_ms };
            tokio::time::sleep(Duration::from_millis(wait.max(10))).await;
        }
    }
}

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0.last_ms.store(self.0.now_ms(), Ordering::SeqCst);
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Runs HTTP/2 streams as tasks inside the connection's span, so their log
/// lines name the port and peer.
#[derive(Clone, Copy)]
struct SpanExecutor;

impl<F> hyper::rt::Executor<F> for SpanExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, future: F) {
        tokio::spawn(future.in_current_span());
    }
}
