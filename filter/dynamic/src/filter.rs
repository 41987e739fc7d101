//! One HTTP stream: hand the head and the body to the core, send its answer.
//! The same steps as the wasm filter's `http.rs`, over the [`Host`] trait so
//! they run (and are tested) without Envoy.
#![forbid(unsafe_code)]

use crate::front::{now_ms, Front};
use ingero_fleet_core::reply::Reply;
use ingero_fleet_core::{HeadStep, PendingPush, RequestHead, ThresholdBook};
use std::sync::Arc;

/// What the stream needs from Envoy while one event hook runs.
pub trait Host {
    /// Every request header as (name, value); names are lower case.
    fn request_headers(&self) -> Vec<(&[u8], &[u8])>;
    /// Bytes of request body received so far.
    fn request_body_size(&self) -> usize;
    /// The request body received so far.
    fn request_body(&self) -> Vec<u8>;
    /// Ends the stream with a local reply.
    fn send_reply(&self, reply: &Reply);
    /// Logs a warning under Envoy's `dynamic_modules` logger.
    fn warn(&self, message: &str);
}

/// After the request headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeadersStatus {
    /// Not Fleet's request: on to the next filter.
    Continue,
    /// Wait: the body is needed, or a local reply was sent.
    Stop,
}

/// After a piece of the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyStatus {
    /// Nothing pending: on to the next filter.
    Continue,
    /// Keep buffering until the end of the stream.
    Buffer,
    /// A local reply was sent: drop the body.
    Stop,
}

/// One request's state between hooks.
pub struct Stream {
    front: Arc<Front>,
    pending: Option<PendingPush>,
}

impl Stream {
    /// A stream of the filter configuration `front`.
    pub fn new(front: Arc<Front>) -> Self {
        Self { front, pending: None }
    }

    /// The request head: pass, answer now, or start reading a push body.
    pub fn on_request_headers(&mut self, host: &impl Host, end_of_stream: bool) -> HeadersStatus {
        let headers = host.request_headers();
        // Headers that are not UTF-8 cannot be Fleet's: they are left out.
        let text =
            headers.iter().filter_map(|(n, v)| Some((std::str::from_utf8(n).ok()?, std::str::from_utf8(v).ok()?)));
        let head = RequestHead::from_headers(text);
        let now = now_ms();
        let book = self.book(host, now);
        match self.front.fleet().on_head(&head, &book) {
            HeadStep::Pass => HeadersStatus::Continue,
            HeadStep::Answer(answer) => {
                host.send_reply(&answer.reply);
                HeadersStatus::Stop
            }
            HeadStep::ReadBody(push) if end_of_stream => {
                self.finish(host, &push, &[]);
                HeadersStatus::Stop
            }
            HeadStep::ReadBody(push) => {
                self.pending = Some(push);
                HeadersStatus::Stop
            }
        }
    }

    /// A piece of the request body: buffer it, refuse it once it is too large,
    /// or store the push when the body is complete.
    pub fn on_request_body(&mut self, host: &impl Host, end_of_stream: bool) -> BodyStatus {
        let Some(push) = self.pending.take() else { return BodyStatus::Continue };
        if host.request_body_size() > self.front.fleet().config().max_body_bytes {
            let book = self.book(host, now_ms());
            host.send_reply(&self.front.fleet().body_too_large(&push, &book).reply);
            return BodyStatus::Stop;
        }
        if !end_of_stream {
            self.pending = Some(push);
            return BodyStatus::Buffer;
        }
        self.finish(host, &push, &host.request_body());
        BodyStatus::Stop
    }

    /// Request trailers end the body (HTTP/2, chunked with trailers): store what arrived.
    pub fn on_request_trailers(&mut self, host: &impl Host) -> HeadersStatus {
        match self.pending.take() {
            Some(push) => {
                self.finish(host, &push, &host.request_body());
                HeadersStatus::Stop
            }
            None => HeadersStatus::Continue,
        }
    }

    fn finish(&self, host: &impl Host, push: &PendingPush, body: &[u8]) {
        let now = now_ms();
        let book = self.book(host, now);
        host.send_reply(&self.front.fleet().on_body(push, body, now, &book).reply);
    }

    fn book(&self, host: &impl Host, now: u64) -> Arc<ThresholdBook> {
        let (book, warning) = self.front.book(now);
        if let Some(warning) = warning {
            host.warn(&format!("ingero-fleet: {warning}"));
        }
        book
    }
}

