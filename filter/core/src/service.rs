//! Fleet as one service object: what every front door calls, in the order a
//! proxy sees a request (head, then body), plus the periodic recompute.

use crate::config::Config;
use crate::error::FleetError;
use crate::events::EventLog;
use crate::ingress::{body_format, is_gzip, query_param, unpack_body, Route};
use crate::listing::{self, Page};
use crate::metrics::{self, CounterSink};
use crate::otlp::{BodyFormat, ExportRequest};
use crate::outcome::{Answer, DropReason, Outcome};
use crate::push::{check_size, extract, names_a_cluster};
use crate::read_cache::Reads;
use crate::registry::{Admission, Registry};
use crate::reply::Reply;
use crate::store::{SharedStore, StoreError, KEY_PREFIX};
use crate::threshold::{CohortTally, ThresholdBook};

/// The dashboard: one self-contained page that reads the listing API.
const DASHBOARD_HTML: &str = include_str!("dashboard.html");

/// A request line and the headers Fleet reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// Path with query string.
    pub path: &'a str,
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    pub content_length: Option<usize>,
}

impl<'a> RequestHead<'a> {
    /// Picks Fleet's fields out of a proxy's header list (HTTP/2-style
    /// pseudo-headers `:method` and `:path`, names in any case), in one pass.
    pub fn from_headers(headers: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let mut head = Self::default();
        for (name, value) in headers {
            let is = |wanted: &str| name.eq_ignore_ascii_case(wanted);
            if is(":method") {
                head.method = value;
            } else if is(":path") {
                head.path = value;
            } else if is("content-type") {
                head.content_type = Some(value);
            } else if is("content-encoding") {
                head.content_encoding = Some(value);
            } else if is("content-length") {
                head.content_length = value.trim().parse().ok();
            }
        }
        head
    }
}

/// What to do after the request head.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadStep {
    /// Not a Fleet route: let the request through.
    Pass,
    /// Answer now, without reading the body.
    Answer(Answer),
    /// A push whose body must be read, then given to [`Fleet::on_body`].
    ReadBody(PendingPush),
}

/// A push whose head was valid.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingPush {
    cluster: Option<String>,
    format: BodyFormat,
    gzip: bool,
}

/// The Fleet service over a shared store, counting into a counter sink.
pub struct Fleet<S, C> {
    config: Config,
    store: S,
    counters: C,
    /// `/metrics`' cohorts and the listings, rendered once per book.
    reads: Reads,
}

impl<S: SharedStore, C: CounterSink> Fleet<S, C> {
    /// A service; call [`Fleet::init`] once before serving.
    pub fn new(config: Config, store: S, counters: C) -> Self {
        Self { config, store, counters, reads: Reads::default() }
    }

    /// The counters this service records into.
    pub fn counters(&self) -> &C {
        &self.counters
    }

