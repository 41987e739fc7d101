//! Fleet as one service object: the decisions on a request (its head, then its
//! body), the threshold book every answer reads, and the periodic recompute.
//! [`crate::exchange`] drives these decisions hook by hook for streaming hosts.

use crate::config::{Config, Recompute, RouteSet};
use crate::error::FleetError;
use crate::events::EventLog;
use crate::ingress::{body_format, grpc_message, is_gzip, query_param, unpack_body, Framing, Route};
use crate::listing::{self, Page};
use crate::metrics::{self, CounterSink};
use crate::otlp::{BodyFormat, ExportRequest};
use crate::outcome::{Answer, DropReason, Outcome};
use crate::push::{check_size, extract, names_a_cluster, PushBatch};
use crate::read_cache::Reads;
use crate::registry::{Admission, Registry};
use crate::reply::Reply;
use crate::seed::HashSeed;
use crate::store::{SharedStore, StoreError, KEY_PREFIX};
use crate::threshold::{CohortTally, ThresholdBook};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// The dashboard: one self-contained page that reads the listing API.
const DASHBOARD_GZ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/dashboard.html.gz"));

/// A request line and the headers Fleet reads.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// Path with query string.
    pub path: &'a str,
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    /// `grpc-encoding`: how a gRPC message is compressed.
    pub grpc_encoding: Option<&'a str>,
    /// The token of an `Authorization: Bearer` header.
    pub bearer: Option<&'a str>,
    /// The client certificate's URI (SPIFFE ID) or DNS name, as the host verified it.
    pub peer: Option<&'a str>,
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
            } else if is("authorization") {
                head.bearer = bearer_token(value);
            } else if is("grpc-encoding") {
                head.grpc_encoding = Some(value);
            } else if is("content-length") {
                head.content_length = value.trim().parse().ok();
            }
        }
        head
    }
}

/// The token of an `Authorization: Bearer <token>` header value.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then_some(token.trim())
}

/// What to do after the request head.
#[derive(Debug, Clone, PartialEq)]
pub enum HeadStep {
    /// Not a Fleet route (or not one this listener serves): let the request through.
    Pass,
    /// Answer now, without reading the body (the read-only routes).
    Answer(Answer),
    /// A push refused from its head, with its cluster if it named one. Terminate
    /// mode answers it; observe mode lets it go on and does not score it.
    Refuse(Answer, Option<String>),
    /// A push whose body must be read.
    ReadBody(PendingPush),
}

/// A push whose head was valid.
#[derive(Debug, Clone, PartialEq)]
pub struct PendingPush {
    cluster: Option<String>,
    /// The clusters this push's identity may push; `None`: any (no identities configured).
    allowed: Option<Vec<String>>,
    format: BodyFormat,
    framing: Framing,
    gzip: bool,
}

impl PendingPush {
    /// Whether this is an OTLP/gRPC call, which only a gRPC-speaking host can answer.
    pub fn is_grpc(&self) -> bool {
        self.framing == Framing::Grpc
    }

    /// The cluster named by the `cluster_id` parameter, if any.
    pub fn cluster(&self) -> Option<&str> {
        self.cluster.as_deref()
    }
}

/// A push decoded and validated, not yet stored.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredPush {
    push: PendingPush,
    batch: PushBatch,
}

impl ScoredPush {
    /// The cluster named by the `cluster_id` parameter, if any.
    pub fn cluster(&self) -> Option<&str> {
        self.push.cluster()
    }
}

/// The Fleet service over a shared store, counting into a counter sink.
pub struct Fleet<S, C> {
    config: Config,
    store: S,
    counters: C,
    books: BookCache,
    /// `/metrics`' cohorts and the cluster listing, rendered once per book.
    reads: Reads,
    /// The deployment's hash seed as this process last read it (at init, then
    /// on every tick), so a push does not read it from the store. Two VMs
    /// initialising at once can overwrite each other's new seed; the tick's
    /// read makes every worker converge on the stored one within a tick.
    seed: RwLock<Option<HashSeed>>,
    /// The threshold keys a reload changed since start ([`Fleet::retune`]); the
    /// recompute reads them from here, everything else from `config`.
    retuned: RwLock<Option<Config>>,
}

