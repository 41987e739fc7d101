//! Fleet configuration: the contract's keys (§6), parsed leniently, validated strictly.
//!
//! The same JSON document configures every front door: the wasm plugin
//! configuration, the dynamic module's filter config and the standalone
//! server's YAML file (converted to JSON).

use crate::otlp::json_value;
use serde_json::{Map, Value};
use std::time::Duration;
use thiserror::Error;

pub const DEFAULT_K: f64 = 2.0;
pub const DEFAULT_EMA_ALPHA: f64 = 0.2;
pub const DEFAULT_PUSH_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_TTL_MULTIPLIER: u32 = 5;
pub const DEFAULT_STATISTICAL_MIN: u32 = 5;
pub const DEFAULT_COVERAGE_FRACTION: f64 = 0.8;
pub const DEFAULT_MAX_EXPECTED_NODES: u32 = 10_000;
pub const DEFAULT_MAX_BODY_BYTES: usize = 4 << 20;
pub const DEFAULT_MAX_ID_BYTES: usize = 256;
pub const DEFAULT_MAX_POINTS_PER_PUSH: usize = 10_000;
/// A Collector batch of 8 192 one-point resources fits (docs/limits.md).
pub const DEFAULT_MAX_RESOURCES_PER_PUSH: usize = 10_000;
/// Cohorts per cluster in a recompute; more are left out of the book (docs/limits.md).
pub const DEFAULT_MAX_COHORTS_PER_CLUSTER: u32 = 16;
pub const DEFAULT_MAX_CLUSTERS: u32 = 1_000;

/// Validated configuration shared by every front door.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// MAD multiplier `k` in `median − k·1.4826·MAD`.
    pub k: f64,
    /// EMA weight of the newest raw threshold.
    pub ema_alpha: f64,
    /// Expected agent push period; thresholds are recomputed once per period.
    pub push_interval: Duration,
    /// A node expires after `push_interval × ttl_multiplier` without a push.
    pub ttl_multiplier: u32,
    /// Active nodes a cohort needs before it has a threshold.
    pub statistical_min: u32,
    /// Below this share of `world_size`, a cohort's coverage is low.
    pub coverage_fraction: f64,
    /// Cap on tracked nodes across all clusters.
    pub max_expected_nodes: u32,
    /// Cap on tracked nodes of one cluster (defaults to `max_expected_nodes`).
    pub max_nodes_per_cluster: u32,
    /// Cap on clusters with tracked nodes; a new cluster past it is refused with 429.
    pub max_clusters: u32,
    /// Largest accepted body, before and after decompression.
    pub max_body_bytes: usize,
    /// Longest accepted cluster, node or cohort id, and longest stored text attribute.
    pub max_id_bytes: usize,
    /// Most data points accepted in one push.
    pub max_points_per_push: usize,
    /// Most resources (nodes, in an agent's push) accepted in one push.
    pub max_resources_per_push: usize,
    /// Most cohorts (cgroup path hashes) of one cluster a recompute keeps.
    pub max_cohorts_per_cluster: u32,
    /// proxy-wasm filter only: hold a push at its headers while the body
    /// arrives. That needs Envoy's `allow_on_headers_stop_iteration: true`;
    /// where the host cannot set it (Istio's WasmPlugin), set this false and let
    /// the headers go on to a next filter or upstream that waits for the body.
    pub pause_on_headers: bool,
    /// What a filter in a proxy does with a push: answer it, or let it go on upstream and score it.
    pub mode: Mode,
    /// The routes this listener answers; the others go on to the next filter or the host's 404.
    pub routes: RouteSet,
    /// Who may push which clusters; empty: anyone who reaches the push port may push any cluster.
    pub push_identities: PushIdentities,
    /// Which of the VMs or threads sharing one store runs the interval's recompute.
    pub recompute: Recompute,
    /// Listen addresses (used by the standalone server only).
    pub listen: Listen,
}

/// What a proxy filter does with a push.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Fleet is the push's destination: it stores the scores and answers.
    Terminate,
    /// Fleet sits in front of another OTLP receiver (a collector): the push goes
    /// on unchanged, its scores count once the upstream accepted it (2xx), and the
    /// upstream's response gains the threshold headers.
    Observe,
}

impl Mode {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Terminate => "terminate",
            Self::Observe => "observe",
        }
    }
}

/// Which instance recomputes the thresholds each interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recompute {
    /// Whichever instance ticks first in an interval (each front door's default).
    Any,
    /// This instance is the dedicated one (Envoy's singleton Wasm service on the
    /// main thread): it always takes the interval.
    Singleton,
    /// Leave it to the singleton, so no worker stalls on a recompute; step in only
    /// when the last recompute is more than one interval old (no singleton, or it stalled).
    Deferred,
}

impl Recompute {
    /// The configuration spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Any => "any",
            Self::Singleton => "singleton",
            Self::Deferred => "deferred",
        }
    }
}

