//! Read-only JSON views for operators: clusters with their cohorts, and the
//! nodes of one cluster. Built from the published book and the stored records.

use crate::error::FleetError;
use crate::events::StragglerEvent;
use crate::ingress::query_param;
use crate::node::{NodeRecord, DETAIL_GAUGES};
use crate::threshold::{ThresholdBook, ThresholdSnapshot, STRAGGLER_EPSILON};
use serde::Serialize;
use std::collections::BTreeMap;

/// Page size when the request names none: small, so that a poll costs little
/// (the dashboard asks for this size too and pages through the rest).
pub const DEFAULT_PAGE: usize = 20;
/// Largest page a request may ask for.
pub const MAX_PAGE: usize = 1000;

/// Which slice of a long listing to answer (`?limit=&offset=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Page {
    pub limit: usize,
    pub offset: usize,
}

impl Page {
    /// Reads `limit` and `offset` from a request path.
    pub fn from_path(path: &str) -> Result<Self, FleetError> {
        let number = |name: &'static str, default: usize, range: std::ops::RangeInclusive<usize>| match query_param(
            path, name, 16,
        )? {
            None => Ok(default),
            Some(text) => text.parse().ok().filter(|n| range.contains(n)).ok_or(FleetError::BadQueryValue {
                name,
                expected: if name == "limit" { "an integer in [1, 1000]" } else { "a non-negative integer" },
            }),
        };
        Ok(Self { limit: number("limit", DEFAULT_PAGE, 1..=MAX_PAGE)?, offset: number("offset", 0, 0..=usize::MAX)? })
    }

    fn slice<T>(&self, items: Vec<T>) -> (Vec<T>, usize, Option<usize>) {
        let total = items.len();
        let page: Vec<T> = items.into_iter().skip(self.offset).take(self.limit).collect();
        let next = (self.offset + page.len() < total).then_some(self.offset + page.len());
        (page, total, next)
    }
}

#[derive(Serialize)]
struct ClusterList<'a> {
    computed_at_ms: u64,
    total: usize,
    next_offset: Option<usize>,
    clusters: Vec<ClusterView<'a>>,
}

#[derive(Serialize)]
struct ClusterView<'a> {
    cluster_id: &'a str,
    /// The default cohort's threshold, as the agent reads it.
    quorum_met: bool,
    threshold: Option<f64>,
    active_nodes: u32,
    live_nodes: u32,
    stragglers: u32,
    world_size: u32,
    coverage_low: bool,
    cohorts: Vec<CohortView<'a>>,
    recent_straggler_events: Vec<StragglerEvent>,
}

#[derive(Serialize)]
struct CohortView<'a> {
    cgroup_path_hash: &'a str,
    quorum_met: bool,
    threshold: Option<f64>,
    median: f64,
    mad: f64,
    active_nodes: u32,
    live_nodes: u32,
    stragglers: u32,
    world_size: u32,
    coverage_low: bool,
    /// Active nodes by score, in 20 bins of 0.05 (the last one holds 1.0).
    histogram: &'a [u32],
}

impl<'a> From<&'a ThresholdSnapshot> for CohortView<'a> {
    fn from(s: &'a ThresholdSnapshot) -> Self {
        Self {
            cgroup_path_hash: &s.cohort,
            quorum_met: s.quorum_met(),
            threshold: s.threshold,
            median: s.median,
            mad: s.mad,
            active_nodes: s.active_nodes,
            live_nodes: s.live_nodes,
            stragglers: s.stragglers,
            world_size: s.world_size,
            coverage_low: s.coverage_low,
            histogram: &s.histogram,
        }
    }
}

