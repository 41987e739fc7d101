//! Native measurements of the core, with no proxy around it: the cost of a
//! threshold recompute (`Fleet::tick` over a `MemoryStore`) by fleet size, and
//! the cost of each step of a push (head, decode, validation, registry write,
//! reply) per request.

use crate::agent::{BodyKind, Fleet as AgentFleet};
use crate::error::BenchError;
use ingero_fleet_core::node::NodeScore;
use ingero_fleet_core::otlp::{BodyFormat, ExportRequest};
use ingero_fleet_core::push::extract;
use ingero_fleet_core::reply::Reply;
use ingero_fleet_core::{Config, Fleet, MemoryCounters, MemoryStore, RequestHead, ThresholdBook};
use serde_json::{json, Value};
use std::hint::black_box;
use std::time::{Duration, Instant};

/// The push interval of the measured configuration.
const INTERVAL_MS: u64 = 5_000;
/// A wall-clock start for the simulated pushes (any fixed time will do).
const T0_MS: u64 = 1_700_000_000_000;

type MemoryFleet = Fleet<MemoryStore, MemoryCounters>;

/// A core over in-process memory sized for `nodes`, with every node of `fleet` pushed once.
fn filled(fleet: &AgentFleet) -> Result<(MemoryFleet, Duration), BenchError> {
    let settings = json!({"max_expected_nodes": fleet.nodes, "push_interval": "5s", "threshold": {"ema_alpha": 1.0}});
    let config = Config::from_value(&settings).map_err(|e| BenchError::Config(e.problems.join("; ")))?.config;
    let core = Fleet::new(config, MemoryStore::default(), MemoryCounters::default());
    core.init()?;
    let started = Instant::now();
    for index in 0..fleet.nodes {
        push(&core, fleet, index, BodyKind::Json, T0_MS)?;
    }
    Ok((core, started.elapsed()))
}

/// One push through the core's head and body steps, as a front door does it.
fn push(core: &MemoryFleet, fleet: &AgentFleet, index: u64, kind: BodyKind, now_ms: u64) -> Result<(), BenchError> {
    let agent = fleet.agent(index);
    let path = format!("/v1/metrics?cluster_id={}", agent.cluster_id);
    let body = agent.body(kind, now_ms * 1_000_000);
    push_bytes(core, &path, kind, &body, now_ms)
}

fn push_bytes(core: &MemoryFleet, path: &str, kind: BodyKind, body: &[u8], now_ms: u64) -> Result<(), BenchError> {
    let head = RequestHead {
        method: "POST",
        path,
        content_type: Some(kind.content_type()),
        content_length: Some(body.len()),
        ..RequestHead::default()
    };
    match core.handle(&head, body, now_ms) {
        Some(answer) if answer.reply.status == 200 && answer.outcome.drops.is_empty() => Ok(()),
        Some(answer) => {
            Err(BenchError::Unexpected(format!("push answered {}: {:?}", answer.reply.status, answer.outcome)))
        }
        None => Err(BenchError::Unexpected(format!("{path} is not a Fleet route"))),
    }
}

/// Recompute cost for `nodes` nodes in `clusters` clusters: `repeats` ticks, one per push interval.
pub fn recompute(fleet: AgentFleet, repeats: u32) -> Result<Value, BenchError> {
    let (core, fill) = filled(&fleet)?;
    let mut tick_ms = Vec::new();
    let mut sweep_ms = Vec::new();
    let mut next_ms = Vec::new();
    let mut book = ThresholdBook::default();
    // Nodes expire after 5 intervals: stay within their TTL so every tick sees them all.
    for r in 1..=repeats.clamp(1, 4) {
        let now = T0_MS + u64::from(r) * INTERVAL_MS;
        let started = Instant::now();
        book = core.tick(now)?.ok_or_else(|| BenchError::Unexpected("tick did not recompute".into()))?.as_ref().clone();
        tick_ms.push(ms(started.elapsed()));
        // The two halves of a tick, timed apart: reading and expiring the shards, then the statistics.
        let started = Instant::now();
        let tally = core.tally(now)?;
        sweep_ms.push(ms(started.elapsed()));
        let started = Instant::now();
        black_box(book.next(tally, core.config(), now / INTERVAL_MS, now));
        next_ms.push(ms(started.elapsed()));
    }
    let active: u32 = book.cohorts.iter().map(|c| c.active_nodes).sum();
    if u64::from(active) != fleet.nodes {
        return Err(BenchError::Unexpected(format!("recompute saw {active} of {} nodes", fleet.nodes)));
    }
    Ok(json!({
        "nodes": fleet.nodes,
        "clusters": fleet.clusters,
        "shards": core.registry().shard_count(),
        "fill_us_per_push": fill.as_secs_f64() * 1e6 / fleet.nodes.max(1) as f64,
        "tick_ms": median(&mut tick_ms),
        "tick_ms_all": tick_ms,
        "sweep_ms": median(&mut sweep_ms),
        "statistics_ms": median(&mut next_ms),
    }))
}

