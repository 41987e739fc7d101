//! The load generator: a fleet of agents pushing over many keep-alive
//! connections, open loop at a fixed offered rate (latency counted from each
//! request's scheduled send time, so a slow server cannot hide queueing:
//! coordinated omission is corrected as in wrk2) or closed loop (saturation),
//! with threshold queries mixed in on the API port.

use crate::agent::{cluster_id, BodyKind, Fleet};
use crate::error::BenchError;
use crate::http::{self, Connection};
use crate::report::{cpu_seconds, Tally};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// How long an open-loop run may overrun its end while catching up a backlog.
const GRACE: Duration = Duration::from_secs(2);

/// What to run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub push_addr: SocketAddr,
    pub api_addr: Option<SocketAddr>,
    /// Offered pushes per second; `None` = closed loop.
    pub rate: Option<f64>,
    pub warmup: Duration,
    pub duration: Duration,
    pub connections: usize,
    pub fleet: Fleet,
    pub body: BodyKind,
    /// Push path without the query string.
    pub path: String,
    /// Threshold queries per push, sent on their own connections in addition to the pushes.
    pub query_share: f64,
    /// Stop after this many pushes in all (closed loop only).
    pub max_pushes: Option<u64>,
}

/// Which requests a connection sends.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Role {
    Push,
    Query,
}

/// State shared by all connections of a run.
struct Run {
    plan: Plan,
    start: Instant,
    measure_from: Instant,
    end: Instant,
    pushes: AtomicU64,
    queries: AtomicU64,
}

/// What a finished run measured.
pub struct Outcome {
    pub pushes: Tally,
    pub queries: Tally,
    pub window: Duration,
    pub loadgen_cpu_s: f64,
    /// Nodes that were sent at least one push (the first `covered` of the fleet).
    pub covered: u64,
}

/// Runs `plan` and returns its tallies.
pub fn run(plan: Plan) -> Result<Outcome, BenchError> {
    let empty = Tally::new()?;
    let query_connections = match plan.api_addr {
        Some(_) if plan.query_share > 0.0 => ((plan.connections as f64 * plan.query_share).round() as usize).max(1),
        _ => 0,
    };
    let push_connections = plan.connections.max(1);
    let start = Instant::now() + Duration::from_millis(20);
    let measure_from = start + plan.warmup;
    let end = measure_from + plan.duration;
    let run = Arc::new(Run { plan, start, measure_from, end, pushes: AtomicU64::new(0), queries: AtomicU64::new(0) });
    let roles = (0..push_connections)
        .map(|i| (Role::Push, i, push_connections))
        .chain((0..query_connections).map(|i| (Role::Query, i, query_connections)));
    let mut handles = Vec::new();
    for (role, index, of) in roles {
        let run = Arc::clone(&run);
        let tally = empty.clone();
        let spawned = std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || connection_loop(&run, role, index, of, tally));
        match spawned {
            Ok(handle) => handles.push((role, handle)),
            Err(e) => return Err(BenchError::Thread(e)),
        }
    }
    sleep_until(measure_from);
    let cpu_before = cpu_seconds();
    let mut pushes = empty.clone();
    let mut queries = empty;
    for (role, handle) in handles {
        let tally = handle.join().map_err(|_| BenchError::ConnectionThread)?;
        match role {
            Role::Push => pushes.merge(&tally),
            Role::Query => queries.merge(&tally),
        }
    }
    // A run with a push budget ends when the budget is spent, before its scheduled end.
    let window = Instant::now().min(end).saturating_duration_since(measure_from);
    let cpu_s = cpu_seconds() - cpu_before;
    let covered = run.pushes.load(Ordering::Relaxed).min(run.plan.fleet.nodes);
    Ok(Outcome { pushes, queries, window, loadgen_cpu_s: cpu_s, covered })
}

/// One connection's life: send on schedule (open loop) or back to back (closed loop).
fn connection_loop(run: &Run, role: Role, index: usize, of: usize, mut tally: Tally) -> Tally {
    let plan = &run.plan;
    let addr = match (role, plan.api_addr) {
        (Role::Query, Some(api)) => api,
        _ => plan.push_addr,
    };
    let share = if role == Role::Query { plan.query_share } else { 1.0 };
    // Each connection offers its share of the rate; connections are staggered over one period.
    let period = plan.rate.map(|rate| Duration::from_secs_f64(of as f64 / (rate * share).max(1e-9)));
    let mut scheduled = run.start + period.map(|p| p.mul_f64(index as f64 / of as f64)).unwrap_or_default();
    let mut connection = Connection::new(addr);
    sleep_until(run.start);
    loop {
        let now = Instant::now();
        if period.is_none() {
            scheduled = now;
        }
        if scheduled >= run.end || now >= run.end + GRACE {
            if let (Some(p), true) = (period, scheduled < run.end) {
                tally.unsent += ((run.end - scheduled).as_secs_f64() / p.as_secs_f64()).ceil() as u64;
            }
            break;
        }
        let Some(request) = next_request(run, role) else { break };
        sleep_until(scheduled);
        let sent = Instant::now();
        let result = connection.send(&request);
        let done = Instant::now();
        if scheduled >= run.measure_from {
            // Open loop: from the scheduled time; closed loop: scheduled == sent.
            let origin = if period.is_some() { scheduled } else { sent };
            tally.record(done.saturating_duration_since(origin), &result);
        }
        if let Some(p) = period {
            scheduled += p;
        }
    }
    tally.connects = connection.connects;
    tally
}

/// The next request of this role, or `None` once the push budget is spent.
fn next_request(run: &Run, role: Role) -> Option<Vec<u8>> {
    let plan = &run.plan;
    match role {
        Role::Push => {
            let seq = run.pushes.fetch_add(1, Ordering::Relaxed);
            if plan.max_pushes.is_some_and(|max| seq >= max) {
                return None;
            }
            let agent = plan.fleet.agent(seq);
            let now_ns = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
            let path = format!("{}?cluster_id={}", plan.path, agent.cluster_id);
            Some(http::request("POST", &path, Some(plan.body.content_type()), &agent.body(plan.body, now_ns)))
        }
        Role::Query => {
            let seq = run.queries.fetch_add(1, Ordering::Relaxed);
            let path = format!("/api/v1/threshold?cluster_id={}", cluster_id(seq % plan.fleet.clusters.max(1)));
            Some(http::request("GET", &path, None, &[]))
        }
    }
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}
