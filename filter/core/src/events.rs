//! Straggler events agents report (`ingero.node.straggler_event`): counted, and
//! the last [`EVENTS_PER_CLUSTER`] of each cluster kept for listings.
//!
//! A cluster's events are one ring in the event shard its keyed hash picks
//! ([`HashSeed`]): a cluster's events only ever evict its own older ones, a
//! shard holds at most [`CLUSTERS_PER_SHARD`] rings (a new cluster past it is
//! refused and counted, never evicting another's history), and all the events
//! a push brings to one shard are written in one compare-and-swap, so a push's
//! events are stored whole or not at all. Storing is idempotent (an event
//! already in its ring is not added twice), so a client's retry is harmless.

use crate::error::FleetError;
use crate::seed::HashSeed;
use crate::store::{decode, encode, update, SharedStore, StoreError, Update, KEY_PREFIX};
use serde::{Deserialize, Serialize};
use std::cell::OnceCell;
use std::collections::BTreeMap;

/// Event shards; a cluster's ring lives in `hash(cluster) % EVENT_SHARDS`.
const EVENT_SHARDS: u32 = 256;
/// Events kept per cluster: exactly the newest this many.
pub const EVENTS_PER_CLUSTER: usize = 16;
/// Clusters with a ring per shard: 256 × 32 = 8 192 clusters in all, at
/// least 8 × the default `max_clusters`, while a shard rewrite stays bounded.
pub const CLUSTERS_PER_SHARD: usize = 32;

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

/// What became of a push's events.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EventsStored {
    /// Events written (or already stored by an earlier try of the same push).
    pub stored: u64,
    /// Events of new clusters refused because their shard was full (`event_shard_full`).
    pub shard_full: u64,
    /// Events not stored because the shard kept changing under the retries (`busy`).
    pub busy: u64,
    /// The first reason, for `partialSuccess`.
    pub message: Option<String>,
}

/// One cluster's newest events, oldest first.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Ring {
    cluster: String,
    events: Vec<StragglerEvent>,
}

/// The rings of one shard, by cluster id.
type Shard = Vec<Ring>;

/// The recent-events log over a shared store.
pub struct EventLog<'s, S: ?Sized> {
    store: &'s S,
    seed: OnceCell<HashSeed>,
}

impl<'s, S: SharedStore + ?Sized> EventLog<'s, S> {
    pub fn new(store: &'s S) -> Self {
        Self { store, seed: OnceCell::new() }
    }

    /// The keys to create before serving.
    pub fn keys() -> impl Iterator<Item = String> {
        (0..EVENT_SHARDS).map(shard_key)
    }

