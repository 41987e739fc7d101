//! From a decoded OTLP request to the node scores it reports (contract §1, §8).
//!
//! Every data point is validated on its own: a bad point is rejected and
//! counted in `partialSuccess`, and never reaches the registry.

use crate::config::Config;
use crate::error::FleetError;
use crate::events::StragglerEvent;
use crate::node::{NodeDetails, NodeScore, NodeState, DETAIL_GAUGES};
use crate::otlp::{attribute, AnyValue, ExportRequest, KeyValue, Metric, NumberPoint, ResourceMetrics};
use std::collections::BTreeMap;

pub const HEALTH_SCORE: &str = "ingero.node.health_score";
pub const STRAGGLER_EVENT: &str = "ingero.node.straggler_event";
const NODE_INFO: &str = "ingero.node.info";
const DETECTION_MODE: &str = "ingero.agent.detection_mode";
const WORLD_SIZE_GAUGE: &str = "ingero.node.world_size";
/// Everything a push reported, after validation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PushBatch {
    pub scores: Vec<NodeScore>,
    /// Data points refused, each for a reason; the first reason is reported.
    pub rejected: u64,
    pub rejection: Option<String>,
    pub straggler_events: Vec<StragglerEvent>,
}

impl PushBatch {
    fn reject(&mut self, count: usize, why: impl FnOnce() -> String) {
        if count == 0 {
            return;
        }
        self.rejected += count as u64;
        if self.rejection.is_none() {
            self.rejection = Some(why());
        }
    }
}

/// Refuses a push past `max_resources_per_push` or `max_points_per_push`
/// before any of it is read into scores: the work a push may cost is bounded.
pub fn check_size(request: &ExportRequest, config: &Config) -> Result<(), FleetError> {
    if request.resource_metrics.len() > config.max_resources_per_push {
        return Err(FleetError::TooManyResources { limit: config.max_resources_per_push });
    }
    if request.point_count() > config.max_points_per_push {
        return Err(FleetError::TooManyPoints { limit: config.max_points_per_push });
    }
    Ok(())
}

/// Validates a request's points. `query_cluster` (already checked) wins over the
/// resource attribute; the caller has ensured that one of the two exists.
/// A node repeated within one push (in several points or resources) is stored
/// once: its newest valid point wins, the later one on a tie. Repeats are
/// found in an ordered map: O(log n) id comparisons per resource, whatever the ids.
pub fn extract(request: ExportRequest, query_cluster: Option<&str>, config: &Config) -> PushBatch {
    let mut batch = PushBatch::default();
    let mut newest: Vec<(u64, NodeScore)> = Vec::new();
    // By cluster, then node: the slot in `newest`. An ordered map costs O(log n)
    // comparisons per resource whatever the ids (a hash map in wasm32 has fixed keys).
    let mut slots: BTreeMap<String, BTreeMap<String, usize>> = BTreeMap::new();
    for resource in request.resource_metrics {
        let Some((time, score)) = extract_resource(resource, query_cluster, config, &mut batch) else { continue };
        let nodes = match slots.get_mut(&score.cluster) {
            Some(nodes) => nodes,
            None => slots.entry(score.cluster.clone()).or_default(),
        };
        match nodes.get(&score.node) {
            Some(&at) if newest[at].0 <= time => newest[at] = (time, score),
            Some(_) => {}
            None => {
                nodes.insert(score.node.clone(), newest.len());
                newest.push((time, score));
            }
        }
    }
    batch.scores = newest.into_iter().map(|(_, s)| s).collect();
    batch
}

/// Whether the push names its cluster: in the query, or on every resource.
pub fn names_a_cluster(request: &ExportRequest, query_cluster: Option<&str>) -> bool {
    query_cluster.is_some()
        || (!request.resource_metrics.is_empty()
            && request.resource_metrics.iter().all(|r| resource_cluster(&r.attributes).is_some()))
}

