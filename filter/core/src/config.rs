//! Fleet configuration: the contract's keys (§6), parsed leniently, validated strictly.
//!
//! The same JSON document configures every front door: the wasm plugin
//! configuration, the dynamic module's filter config and the standalone
//! server's YAML file (converted to JSON).

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
    /// Listen addresses (used by the standalone server only).
    pub listen: Listen,
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

    /// The push interval in milliseconds (never zero).
    pub fn push_interval_ms(&self) -> u64 {
        duration_ms(self.push_interval).max(1)
    }

    /// Parses and validates a JSON configuration; empty input means defaults.
    pub fn from_json(bytes: &[u8]) -> Result<Parsed, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Parsed { config: Config::default(), warnings: Vec::new() });
        }
        let value: Value = serde_json::from_slice(bytes)
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

    fn string(&mut self, map: &Map<String, Value>, path: &str, default: String) -> String {
        match Self::leaf(map, path) {
            None => default,
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(value) => {
                self.problems.push(format!("{path} = {value} must be a non-empty string such as \"0.0.0.0:8080\""));
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