/// Microseconds per call of each step of a push, over `fleet.nodes` distinct agents; only the
/// steps whose name starts with `only` (all when empty), e.g. to profile one step under callgrind.
pub fn steps(fleet: AgentFleet, iterations: u64, only: &str) -> Result<Value, BenchError> {
    let (core, _) = filled(&fleet)?;
    let now = T0_MS + INTERVAL_MS;
    let book = core.tick(now)?.unwrap_or_default();
    let n = fleet.nodes.max(1);
    let agents: Vec<_> = (0..n).map(|i| fleet.agent(i)).collect();
    let paths: Vec<String> = agents.iter().map(|a| format!("/v1/metrics?cluster_id={}", a.cluster_id)).collect();
    let json: Vec<Vec<u8>> = agents.iter().map(|a| a.body(BodyKind::Json, now * 1_000_000)).collect();
    let protobuf: Vec<Vec<u8>> = agents.iter().map(|a| a.body(BodyKind::Protobuf, now * 1_000_000)).collect();
    let empty = agents[0].body(BodyKind::Empty, 0);
    let scores: Vec<NodeScore> = json
        .iter()
        .zip(&agents)
        .filter_map(|(body, agent)| {
            let request = ExportRequest::decode(BodyFormat::Json, body).ok()?;
            extract(request, Some(&agent.cluster_id), core.config()).scores.into_iter().next()
        })
        .collect();
    if scores.len() as u64 != n {
        return Err(BenchError::Unexpected("an agent body did not decode to one score".into()));
    }
    let registry = core.registry();
    let caps = core.config().node_caps();
    let at = |i: u64| (i % n) as usize;
    let head = |i: u64| RequestHead {
        method: "POST",
        path: &paths[at(i)],
        content_type: Some("application/json"),
        content_length: Some(json[at(i)].len()),
        ..RequestHead::default()
    };
    let query_paths: Vec<String> = (0..fleet.clusters.max(1))
        .map(|c| format!("/api/v1/threshold?cluster_id={}", crate::agent::cluster_id(c)))
        .collect();
    let mut out = serde_json::Map::new();
    let mut step = |name: &str, f: &mut dyn FnMut(u64) -> Result<(), BenchError>| -> Result<(), BenchError> {
        if !name.starts_with(only) {
            return Ok(());
        }
        let started = Instant::now();
        for i in 0..iterations {
            f(i)?;
        }
        out.insert(name.to_owned(), json!(started.elapsed().as_secs_f64() * 1e6 / iterations.max(1) as f64));
        Ok(())
    };
    step("head: decide on a push", &mut |i| {
        black_box(core.decide(&head(i), now));
        Ok(())
    })?;
    step("decode: OTLP JSON", &mut |i| {
        black_box(ExportRequest::decode(BodyFormat::Json, &json[at(i)])?);
        Ok(())
    })?;
    step("decode: OTLP protobuf", &mut |i| {
        black_box(ExportRequest::decode(BodyFormat::Protobuf, &protobuf[at(i)])?);
        Ok(())
    })?;
    step("decode + validate (extract): JSON", &mut |i| {
        let request = ExportRequest::decode(BodyFormat::Json, &json[at(i)])?;
        black_box(extract(request, Some(&agents[at(i)].cluster_id), core.config()));
        Ok(())
    })?;
    step("registry: record one node (shard read, update, CAS write)", &mut |i| {
        black_box(registry.record(&scores[at(i)], now, caps)?);
        Ok(())
    })?;
    step("reply: pushed + piggyback headers", &mut |_| {
        black_box(Reply::pushed(BodyFormat::Json, 0, None).with_piggyback(book.threshold(&agents[0].cluster_id, "")));
        Ok(())
    })?;
    step("whole push: JSON agent body", &mut |i| push_bytes(&core, &paths[at(i)], BodyKind::Json, &json[at(i)], now))?;
    step("whole push: protobuf agent body", &mut |i| {
        push_bytes(&core, &paths[at(i)], BodyKind::Protobuf, &protobuf[at(i)], now)
    })?;
    step("whole push: empty body", &mut |i| push_bytes(&core, &paths[at(i)], BodyKind::Empty, &empty, now))?;
    step("threshold query: decide", &mut |i| {
        let path = &query_paths[(i % query_paths.len() as u64) as usize];
        black_box(core.decide(&RequestHead { method: "GET", path, ..RequestHead::default() }, now));
        Ok(())
    })?;
    Ok(json!({
        "nodes": fleet.nodes,
        "clusters": fleet.clusters,
        "iterations": iterations,
        "json_body_bytes": json[0].len(),
        "protobuf_body_bytes": protobuf[0].len(),
        "us_per_call": out,
    }))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