fn resource_cluster<'v>(attributes: &'v [KeyValue<'_>]) -> Option<&'v str> {
    attribute(attributes, "ingero.cluster.id").and_then(AnyValue::as_str).filter(|s| !s.is_empty())
}

/// The resource's newest valid score and its time; rejections go to `batch`.
fn extract_resource(
    resource: ResourceMetrics,
    query_cluster: Option<&str>,
    config: &Config,
    batch: &mut PushBatch,
) -> Option<(u64, NodeScore)> {
    let attrs = &resource.attributes;
    let score_points: usize = resource.metrics.iter().filter(|m| m.name == HEALTH_SCORE).map(|m| m.points.len()).sum();

    let Some(cluster) = query_cluster.or_else(|| resource_cluster(attrs)) else {
        batch.reject(score_points, || "resource has no cluster_id".into());
        return None;
    };
    if cluster.len() > config.max_id_bytes {
        batch.reject(score_points, || {
            format!("ingero.cluster.id is longer than max_id_bytes ({})", config.max_id_bytes)
        });
        return None;
    }
    let node = attribute(attrs, "ingero.node.id").and_then(AnyValue::as_str).unwrap_or("");
    if node.is_empty() {
        batch.reject(score_points, || "data point's resource has no ingero.node.id".into());
        return None;
    }
    if node.len() > config.max_id_bytes {
        batch.reject(score_points, || format!("ingero.node.id is longer than max_id_bytes ({})", config.max_id_bytes));
        return None;
    }

    batch.straggler_events.extend(straggler_events(cluster, node, &resource.metrics, config.max_id_bytes));
    let details = details(attrs, &resource.metrics, config.max_id_bytes);
    // The newest valid point wins when a push repeats a node.
    let mut best: Option<(u64, NodeScore)> = None;
    for point in resource.metrics.iter().filter(|m| m.name == HEALTH_SCORE).flat_map(|m| &m.points) {
        let score = match point.value.as_f64() {
            Ok(v) if v.is_finite() && (0.0..=1.0).contains(&v) => v,
            Ok(v) => {
                batch.reject(1, || format!("node {node}: health score {v} is not a finite number in [0, 1]"));
                continue;
            }
            Err(what) => {
                batch.reject(1, || format!("node {node}: health score is {what}, not a number"));
                continue;
            }
        };
        let state = match attribute(&point.attributes, "ingero.node.state") {
            None => NodeState::Active,
            Some(value) => match value.as_str().and_then(NodeState::parse) {
                Some(state) => state,
                None => {
                    batch.reject(1, || format!("node {node}: ingero.node.state must be active, calibrating or idle"));
                    continue;
                }
            },
        };
        let cohort = attribute(&point.attributes, "ingero.cgroup_path_hash").and_then(AnyValue::as_str).unwrap_or("");
        if cohort.len() > config.max_id_bytes {
            batch.reject(1, || format!("node {node}: ingero.cgroup_path_hash is longer than max_id_bytes"));
            continue;
        }
        if best.as_ref().is_some_and(|(t, _)| *t > point.time_unix_nano) {
            continue;
        }
        let score = NodeScore {
            cluster: cluster.to_owned(),
            cohort: cohort.to_owned(),
            node: node.to_owned(),
            score,
            state,
            details: details.clone(),
        };
        best = Some((point.time_unix_nano, score));
    }
    best
}

fn straggler_events(cluster: &str, node: &str, metrics: &[Metric], max_len: usize) -> Vec<StragglerEvent> {
    let text = |p: &NumberPoint, key| {
        attribute(&p.attributes, key).and_then(AnyValue::as_str).map(|s| s.chars().take(max_len).collect())
    };
    let number = |p: &NumberPoint, key| {
        attribute(&p.attributes, key)
            .and_then(|v| match v {
                AnyValue::Double(d) => Some(*d),
                AnyValue::Int(i) => Some(*i as f64),
                AnyValue::String(s) => s.trim().parse().ok(),
                _ => None,
            })
            .filter(|v: &f64| v.is_finite())
    };
    metrics
        .iter()
        .filter(|m| m.name == STRAGGLER_EVENT)
        .flat_map(|m| &m.points)
        .map(|p| StragglerEvent {
            cluster: cluster.to_owned(),
            node: node.to_owned(),
            event_id: text(p, "ingero.event.id"),
            threshold: number(p, "threshold"),
            score: number(p, "score"),
            dominant_signal: text(p, "dominant_signal"),
            time_unix_nano: p.time_unix_nano,
        })
        .collect()
}

/// A node's descriptive facts; stored text is cut to `max_len` characters so a
/// record's size stays bounded whatever the agent sends.
fn details(attrs: &[KeyValue], metrics: &[Metric], max_len: usize) -> NodeDetails {
    let int = |attrs: &[KeyValue], key| attribute(attrs, key).and_then(AnyValue::as_i64);
    let text = |attrs: &[KeyValue], key| {
        attribute(attrs, key).and_then(AnyValue::as_str).map(|s| s.chars().take(max_len).collect::<String>())
    };
    let mut d = NodeDetails {
        rank: int(attrs, "ingero.node.rank"),
        world_size: int(attrs, "ingero.world_size"),
        ..NodeDetails::default()
    };
    for metric in metrics {
        let Some(point) = metric.points.iter().max_by_key(|p| p.time_unix_nano) else { continue };
        let value = point.value.as_f64().ok().filter(|v| v.is_finite());
        match metric.name.as_ref() {
            NODE_INFO => {
                d.gpu_model = text(&point.attributes, "gpu_model").or(d.gpu_model);
                d.gpu_count = int(&point.attributes, "gpu_count").or(d.gpu_count);
            }
            DETECTION_MODE => {
                d.detection_mode =
                    text(&point.attributes, "ingero.detection_mode").or_else(|| text(&point.attributes, "mode"));
            }
            WORLD_SIZE_GAUGE => d.world_size = value.map(|v| v as i64).or(d.world_size),
            name => {
                if let Some(slot) = DETAIL_GAUGES.iter().position(|g| *g == name) {
                    d.gauges[slot] = value.or(d.gauges[slot]);
                }
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_MAX_ID_BYTES;
    use crate::otlp::tests::agent_json;
    use crate::otlp::BodyFormat;

    fn batch(json: &str, query: Option<&str>) -> PushBatch {
        let req = ExportRequest::decode(BodyFormat::Json, json.as_bytes()).unwrap();
        extract(req, query, &Config::default())
    }

    #[test]
    fn agent_push_gives_one_score_with_details() {
        let b = batch(&agent_json("gpu-7", "0.93"), None);
        assert_eq!(b.rejected, 0);
        assert_eq!(b.scores.len(), 1);
        let s = &b.scores[0];
        assert_eq!((s.cluster.as_str(), s.node.as_str(), s.cohort.as_str()), ("c1", "gpu-7", ""));
        assert_eq!((s.score, s.state), (0.93, NodeState::Active));
        assert_eq!((s.details.rank, s.details.world_size), (Some(3), Some(8)));
        assert_eq!(s.details.gauges, [Some(0.97), None, None, None, None, None]);
    }

    #[test]
    fn query_cluster_wins_over_the_attribute() {
        let b = batch(&agent_json("n", "0.5"), Some("from-query"));
        assert_eq!(b.scores[0].cluster, "from-query");
    }

    #[test]
    fn bad_scores_are_rejected_per_point() {
        for raw in ["\"NaN\"", "\"Infinity\"", "\"-Infinity\"", "1.5", "-0.1", "\"abc\"", "true", "null", "{}", "[]"] {
            let b = batch(&agent_json("n", raw), None);
            assert_eq!((b.scores.len(), b.rejected), (0, 1), "{raw}");
            assert!(b.rejection.as_deref().unwrap_or("").contains("node n: health score"), "{raw}");
        }
        assert_eq!(batch(&agent_json("n", "\"0.93\""), None).scores[0].score, 0.93);
        assert_eq!(batch(&agent_json("n", "1"), None).scores[0].score, 1.0);
    }

    #[test]
    fn bad_ids_and_states_are_rejected() {
        assert_eq!(batch(&agent_json("", "0.5"), None).rejected, 1);
        assert_eq!(batch(&agent_json(&"x".repeat(300), "0.5"), None).rejected, 1);
        let sleepy = agent_json("n", "0.5").replace("\"active\"", "\"asleep\"");
        let b = batch(&sleepy, None);
        assert_eq!((b.scores.len(), b.rejected), (0, 1));
        assert!(b.rejection.unwrap().contains("ingero.node.state"));
        let idle = agent_json("n", "0.5").replace("\"active\"", "\"idle\"");
        assert_eq!(batch(&idle, None).scores[0].state, NodeState::Idle);
    }

    #[test]
    fn one_bad_point_does_not_spoil_the_good_one() {
        let two = agent_json("n", "0.4").replace(
            r#""dataPoints":[{"timeUnixNano":"1700000000000000000","#,
            r#""dataPoints":[{"timeUnixNano":"1","asDouble":"bad"},{"timeUnixNano":"1700000000000000000","#,
        );
        let b = batch(&two, None);
        assert_eq!((b.scores.len(), b.rejected), (1, 1));
        assert_eq!(b.scores[0].score, 0.4);
    }

    #[test]
    fn the_newest_of_repeated_points_wins() {
        let two = agent_json("n", "0.4").replace(
            r#""dataPoints":[{"timeUnixNano":"1700000000000000000","#,
            r#""dataPoints":[{"timeUnixNano":"1800000000000000000","asDouble":0.7},{"timeUnixNano":"1700000000000000000","#,
        );
        let b = batch(&two, None);
        assert_eq!(b.scores.len(), 1);
        assert_eq!(b.scores[0].score, 0.7);
    }

    #[test]
    fn a_node_repeated_across_resources_is_stored_once_newest_first() {
        let one = |score: &str, time: &str| {
            let json = agent_json("n", score).replace("1700000000000000000", time);
            let inner = json.strip_prefix(r#"{"resourceMetrics":["#).and_then(|j| j.strip_suffix("]}"));
            inner.unwrap().to_owned()
        };
        let body = format!(r#"{{"resourceMetrics":[{},{},{}]}}"#, one("0.2", "3"), one("0.7", "9"), one("0.4", "5"));
        let b = batch(&body, None);
        assert_eq!((b.scores.len(), b.rejected), (1, 0));
        assert_eq!(b.scores[0].score, 0.7);
    }

    #[test]
    fn stored_text_is_cut_to_max_id_bytes() {
        let long = agent_json("n", "0.5").replace(
            r#""ingero.node.throughput_ratio","#,
            &format!(
                r#""ingero.node.info","gauge":{{"dataPoints":[{{"asDouble":1,"attributes":[{{"key":"gpu_model","value":{{"stringValue":"{}"}}}}]}}]}}}},{{"name":"x","#,
                "H".repeat(10_000)
            ),
        );
        let b = batch(&long, None);
        assert_eq!(b.scores[0].details.gpu_model.as_ref().map(String::len), Some(DEFAULT_MAX_ID_BYTES));
    }

    #[test]
    fn cluster_presence() {
        fn req(j: &str) -> ExportRequest<'_> {
            ExportRequest::decode(BodyFormat::Json, j.as_bytes()).unwrap()
        }
        assert!(!names_a_cluster(&req("{\"resourceMetrics\":[]}"), None));
        assert!(names_a_cluster(&req("{\"resourceMetrics\":[]}"), Some("c")));
        let agent = agent_json("n", "0.5");
        assert!(names_a_cluster(&req(&agent), None));
        let no_attr = agent_json("n", "0.5").replace("ingero.cluster.id", "other");
        assert!(!names_a_cluster(&req(&no_attr), None));
    }

    /// The real Collector's default batch (measured: 8 192 points = 1 024 agent
    /// resources of 8 points, docs/limits.md) fits the default caps, and so does
    /// a batch of 8 192 one-point resources; one more resource or point than a cap is refused.
    #[test]
    fn default_caps_fit_a_collector_batch() {
        fn request(resources: usize, points_each: usize) -> ExportRequest<'static> {
            let metric = Metric { name: HEALTH_SCORE.into(), points: vec![NumberPoint::default(); points_each] };
            let resource = ResourceMetrics { attributes: Vec::new(), metrics: vec![metric] };
            ExportRequest { resource_metrics: vec![resource; resources] }
        }
        let config = Config::default();
        assert_eq!(check_size(&request(1_024, 8), &config), Ok(()));
        assert_eq!(check_size(&request(8_192, 1), &config), Ok(()));
        let over = config.max_resources_per_push + 1;
        assert_eq!(
            check_size(&request(over, 0), &config),
            Err(FleetError::TooManyResources { limit: config.max_resources_per_push })
        );
        assert_eq!(
            check_size(&request(1, config.max_points_per_push + 1), &config),
            Err(FleetError::TooManyPoints { limit: config.max_points_per_push })
        );
    }
}