impl<S: SharedStore, C: CounterSink> Fleet<S, C> {
    /// A service; call [`Fleet::init`] once before serving.
    pub fn new(config: Config, store: S, counters: C) -> Self {
        Self {
            config,
            store,
            counters,
            books: BookCache::default(),
            reads: Reads::default(),
            seed: RwLock::new(None),
            retuned: RwLock::new(None),
        }
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
        let seed = *self.seed.read().unwrap_or_else(PoisonError::into_inner);
        Registry::new(&self.store, self.config.max_expected_nodes).with_seed(seed)
    }

    /// Creates the shared keys that do not exist yet.
    pub fn init(&self) -> Result<(), StoreError> {
        let registry = self.registry();
        registry.init()?;
        self.keep_seed(HashSeed::load(&self.store)?);
        for key in [epoch_key(), book_key()].into_iter().chain(EventLog::<S>::keys()) {
            if self.store.get(&key)?.is_none() {
                self.store.set(&key, &[], None)?;
            }
        }
        Ok(())
    }

    /// One whole request, for callers that already hold its body (gRPC, tests,
    /// benchmarks): the same steps and limits as a streamed one. `None` when the
    /// path is not Fleet's.
    pub fn handle(&self, head: &RequestHead, body: &[u8], now_ms: u64) -> Option<Answer> {
        let answer = match self.decide(head, now_ms) {
            HeadStep::Pass => return None,
            HeadStep::Answer(answer) | HeadStep::Refuse(answer, _) => answer,
            HeadStep::ReadBody(push) if body.len() > self.config.max_body_bytes => self.body_too_large(&push),
            HeadStep::ReadBody(push) => self.on_body(&push, body, now_ms),
        };
        self.count(&answer.outcome);
        Some(answer)
    }

    /// Adds what a request did to the counters.
    pub fn count(&self, outcome: &Outcome) {
        outcome.record(&self.counters);
    }

    /// Decides from the head alone: pass, answer, refuse, or read the body.
    pub fn decide(&self, head: &RequestHead, now_ms: u64) -> HeadStep {
        self.decide_for(head, RouteSet::ALL, now_ms)
    }