    /// Adds a push's events to their clusters' rings: one write per shard touched.
    /// Contention past the retry budget drops that shard's events (counted
    /// `busy`) instead of failing a push whose scores are already stored.
    pub fn record(&self, events: &[StragglerEvent]) -> Result<EventsStored, FleetError> {
        let mut outcome = EventsStored::default();
        if events.is_empty() {
            return Ok(outcome);
        }
        let seed = self.seed()?;
        let mut by_shard: BTreeMap<u32, Vec<&StragglerEvent>> = BTreeMap::new();
        for event in events {
            by_shard.entry(shard_of(&seed, &event.cluster)).or_default().push(event);
        }
        for (shard, events) in by_shard {
            let key = shard_key(shard);
            let written = update(self.store, &key, |bytes| {
                let mut rings: Shard = decode(&key, bytes.unwrap_or(&[]))?;
                let (added, refused) = add_to_rings(&mut rings, &events);
                let bytes = if added > 0 { Some(encode(&key, &rings)?) } else { None };
                Ok::<_, StoreError>(match bytes {
                    Some(bytes) => Update::Write(bytes, refused),
                    None => Update::Keep(refused),
                })
            });
            let n = events.len() as u64;
            match written {
                Ok(0) => outcome.stored += n,
                Ok(refused) => {
                    outcome.stored += n - refused;
                    outcome.shard_full += refused;
                    outcome.message.get_or_insert_with(|| {
                        format!("straggler events of a new cluster refused: its event shard holds {CLUSTERS_PER_SHARD} clusters")
                    });
                }
                Err(StoreError::Contended) => {
                    outcome.busy += n;
                    outcome.message.get_or_insert_with(|| "straggler events not stored: state busy, retry".into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok(outcome)
    }

    /// The newest events of one cluster, oldest first.
    pub fn recent(&self, cluster: &str) -> Result<Vec<StragglerEvent>, FleetError> {
        let key = shard_key(shard_of(&self.seed()?, cluster));
        let Some((bytes, _)) = self.store.get(&key)? else { return Ok(Vec::new()) };
        let rings: Shard = decode(&key, &bytes)?;
        Ok(rings.into_iter().find(|r| r.cluster == cluster).map(|r| r.events).unwrap_or_default())
    }

    fn seed(&self) -> Result<HashSeed, FleetError> {
        if let Some(seed) = self.seed.get() {
            return Ok(*seed);
        }
        let seed = HashSeed::load(self.store)?;
        Ok(*self.seed.get_or_init(|| seed))
    }
}

/// Adds events to their rings, keeping each ring's newest [`EVENTS_PER_CLUSTER`]
/// by time (then by arrival). Returns (events added, events refused because
/// their cluster has no ring and the shard is full).
fn add_to_rings(rings: &mut Shard, events: &[&StragglerEvent]) -> (u64, u64) {
    let (mut added, mut refused) = (0, 0);
    for event in events {
        let at = match rings.iter().position(|r| r.cluster == event.cluster) {
            Some(at) => at,
            None if rings.len() >= CLUSTERS_PER_SHARD => {
                refused += 1;
                continue;
            }
            None => {
                rings.push(Ring { cluster: event.cluster.clone(), events: Vec::new() });
                rings.len() - 1
            }
        };
        let ring = &mut rings[at].events;
        if ring.iter().any(|e| e == *event) {
            continue; // a retried push: already stored
        }
        // Oldest first; an event older than the whole full ring is not among the newest.
        let slot = ring.partition_point(|e| e.time_unix_nano <= event.time_unix_nano);
        if ring.len() >= EVENTS_PER_CLUSTER && slot == 0 {
            continue;
        }
        ring.insert(slot, (*event).clone());
        if ring.len() > EVENTS_PER_CLUSTER {
            ring.remove(0);
        }
        added += 1;
    }
    (added, refused)
}

fn shard_of(seed: &HashSeed, cluster: &str) -> u32 {
    (seed.hash(&["events", cluster]) % u64::from(EVENT_SHARDS)) as u32
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

    fn seeded() -> MemoryStore {
        let store = MemoryStore::default();
        HashSeed::establish(&store, [9; 16]).unwrap();
        store
    }

    fn times(log: &EventLog<'_, MemoryStore>, cluster: &str) -> Vec<u64> {
        log.recent(cluster).unwrap().iter().map(|e| e.time_unix_nano).collect()
    }

    #[test]
    fn keeps_exactly_the_newest_per_cluster() {
        let store = seeded();
        let log = EventLog::new(&store);
        let events: Vec<_> = (0..20).map(|n| event("a", n)).chain([event("b", 99)]).collect();
        assert_eq!(log.record(&events).map(|o| o.stored), Ok(21));
        assert_eq!(times(&log, "a"), (4..20).collect::<Vec<_>>());
        assert_eq!(times(&log, "b"), [99]);
        assert_eq!(log.recent("c").map(|r| r.len()), Ok(0));
        // Out of order, late and repeated events: still the newest 16, each once.
        assert!(log.record(&[event("a", 2), event("a", 25), event("a", 25), event("a", 10)]).is_ok());
        assert_eq!(times(&log, "a"), (5..20).chain([25]).collect::<Vec<_>>());
    }

    #[test]
    fn a_flood_on_one_cluster_never_erases_another() {
        let store = seeded();
        let log = EventLog::new(&store);
        let real: Vec<_> = (0..1000).map(|c| event(&format!("real-{c}"), 1)).collect();
        assert_eq!(log.record(&real).map(|o| o.stored), Ok(1000));
        let junk: Vec<_> = (0..32_000).map(|n| event("junk", n)).collect();
        assert_eq!(log.record(&junk).map(|o| o.stored), Ok(32_000));
        assert!((0..1000).all(|c| times(&log, &format!("real-{c}")) == [1]));
        assert_eq!(times(&log, "junk").len(), EVENTS_PER_CLUSTER);
    }

    #[test]
    fn a_full_shard_refuses_new_clusters_and_counts_them() {
        let store = seeded();
        let log = EventLog::new(&store);
        let seed = log.seed().unwrap();
        let same_shard: Vec<String> =
            (0..).map(|i| format!("c{i}")).filter(|c| shard_of(&seed, c) == 3).take(CLUSTERS_PER_SHARD + 2).collect();
        let events: Vec<_> = same_shard.iter().map(|c| event(c, 1)).collect();
        let outcome = log.record(&events).unwrap();
        assert_eq!(outcome.stored, CLUSTERS_PER_SHARD as u64);
        assert_eq!((outcome.shard_full, outcome.busy), (2, 0));
        assert!(times(&log, &same_shard[0]) == [1] && times(&log, &same_shard[CLUSTERS_PER_SHARD]).is_empty());
    }

    #[test]
    fn concurrent_pushes_are_never_half_applied() {
        let store = std::sync::Arc::new(seeded());
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let log = EventLog::new(&*store);
                    (0..200u64)
                        .map(|n| (t * 1000 + n, log.record(&[event("hot", t * 1000 + n)]).unwrap()))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        // Each event is stored or, when the CAS attempts run out under contention, reported busy: never both, never lost.
        let mut stored = Vec::new();
        for t in threads {
            for (time, outcome) in t.join().unwrap() {
                assert_eq!(outcome.stored + outcome.busy, 1, "event {time}: {outcome:?}");
                if outcome.stored == 1 {
                    stored.push(time);
                }
            }
        }
        assert!(stored.len() >= 200, "most events are stored: {}", stored.len());
        stored.sort_unstable();
        let newest: Vec<u64> = stored[stored.len() - 16..].to_vec();
        assert_eq!(times(&EventLog::new(&*store), "hot"), newest, "the ring keeps exactly the newest 16 stored");
    }
}