/// Identities allowed to push, each with the clusters it may push (`*`: any).
/// An identity is `token:<secret>` (sent as `Authorization: Bearer <secret>`)
/// or a peer certificate's URI or DNS name (a SPIFFE ID under mTLS).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushIdentities(Vec<(String, Vec<String>)>);

impl PushIdentities {
    /// Whether pushes need no identity (the upstream product's default).
    pub fn is_open(&self) -> bool {
        self.0.is_empty()
    }

    /// The clusters the first matching identity may push: a bearer token or the
    /// peer certificate's name.
    pub fn clusters(&self, bearer: Option<&str>, peer: Option<&str>) -> Option<&[String]> {
        self.0.iter().find_map(|(identity, clusters)| {
            let matched = match identity.strip_prefix("token:") {
                Some(secret) => bearer.is_some_and(|b| same_secret(b.as_bytes(), secret.as_bytes())),
                None => peer == Some(identity.as_str()),
            };
            matched.then_some(clusters.as_slice())
        })
    }
}

/// Compares secrets without stopping at the first differing byte.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Groups of Fleet routes one listener serves, so each port serves only its role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteSet {
    /// `POST /v1/metrics`.
    pub push: bool,
    /// The threshold API, the listings and the dashboard.
    pub api: bool,
    /// The Prometheus scrape.
    pub metrics: bool,
}

impl RouteSet {
    /// Every route: one listener serving everything.
    pub const ALL: Self = Self { push: true, api: true, metrics: true };
    /// The spellings of the `routes` list.
    pub const NAMES: [&'static str; 3] = ["push", "api", "metrics"];
}

/// Where the standalone server listens.
#[derive(Debug, Clone, PartialEq)]
pub struct Listen {
    pub otlp_http: String,
    pub otlp_grpc: String,
    pub api: String,
    pub metrics: String,
}

impl Default for Listen {
    fn default() -> Self {
        Self {
            otlp_http: "0.0.0.0:4318".into(),
            otlp_grpc: "0.0.0.0:4317".into(),
            api: "0.0.0.0:8080".into(),
            metrics: "0.0.0.0:8888".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            k: DEFAULT_K,
            ema_alpha: DEFAULT_EMA_ALPHA,
            push_interval: DEFAULT_PUSH_INTERVAL,
            ttl_multiplier: DEFAULT_TTL_MULTIPLIER,
            statistical_min: DEFAULT_STATISTICAL_MIN,
            coverage_fraction: DEFAULT_COVERAGE_FRACTION,
            max_expected_nodes: DEFAULT_MAX_EXPECTED_NODES,
            max_nodes_per_cluster: DEFAULT_MAX_EXPECTED_NODES,
            max_clusters: DEFAULT_MAX_CLUSTERS,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            max_id_bytes: DEFAULT_MAX_ID_BYTES,
            max_points_per_push: DEFAULT_MAX_POINTS_PER_PUSH,
            max_resources_per_push: DEFAULT_MAX_RESOURCES_PER_PUSH,
            max_cohorts_per_cluster: DEFAULT_MAX_COHORTS_PER_CLUSTER,
            pause_on_headers: true,
            mode: Mode::Terminate,
            routes: RouteSet::ALL,
            push_identities: PushIdentities::default(),
            recompute: Recompute::Any,
            listen: Listen::default(),
        }
    }
}

impl Config {
    /// Milliseconds after its last push at which a node stops counting.
    pub fn node_ttl_ms(&self) -> u64 {
        duration_ms(self.push_interval) * u64::from(self.ttl_multiplier)
    }

    /// The caps a new node must fit under to be tracked.
    pub fn node_caps(&self) -> NodeCaps {
        NodeCaps {
            nodes: self.max_expected_nodes,
            nodes_per_cluster: self.max_nodes_per_cluster,
            clusters: self.max_clusters,
            retry_after_s: u32::try_from(self.push_interval.as_secs()).unwrap_or(u32::MAX).max(1),
        }
    }

    /// How often a front door ticks: a quarter of the push interval, between 50 ms
    /// and 1 s, so a published threshold is at most one interval plus one tick old.
    pub fn tick_period(&self) -> Duration {
        (self.push_interval / 4).clamp(Duration::from_millis(50), Duration::from_secs(1))
    }

    /// The push interval in milliseconds (never zero).
    pub fn push_interval_ms(&self) -> u64 {
        duration_ms(self.push_interval).max(1)
    }

