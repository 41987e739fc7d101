//! One node as Fleet knows it: its validated score from a push, its stored
//! record, and the borrowed view a recompute reads.

use serde::{Deserialize, Serialize};

/// Gauges kept per node for listings; Fleet never scores on them.
pub const DETAIL_GAUGES: [&str; 6] = [
    "ingero.node.throughput_ratio",
    "ingero.node.compute_efficiency",
    "ingero.node.memory_headroom",
    "ingero.node.cpu_availability",
    "ingero.node.degradation_warning",
    "ingero.agent.fleet_reachable",
];

/// What an agent says its node is doing; only `Active` nodes are scored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NodeState {
    Active,
    Calibrating,
    Idle,
}

impl NodeState {
    /// The state an agent names, if it is one of the contract's.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "active" => Some(Self::Active),
            "calibrating" => Some(Self::Calibrating),
            "idle" => Some(Self::Idle),
            _ => None,
        }
    }

    /// The contract's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Calibrating => "calibrating",
            Self::Idle => "idle",
        }
    }
}

/// Descriptive facts about a node, kept for listings.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeDetails {
    pub rank: Option<i64>,
    pub world_size: Option<i64>,
    pub gpu_model: Option<String>,
    pub gpu_count: Option<i64>,
    pub detection_mode: Option<String>,
    /// Latest value of each gauge of [`DETAIL_GAUGES`], in that order.
    pub gauges: [Option<f64>; DETAIL_GAUGES.len()],
}

/// One node's validated health score from a push.
#[derive(Debug, Clone, PartialEq)]
pub struct NodeScore {
    pub cluster: String,
    /// The cgroup path hash; empty for the default cohort.
    pub cohort: String,
    pub node: String,
    pub score: f64,
    pub state: NodeState,
    pub details: NodeDetails,
}

/// A node's latest report as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub cluster: String,
    pub node: String,
    pub cohort: String,
    pub score: f64,
    pub state: NodeState,
    pub last_seen_ms: u64,
    pub details: NodeDetails,
}

impl NodeRecord {
    /// The stored form of a validated score, seen at `now_ms`.
    pub fn new(score: &NodeScore, now_ms: u64) -> Self {
        Self {
            cluster: score.cluster.clone(),
            node: score.node.clone(),
            cohort: score.cohort.clone(),
            score: score.score,
            state: score.state,
            last_seen_ms: now_ms,
            details: score.details.clone(),
        }
    }
}

/// What a recompute reads of a live node, borrowed from its shard.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LiveNode<'a> {
    /// The cluster id as stored: UTF-8 is checked once per cohort, by the tally.
    pub cluster: &'a [u8],
    /// The cohort id as stored.
    pub cohort: &'a [u8],
    /// The record's [`crate::shard::cohort_key`]: the tally groups by it and
    /// reads the ids once per key.
    pub cohort_key: u64,
    pub score: f64,
    pub state: NodeState,
    pub world_size: Option<i64>,
}

impl NodeRecord {
    /// This record as the recompute sees it, stored with `cohort_key`.
    pub fn live_node(&self, cohort_key: u64) -> LiveNode<'_> {
        LiveNode {
            cluster: self.cluster.as_bytes(),
            cohort: self.cohort.as_bytes(),
            cohort_key,
            score: self.score,
            state: self.state,
            world_size: self.details.world_size,
        }
    }
}
