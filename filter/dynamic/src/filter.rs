//! One HTTP stream: Envoy's hooks handed to the core's [`Exchange`], over the
//! [`Envoy`] trait so they run (and are tested) without Envoy.
#![forbid(unsafe_code)]

use crate::front::Front;
use ingero_fleet_core::{Exchange, Flow, Host, RequestHead};
use std::sync::Arc;

/// What the stream needs from Envoy beyond the core's [`Host`].
pub trait Envoy: Host {
    /// Every request header as (name, value); names are lower case.
    fn request_headers(&self) -> Vec<(&[u8], &[u8])>;
    /// Logs a warning under Envoy's `dynamic_modules` logger.
    fn warn(&self, message: &str);
}

/// One request's state between hooks.
pub struct Stream {
    front: Arc<Front>,
    exchange: Exchange,
}

impl Stream {
    /// A stream of the filter configuration `front`.
    pub fn new(front: Arc<Front>) -> Self {
        Self { front, exchange: Exchange::default() }
    }

    /// The request head: pass, answer now, or start reading a push body.
    pub fn on_request_headers(&mut self, envoy: &mut impl Envoy, end_of_stream: bool) -> Flow {
        if let Some(warning) = self.front.take_warning() {
            envoy.warn(&format!("ingero-fleet: {warning}"));
        }
        // Copied out of Envoy's map, which the exchange may write to. Headers
        // that are not UTF-8 cannot be Fleet's: they are left out.
        let headers: Vec<(String, String)> = envoy
            .request_headers()
            .into_iter()
            .filter_map(|(n, v)| Some((String::from_utf8(n.to_vec()).ok()?, String::from_utf8(v.to_vec()).ok()?)))
            .collect();
        let head = RequestHead::from_headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        self.exchange.on_request_headers(self.front.fleet(), envoy, &head, end_of_stream)
    }

    /// A piece of the request body.
    pub fn on_request_body(&mut self, envoy: &mut impl Envoy, end_of_stream: bool) -> Flow {
        self.exchange.on_request_body(self.front.fleet(), envoy, end_of_stream)
    }

    /// Request trailers end the body (HTTP/2, chunked with trailers).
    pub fn on_request_trailers(&mut self, envoy: &mut impl Envoy) -> Flow {
        self.exchange.on_request_trailers(self.front.fleet(), envoy)
    }

    /// The upstream's response head (observe mode).
    pub fn on_response_headers(&mut self, envoy: &mut impl Envoy) -> Flow {
        self.exchange.on_response_headers(self.front.fleet(), envoy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingero_fleet_core::exchange::testing::RecordingHost as FakeEnvoy;

    impl Envoy for FakeEnvoy {
        fn request_headers(&self) -> Vec<(&[u8], &[u8])> {
            self.headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect()
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
        let mut envoy = FakeEnvoy::request("GET", "/healthz", "");
        assert_eq!(s.on_request_headers(&mut envoy, true), Flow::Continue);
        assert!(envoy.replies.is_empty());
    }

    #[test]
    fn a_push_is_held_then_answered_when_the_body_ends() {
        let mut s = stream("f-push", "{}");
        let mut envoy = FakeEnvoy::request("POST", "/v1/metrics?cluster_id=c", "application/json");
        assert_eq!(s.on_request_headers(&mut envoy, false), Flow::Hold);
        envoy.body = b"{\"resourceMetrics\"".to_vec();
        assert_eq!(s.on_request_body(&mut envoy, false), Flow::Hold);
        envoy.body.extend_from_slice(b":[]}");
        assert_eq!(s.on_request_body(&mut envoy, true), Flow::Stop);
        assert_eq!((envoy.reply().status, envoy.reply().body.as_slice()), (200, b"{}".as_slice()));
    }

    #[test]
    fn trailers_end_the_body() {
        let mut s = stream("f-trailers", "{}");
        let mut envoy = FakeEnvoy::request("POST", "/v1/metrics?cluster_id=c", "application/json");
        s.on_request_headers(&mut envoy, false);
        envoy.body = b"{\"resourceMetrics\":[]}".to_vec();
        assert_eq!(s.on_request_body(&mut envoy, false), Flow::Hold);
        assert_eq!(s.on_request_trailers(&mut envoy), Flow::Stop);
        assert_eq!(envoy.reply().status, 200);
    }

    #[test]
    fn a_body_past_the_limit_is_refused_while_it_arrives() {
        let mut s = stream("f-large", r#"{"max_body_bytes": 1024}"#);
        let mut envoy = FakeEnvoy::request("POST", "/v1/metrics?cluster_id=c", "application/json");
        s.on_request_headers(&mut envoy, false);
        envoy.body = vec![b' '; 1025];
        assert_eq!(s.on_request_body(&mut envoy, false), Flow::Stop);
        assert_eq!(envoy.reply().status, 413);
        assert_eq!(s.on_request_body(&mut envoy, true), Flow::Continue, "nothing pending after the reply");
    }

    #[test]
    fn observe_mode_forwards_and_adds_nothing_before_quorum() {
        let mut s = stream("f-observe", r#"{"mode": "observe"}"#);
        let mut envoy = FakeEnvoy::request("POST", "/v1/metrics?cluster_id=c", "application/json");
        assert_eq!(s.on_request_headers(&mut envoy, false), Flow::Continue);
        envoy.body = b"{\"resourceMetrics\":[]}".to_vec();
        assert_eq!(s.on_request_body(&mut envoy, true), Flow::Continue);
        envoy.status = Some(200);
        assert_eq!(s.on_response_headers(&mut envoy), Flow::Continue);
        assert!(envoy.replies.is_empty(), "the upstream answers, not Fleet");
        assert!(envoy.added.is_empty(), "no threshold before quorum");
    }
}
