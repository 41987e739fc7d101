//! One HTTP stream: hand the head and the body to the core, send its answer.

use crate::root::{now_ms, Worker};
use ingero_fleet_core::{Answer, HeadStep, PendingPush, RequestHead};
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext};
use proxy_wasm::types::{Action, BufferType, MapType};
use std::rc::Rc;

pub struct FleetHttp {
    worker: Rc<Worker>,
    pending: Option<PendingPush>,
}

impl FleetHttp {
    pub fn new(worker: Rc<Worker>) -> Self {
        Self { worker, pending: None }
    }

    fn answer(&self, answer: Answer) -> Action {
        let reply = answer.reply;
        let headers: Vec<(&str, &str)> = reply.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        if let Err(status) = hostcalls::send_http_response(u32::from(reply.status), headers, Some(&reply.body)) {
            log::warn!("ingero-fleet: cannot send the response: {status:?}");
        }
        Action::Pause
    }

    fn finish_push(&self, push: &PendingPush, body: &[u8]) -> Action {
        let answer = self.worker.fleet.on_body(push, body, now_ms(), &self.worker.book());
        self.answer(answer)
    }
}

impl Context for FleetHttp {}

impl HttpContext for FleetHttp {
    fn on_http_request_headers(&mut self, _count: usize, end_of_stream: bool) -> Action {
        // One host call for all headers: each call costs more than the scan.
        let headers = hostcalls::get_map(MapType::HttpRequestHeaders).unwrap_or_default();
        let head = RequestHead::from_headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_str())));
        let step = self.worker.fleet.on_head(&head, &self.worker.book());
        match step {
            HeadStep::Pass => Action::Continue,
            HeadStep::Answer(answer) => self.answer(answer),
            HeadStep::ReadBody(push) if end_of_stream => self.finish_push(&push, &[]),
            HeadStep::ReadBody(push) => {
                self.pending = Some(push);
                // Without pausing, the headers go on; the body is still held back in
                // on_http_request_body, so whatever is next never sees a whole push.
                if self.worker.fleet.config().pause_on_headers {
                    Action::Pause
                } else {
                    Action::Continue
                }
            }
        }
    }

    fn on_http_request_body(&mut self, body_size: usize, end_of_stream: bool) -> Action {
        let Some(push) = self.pending.take() else { return Action::Continue };
        if body_size > self.worker.fleet.config().max_body_bytes {
            let answer = self.worker.fleet.body_too_large(&push, &self.worker.book());
            return self.answer(answer);
        }
        if !end_of_stream {
            self.pending = Some(push);
            return Action::Pause;
        }
        let body = hostcalls::get_buffer(BufferType::HttpRequestBody, 0, body_size).ok().flatten().unwrap_or_default();
        self.finish_push(&push, &body)
    }
}