    /// Parses and validates a JSON configuration; empty input means defaults.
    pub fn from_json(bytes: &[u8]) -> Result<Parsed, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Parsed { config: Config::default(), warnings: Vec::new() });
        }
        let value = json_value(bytes)
            .map_err(|e| ConfigError { problems: vec![format!("configuration is not valid JSON: {e}")] })?;
        Self::from_value(&value)
    }

    /// Validates an already parsed document (YAML front ends convert to this).
    pub fn from_value(value: &Value) -> Result<Parsed, ConfigError> {
        let Value::Object(root) = value else {
            return Err(ConfigError { problems: vec!["configuration must be an object".into()] });
        };
        let mut check = Checker::default();
        let d = Config::default();
        let threshold = check.section(root, "threshold", &["k", "ema_alpha"]);
        let quorum = check.section(root, "quorum", &["statistical_min", "coverage_fraction"]);
        let listen = check.section(root, "listen", &["otlp_http", "otlp_grpc", "api", "metrics"]);
        check.unknown_keys(
            "",
            root,
            &[
                "threshold",
                "quorum",
                "listen",
                "push_interval",
                "ttl_multiplier",
                "max_expected_nodes",
                "max_nodes_per_cluster",
                "max_clusters",
                "max_body_bytes",
                "max_id_bytes",
                "max_points_per_push",
                "max_resources_per_push",
                "max_cohorts_per_cluster",
                "pause_on_headers",
                "mode",
                "routes",
                "push_identities",
                "recompute",
            ],
        );
        let max_expected_nodes = check.int(root, "max_expected_nodes", d.max_expected_nodes, 1, 1_000_000);
        let config = Config {
            k: check.float(threshold, "threshold.k", d.k, 1.0, 4.0, true),
            ema_alpha: check.float(threshold, "threshold.ema_alpha", d.ema_alpha, 0.0, 1.0, false),
            push_interval: check.duration(root, "push_interval", d.push_interval),
            ttl_multiplier: check.int(root, "ttl_multiplier", d.ttl_multiplier, 2, 1_000),
            statistical_min: check.int(quorum, "quorum.statistical_min", d.statistical_min, 1, 1_000_000),
            coverage_fraction: check.float(quorum, "quorum.coverage_fraction", d.coverage_fraction, 0.0, 1.0, true),
            max_expected_nodes,
            max_nodes_per_cluster: check.int(root, "max_nodes_per_cluster", max_expected_nodes, 1, 1_000_000),
            max_clusters: check.int(root, "max_clusters", d.max_clusters, 1, MAX_CLUSTERS_LIMIT),
            max_body_bytes: check.int(root, "max_body_bytes", d.max_body_bytes, 1024, 64 << 20),
            max_id_bytes: check.int(root, "max_id_bytes", d.max_id_bytes, 8, 4096),
            max_points_per_push: check.int(root, "max_points_per_push", d.max_points_per_push, 1, 1_000_000),
            max_resources_per_push: check.int(root, "max_resources_per_push", d.max_resources_per_push, 1, 1_000_000),
            max_cohorts_per_cluster: check.int(root, "max_cohorts_per_cluster", d.max_cohorts_per_cluster, 1, 10_000),
            pause_on_headers: check.boolean(root, "pause_on_headers", d.pause_on_headers),
            mode: check.mode(root, "mode", d.mode),
            routes: check.routes(root, "routes", d.routes),
            push_identities: check.identities(root, "push_identities"),
            recompute: check.recompute(root, "recompute", d.recompute),
            listen: Listen {
                otlp_http: check.string(listen, "listen.otlp_http", d.listen.otlp_http),
                otlp_grpc: check.string(listen, "listen.otlp_grpc", d.listen.otlp_grpc),
                api: check.string(listen, "listen.api", d.listen.api),
                metrics: check.string(listen, "listen.metrics", d.listen.metrics),
            },
        };
        if check.problems.is_empty() {
            Ok(Parsed { config, warnings: check.warnings })
        } else {
            Err(ConfigError { problems: check.problems })
        }
    }
}

/// Upper bound of `max_clusters`: the cluster table is rewritten whenever a node is
/// added or expires, so it stays small (12 bytes per cluster).
pub const MAX_CLUSTERS_LIMIT: u64 = 100_000;

/// The limits on tracked nodes, as the registry enforces them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCaps {
    /// `max_expected_nodes`.
    pub nodes: u32,
    /// `max_nodes_per_cluster`.
    pub nodes_per_cluster: u32,
    /// `max_clusters`.
    pub clusters: u32,
    /// `Retry-After` for a refused new cluster: a slot can only free at the next recompute.
    pub retry_after_s: u32,
}

/// A valid configuration and the unknown keys it ignored.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub config: Config,
    pub warnings: Vec<String>,
}

