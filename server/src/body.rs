//! Request bodies as the limits see them: every received byte is charged to
//! its port's budget of buffered bytes (`limits.max_buffered_bytes`) until the
//! request ends, and a body that stops arriving for `limits.body_stall_timeout`
//! is cut. So memory is bounded by what a port may hold in total, not by
//! `max_body_bytes` times the number of open uploads, and a stalled upload
//! frees its share within seconds.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};

/// Budget units: bytes are charged in whole KiB.
pub const UNIT: usize = 1024;

/// Why a body was cut, read by the request wrapper to choose the answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    /// The port's buffered-bytes budget was used up.
    Budget,
    /// No byte arrived for the stall timeout.
    Stalled,
}

/// Shared between a guarded body and its request's wrapper.
#[derive(Debug, Default)]
pub struct CutFlag(AtomicU8);

impl CutFlag {
    fn set(&self, cut: Cut) {
        self.0.store(if cut == Cut::Budget { 1 } else { 2 }, Ordering::SeqCst);
    }

    /// What cut the body, if anything did.
    pub fn get(&self) -> Option<Cut> {
        match self.0.load(Ordering::SeqCst) {
            1 => Some(Cut::Budget),
            2 => Some(Cut::Stalled),
            _ => None,
        }
    }
}

/// A request body charged to a budget and watched for stalls.
pub struct Guarded {
    inner: Incoming,
    budget: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
    stall: Duration,
    timer: Pin<Box<Sleep>>,
    cut: Arc<CutFlag>,
}

impl Guarded {
    /// Wraps `inner`; `cut` is set when the guard ends the body early.
    pub fn new(inner: Incoming, budget: Arc<Semaphore>, stall: Duration, cut: Arc<CutFlag>) -> Self {
        Self { inner, budget, held: None, stall, timer: Box::pin(tokio::time::sleep(stall)), cut }
    }

    fn charge(&mut self, bytes: usize) -> bool {
        let units = u32::try_from(bytes.div_ceil(UNIT)).unwrap_or(u32::MAX);
        match self.budget.clone().try_acquire_many_owned(units) {
            Ok(permit) => {
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                let size = frame.data_ref().map_or(0, Bytes::len);
                if size > 0 && !this.charge(size) {
                    this.cut.set(Cut::Budget);
                    return Poll::Ready(Some(Err("the port's limits.max_buffered_bytes is used up".into())));
                }
                this.timer.as_mut().reset(Instant::now() + this.stall);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                if this.timer.as_mut().poll(cx).is_ready() {
                    this.cut.set(Cut::Stalled);
                    return Poll::Ready(Some(Err("request body stalled (limits.body_stall_timeout)".into())));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