    /// [`Fleet::decide`] on a listener that serves only `listener` routes.
    pub fn decide_for(&self, head: &RequestHead, listener: RouteSet, now_ms: u64) -> HeadStep {
        let served = |r: &Route| r.served_by(self.config.routes) && r.served_by(listener);
        let Some(route) = Route::of(head.path).filter(served) else {
            return HeadStep::Pass;
        };
        let cluster = query_param(head.path, "cluster_id", self.config.max_id_bytes);
        let named = cluster.as_ref().ok().and_then(Option::clone);
        // A push refused from its head is answered in its own encoding where it names one.
        let format = body_format(head.content_type).map_or(BodyFormat::Json, |(format, _)| format);
        let refuse = |error: FleetError| {
            if route == Route::Push {
                let answer = self.refused(format, &error, self.piggyback(named.as_deref()));
                HeadStep::Refuse(answer, named.clone())
            } else {
                HeadStep::Answer(self.refused(BodyFormat::Json, &error, None))
            }
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
                let checked = body_format(head.content_type).and_then(|(format, framing)| {
                    let encoding = match framing {
                        Framing::Plain => head.content_encoding,
                        Framing::Grpc => head.grpc_encoding,
                    };
                    let gzip = is_gzip(encoding)?;
                    match head.content_length {
                        Some(n) if n > self.config.max_body_bytes => {
                            Err(FleetError::BodyTooLarge { limit: self.config.max_body_bytes })
                        }
                        _ => {
                            let allowed = self.allowed_clusters(head, cluster.as_deref())?;
                            Ok(PendingPush { cluster, allowed, format, framing, gzip })
                        }
                    }
                });
                match checked {
                    Ok(push) => HeadStep::ReadBody(push),
                    Err(e) => refuse(e),
                }
            }
            _ => match self.read(route, head.path, cluster, &self.book_at(now_ms)) {
                Ok(reply) => HeadStep::Answer(Answer { reply, outcome: Outcome::default() }),
                Err(e) => refuse(e),
            },
        }
    }

    /// The clusters a push's identity may push, checked against its `cluster_id`.
    fn allowed_clusters(&self, head: &RequestHead, cluster: Option<&str>) -> Result<Option<Vec<String>>, FleetError> {
        let identities = &self.config.push_identities;
        if identities.is_open() {
            return Ok(None);
        }
        let allowed = identities.clusters(head.bearer, head.peer).ok_or(FleetError::NoIdentity)?;
        if allowed.iter().any(|c| c == "*") {
            return Ok(None);
        }
        match cluster {
            Some(c) if !allowed.iter().any(|a| a == c) => Err(FleetError::ClusterNotAllowed(c.to_owned())),
            _ => Ok(Some(allowed.to_vec())),
        }
    }

    /// The answer when a body grows past `max_body_bytes` while arriving.
    pub fn body_too_large(&self, push: &PendingPush) -> Answer {
        self.refuse_push(push, &FleetError::BodyTooLarge { limit: self.config.max_body_bytes })
    }

    /// The answer refusing a push whose head was valid.
    pub fn refuse_push(&self, push: &PendingPush, error: &FleetError) -> Answer {
        self.refused(push.format, error, self.piggyback(push.cluster()))
    }

    /// Terminate mode: stores a push's valid points and answers it.
    pub fn on_body(&self, push: &PendingPush, body: &[u8], now_ms: u64) -> Answer {
        self.score(push, body)
            .and_then(|scored| self.commit(&scored, now_ms))
            .unwrap_or_else(|e| self.refuse_push(push, &e))
    }

    /// Decodes and validates a push without storing anything.
    pub fn score(&self, push: &PendingPush, body: &[u8]) -> Result<ScoredPush, FleetError> {
        if body.is_empty() {
            return Err(FleetError::EmptyBody);
        }
        let (body, gzip) = match push.framing {
            Framing::Plain => (body, push.gzip),
            // The prefix says whether this message is compressed, with the call's grpc-encoding.
            Framing::Grpc => match grpc_message(body)? {
                (message, true) if push.gzip => (message, true),
                (_, true) => {
                    return Err(FleetError::BadGrpcFrame("a compressed message without grpc-encoding: gzip".into()))
                }
                (message, false) => (message, false),
            },
        };
        let body = unpack_body(body, gzip, self.config.max_body_bytes)?;
        let request = ExportRequest::decode(push.format, &body)?;
        check_size(&request, &self.config)?;
        if !names_a_cluster(&request, push.cluster()) {
            return Err(FleetError::MissingClusterId);
        }
        let batch = extract(request, push.cluster(), &self.config);
        if let Some(allowed) = &push.allowed {
            // Clusters named only in the body (ingero.cluster.id) are bound too.
            let named =
                batch.scores.iter().map(|s| &s.cluster).chain(batch.straggler_events.iter().map(|e| &e.cluster));
            if let Some(other) = named.into_iter().find(|c| !allowed.contains(c)) {
                return Err(FleetError::ClusterNotAllowed(other.clone()));
            }
        }
        Ok(ScoredPush { push: push.clone(), batch })
    }

    /// Stores a scored push; the answer piggybacks the first scored cohort's threshold.
    pub fn commit(&self, scored: &ScoredPush, now_ms: u64) -> Result<Answer, FleetError> {
        let (push, batch) = (&scored.push, &scored.batch);
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
        let book = self.books.current();
        let threshold = match batch.scores.first() {
            Some(first) => book.threshold(&first.cluster, &first.cohort),
            None => push.cluster().and_then(|c| book.threshold(c, "")),
        };
        Ok(Answer {
            reply: Reply::pushed(push.format, rejected, message.as_deref()).with_piggyback(threshold),
            outcome,
        })
    }

    /// The threshold piggybacked for a cluster's default cohort, once it has quorum.
    pub fn piggyback(&self, cluster: Option<&str>) -> Option<f64> {
        cluster.and_then(|c| self.books.current().threshold(c, ""))
    }

    /// The newest threshold book this service has seen.
    pub fn book(&self) -> Arc<ThresholdBook> {
        self.books.current()
    }

    /// The book for a request at `now_ms`: if the ticks have fallen a whole
    /// interval behind (a stalled ticker), the request refreshes it first.
    /// Before the first tick there is nothing to fall behind: the ticker starts it.
    fn book_at(&self, now_ms: u64) -> Arc<ThresholdBook> {
        let epoch = now_ms / self.config.push_interval_ms();
        let seen = self.books.seen_epoch();
        if seen > 0 && seen.saturating_add(1) < epoch {
            // A failure keeps the book already held; the next tick reports it.
            let _ = self.tick(now_ms);
        }
        self.books.current()
    }

    /// Once per tick (every [`Config::tick_period`]) on every worker: the first
    /// caller in each push interval expires old nodes and publishes a new book,
    /// which it returns; the others pick the published book up.
    pub fn tick(&self, now_ms: u64) -> Result<Option<Arc<ThresholdBook>>, FleetError> {
        self.keep_seed(HashSeed::load(&self.store).map_err(store_error)?);
        let epoch = now_ms / self.config.push_interval_ms();
        if !self.claim_epoch(epoch)? {
            if let Some((book, version)) = self.published_book(self.books.version())? {
                self.books.offer(Arc::new(book), Some(version));
            }
            self.books.saw_epoch(epoch);
            return Ok(None);
        }
        let tally = self.tally(now_ms)?;
        let previous = self.published_book(None)?.map(|(book, _)| book).unwrap_or_default();
        let next = Arc::new(previous.next(tally, &self.config_in_force(), epoch, now_ms));
        self.store.set(&book_key(), &next.encode()?, None).map_err(store_error)?;
        self.books.offer(next.clone(), None);
        self.books.saw_epoch(epoch);
        Ok(Some(next))
    }

    /// Expires old nodes and tallies the live ones: the first half of a
    /// recompute (benchmarks time it apart). Kept out of `tick`: inlined there,
    /// the sweep's loop ran a third slower (1 000 000 nodes: 97 → 62 ms natively).
    #[inline(never)]
    pub fn tally(&self, now_ms: u64) -> Result<CohortTally, FleetError> {
        let mut tally = CohortTally::default();
        self.registry().sweep(now_ms, self.config.node_ttl_ms(), |record| tally.add(record))?;
        Ok(tally)
    }

    /// Takes `new`'s threshold keys (`threshold.k`, `threshold.ema_alpha`,
    /// `quorum.statistical_min`, `quorum.coverage_fraction`), which only the
    /// recompute reads, from the next recompute on; the names of those that
    /// changed. A reload of the standalone server calls it; the other keys need
    /// a restart (a proxy builds a new Fleet for a new plugin configuration).
    pub fn retune(&self, new: &Config) -> Vec<&'static str> {
        let mut retuned = self.retuned.write().unwrap_or_else(PoisonError::into_inner);
        let mut tuned = retuned.clone().unwrap_or_else(|| self.config.clone());
        let mut changed = Vec::new();
        take(&mut changed, "threshold.k", &mut tuned.k, new.k);
        take(&mut changed, "threshold.ema_alpha", &mut tuned.ema_alpha, new.ema_alpha);
        take(&mut changed, "quorum.statistical_min", &mut tuned.statistical_min, new.statistical_min);
        take(&mut changed, "quorum.coverage_fraction", &mut tuned.coverage_fraction, new.coverage_fraction);
        *retuned = Some(tuned);
        changed
    }

    /// The configuration in force: the one this service was built with, with
    /// the threshold keys [`Fleet::retune`] changed since.
    pub fn config_in_force(&self) -> Config {
        let retuned = self.retuned.read().unwrap_or_else(PoisonError::into_inner);
        retuned.clone().unwrap_or_else(|| self.config.clone())
    }

    fn keep_seed(&self, seed: HashSeed) {
        *self.seed.write().unwrap_or_else(PoisonError::into_inner) = Some(seed);
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
            Route::Dashboard => Reply::html(dashboard()?),
            Route::Push => return Err(FleetError::MethodNotAllowed { method: "GET".into(), allowed: "POST" }),
        })
    }

    /// A refusal in the request's encoding, counted under its reason.
    fn refused(&self, format: BodyFormat, error: &FleetError, piggyback: Option<f64>) -> Answer {
        Answer { reply: Reply::error(format, error).with_piggyback(piggyback), outcome: Outcome::refused(error) }
    }

    /// Takes the recompute of `epoch` if no worker has; true when this caller won.
    fn claim_epoch(&self, epoch: u64) -> Result<bool, FleetError> {
        let (claimed, version) = match self.store.get(&epoch_key()).map_err(store_error)? {
            Some((bytes, version)) => (bytes.try_into().map(u64::from_le_bytes).unwrap_or(0), Some(version)),
            None => (0, None),
        };
        let mine = match self.config.recompute {
            Recompute::Any | Recompute::Singleton => claimed < epoch,
            // The singleton claims every interval; step in only if it missed one.
            Recompute::Deferred => claimed.saturating_add(1) < epoch,
        };
        if !mine {
            return Ok(false);
        }
        match self.store.set(&epoch_key(), &epoch.to_le_bytes(), version) {
            Ok(()) => Ok(true),
            Err(StoreError::CasMismatch) => Ok(false),
            Err(e) => Err(store_error(e)),
        }
    }
}