    /// The configuration in force.
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The registry of tracked nodes.
    pub fn registry(&self) -> Registry<'_, S> {
        Registry::new(&self.store, self.config.max_expected_nodes)
    }

    /// Creates the shared keys that do not exist yet.
    pub fn init(&self) -> Result<(), StoreError> {
        self.registry().init()?;
        for key in [epoch_key(), book_key()].into_iter().chain(EventLog::<S>::keys()) {
            if self.store.get(&key)?.is_none() {
                self.store.set(&key, &[], None)?;
            }
        }
        Ok(())
    }

    /// Decides from the head alone: pass, answer, or read the body.
    pub fn on_head(&self, head: &RequestHead, book: &ThresholdBook) -> HeadStep {
        let step = self.decide(head, book);
        if let HeadStep::Answer(answer) = &step {
            answer.outcome.record(&self.counters);
        }
        step
    }

    fn decide(&self, head: &RequestHead, book: &ThresholdBook) -> HeadStep {
        let Some(route) = Route::of(head.path) else { return HeadStep::Pass };
        let cluster = query_param(head.path, "cluster_id", self.config.max_id_bytes);
        let piggyback = cluster.as_ref().ok().and_then(Option::as_deref).and_then(|c| book.threshold(c, ""));
        let refuse = |error: FleetError| {
            HeadStep::Answer(refused(BodyFormat::Json, &error, if route == Route::Push { piggyback } else { None }))
        };
        if head.method != route.method() {
            return refuse(FleetError::MethodNotAllowed { method: head.method.to_owned(), allowed: route.method() });
        }
        let cluster = match cluster {
            Ok(c) => c,
            Err(e) => return refuse(e),
        };
        match route {
            Route::Push => {
                let checked = body_format(head.content_type).and_then(|format| {
                    let gzip = is_gzip(head.content_encoding)?;
                    match head.content_length {
                        Some(n) if n > self.config.max_body_bytes => {
                            Err(FleetError::BodyTooLarge { limit: self.config.max_body_bytes })
                        }
                        _ => Ok((format, gzip)),
                    }
                });
                match checked {
                    Ok((format, gzip)) => HeadStep::ReadBody(PendingPush { cluster, format, gzip }),
                    Err(e) => refuse(e),
                }
            }
            _ => match self.read(route, head.path, cluster, book) {
                Ok(reply) => HeadStep::Answer(Answer { reply, outcome: Outcome::default() }),
                Err(e) => refuse(e),
            },
        }
    }

    /// The answer when a body grows past `max_body_bytes` while arriving.
    pub fn body_too_large(&self, push: &PendingPush, book: &ThresholdBook) -> Answer {
        let error = FleetError::BodyTooLarge { limit: self.config.max_body_bytes };
        self.counted(refused(push.format, &error, push.piggyback(book)))
    }

    /// Stores a push's valid points and answers it.
    pub fn on_body(&self, push: &PendingPush, body: &[u8], now_ms: u64, book: &ThresholdBook) -> Answer {
        let answer = self
            .store_push(push, body, now_ms, book)
            .unwrap_or_else(|e| refused(push.format, &e, push.piggyback(book)));
        self.counted(answer)
    }

    fn counted(&self, answer: Answer) -> Answer {
        answer.outcome.record(&self.counters);
        answer
    }

    /// Once per tick on every worker: the first caller in each push interval
    /// expires old nodes and publishes a new book, which it returns.
    pub fn tick(&self, now_ms: u64) -> Result<Option<ThresholdBook>, FleetError> {
        let epoch = now_ms / self.config.push_interval_ms();
        if !self.claim_epoch(epoch)? {
            return Ok(None);
        }
        let mut tally = CohortTally::default();
        self.registry().sweep(now_ms, self.config.node_ttl_ms(), |record| tally.add(record))?;
        let previous = self.published_book(None)?.map(|(book, _)| book).unwrap_or_default();
        let next = previous.next(tally, &self.config, epoch, now_ms);
        self.store.set(&book_key(), &next.encode()?, None).map_err(store_error)?;
        Ok(Some(next))
    }

    /// The published book, unless its version is still `known_version`.
    pub fn published_book(&self, known_version: Option<u32>) -> Result<Option<(ThresholdBook, u32)>, FleetError> {
        match self.store.get(&book_key()).map_err(store_error)? {
            Some((_, version)) if Some(version) == known_version => Ok(None),
            Some((bytes, version)) => Ok(Some((ThresholdBook::decode(&bytes)?, version))),
            None => Ok(None),
        }
    }

    /// Answers the read-only routes: threshold, metrics, listings, dashboard.
    fn read(
        &self,
        route: Route,
        path: &str,
        cluster: Option<String>,
        book: &ThresholdBook,
    ) -> Result<Reply, FleetError> {
        let cluster = || cluster.clone().ok_or(FleetError::MissingClusterId);
        Ok(match route {
            Route::Threshold => {
                let cohort = query_param(path, "cgroup_path_hash", self.config.max_id_bytes)?;
                Reply::threshold(book.cohort(&cluster()?, cohort.as_deref().unwrap_or("")))
            }
            // The counters are read per scrape; the cohorts and the cluster listing once per book.
            Route::Metrics => {
                let tracked = self.registry().tracked_nodes()?;
                let cohorts = self
                    .reads
                    .cohort_metrics
                    .get_or_build(book.epoch, || Ok::<_, FleetError>(metrics::render_cohorts(book).into()))?;
                Reply::metrics(metrics::render_counters(&self.counters, tracked, book.cohorts_over_cap) + &cohorts)
            }
            Route::Clusters => {
                let page = Page::from_path(path)?;
                let body = self.reads.bodies.get_or_render(path, book.epoch, || {
                    let events = EventLog::new(&self.store);
                    listing::clusters(book, page, |c| events.recent(c))
                })?;
                Reply::json(body.to_vec())
            }
            // A node listing shows the latest push (a state change is visible at once).
            Route::Nodes => {
                let (cluster, page) = (cluster()?, Page::from_path(path)?);
                Reply::json(listing::nodes(&cluster, &self.registry().records()?, book, page)?)
            }
            Route::Dashboard => Reply::html(DASHBOARD_HTML),
            Route::Push => return Err(FleetError::MethodNotAllowed { method: "GET".into(), allowed: "POST" }),
        })
    }

    /// Decodes and stores; the answer piggybacks the first scored cohort's threshold.
    fn store_push(
        &self,
        push: &PendingPush,
        body: &[u8],
        now_ms: u64,
        book: &ThresholdBook,
    ) -> Result<Answer, FleetError> {
        if body.is_empty() {
            return Err(FleetError::EmptyBody);
        }
        let body = unpack_body(body, push.gzip, self.config.max_body_bytes)?;
        let request = ExportRequest::decode(push.format, &body)?;
        check_size(&request, &self.config)?;
        if !names_a_cluster(&request, push.cluster.as_deref()) {
            return Err(FleetError::MissingClusterId);
        }
        let batch = extract(request, push.cluster.as_deref(), &self.config);
        let registry = self.registry();
        let caps = self.config.node_caps();
        let mut over_capacity = Vec::new();
        for score in &batch.scores {
            if let Admission::OverCapacity(cap) = registry.record(score, now_ms, caps)? {
                over_capacity.push(cap);
            }
        }
        let events = EventLog::new(&self.store).record(&batch.straggler_events)?;
        let straggler_events = batch.straggler_events.len() as u64;
        let mut outcome = Outcome { accepted_push: true, straggler_events, drops: events.drops() };
        let mut rejected = batch.rejected + events.shard_full + events.busy;
        let mut message = batch.rejection.clone().or(events.message);
        if batch.rejected > 0 {
            outcome.drops.push((DropReason::InvalidPoint, batch.rejected));
        }
        for cap in &over_capacity {
            outcome.drops.push((cap.drop_reason(), 1));
            rejected += 1;
            message.get_or_insert_with(|| cap.message(caps));
        }
        let threshold = match batch.scores.first() {
            Some(first) => book.threshold(&first.cluster, &first.cohort),
            None => push.piggyback(book),
        };
        Ok(Answer {
            reply: Reply::pushed(push.format, rejected, message.as_deref()).with_piggyback(threshold),
            outcome,
        })
    }

    /// Takes the recompute of `epoch` if no worker has; true when this caller won.
    fn claim_epoch(&self, epoch: u64) -> Result<bool, FleetError> {
        let (claimed, version) = match self.store.get(&epoch_key()).map_err(store_error)? {
            Some((bytes, version)) => (bytes.try_into().map(u64::from_le_bytes).unwrap_or(0), Some(version)),
            None => (0, None),
        };
        if claimed >= epoch {
            return Ok(false);
        }
        match self.store.set(&epoch_key(), &epoch.to_le_bytes(), version) {
            Ok(()) => Ok(true),
            Err(StoreError::CasMismatch) => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }
}

impl PendingPush {
    fn piggyback(&self, book: &ThresholdBook) -> Option<f64> {
        self.cluster.as_deref().and_then(|c| book.threshold(c, ""))
    }
}

fn refused(format: BodyFormat, error: &FleetError, piggyback: Option<f64>) -> Answer {
    let reason = DropReason::of(error);
    Answer {
        reply: Reply::error(format, error).with_piggyback(piggyback),
        outcome: Outcome { drops: vec![(reason, 1)], ..Outcome::default() },
    }
}

fn epoch_key() -> String {
    format!("{KEY_PREFIX}epoch")
}

fn book_key() -> String {
    format!("{KEY_PREFIX}book")
}

fn store_error(e: StoreError) -> FleetError {
    FleetError::SharedData(e.to_string())
}

#[cfg(test)]
mod tests;
