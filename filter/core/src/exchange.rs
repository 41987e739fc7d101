//! One request through Fleet, hook by hook, in the order a proxy delivers it:
//! the head, pieces of body, the end of the body and, in observe mode, the
//! upstream's response head. Every front door drives this one state machine
//! through its small [`Host`]; callers that hold a whole body use
//! [`Fleet::handle`](crate::service::Fleet::handle).

use crate::config::{Mode, RouteSet};
use crate::error::FleetError;
use crate::metrics::CounterSink;
use crate::otlp::BodyFormat;
use crate::outcome::{Answer, DropReason, Outcome};
use crate::reply::{Reply, QUORUM_HEADER, THRESHOLD_HEADER};
use crate::service::{Fleet, HeadStep, PendingPush, RequestHead, ScoredPush};
use crate::store::SharedStore;

/// What a front door offers while one of its hooks runs.
pub trait Host {
    /// Bytes of request body the host holds now: all of it so far while the
    /// stream is held ([`Flow::Hold`]), the piece just received while it flows on.
    fn body_len(&self) -> usize;
    /// Those bytes; an error when the host cannot hand them over.
    fn body(&self) -> Result<Vec<u8>, String>;
    /// Ends the stream with a local reply: `answer.reply` (its outcome is already counted).
    fn send_reply(&mut self, answer: &Answer);
    /// Adds a header to the upstream's response (observe mode).
    fn add_response_header(&mut self, name: &'static str, value: &str);
    /// The upstream response's `:status` (observe mode), read only when an
    /// observed push waits for it; a host that never forwards has none.
    fn response_status(&self) -> Option<u16> {
        None
    }
    /// Wall-clock milliseconds, the time base of node expiry.
    fn now_ms(&self) -> u64;
    /// Whether this host turns a reply into a gRPC answer (a proxy's local reply cannot).
    fn answers_grpc(&self) -> bool {
        false
    }
    /// The routes the listener this request came in on serves (a proxy sets them
    /// per listener in the configuration's `routes` instead).
    fn serves(&self) -> RouteSet {
        RouteSet::ALL
    }
}

/// How long a push held at its headers may wait for its first body piece before
/// the proxy is taken to ignore the header pause (an Envoy without
/// `allow_on_headers_stop_iteration`): well inside the agent's 5 s timeout.
pub const BODY_WAIT_MS: u64 = 1_000;

/// Pushes a proxy holds at their headers, by stream id, until their body
/// arrives: a proxy that ignores the header pause never passes it on, and the
/// front door answers the overdue ones ([`answer_body_never_came`]).
#[derive(Debug, Default)]
pub struct HeldPushes {
    held: Vec<(u32, u64)>,
}

impl HeldPushes {
    /// Notes stream `id`, held at its headers since `now_ms`.
    pub fn hold(&mut self, id: u32, now_ms: u64) {
        self.held.push((id, now_ms));
    }

    /// Stream `id` got its body (or ended).
    pub fn release(&mut self, id: u32) {
        self.held.retain(|(held, _)| *held != id);
    }

    /// The streams held for [`BODY_WAIT_MS`] or longer, no longer tracked.
    pub fn overdue(&mut self, now_ms: u64) -> Vec<u32> {
        let (overdue, waiting) =
            self.held.drain(..).partition(|(_, since)| now_ms.saturating_sub(*since) >= BODY_WAIT_MS);
        self.held = waiting;
        overdue.into_iter().map(|(id, _)| id).collect()
    }
}

/// Answers (and counts) a push whose body never came after its headers were held.
pub fn answer_body_never_came<S: SharedStore, C: CounterSink>(fleet: &Fleet<S, C>, host: &mut impl Host) {
    let error = FleetError::HeaderPauseIgnored;
    let answer = Answer { reply: Reply::error(BodyFormat::Json, &error), outcome: Outcome::refused(&error) };
    fleet.count(&answer.outcome);
    host.send_reply(&answer);
}

/// What the front door does when a hook returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// On to the next filter or the upstream.
    Continue,
    /// Hold the request, buffering its body, until Fleet answers.
    Hold,
    /// Let the headers go on but hold the body until Fleet answers (a host
    /// that cannot pause at the headers: see `pause_on_headers`).
    HoldBody,
    /// Fleet sent a local reply: the request goes no further.
    Stop,
}

/// One request's progress between hooks.
#[derive(Debug, Default)]
pub struct Exchange {
    state: State,
}

