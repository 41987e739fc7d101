//! What a request did: its answer and the counts it adds to Fleet's metrics.

use crate::error::FleetError;
use crate::events::EventsStored;
use crate::reply::Reply;

/// Why something sent to Fleet was not stored, as counted in `ingero_fleet_dropped_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// A data point failed validation.
    InvalidPoint,
    /// A new node arrived past `max_expected_nodes`.
    MaxExpectedNodes,
    /// A new node arrived past `max_nodes_per_cluster`.
    MaxNodesPerCluster,
    /// A push for a new cluster arrived past `max_clusters` (answered 429).
    MaxClusters,
    /// A push with more resources than `max_resources_per_push` (answered 413).
    MaxResourcesPerPush,
    /// A push with more data points than `max_points_per_push` (answered 413).
    MaxPointsPerPush,
    /// A new node whose registry shard is full (see `registry`).
    ShardFull,
    /// A straggler event of a new cluster whose event shard is full (see `events`).
    EventShardFull,
    /// A whole request was refused with this status.
    Refused(u16),
}

impl DropReason {
    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidPoint => "invalid_point",
            Self::MaxExpectedNodes => "max_expected_nodes",
            Self::MaxNodesPerCluster => "max_nodes_per_cluster",
            Self::MaxClusters => "max_clusters",
            Self::MaxResourcesPerPush => "max_resources_per_push",
            Self::MaxPointsPerPush => "max_points_per_push",
            Self::ShardFull => "shard_full",
            Self::EventShardFull => "event_shard_full",
            Self::Refused(400) => "bad_request",
            Self::Refused(405) => "method_not_allowed",
            Self::Refused(413) => "body_too_large",
            Self::Refused(415) => "unsupported_media_type",
            Self::Refused(503) => "busy",
            Self::Refused(_) => "refused",
        }
    }
}

impl DropReason {
    /// How a whole-request refusal is counted.
    pub fn of(error: &FleetError) -> Self {
        match error {
            FleetError::TooManyClusters { .. } => Self::MaxClusters,
            FleetError::TooManyResources { .. } => Self::MaxResourcesPerPush,
            FleetError::TooManyPoints { .. } => Self::MaxPointsPerPush,
            _ => Self::Refused(error.status()),
        }
    }
}

impl EventsStored {
    /// The events not stored, by reason.
    pub fn drops(&self) -> Vec<(DropReason, u64)> {
        [(DropReason::EventShardFull, self.shard_full), (DropReason::Refused(503), self.busy)]
            .into_iter()
            .filter(|(_, n)| *n > 0)
            .collect()
    }
}

/// What a request did, for the front door's counters.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Outcome {
    /// An accepted push (counted in `ingero_fleet_total_pushes`).
    pub accepted_push: bool,
    pub straggler_events: u64,
    pub drops: Vec<(DropReason, u64)>,
}

/// An answer and what it did.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub reply: Reply,
    pub outcome: Outcome,
}