/// `GET /api/v1/clusters`: every cluster with its cohorts; `events` gives a cluster's recent straggler events.
pub fn clusters(
    book: &ThresholdBook,
    page: Page,
    events: impl Fn(&str) -> Result<Vec<StragglerEvent>, FleetError>,
) -> Result<Vec<u8>, FleetError> {
    let mut by_cluster: BTreeMap<&str, Vec<&ThresholdSnapshot>> = BTreeMap::new();
    for s in &book.cohorts {
        by_cluster.entry(s.cluster.as_str()).or_default().push(s);
    }
    let (page_items, total, next_offset) = page.slice(by_cluster.into_iter().collect());
    let clusters = page_items
        .into_iter()
        .map(|(cluster_id, cohorts)| -> Result<ClusterView<'_>, FleetError> {
            let default = cohorts.iter().find(|s| s.cohort.is_empty());
            let sum = |f: fn(&ThresholdSnapshot) -> u32| cohorts.iter().map(|s| f(s)).sum();
            Ok(ClusterView {
                cluster_id,
                quorum_met: default.is_some_and(|s| s.quorum_met()),
                threshold: default.and_then(|s| s.threshold),
                active_nodes: sum(|s| s.active_nodes),
                live_nodes: sum(|s| s.live_nodes),
                stragglers: sum(|s| s.stragglers),
                world_size: cohorts.iter().map(|s| s.world_size).max().unwrap_or(0),
                coverage_low: cohorts.iter().any(|s| s.coverage_low),
                cohorts: cohorts.iter().map(|s| CohortView::from(*s)).collect(),
                recent_straggler_events: events(cluster_id)?,
            })
        })
        .collect::<Result<_, _>>()?;
    let list = ClusterList { computed_at_ms: book.computed_at_ms, total, next_offset, clusters };
    json(&list)
}

/// A listing's JSON; a failure is an error (500), never an empty body.
fn json(value: &impl Serialize) -> Result<Vec<u8>, FleetError> {
    serde_json::to_vec(value).map_err(|e| FleetError::Render(e.to_string()))
}

#[derive(Serialize)]
struct NodeList<'a> {
    cluster_id: &'a str,
    computed_at_ms: u64,
    total: usize,
    next_offset: Option<usize>,
    nodes: Vec<NodeView>,
}

#[derive(Serialize)]
struct NodeView {
    node_id: String,
    cgroup_path_hash: String,
    state: &'static str,
    score: f64,
    /// Below its cohort's threshold, as the agent would flag itself.
    straggler: bool,
    rank: Option<i64>,
    world_size: Option<i64>,
    gpu_model: Option<String>,
    gpu_count: Option<i64>,
    detection_mode: Option<String>,
    gauges: BTreeMap<&'static str, f64>,
    last_seen_ms: u64,
}

/// `GET /api/v1/nodes?cluster_id=`: the cluster's nodes sorted by id.
/// Only the page's records are copied.
pub fn nodes(cluster: &str, records: &[NodeRecord], book: &ThresholdBook, page: Page) -> Result<Vec<u8>, FleetError> {
    let mut mine: Vec<&NodeRecord> = records.iter().filter(|r| r.cluster == cluster).collect();
    mine.sort_by(|a, b| a.node.cmp(&b.node));
    let (page_items, total, next_offset) = page.slice(mine);
    let nodes = page_items
        .into_iter()
        .cloned()
        .map(|r| {
            let threshold = book.threshold(&r.cluster, &r.cohort);
            let gauges = DETAIL_GAUGES.iter().zip(r.details.gauges).filter_map(|(name, v)| Some((*name, v?))).collect();
            NodeView {
                straggler: threshold.is_some_and(|t| r.score + STRAGGLER_EPSILON < t),
                state: r.state.as_str(),
                score: r.score,
                rank: r.details.rank,
                world_size: r.details.world_size,
                gpu_model: r.details.gpu_model,
                gpu_count: r.details.gpu_count,
                detection_mode: r.details.detection_mode,
                gauges,
                last_seen_ms: r.last_seen_ms,
                node_id: r.node,
                cgroup_path_hash: r.cohort,
            }
        })
        .collect();
    let list = NodeList { cluster_id: cluster, computed_at_ms: book.computed_at_ms, total, next_offset, nodes };
    json(&list)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages() {
        assert_eq!(Page::from_path("/x"), Ok(Page { limit: DEFAULT_PAGE, offset: 0 }));
        assert_eq!(Page::from_path("/x?limit=5&offset=10"), Ok(Page { limit: 5, offset: 10 }));
        assert!(matches!(Page::from_path("/x?limit=0"), Err(FleetError::BadQueryValue { name: "limit", .. })));
        assert!(matches!(Page::from_path("/x?offset=-1"), Err(FleetError::BadQueryValue { name: "offset", .. })));
        let page = Page { limit: 2, offset: 1 };
        assert_eq!(page.slice(vec![1, 2, 3, 4]), (vec![2, 3], 4, Some(3)));
        assert_eq!(Page { limit: 2, offset: 3 }.slice(vec![1, 2, 3, 4]), (vec![4], 4, None));
    }
}