#[derive(Debug, Default)]
enum State {
    /// Before the head, or Fleet is done with the request.
    #[default]
    Idle,
    /// Terminate: the host buffers the body; Fleet reads it when it ends.
    Holding(PendingPush),
    /// Observe: the body flows on; Fleet keeps a copy within `max_body_bytes`.
    Copying(PendingPush, Vec<u8>),
    /// Observe: a valid push, stored once the upstream accepts it.
    Scored(ScoredPush),
    /// Observe: a push that is not scored; its response still gets the threshold.
    Unscored(Option<String>),
}

impl Exchange {
    /// The request head: pass it on, answer it, or read its body.
    pub fn on_request_headers<S: SharedStore, C: CounterSink>(
        &mut self,
        fleet: &Fleet<S, C>,
        host: &mut impl Host,
        head: &RequestHead,
        end_of_stream: bool,
    ) -> Flow {
        let observe = fleet.config().mode == Mode::Observe;
        match fleet.decide_for(head, host.serves(), host.now_ms()) {
            HeadStep::Pass => Flow::Continue,
            HeadStep::Answer(answer) => self.reply(fleet, host, answer),
            HeadStep::Refuse(answer, cluster) if observe => {
                fleet.count(&answer.outcome);
                self.state = State::Unscored(cluster);
                Flow::Continue
            }
            HeadStep::Refuse(answer, _) => self.reply(fleet, host, answer),
            HeadStep::ReadBody(push) if observe => {
                self.state = State::Copying(push, Vec::new());
                if end_of_stream {
                    self.end_copy(fleet);
                }
                Flow::Continue
            }
            HeadStep::ReadBody(push) if push.is_grpc() && !host.answers_grpc() => {
                let answer = fleet.refuse_push(&push, &FleetError::GrpcNotServed);
                self.reply(fleet, host, answer)
            }
            HeadStep::ReadBody(push) if end_of_stream => self.finish(fleet, host, &push),
            HeadStep::ReadBody(push) => {
                self.state = State::Holding(push);
                // Without the header pause the headers go on and the body alone is held,
                // so whatever is next never sees a whole push.
                if fleet.config().pause_on_headers {
                    Flow::Hold
                } else {
                    Flow::HoldBody
                }
            }
        }
    }

    /// A piece of request body has arrived.
    pub fn on_request_body<S: SharedStore, C: CounterSink>(
        &mut self,
        fleet: &Fleet<S, C>,
        host: &mut impl Host,
        end_of_stream: bool,
    ) -> Flow {
        let limit = fleet.config().max_body_bytes;
        match std::mem::take(&mut self.state) {
            State::Holding(push) if host.body_len() > limit => {
                let answer = fleet.body_too_large(&push);
                self.reply(fleet, host, answer)
            }
            State::Holding(push) if end_of_stream => self.finish(fleet, host, &push),
            State::Holding(push) => {
                self.state = State::Holding(push);
                Flow::Hold
            }
            State::Copying(push, body) if body.len() + host.body_len() > limit => {
                // Forwarded whole, never scored: counted like a refused push.
                fleet.count(&fleet.body_too_large(&push).outcome);
                self.state = State::Unscored(push.cluster().map(str::to_owned));
                Flow::Continue
            }
            State::Copying(push, mut body) => {
                match host.body() {
                    Ok(piece) => body.extend_from_slice(&piece),
                    Err(e) => return self.unscored(fleet, &push, &FleetError::Host(e)),
                }
                self.state = State::Copying(push, body);
                if end_of_stream {
                    self.end_copy(fleet);
                }
                Flow::Continue
            }
            other => {
                self.state = other;
                Flow::Continue
            }
        }
    }

    /// Request trailers: the body has ended (HTTP/2, chunked with trailers).
    pub fn on_request_trailers<S: SharedStore, C: CounterSink>(
        &mut self,
        fleet: &Fleet<S, C>,
        host: &mut impl Host,
    ) -> Flow {
        match std::mem::take(&mut self.state) {
            State::Holding(push) => self.finish(fleet, host, &push),
            copying @ State::Copying(..) => {
                self.state = copying;
                self.end_copy(fleet);
                Flow::Continue
            }
            other => {
                self.state = other;
                Flow::Continue
            }
        }
    }

