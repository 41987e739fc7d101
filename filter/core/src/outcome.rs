//! What a request did: its answer and the counts it adds to Fleet's metrics.

use crate::error::FleetError;
use crate::events::EventsStored;
use crate::reply::Reply;
use crate::store::StoreError;

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
    /// A malformed request (answered 400).
    BadRequest,
    /// A wrong method (answered 405).
    MethodNotAllowed,
    /// A body or a point count past its limit (answered 413).
    BodyTooLarge,
    /// A content type or encoding Fleet does not read (answered 415).
    UnsupportedMediaType,
    /// Shared state or the host was unavailable (answered 503).
    Busy,
    /// Observe mode: the upstream did not accept the push, so its scores were not stored.
    UpstreamRefused,
    /// The proxy is set up so the filter never receives the body (answered 500).
    HostConfig,
    /// A push without an identity allowed to push its cluster (answered 403).
    Forbidden,
    /// A push with more resources than `max_resources_per_push` (answered 413).
    MaxResourcesPerPush,
    /// A push with more data points than `max_points_per_push` (answered 413).
    MaxPointsPerPush,
    /// A new node whose registry shard is full (see `registry`).
    ShardFull,
    /// A straggler event of a new cluster whose event shard is full (see `events`).
    EventShardFull,
    /// An answer that could not be rendered (answered 500).
    Internal,
}

impl DropReason {
    /// Every reason, in exposition order.
    pub const ALL: [Self; 17] = [
        Self::InvalidPoint,
        Self::MaxExpectedNodes,
        Self::MaxNodesPerCluster,
        Self::MaxClusters,
        Self::BadRequest,
        Self::MethodNotAllowed,
        Self::BodyTooLarge,
        Self::UnsupportedMediaType,
        Self::Busy,
        Self::UpstreamRefused,
        Self::HostConfig,
        Self::Forbidden,
        Self::MaxResourcesPerPush,
        Self::MaxPointsPerPush,
        Self::ShardFull,
        Self::EventShardFull,
        Self::Internal,
    ];

    /// The reason a whole request refused with `error` is counted under.
    pub fn of(error: &FleetError) -> Self {
        match error {
            FleetError::TooManyClusters { .. } => Self::MaxClusters,
            FleetError::TooManyResources { .. } => Self::MaxResourcesPerPush,
            FleetError::TooManyPoints { .. } => Self::MaxPointsPerPush,
            FleetError::Render(_) => Self::Internal,
            _ => match error.status() {
                405 => Self::MethodNotAllowed,
                413 => Self::BodyTooLarge,
                415 => Self::UnsupportedMediaType,
                503 => Self::Busy,
                500 => Self::HostConfig,
                403 => Self::Forbidden,
                _ => Self::BadRequest,
            },
        }
    }

    /// The `reason` label value.
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidPoint => "invalid_point",
            Self::MaxExpectedNodes => "max_expected_nodes",
            Self::MaxNodesPerCluster => "max_nodes_per_cluster",
            Self::MaxClusters => "max_clusters",
            Self::BadRequest => "bad_request",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::BodyTooLarge => "body_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::Busy => "busy",
            Self::UpstreamRefused => "upstream_refused",
            Self::HostConfig => "host_config",
            Self::Forbidden => "forbidden",
            Self::MaxResourcesPerPush => "max_resources_per_push",
            Self::MaxPointsPerPush => "max_points_per_push",
            Self::ShardFull => "shard_full",
            Self::EventShardFull => "event_shard_full",
            Self::Internal => "internal",
        }
    }
}

/// How a shared-data failure answers a request (written here, above both the
/// error and the store modules, so neither imports the other).
impl From<StoreError> for FleetError {
    /// Contention is load (503 with Retry-After, the client retries); anything
    /// else is the host's or the stored data's failure (503 as well, logged).
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::CasMismatch | StoreError::Contended => FleetError::Busy,
            other => FleetError::SharedData(other.to_string()),
        }
    }
}

impl EventsStored {
    /// The events not stored, by reason.
    pub fn drops(&self) -> Vec<(DropReason, u64)> {
        [(DropReason::EventShardFull, self.shard_full), (DropReason::Busy, self.busy)]
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
    /// Straggler events stored.
    pub straggler_events: u64,
    /// What was not stored, and why.
    pub drops: Vec<(DropReason, u64)>,
}

impl Outcome {
    /// `count` things dropped for `reason`.
    pub fn dropped(reason: DropReason, count: u64) -> Self {
        Self { drops: vec![(reason, count)], ..Self::default() }
    }

    /// A whole request refused with `error`.
    pub fn refused(error: &FleetError) -> Self {
        Self::dropped(DropReason::of(error), 1)
    }
}

/// An answer and what it did.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// What the client is sent.
    pub reply: Reply,
    /// What the counters record.
    pub outcome: Outcome,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_answer_busy_or_unavailable() {
        assert_eq!(FleetError::from(StoreError::Contended), FleetError::Busy);
        assert_eq!(FleetError::from(StoreError::CasMismatch), FleetError::Busy);
        let host = FleetError::from(StoreError::Host("down".into()));
        assert_eq!((host.status(), DropReason::of(&host)), (503, DropReason::Busy));
        let render = FleetError::Render("x".into());
        assert_eq!((render.status(), DropReason::of(&render)), (500, DropReason::Internal));
        assert_eq!(DropReason::of(&FleetError::TooManyResources { limit: 1 }), DropReason::MaxResourcesPerPush);
    }
}
