//! Straggler events agents report (`ingero.node.straggler_event`): counted, and
//! the last few per cluster kept for listings in a fixed set of shared-data keys.

use crate::error::FleetError;
use crate::store::{SharedStore, StoreError, KEY_PREFIX, MAX_CAS_ATTEMPTS};
use serde::{Deserialize, Serialize};
use std::hash::{DefaultHasher, Hash, Hasher};

/// Event shards; a cluster's events live in `hash(cluster) % EVENT_SHARDS`.
const EVENT_SHARDS: u32 = 64;
/// Events kept per cluster.
pub const EVENTS_PER_CLUSTER: usize = 16;
/// Events kept per shard, whatever the clusters.
const EVENTS_PER_SHARD: usize = 256;

/// One straggler event as the agent reported it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StragglerEvent {
    pub cluster: String,
    pub node: String,
    pub event_id: Option<String>,
    pub threshold: Option<f64>,
    pub score: Option<f64>,
    pub dominant_signal: Option<String>,
    pub time_unix_nano: u64,
}

/// The recent-events log over a shared store.
pub struct EventLog<'s, S: ?Sized> {
    store: &'s S,
}

impl<'s, S: SharedStore + ?Sized> EventLog<'s, S> {
    pub fn new(store: &'s S) -> Self {
        Self { store }
    }

    /// The keys to create before serving.
    pub fn keys() -> impl Iterator<Item = String> {
        (0..EVENT_SHARDS).map(shard_key)
    }

    /// Appends events, keeping the newest per cluster and per shard.
    pub fn record(&self, events: &[StragglerEvent]) -> Result<(), FleetError> {
        for event in events {
            self.append(event)?;
        }
        Ok(())
    }

    /// The newest events of one cluster, oldest first.
    pub fn recent(&self, cluster: &str) -> Result<Vec<StragglerEvent>, FleetError> {
        let (events, _) = self.load(&shard_key(shard_of(cluster)))?;
        Ok(events.into_iter().filter(|e| e.cluster == cluster).collect())
    }

    fn append(&self, event: &StragglerEvent) -> Result<(), FleetError> {
        let key = shard_key(shard_of(&event.cluster));
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (mut events, version) = self.load(&key)?;
            events.push(event.clone());
            let of_cluster = events.iter().filter(|e| e.cluster == event.cluster).count();
            if of_cluster > EVENTS_PER_CLUSTER {
                if let Some(oldest) = events.iter().position(|e| e.cluster == event.cluster) {
                    events.remove(oldest);
                }
            }
            if events.len() > EVENTS_PER_SHARD {
                events.remove(0);
            }
            let bytes = postcard::to_allocvec(&events).unwrap_or_default();
            match self.store.set(&key, &bytes, version) {
                Ok(()) => return Ok(()),
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(FleetError::SharedData(e.to_string())),
            }
        }
        Err(FleetError::Busy)
    }

    fn load(&self, key: &str) -> Result<(Vec<StragglerEvent>, Option<u32>), FleetError> {
        match self.store.get(key).map_err(|e| FleetError::SharedData(e.to_string()))? {
            Some((bytes, version)) => Ok((postcard::from_bytes(&bytes).unwrap_or_default(), Some(version))),
            None => Ok((Vec::new(), None)),
        }
    }
}

fn shard_of(cluster: &str) -> u32 {
    let mut h = DefaultHasher::new();
    cluster.hash(&mut h);
    (h.finish() % u64::from(EVENT_SHARDS)) as u32
}

fn shard_key(index: u32) -> String {
    format!("{KEY_PREFIX}events/{index}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    fn event(cluster: &str, n: u64) -> StragglerEvent {
        StragglerEvent {
            cluster: cluster.into(),
            node: format!("n{n}"),
            event_id: Some(format!("e{n}")),
            threshold: Some(0.8),
            score: Some(0.5),
            dominant_signal: Some("throughput".into()),
            time_unix_nano: n,
        }
    }

    #[test]
    fn keeps_the_newest_per_cluster() {
        let store = MemoryStore::default();
        let log = EventLog::new(&store);
        let events: Vec<_> = (0..20).map(|n| event("a", n)).chain([event("b", 99)]).collect();
        assert_eq!(log.record(&events), Ok(()));
        let recent = log.recent("a").unwrap_or_default();
        assert_eq!(recent.len(), EVENTS_PER_CLUSTER);
        assert_eq!(recent.first().map(|e| e.time_unix_nano), Some(4));
        assert_eq!(recent.last().map(|e| e.time_unix_nano), Some(19));
        assert_eq!(log.recent("b").map(|r| r.len()), Ok(1));
        assert_eq!(log.recent("c").map(|r| r.len()), Ok(0));
    }
}