    /// Observe mode: the upstream's response head. A push is stored only if the
    /// upstream accepted it (2xx); the response gains the cluster's threshold.
    pub fn on_response_headers<S: SharedStore, C: CounterSink, H: Host>(
        &mut self,
        fleet: &Fleet<S, C>,
        host: &mut H,
    ) -> Flow {
        // The status is read only where a push waits for it (a local reply has no upstream).
        let accepted = |host: &H| (200..300).contains(&host.response_status().unwrap_or(0));
        let threshold = match std::mem::take(&mut self.state) {
            State::Scored(scored) if accepted(host) => match fleet.commit(&scored, host.now_ms()) {
                Ok(answer) => {
                    fleet.count(&answer.outcome);
                    answer.reply.header(THRESHOLD_HEADER).map(str::to_owned)
                }
                Err(error) => {
                    fleet.count(&Outcome::refused(&error));
                    fleet.piggyback(scored.cluster()).map(|t| t.to_string())
                }
            },
            State::Scored(scored) => {
                fleet.count(&Outcome::dropped(DropReason::UpstreamRefused, 1));
                fleet.piggyback(scored.cluster()).map(|t| t.to_string())
            }
            // Answered before its body ended (Envoy's own 503 when the upstream is gone).
            State::Copying(push, _) => {
                if !accepted(host) {
                    fleet.count(&Outcome::dropped(DropReason::UpstreamRefused, 1));
                }
                fleet.piggyback(push.cluster()).map(|t| t.to_string())
            }
            State::Unscored(cluster) => fleet.piggyback(cluster.as_deref()).map(|t| t.to_string()),
            _ => return Flow::Continue,
        };
        if let Some(threshold) = threshold {
            host.add_response_header(THRESHOLD_HEADER, &threshold);
            host.add_response_header(QUORUM_HEADER, "true");
        }
        Flow::Continue
    }

    /// Terminate: the whole body is in the host's buffer.
    fn finish<S: SharedStore, C: CounterSink>(
        &mut self,
        fleet: &Fleet<S, C>,
        host: &mut impl Host,
        push: &PendingPush,
    ) -> Flow {
        let answer = match host.body() {
            Ok(body) => fleet.on_body(push, &body, host.now_ms()),
            Err(e) => fleet.refuse_push(push, &FleetError::Host(e)),
        };
        self.reply(fleet, host, answer)
    }

    /// Observe: the copy is whole; validate it now, store it on the upstream's 2xx.
    fn end_copy<S: SharedStore, C: CounterSink>(&mut self, fleet: &Fleet<S, C>) {
        if let State::Copying(push, body) = std::mem::take(&mut self.state) {
            self.state = match fleet.score(&push, &body) {
                Ok(scored) => State::Scored(scored),
                Err(error) => {
                    fleet.count(&Outcome::refused(&error));
                    State::Unscored(push.cluster().map(str::to_owned))
                }
            };
        }
    }

    fn unscored<S: SharedStore, C: CounterSink>(
        &mut self,
        fleet: &Fleet<S, C>,
        push: &PendingPush,
        error: &FleetError,
    ) -> Flow {
        fleet.count(&Outcome::refused(error));
        self.state = State::Unscored(push.cluster().map(str::to_owned));
        Flow::Continue
    }

    fn reply<S: SharedStore, C: CounterSink>(
        &mut self,
        fleet: &Fleet<S, C>,
        host: &mut impl Host,
        answer: Answer,
    ) -> Flow {
        fleet.count(&answer.outcome);
        host.send_reply(&answer);
        self.state = State::Idle;
        Flow::Stop
    }
}

/// A proxy stream for tests of the core and of every front door's glue.
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use super::{Answer, Host, Reply};

    /// A request as a proxy presents it, recording what the exchange tells the proxy to do.
    #[derive(Default)]
    pub struct RecordingHost {
        /// The request head, as (name, value) pairs with `:method` and `:path`.
        pub headers: Vec<(String, String)>,
        /// The body the proxy holds so far.
        pub body: Vec<u8>,
        /// The upstream's response status (observe mode).
        pub status: Option<u16>,
        /// Every local reply sent.
        pub replies: Vec<Reply>,
        /// Every header added to the upstream's response.
        pub added: Vec<(&'static str, String)>,
    }

    impl RecordingHost {
        /// A request head; an empty `content_type` sends none.
        pub fn request(method: &str, path: &str, content_type: &str) -> Self {
            let mut headers = vec![(":method".into(), method.into()), (":path".into(), path.into())];
            if !content_type.is_empty() {
                headers.push(("content-type".into(), content_type.into()));
            }
            Self { headers, ..Self::default() }
        }

        /// The one local reply sent.
        pub fn reply(&self) -> &Reply {
            assert_eq!(self.replies.len(), 1, "exactly one reply");
            &self.replies[0]
        }
    }

    impl Host for RecordingHost {
        fn body_len(&self) -> usize {
            self.body.len()
        }
        fn body(&self) -> Result<Vec<u8>, String> {
            Ok(self.body.clone())
        }
        fn send_reply(&mut self, answer: &Answer) {
            self.replies.push(answer.reply.clone());
        }
        fn add_response_header(&mut self, name: &'static str, value: &str) {
            self.added.push((name, value.to_owned()));
        }
        fn now_ms(&self) -> u64 {
            1_000
        }
        fn response_status(&self) -> Option<u16> {
            self.status
        }
    }
}