/// A header value as text; values that are not UTF-8 count as absent (the core then refuses them).
#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// A request as Envoy would present it, recording what the stream sends back.
    #[derive(Default)]
    struct FakeHost {
        headers: Vec<(String, String)>,
        body: Vec<u8>,
        replies: RefCell<Vec<Reply>>,
    }

    impl FakeHost {
        fn request(method: &str, path: &str, content_type: &str) -> Self {
            let mut headers = vec![(":method".into(), method.into()), (":path".into(), path.into())];
            if !content_type.is_empty() {
                headers.push(("content-type".into(), content_type.into()));
            }
            Self { headers, ..Self::default() }
        }

        fn reply(&self) -> Reply {
            let replies = self.replies.borrow();
            assert_eq!(replies.len(), 1, "exactly one reply");
            replies[0].clone()
        }
    }

    impl Host for FakeHost {
        fn request_headers(&self) -> Vec<(&[u8], &[u8])> {
            self.headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect()
        }
        fn request_body_size(&self) -> usize {
            self.body.len()
        }
        fn request_body(&self) -> Vec<u8> {
            self.body.clone()
        }
        fn send_reply(&self, reply: &Reply) {
            self.replies.borrow_mut().push(reply.clone());
        }
        fn warn(&self, message: &str) {
            unreachable!("unexpected warning: {message}");
        }
    }

    fn stream(name: &str, json: &str) -> Stream {
        let (front, _) = Front::configure(name, json.as_bytes()).unwrap_or_else(|e| unreachable!("{e}"));
        Stream::new(front)
    }

    #[test]
    fn other_paths_pass_through() {
        let mut s = stream("f-pass", "{}");
        let host = FakeHost::request("GET", "/healthz", "");
        assert_eq!(s.on_request_headers(&host, true), HeadersStatus::Continue);
        assert!(host.replies.borrow().is_empty());
    }

    #[test]
    fn a_push_is_buffered_then_answered_when_the_body_ends() {
        let mut s = stream("f-push", "{}");
        let mut host = FakeHost::request("POST", "/v1/metrics?cluster_id=c", "application/json");
        assert_eq!(s.on_request_headers(&host, false), HeadersStatus::Stop);
        host.body = b"{\"resourceMetrics\"".to_vec();
        assert_eq!(s.on_request_body(&host, false), BodyStatus::Buffer);
        host.body.extend_from_slice(b":[]}");
        assert_eq!(s.on_request_body(&host, true), BodyStatus::Stop);
        let reply = host.reply();
        assert_eq!((reply.status, reply.body.as_slice()), (200, b"{}".as_slice()));
    }

    #[test]
    fn trailers_end_the_body() {
        let mut s = stream("f-trailers", "{}");
        let mut host = FakeHost::request("POST", "/v1/metrics?cluster_id=c", "application/json");
        s.on_request_headers(&host, false);
        host.body = b"{\"resourceMetrics\":[]}".to_vec();
        assert_eq!(s.on_request_body(&host, false), BodyStatus::Buffer);
        assert_eq!(s.on_request_trailers(&host), HeadersStatus::Stop);
        assert_eq!(host.reply().status, 200);
    }

    #[test]
    fn a_body_past_the_limit_is_refused_while_it_arrives() {
        let mut s = stream("f-large", r#"{"max_body_bytes": 1024}"#);
        let mut host = FakeHost::request("POST", "/v1/metrics?cluster_id=c", "application/json");
        s.on_request_headers(&host, false);
        host.body = vec![b' '; 1025];
        assert_eq!(s.on_request_body(&host, false), BodyStatus::Stop);
        assert_eq!(host.reply().status, 413);
        assert_eq!(s.on_request_body(&host, true), BodyStatus::Continue, "nothing pending after the reply");
    }

    #[test]
    fn headers_only_push_and_wrong_method_are_answered_at_once() {
        let mut s = stream("f-head", "{}");
        let host = FakeHost::request("POST", "/v1/metrics?cluster_id=c", "application/json");
        assert_eq!(s.on_request_headers(&host, true), HeadersStatus::Stop);
        assert_eq!(host.reply().status, 400, "empty body");
        let host = FakeHost::request("GET", "/v1/metrics?cluster_id=c", "");
        assert_eq!(s.on_request_headers(&host, true), HeadersStatus::Stop);
        assert_eq!(host.reply().status, 405);
    }
}
