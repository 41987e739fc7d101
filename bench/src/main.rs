//! `ingero-bench`: measures Fleet front doors. `load` drives a running front
//! door like a fleet of agents; `recompute` and `steps` time the core natively.
//! Every subcommand prints one JSON object on stdout (scripts/bench reads it).

mod agent;
mod args;
mod error;
mod expect;
mod http;
mod load;
mod native;
mod proto;
mod report;

use agent::{BodyKind, Fleet};
use args::Args;
use error::BenchError;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

/// The command line.
pub const USAGE: &str = "usage:
  ingero-bench load --push ADDR [--api ADDR] [--rate PUSHES_PER_S (0: closed loop)] [--warmup S] [--duration S]
                    [--connections N] [--nodes N] [--clusters K] [--body json|protobuf|empty] [--path /v1/metrics]
                    [--query-share QUERIES_PER_PUSH] [--max-pushes N] [--k 2.0] [--quorum 5]
  ingero-bench recompute [--nodes N] [--clusters K] [--repeats R]
  ingero-bench steps [--nodes N] [--clusters K] [--iterations I] [--only STEP_NAME_PREFIX]";

fn main() -> ExitCode {
    match run(std::env::args().skip(1)) {
        Ok(report) => {
            println!("{report}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("ingero-bench: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(mut argv: impl Iterator<Item = String>) -> Result<Value, BenchError> {
    let command = argv.next().unwrap_or_default();
    let mut args = Args::parse(argv)?;
    let fleet = Fleet { nodes: args.get("nodes", 1000u64)?.max(1), clusters: args.get("clusters", 10u64)?.max(1) };
    let report = match command.as_str() {
        "load" => load(&mut args, fleet)?,
        "recompute" => native::recompute(fleet, args.get("repeats", 3)?)?,
        "steps" => native::steps(fleet, args.get("iterations", 100_000)?, &args.get("only", String::new())?)?,
        other => return Err(BenchError::Usage(format!("unknown command {other:?}"))),
    };
    args.finish()?;
    Ok(report)
}

fn load(args: &mut Args, fleet: Fleet) -> Result<Value, BenchError> {
    let push_addr: SocketAddr =
        args.optional("push")?.ok_or_else(|| BenchError::Usage("load needs --push ADDR".into()))?;
    let rate: f64 = args.get("rate", 0.0)?;
    let body_name: String = args.get("body", "json".to_owned())?;
    let body = BodyKind::parse(&body_name).ok_or_else(|| BenchError::Usage(format!("--body {body_name:?}")))?;
    let k: f64 = args.get("k", 2.0)?;
    let quorum: usize = args.get("quorum", 5)?;
    let plan = load::Plan {
        push_addr,
        api_addr: args.optional("api")?,
        rate: (rate > 0.0).then_some(rate),
        warmup: Duration::from_secs_f64(args.get("warmup", 1.0)?),
        duration: Duration::from_secs_f64(args.get("duration", 10.0)?),
        connections: args.get("connections", 64)?,
        fleet,
        body,
        path: args.get("path", "/v1/metrics".to_owned())?,
        query_share: args.get("query-share", 0.0f64)?.clamp(0.0, 1.0),
        max_pushes: args.optional("max-pushes")?,
    };
    let described = json!({
        "rate": plan.rate,
        "mode": if plan.rate.is_some() { "open" } else { "closed" },
        "warmup_s": plan.warmup.as_secs_f64(),
        "duration_s": plan.duration.as_secs_f64(),
        "connections": plan.connections,
        "nodes": fleet.nodes,
        "clusters": fleet.clusters,
        "body": body_name,
        "body_bytes": fleet.agent(0).body(body, 1_700_000_000_000_000_000).len(),
        "query_share": plan.query_share,
    });
    let outcome = load::run(plan)?;
    let window = outcome.window;
    Ok(json!({
        "plan": described,
        "pushes": outcome.pushes.to_json(window),
        "queries": outcome.queries.to_json(window),
        "loadgen_cpu_s": outcome.loadgen_cpu_s,
        "loadgen_cpu_pct": 100.0 * outcome.loadgen_cpu_s / window.as_secs_f64().max(1e-9),
        "covered_nodes": outcome.covered,
        "expected_thresholds": expect::thresholds(&fleet, outcome.covered, k, quorum),
    }))
}