#[cfg(test)]
mod tests {
    use super::testing::RecordingHost;
    use super::*;
    use crate::config::Config;
    use crate::metrics::{Counter, MemoryCounters};
    use crate::otlp::tests::agent_json;
    use crate::store::MemoryStore;

    type TestFleet = Fleet<MemoryStore, MemoryCounters>;

    fn fleet(json: &str) -> TestFleet {
        let config = Config::from_json(json.as_bytes()).map(|p| p.config).unwrap_or_else(|e| unreachable!("{e}"));
        let fleet = Fleet::new(config, MemoryStore::default(), MemoryCounters::default());
        assert_eq!(fleet.init(), Ok(()));
        fleet
    }

    fn push_head(content_type: &str) -> RequestHead<'_> {
        RequestHead {
            method: "POST",
            path: "/v1/metrics?cluster_id=c1",
            content_type: Some(content_type),
            ..RequestHead::default()
        }
    }

    fn dropped(fleet: &TestFleet, reason: DropReason) -> u64 {
        fleet.counters().value(Counter::Dropped(reason))
    }

    /// Streams a push in two pieces; in observe mode the host sees each piece alone.
    fn stream_push(fleet: &TestFleet, host: &mut RecordingHost, body: &[u8], observe: bool) -> (Exchange, Vec<Flow>) {
        let mut exchange = Exchange::default();
        let mut flows = vec![exchange.on_request_headers(fleet, host, &push_head("application/json"), false)];
        let (first, second) = body.split_at(body.len() / 2);
        host.body = first.to_vec();
        flows.push(exchange.on_request_body(fleet, host, false));
        if observe {
            host.body = second.to_vec();
        } else {
            host.body.extend_from_slice(second);
        }
        flows.push(exchange.on_request_body(fleet, host, true));
        (exchange, flows)
    }

    #[test]
    fn terminate_holds_the_push_and_answers_at_its_end() {
        let fleet = fleet("{}");
        let mut host = RecordingHost::default();
        let (_, flows) = stream_push(&fleet, &mut host, agent_json("n1", "0.9").as_bytes(), false);
        assert_eq!(flows, [Flow::Hold, Flow::Hold, Flow::Stop]);
        assert_eq!(host.replies.iter().map(|r| r.status).collect::<Vec<_>>(), [200]);
        assert_eq!(fleet.registry().tracked_nodes(), Ok(1));
        assert_eq!(fleet.counters().value(Counter::TotalPushes), 1);
    }

    #[test]
    fn terminate_refuses_a_body_growing_past_the_limit_and_counts_it() {
        let fleet = fleet(r#"{"max_body_bytes": 1024}"#);
        let mut host = RecordingHost::default();
        let (_, flows) = stream_push(&fleet, &mut host, &[b' '; 3000], false);
        assert_eq!(flows, [Flow::Hold, Flow::Stop, Flow::Continue]);
        assert_eq!(host.replies.iter().map(|r| r.status).collect::<Vec<_>>(), [413]);
        assert_eq!(dropped(&fleet, DropReason::BodyTooLarge), 1);
    }

    #[test]
    fn observe_stores_a_push_only_once_the_upstream_accepts_it() {
        let fleet = fleet(r#"{"mode": "observe"}"#);
        for (status, tracked) in [(503, 0), (200, 1)] {
            let mut host = RecordingHost::default();
            let (mut exchange, flows) = stream_push(&fleet, &mut host, agent_json("n1", "0.9").as_bytes(), true);
            assert_eq!(flows, [Flow::Continue; 3], "the push flows on untouched");
            assert_eq!(fleet.registry().tracked_nodes(), Ok(0), "nothing stored before the upstream answers");
            host.status = Some(status);
            assert_eq!(exchange.on_response_headers(&fleet, &mut host), Flow::Continue);
            assert_eq!(fleet.registry().tracked_nodes(), Ok(tracked), "after a {status}");
            assert!(host.replies.is_empty(), "the upstream answers, never Fleet");
        }
        assert_eq!(dropped(&fleet, DropReason::UpstreamRefused), 1);
        assert_eq!(fleet.counters().value(Counter::TotalPushes), 1);
    }

    #[test]
    fn observe_adds_the_threshold_to_the_upstream_answer_once_there_is_one() {
        let fleet = fleet(r#"{"mode": "observe", "threshold": {"ema_alpha": 1.0}}"#);
        for (i, score) in [0.9, 0.85, 0.95, 0.92, 0.88].iter().enumerate() {
            let mut host = RecordingHost::default();
            let body = agent_json(&format!("n{i}"), &score.to_string());
            let (mut exchange, _) = stream_push(&fleet, &mut host, body.as_bytes(), true);
            host.status = Some(200);
            exchange.on_response_headers(&fleet, &mut host);
            assert!(host.added.is_empty(), "no header before quorum");
        }
        assert!(fleet.tick(10_000).is_ok_and(|book| book.is_some()));
        let mut host = RecordingHost::default();
        let (mut exchange, _) = stream_push(&fleet, &mut host, agent_json("n0", "0.9").as_bytes(), true);
        host.status = Some(200);
        exchange.on_response_headers(&fleet, &mut host);
        let names: Vec<_> = host.added.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, [THRESHOLD_HEADER, QUORUM_HEADER]);
        assert_eq!(host.added[0].1.parse::<f64>().ok(), fleet.book().threshold("c1", ""));
    }

    #[test]
    fn observe_forwards_what_it_cannot_score_and_counts_it() {
        let fleet = fleet(r#"{"mode": "observe", "max_body_bytes": 1024}"#);
        let mut host = RecordingHost::default();
        let (mut exchange, flows) = stream_push(&fleet, &mut host, &[b' '; 3000], true);
        assert_eq!(flows, [Flow::Continue; 3]);
        host.status = Some(200);
        exchange.on_response_headers(&fleet, &mut host);
        assert_eq!(dropped(&fleet, DropReason::BodyTooLarge), 1);

        let mut exchange = Exchange::default();
        let flow = exchange.on_request_headers(&fleet, &mut host, &push_head("text/plain"), false);
        assert_eq!(flow, Flow::Continue);
        assert_eq!(dropped(&fleet, DropReason::UnsupportedMediaType), 1);
        assert!(host.replies.is_empty() && fleet.registry().tracked_nodes() == Ok(0));
    }

    #[test]
    fn a_listener_answers_only_its_routes() {
        let fleet = fleet(r#"{"routes": ["push"]}"#);
        let mut host = RecordingHost::default();
        let query = RequestHead { method: "GET", path: "/api/v1/threshold?cluster_id=c1", ..RequestHead::default() };
        assert_eq!(Exchange::default().on_request_headers(&fleet, &mut host, &query, true), Flow::Continue);
        let scrape = RequestHead { method: "GET", path: "/metrics", ..RequestHead::default() };
        assert_eq!(Exchange::default().on_request_headers(&fleet, &mut host, &scrape, true), Flow::Continue);
        assert!(host.replies.is_empty());
    }

    #[test]
    fn held_pushes_are_overdue_after_the_wait_unless_their_body_came() {
        let mut held = HeldPushes::default();
        held.hold(1, 1_000);
        held.hold(2, 1_000);
        held.hold(3, 1_500);
        held.release(2);
        assert_eq!(held.overdue(1_000 + BODY_WAIT_MS - 1), Vec::<u32>::new());
        assert_eq!(held.overdue(1_000 + BODY_WAIT_MS), [1]);
        assert_eq!(held.overdue(10_000), [3], "each overdue stream is answered once");
        let (fleet, mut host) = (fleet("{}"), RecordingHost::default());
        answer_body_never_came(&fleet, &mut host);
        assert_eq!(host.replies.iter().map(|r| r.status).collect::<Vec<_>>(), [500]);
        assert_eq!(dropped(&fleet, DropReason::HostConfig), 1);
    }

    #[test]
    fn a_proxy_refuses_grpc_it_cannot_answer() {
        let fleet = fleet("{}");
        let mut host = RecordingHost::default();
        let flow = Exchange::default().on_request_headers(&fleet, &mut host, &push_head("application/grpc"), false);
        assert_eq!(flow, Flow::Stop);
        assert_eq!(host.replies.iter().map(|r| r.status).collect::<Vec<_>>(), [415]);
    }
}