/// Every invalid key of a configuration, each named with its valid range.
#[derive(Debug, Clone, PartialEq, Error)]
#[error("invalid configuration: {}", problems.join("; "))]
pub struct ConfigError {
    pub problems: Vec<String>,
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Parses `10s`, `500ms`, `1m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let seconds = match unit.trim() {
        "" | "s" => number,
        "ms" => number / 1000.0,
        "m" => number * 60.0,
        "h" => number * 3600.0,
        _ => return None,
    };
    Duration::try_from_secs_f64(seconds).ok()
}

// === impl Checker ===

/// Collects every problem instead of stopping at the first.
#[derive(Default)]
struct Checker {
    problems: Vec<String>,
    warnings: Vec<String>,
}

static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();

impl Checker {
    fn section<'v>(&mut self, root: &'v Map<String, Value>, name: &str, known: &[&str]) -> &'v Map<String, Value> {
        match root.get(name) {
            Some(Value::Object(map)) => {
                self.unknown_keys(name, map, known);
                map
            }
            None | Some(Value::Null) => EMPTY.get_or_init(Map::new),
            Some(_) => {
                self.problems.push(format!("{name} must be an object"));
                EMPTY.get_or_init(Map::new)
            }
        }
    }

    fn unknown_keys(&mut self, prefix: &str, map: &Map<String, Value>, known: &[&str]) {
        for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
            let dot = if prefix.is_empty() { "" } else { "." };
            self.warnings.push(format!("unknown configuration key {prefix}{dot}{key} ignored"));
        }
    }

    fn leaf<'v>(map: &'v Map<String, Value>, path: &str) -> Option<&'v Value> {
        let key = path.rsplit('.').next().unwrap_or(path);
        map.get(key).filter(|v| !v.is_null())
    }

    /// A number in `[min, max]`, or `(min, max]` when `min_inclusive` is false.
    fn float(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        default: f64,
        min: f64,
        max: f64,
        min_inclusive: bool,
    ) -> f64 {
        let Some(value) = Self::leaf(map, path) else { return default };
        let number = value.as_f64().or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()));
        let open = if min_inclusive { "[" } else { "(" };
        match number {
            Some(n) if n.is_finite() && n <= max && (n > min || (min_inclusive && n == min)) => n,
            _ => {
                self.problems
                    .push(format!("{path} = {value} is out of range: must be a number in {open}{min}, {max}]"));
                default
            }
        }
    }

    fn int<T: TryFrom<u64> + Copy>(
        &mut self,
        map: &Map<String, Value>,
        path: &str,
        default: T,
        min: u64,
        max: u64,
    ) -> T {
        let Some(value) = Self::leaf(map, path) else { return default };
        let number = value.as_u64().or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()));
        match number.filter(|n| (min..=max).contains(n)).and_then(|n| T::try_from(n).ok()) {
            Some(n) => n,
            None => {
                self.problems.push(format!("{path} = {value} is out of range: must be an integer in [{min}, {max}]"));
                default
            }
        }
    }

    fn duration(&mut self, map: &Map<String, Value>, path: &str, default: Duration) -> Duration {
        let Some(value) = Self::leaf(map, path) else { return default };
        let parsed = match value {
            Value::String(s) => parse_duration(s),
            Value::Number(n) => n.as_f64().and_then(|s| Duration::try_from_secs_f64(s).ok()),
            _ => None,
        };
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(3600));
        match parsed.filter(|d| (min..=max).contains(d)) {
            Some(d) => d,
            None => {
                self.problems.push(format!(
                    "{path} = {value} is out of range: must be a duration such as \"10s\" between 100ms and 1h"
                ));
                default
            }
        }
    }

    fn boolean(&mut self, map: &Map<String, Value>, path: &str, default: bool) -> bool {
        match Self::leaf(map, path) {
            None => default,
            Some(Value::Bool(b)) => *b,
            // Helm's --set passes booleans as strings.
            Some(Value::String(s)) if s == "true" || s == "false" => s == "true",
            Some(value) => {
                self.problems.push(format!("{path} = {value} must be true or false"));
                default
            }
        }
    }

    fn mode(&mut self, map: &Map<String, Value>, path: &str, default: Mode) -> Mode {
        match Self::leaf(map, path).map(|v| (v, v.as_str())) {
            None => default,
            Some((_, Some("terminate"))) => Mode::Terminate,
            Some((_, Some("observe"))) => Mode::Observe,
            Some((value, _)) => {
                self.problems.push(format!("{path} = {value} must be \"terminate\" or \"observe\""));
                default
            }
        }
    }

    fn recompute(&mut self, map: &Map<String, Value>, path: &str, default: Recompute) -> Recompute {
        let all = [Recompute::Any, Recompute::Singleton, Recompute::Deferred];
        let Some(value) = Self::leaf(map, path) else { return default };
        match all.into_iter().find(|r| value.as_str() == Some(r.as_str())) {
            Some(r) => r,
            None => {
                let names: Vec<String> = all.iter().map(|r| format!("\"{}\"", r.as_str())).collect();
                self.problems.push(format!("{path} = {value} must be {}", names.join(" or ")));
                default
            }
        }
    }

    fn routes(&mut self, map: &Map<String, Value>, path: &str, default: RouteSet) -> RouteSet {
        let Some(value) = Self::leaf(map, path) else { return default };
        let names: Option<Vec<&str>> = value.as_array().and_then(|a| a.iter().map(Value::as_str).collect());
        match names.filter(|n| !n.is_empty() && n.iter().all(|n| RouteSet::NAMES.contains(n))) {
            Some(names) => RouteSet {
                push: names.contains(&"push"),
                api: names.contains(&"api"),
                metrics: names.contains(&"metrics"),
            },
            None => {
                self.problems.push(format!(
                    "{path} = {value} must be a non-empty list of {}",
                    RouteSet::NAMES.map(|n| format!("\"{n}\"")).join(", ")
                ));
                default
            }
        }
    }

    fn identities(&mut self, map: &Map<String, Value>, path: &str) -> PushIdentities {
        let Some(value) = Self::leaf(map, path) else { return PushIdentities::default() };
        let entries = value.as_object().map(|o| {
            o.iter()
                .map(|(identity, clusters)| {
                    let clusters: Option<Vec<String>> =
                        clusters.as_array().and_then(|a| a.iter().map(|c| c.as_str().map(str::to_owned)).collect());
                    Some((identity.clone(), clusters.filter(|c| !c.is_empty())?))
                        .filter(|(i, _)| !i.is_empty() && i != "token:")
                })
                .collect::<Option<Vec<_>>>()
        });
        match entries.flatten() {
            Some(entries) => PushIdentities(entries),
            None => {
                self.problems.push(format!(
                    "{path} = {value} must be an object mapping each identity (\"token:<secret>\" or a \
                     certificate's URI/DNS name) to a non-empty list of cluster ids or \"*\""
                ));
                PushIdentities::default()
            }
        }
    }

    fn string(&mut self, map: &Map<String, Value>, path: &str, default: String) -> String {
        match Self::leaf(map, path) {
            None => default,
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(value) => {
                self.problems.push(format!(
                    "{path} = {value} must be a non-empty string such as \"0.0.0.0:8080\" or \"unix:/run/fleet.sock\""
                ));
                default
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<Parsed, ConfigError> {
        Config::from_json(json.as_bytes())
    }

    #[test]
    fn empty_is_defaults() {
        assert_eq!(parse("").map(|p| p.config), Ok(Config::default()));
        assert_eq!(parse("{}").map(|p| p.config), Ok(Config::default()));
    }

    #[test]
    fn reads_every_key() {
        let p = parse(
            r#"{"threshold":{"k":2.5,"ema_alpha":1},"push_interval":"30s","ttl_multiplier":3,
                "quorum":{"statistical_min":7,"coverage_fraction":0.5},"max_expected_nodes":100,
                "max_body_bytes":2048,"max_id_bytes":64,"max_points_per_push":50,
                "max_resources_per_push":7,"max_cohorts_per_cluster":3}"#,
        )
        .map(|p| p.config);
        let c = p.as_ref().ok();
        assert_eq!(c.map(|c| c.k), Some(2.5));
        assert_eq!(c.map(|c| c.ema_alpha), Some(1.0));
        assert_eq!(c.map(|c| c.push_interval), Some(Duration::from_secs(30)));
        assert_eq!(c.map(Config::node_ttl_ms), Some(90_000));
        assert_eq!(c.map(|c| c.statistical_min), Some(7));
        assert_eq!(c.map(|c| c.coverage_fraction), Some(0.5));
        assert_eq!(c.map(|c| c.max_expected_nodes), Some(100));
        assert_eq!(c.map(|c| c.max_body_bytes), Some(2048));
        assert_eq!(c.map(|c| c.max_id_bytes), Some(64));
        assert_eq!(c.map(|c| c.max_points_per_push), Some(50));
        assert_eq!(c.map(|c| (c.max_resources_per_push, c.max_cohorts_per_cluster)), Some((7, 3)));
        assert_eq!(c.map(|c| c.pause_on_headers), Some(true));
        let flag = |json: &str| Config::from_json(json.as_bytes()).map(|p| p.config.pause_on_headers);
        assert_eq!(flag(r#"{"pause_on_headers":false}"#), Ok(false));
        assert_eq!(flag(r#"{"pause_on_headers":"false"}"#), Ok(false));
        assert!(flag(r#"{"pause_on_headers":1}"#).is_err());
    }

    #[test]
    fn names_every_bad_key_with_its_range() {
        let err = parse(r#"{"threshold":{"k":7,"ema_alpha":0},"push_interval":"soon","ttl_multiplier":1}"#)
            .err()
            .map(|e| e.to_string())
            .unwrap();
        assert!(err.contains("threshold.k = 7 is out of range: must be a number in [1, 4]"), "{err}");
        assert!(err.contains("threshold.ema_alpha = 0 is out of range: must be a number in (0, 1]"), "{err}");
        assert!(err.contains("push_interval = \"soon\""), "{err}");
        assert!(err.contains("ttl_multiplier = 1 is out of range: must be an integer in [2, 1000]"), "{err}");
    }

    #[test]
    fn per_cluster_cap_follows_the_total_unless_set() {
        let c = parse(r#"{"max_expected_nodes":50}"#).map(|p| p.config);
        assert_eq!(c.as_ref().map(|c| (c.max_nodes_per_cluster, c.max_clusters)).ok(), Some((50, 1000)));
        let c = parse(r#"{"max_nodes_per_cluster":5,"max_clusters":3,"push_interval":"500ms"}"#).map(|p| p.config);
        let caps = c.as_ref().map(Config::node_caps).ok();
        assert_eq!(caps, Some(NodeCaps { nodes: 10_000, nodes_per_cluster: 5, clusters: 3, retry_after_s: 1 }));
        let err = parse(r#"{"max_clusters":0}"#).err().map(|e| e.to_string()).unwrap();
        assert!(err.contains("max_clusters = 0 is out of range: must be an integer in [1, 100000]"), "{err}");
    }

    #[test]
    fn warns_about_unknown_keys() {
        let p = parse(r#"{"threshold":{"kk":1},"colour":"blue"}"#);
        let warnings = p.map(|p| p.warnings).unwrap();
        assert!(warnings.contains(&"unknown configuration key threshold.kk ignored".to_string()));
        assert!(warnings.contains(&"unknown configuration key colour ignored".to_string()));
    }

    #[test]
    fn numbers_as_strings_come_from_helm() {
        let c = parse(r#"{"threshold":{"k":"2.5"},"max_expected_nodes":"100"}"#).map(|p| p.config);
        assert_eq!(c.as_ref().map(|c| (c.k, c.max_expected_nodes)).ok(), Some((2.5, 100)));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Some(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Some(Duration::from_secs(60)));
        assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_duration("ten"), None);
        assert_eq!(parse_duration("5d"), None);
    }
}

// === the key table ===

/// One configuration key as documented. README.md's and docs/configuration.md's
/// tables, the Helm values schema and the Istio WasmPlugin example are checked
/// against [`key_table`] (tests/test_config_table.py). Kind, range and choices
/// are read from the validator's own refusal of a bad value, so they cannot drift
/// from what `Config::from_value` enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct KeyInfo {
    /// Dotted path, such as `threshold.k`.
    pub path: &'static str,
    /// `number`, `integer`, `duration`, `boolean`, `string`, `list` or `map`.
    pub kind: &'static str,
    /// The default as configuration JSON; null when it is another key's value (`default_follows`).
    pub default: Value,
    /// The key whose value is the default, if any.
    pub default_follows: Option<&'static str>,
    /// What the validator requires, as its message words it (the text after "must" or "must be").
    pub valid: String,
    /// Lower bound of a number or integer; of a duration, in seconds.
    pub min: Option<f64>,
    /// Upper bound, as `min`.
    pub max: Option<f64>,
    /// Whether `min` itself is refused.
    pub min_exclusive: bool,
    /// The accepted spellings of a choice (booleans, named values, a list's items).
    pub choices: Vec<Value>,
    /// One line of meaning.
    pub meaning: &'static str,
}

impl KeyInfo {
    /// The entry as JSON, for tools outside Rust (`cargo run -p ingero-fleet-core --example config_keys`).
    pub fn to_json(&self) -> Value {
        serde_json::json!({
            "path": self.path, "kind": self.kind, "default": self.default, "default_follows": self.default_follows,
            "valid": self.valid, "min": self.min, "max": self.max, "min_exclusive": self.min_exclusive,
            "choices": self.choices, "meaning": self.meaning,
        })
    }
}

/// Where a key's default comes from.
enum DefaultOf {
    /// A field of `Config::default()`.
    Field(fn(&Config) -> Value),
    /// Another key's value.
    Follows(&'static str),
    /// The first of the choices, the list of all of them, or `{}` that parses to `Config::default()`.
    Probe,
}

/// Every key, in documentation order: path, meaning, default. A `Config` field
/// without an entry here fails `key_table_tests::every_config_field_has_a_key`.
const KEYS: &[(&str, &str, DefaultOf)] = &[
    ("threshold.k", "MAD multiplier in `median − k·1.4826·MAD`", DefaultOf::Field(|c| Value::from(c.k))),
    (
        "threshold.ema_alpha",
        "weight of the newest raw threshold in the EMA; 1 = no smoothing",
        DefaultOf::Field(|c| Value::from(c.ema_alpha)),
    ),
    (
        "push_interval",
        "the agents' push period; one recompute per period",
        DefaultOf::Field(|c| Value::from(duration_text(c.push_interval))),
    ),
    (
        "ttl_multiplier",
        "a node expires after `push_interval × ttl_multiplier` without a push",
        DefaultOf::Field(|c| Value::from(c.ttl_multiplier)),
    ),
    (
        "quorum.statistical_min",
        "active nodes a cohort needs for a threshold",
        DefaultOf::Field(|c| Value::from(c.statistical_min)),
    ),
    (
        "quorum.coverage_fraction",
        "below this share of `ingero.world_size`, coverage is low",
        DefaultOf::Field(|c| Value::from(c.coverage_fraction)),
    ),
    ("max_expected_nodes", "cap on tracked nodes", DefaultOf::Field(|c| Value::from(c.max_expected_nodes))),
    ("max_nodes_per_cluster", "cap on one cluster's tracked nodes", DefaultOf::Follows("max_expected_nodes")),
    ("max_clusters", "cap on clusters; a new one past it gets 429", DefaultOf::Field(|c| Value::from(c.max_clusters))),
    ("max_body_bytes", "largest body, before and after gzip", DefaultOf::Field(|c| Value::from(c.max_body_bytes))),
    ("max_id_bytes", "longest cluster, node or cohort id", DefaultOf::Field(|c| Value::from(c.max_id_bytes))),
    ("max_points_per_push", "most data points in one push", DefaultOf::Field(|c| Value::from(c.max_points_per_push))),
    (
        "max_resources_per_push",
        "most resources (nodes) in one push",
        DefaultOf::Field(|c| Value::from(c.max_resources_per_push)),
    ),
    (
        "max_cohorts_per_cluster",
        "cohorts of one cluster a recompute keeps",
        DefaultOf::Field(|c| Value::from(c.max_cohorts_per_cluster)),
    ),
    ("pause_on_headers", "wasm filter only: hold a push at its headers while the body arrives", DefaultOf::Probe),
    (
        "mode",
        "filter in a proxy: answer pushes, or pass them on to a collector and score the accepted ones",
        DefaultOf::Probe,
    ),
    ("routes", "the Fleet routes this listener answers; others go on", DefaultOf::Probe),
    (
        "push_identities",
        "who may push which clusters (bearer token or client certificate); empty: anyone",
        DefaultOf::Field(|_| Value::Object(Map::new())),
    ),
    (
        "recompute",
        "who recomputes each interval: any instance, Envoy's singleton Wasm service, or defer to it",
        DefaultOf::Probe,
    ),
    (
        "listen.otlp_http",
        "standalone server only: OTLP/HTTP pushes",
        DefaultOf::Field(|c| Value::from(c.listen.otlp_http.clone())),
    ),
    (
        "listen.otlp_grpc",
        "standalone server only: OTLP/gRPC pushes",
        DefaultOf::Field(|c| Value::from(c.listen.otlp_grpc.clone())),
    ),
    (
        "listen.api",
        "standalone server only: threshold API, listings, dashboard",
        DefaultOf::Field(|c| Value::from(c.listen.api.clone())),
    ),
    (
        "listen.metrics",
        "standalone server only: `/metrics`",
        DefaultOf::Field(|c| Value::from(c.listen.metrics.clone())),
    ),
];

/// Every configuration key with its kind, default, valid range and meaning.
pub fn key_table() -> Vec<KeyInfo> {
    let defaults = Config::default();
    KEYS.iter()
        .map(|(path, meaning, default)| {
            // A list holding an empty list is no key's valid value: the refusal names the kind and range.
            let refusal = Config::from_value(&at_path(path, Value::Array(vec![Value::Array(vec![])]))).err();
            let prefix = format!("{path} ");
            let valid = refusal
                .iter()
                .flat_map(|e| e.problems.iter())
                .find(|p| p.starts_with(&prefix))
                .and_then(|p| p.split_once(" must ").map(|(_, valid)| valid.trim_start_matches("be ").to_string()))
                .unwrap_or_default();
            let (kind, min, max, min_exclusive, choices) = read_valid(&valid);
            let (default, default_follows) = match default {
                DefaultOf::Field(get) => (get(&defaults), None),
                DefaultOf::Follows(other) => (Value::Null, Some(*other)),
                DefaultOf::Probe => {
                    let (all, empty) = (Value::Array(choices.clone()), Value::Object(Map::new()));
                    let found = choices.iter().chain([&all, &empty]).find(|candidate| {
                        Config::from_value(&at_path(path, (*candidate).clone())).map(|p| p.config).ok().as_ref()
                            == Some(&defaults)
                    });
                    (found.cloned().unwrap_or(Value::Null), None)
                }
            };
            KeyInfo { path, kind, default, default_follows, valid, min, max, min_exclusive, choices, meaning }
        })
        .collect()
}

/// `{"a": {"b": value}}` for the path `a.b`.
fn at_path(path: &str, value: Value) -> Value {
    path.rsplit('.').fold(value, |inner, key| {
        let mut map = Map::new();
        map.insert(key.to_string(), inner);
        Value::Object(map)
    })
}

/// `10s`, or `250ms` when not whole seconds.
fn duration_text(d: Duration) -> String {
    let ms = duration_ms(d);
    if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// Kind, bounds and choices from the validator's "must be …" text.
fn read_valid(valid: &str) -> (&'static str, Option<f64>, Option<f64>, bool, Vec<Value>) {
    let quoted = || valid.split('"').skip(1).step_by(2).map(Value::from).collect::<Vec<_>>();
    let interval = |text: &str| {
        let exclusive = text.starts_with('(');
        let inner = text.trim_start_matches(['(', '[']).trim_end_matches(']');
        let (lo, hi) = inner.split_once(", ").unwrap_or((inner, ""));
        (lo.trim().parse().ok(), hi.trim().parse().ok(), exclusive)
    };
    if let Some(text) = valid.strip_prefix("a number in ") {
        let (min, max, exclusive) = interval(text);
        ("number", min, max, exclusive, Vec::new())
    } else if let Some(text) = valid.strip_prefix("an integer in ") {
        let (min, max, exclusive) = interval(text);
        ("integer", min, max, exclusive, Vec::new())
    } else if valid.starts_with("a duration") {
        let (lo, hi) = valid.split_once(" between ").map(|(_, r)| r).and_then(|r| r.split_once(" and ")).unzip();
        let secs = |t: Option<&str>| t.and_then(parse_duration).map(|d| d.as_secs_f64());
        ("duration", secs(lo), secs(hi), false, Vec::new())
    } else if valid == "true or false" {
        ("boolean", None, None, false, vec![Value::Bool(true), Value::Bool(false)])
    } else if valid.starts_with("a non-empty list of ") {
        ("list", None, None, false, quoted())
    } else if valid.starts_with("an object") {
        ("object", None, None, false, Vec::new())
    } else if valid.starts_with("a non-empty string") {
        ("string", None, None, false, Vec::new())
    } else if valid.starts_with("map ") {
        ("map", None, None, false, Vec::new())
    } else if valid.starts_with('"') {
        ("string", None, None, false, quoted())
    } else {
        ("unknown", None, None, false, Vec::new())
    }
}

#[cfg(test)]
mod key_table_tests {
    use super::*;

    /// The field names of a struct's `Debug` text (`Name { a: …, b: … }`), at the top level only.
    fn debug_fields(text: &str) -> Vec<String> {
        let (mut depth, mut in_string, mut escaped, mut token, mut fields) = (0, false, false, String::new(), vec![]);
        for c in text.chars() {
            if in_string {
                (in_string, escaped) = (escaped || c != '"', !escaped && c == '\\');
                continue;
            }
            match c {
                '"' => in_string = true,
                '{' | '[' | '(' => depth += 1,
                '}' | ']' | ')' => depth -= 1,
                ':' if depth == 1 && !token.is_empty() => fields.push(std::mem::take(&mut token)),
                c if depth == 1 && (c.is_ascii_alphanumeric() || c == '_') => token.push(c),
                _ => token.clear(),
            }
        }
        fields
    }

    #[test]
    fn every_config_field_has_a_key() {
        let table = key_table();
        let paths: Vec<&str> = table.iter().map(|k| k.path).collect();
        let fields = debug_fields(&format!("{:?}", Config::default()));
        assert!(fields.len() >= 13, "{fields:?}");
        for field in fields.iter().filter(|f| *f != "listen") {
            assert!(
                paths.iter().any(|p| p.rsplit('.').next() == Some(field.as_str())),
                "Config field {field} has no entry in config.rs KEYS"
            );
        }
        for field in debug_fields(&format!("{:?}", Listen::default())) {
            assert!(paths.contains(&format!("listen.{field}").as_str()), "Listen field {field} has no entry");
        }
    }

    #[test]
    fn every_key_is_read_and_described_by_the_validator() {
        let defaults = Config::default();
        for key in key_table() {
            let known = Config::from_value(&at_path(key.path, Value::Null)).map(|p| p.warnings);
            assert_eq!(known, Ok(vec![]), "{} is not a key the validator reads", key.path);
            assert_ne!(key.kind, "unknown", "{}: no kind read from `{}`", key.path, key.valid);
            assert!(!key.meaning.is_empty());
            if key.default_follows.is_none() {
                let parsed = Config::from_value(&at_path(key.path, key.default.clone())).map(|p| p.config);
                assert_eq!(parsed.as_ref(), Ok(&defaults), "{}: default {} is not the default", key.path, key.default);
            }
            if matches!(key.kind, "number" | "integer" | "duration") {
                assert!(key.min.is_some() && key.max.is_some(), "{}: no bounds in `{}`", key.path, key.valid);
            }
        }
    }

    #[test]
    fn bounds_are_the_validators() {
        let accepts = |path: &str, v: Value| Config::from_value(&at_path(path, v)).is_ok();
        for key in key_table() {
            let (Some(min), Some(max)) = (key.min, key.max) else { continue };
            let as_value = |x: f64| match key.kind {
                "duration" => Value::from(x),
                "integer" => Value::from(x as u64),
                _ => Value::from(x),
            };
            assert!(accepts(key.path, as_value(max)), "{} refuses its max {max}", key.path);
            assert_eq!(accepts(key.path, as_value(min)), !key.min_exclusive, "{} at its min {min}", key.path);
            let above = if key.kind == "integer" { max + 1.0 } else { max * 1.001 };
            assert!(!accepts(key.path, as_value(above)), "{} accepts {above} above its max", key.path);
        }
        let k = key_table().into_iter().find(|k| k.path == "threshold.ema_alpha");
        assert_eq!(k.map(|k| (k.min, k.max, k.min_exclusive)), Some((Some(0.0), Some(1.0), true)));
    }
}
