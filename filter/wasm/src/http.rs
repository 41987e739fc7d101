//! One HTTP stream: proxy-wasm's hooks handed to the core's [`Exchange`].

use crate::root::{now_ms, Worker};
use ingero_fleet_core::{Answer, Exchange, Flow, Host, RequestHead};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::rc::Rc;

pub struct FleetHttp {
    worker: Rc<Worker>,
    id: u32,
    exchange: Exchange,
    /// The body size Envoy last reported: trailers end the body without one.
    body_len: usize,
}

impl FleetHttp {
    pub fn new(worker: Rc<Worker>, id: u32) -> Self {
        Self { worker, id, exchange: Exchange::default(), body_len: 0 }
    }
}

/// The host during one hook: the body Envoy holds is `body_len` bytes.
pub struct Envoy {
    pub body_len: usize,
}

impl Host for Envoy {
    fn body_len(&self) -> usize {
        self.body_len
    }

    fn body(&self) -> Result<Vec<u8>, String> {
        match hostcalls::get_buffer(BufferType::HttpRequestBody, 0, self.body_len) {
            Ok(body) => Ok(body.unwrap_or_default()), // no buffer: no bytes
            Err(status) => Err(format!("{status:?}")),
        }
    }

    fn send_reply(&mut self, answer: &Answer) {
        let reply = &answer.reply;
        let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        if let Err(status) = hostcalls::send_http_response(u32::from(reply.status), headers, Some(&reply.body)) {
            log::warn!("ingero-fleet: cannot send the response: {status:?}");
        }
    }

    fn add_response_header(&mut self, name: &'static str, value: &str) {
        if let Err(status) = hostcalls::add_map_value(MapType::HttpResponseHeaders, name, value) {
            log::warn!("ingero-fleet: cannot add {name}: {status:?}");
        }
    }

    fn now_ms(&self) -> u64 {
        now_ms()
    }

    fn response_status(&self) -> Option<u16> {
        let status = hostcalls::get_map_value(MapType::HttpResponseHeaders, ":status").ok().flatten()?;
        status.parse().ok()
    }
}

/// The URI (SPIFFE ID) or else DNS name of the client certificate Envoy verified.
fn peer_certificate_name() -> Option<String> {
    ["uri_san_peer_certificate", "dns_san_peer_certificate"].into_iter().find_map(|name| {
        let bytes = hostcalls::get_property(vec!["connection", name]).ok().flatten()?;
        String::from_utf8(bytes).ok().filter(|s| !s.is_empty())
    })
}

/// A local reply and a held request both pause the stream; a held body lets the headers go.
fn action(flow: Flow) -> Action {
    match flow {
        Flow::Continue | Flow::HoldBody => Action::Continue,
        Flow::Hold | Flow::Stop => Action::Pause,
    }
}

impl Context for FleetHttp {
    fn on_done(&mut self) -> bool {
        self.worker.held.borrow_mut().release(self.id);
        true
    }
}

impl HttpContext for FleetHttp {
    fn on_http_request_headers(&mut self, _count: usize, end_of_stream: bool) -> Action {
        // One host call for all headers: each call costs more than the scan.
        let headers = hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        let mut head = RequestHead::from_headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let fleet = &self.worker.fleet;
        let peer = if fleet.config().push_identities.is_open() { None } else { peer_certificate_name() };
        head.peer = peer.as_deref();
        let flow = self.exchange.on_request_headers(fleet, &mut Envoy { body_len: 0 }, &head, end_of_stream);
        if flow == Flow::Hold {
            self.worker.held.borrow_mut().hold(self.id, now_ms());
        }
        action(flow)
    }

    fn on_http_request_body(&mut self, body_len: usize, end_of_stream: bool) -> Action {
        self.worker.held.borrow_mut().release(self.id);
        self.body_len = body_len;
        match self.exchange.on_request_body(&self.worker.fleet, &mut Envoy { body_len }, end_of_stream) {
            Flow::Continue => Action::Continue,
            Flow::Hold | Flow::HoldBody | Flow::Stop => Action::Pause,
        }
    }

    fn on_http_request_trailers(&mut self, _count: usize) -> Action {
        self.worker.held.borrow_mut().release(self.id);
        action(self.exchange.on_request_trailers(&self.worker.fleet, &mut Envoy { body_len: self.body_len }))
    }

    /// Observe mode: the upstream answered; the exchange stores the push on a 2xx.
    fn on_http_response_headers(&mut self, _count: usize, _end_of_stream: bool) -> Action {
        action(self.exchange.on_response_headers(&self.worker.fleet, &mut Envoy { body_len: 0 }))
    }
}