/// The newest book a front door has seen; it never goes back to an older one.
#[derive(Default)]
struct BookCache {
    current: RwLock<(Arc<ThresholdBook>, Option<u32>)>,
    seen_epoch: AtomicU64,
}

impl BookCache {
    fn current(&self) -> Arc<ThresholdBook> {
        // A poisoned lock still holds a whole value: writers only swap it.
        self.current.read().unwrap_or_else(PoisonError::into_inner).0.clone()
    }

    fn version(&self) -> Option<u32> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).1
    }

    /// Takes `book` unless the one held is newer (a slow reader's stale copy).
    fn offer(&self, book: Arc<ThresholdBook>, version: Option<u32>) {
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if book.epoch >= current.0.epoch {
            *current = (book, version);
        }
    }

    fn seen_epoch(&self) -> u64 {
        self.seen_epoch.load(Ordering::Acquire)
    }

    fn saw_epoch(&self, epoch: u64) {
        self.seen_epoch.fetch_max(epoch, Ordering::AcqRel);
    }
}

/// The dashboard page, inflated from the binary on first use.
fn dashboard() -> Result<&'static str, FleetError> {
    static PAGE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(page) = PAGE.get() {
        return Ok(page);
    }
    let mut page = String::new();
    std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(DASHBOARD_GZ), &mut page)
        .map_err(|e| FleetError::Render(format!("the dashboard page: {e}")))?;
    Ok(PAGE.get_or_init(|| page))
}

fn epoch_key() -> String {
    format!("{KEY_PREFIX}epoch")
}

fn book_key() -> String {
    format!("{KEY_PREFIX}book")
}

/// Sets `held` to `new`, noting `key` if that changed it.
fn take<T: PartialEq>(changed: &mut Vec<&'static str>, key: &'static str, held: &mut T, new: T) {
    if *held != new {
        *held = new;
        changed.push(key);
    }
}

fn store_error(e: StoreError) -> FleetError {
    FleetError::SharedData(e.to_string())
}

#[cfg(test)]
mod tests;
