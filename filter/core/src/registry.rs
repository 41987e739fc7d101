//! Every tracked node's latest score, kept in a fixed set of shared-data shards.
//!
//! A node lives in shard `hash(cluster, node) % shards`; a push rewrites only
//! its node's shard (a few records) with CAS, so the cost of a push does not
//! grow with the cluster. The shard count is fixed by `max_expected_nodes`, so
//! the set of keys is bounded no matter which ids arrive. A counter key holds
//! the number of tracked nodes and enforces the cap.

use crate::error::FleetError;
use crate::push::{NodeDetails, NodeScore, NodeState};
use crate::store::{SharedStore, StoreError};
use serde::{Deserialize, Serialize};
use std::hash::{DefaultHasher, Hash, Hasher};

/// Prefix of every shared-data key, so other plugins in one VM id never collide.
pub const KEY_PREFIX: &str = "ingero_fleet/v1/";
/// Attempts at one compare-and-swap before giving up with `Busy`.
const MAX_CAS_ATTEMPTS: usize = 32;
/// Target records per shard at `max_expected_nodes`.
const NODES_PER_SHARD: u32 = 8;

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
    fn new(score: &NodeScore, now_ms: u64) -> Self {
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

    fn is(&self, score: &NodeScore) -> bool {
        self.node == score.node && self.cluster == score.cluster
    }
}

/// What happened to a reported score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Updated,
    Inserted,
    /// A new node past `max_expected_nodes`; nothing was stored.
    OverCapacity,
}

/// The node registry over a shared store.
pub struct Registry<'s, S: ?Sized> {
    store: &'s S,
    shards: u32,
}

impl<'s, S: SharedStore + ?Sized> Registry<'s, S> {
    /// The registry sized for `max_expected_nodes`.
    pub fn new(store: &'s S, max_expected_nodes: u32) -> Self {
        let shards = (max_expected_nodes / NODES_PER_SHARD).clamp(16, 1 << 14).next_power_of_two();
        Self { store, shards }
    }

    /// Number of shard keys.
    pub fn shard_count(&self) -> u32 {
        self.shards
    }

    /// Creates every missing key, empty. Run before serving: writes to missing
    /// keys are not CAS-protected, so they must never race with real data.
    pub fn init(&self) -> Result<(), StoreError> {
        for key in (0..self.shards).map(shard_key).chain([count_key()]) {
            if self.store.get(&key)?.is_none() {
                self.store.set(&key, &[], None)?;
            }
        }
        Ok(())
    }

    /// Stores a node's latest score; new nodes are admitted up to `max_nodes`.
    pub fn record(&self, score: &NodeScore, now_ms: u64, max_nodes: u32) -> Result<Admission, FleetError> {
        let key = shard_key(self.shard_of(&score.cluster, &score.node));
        let mut reserved = false;
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (mut records, version) = self.load_shard(&key)?;
            let inserted = match records.iter_mut().find(|r| r.is(score)) {
                Some(record) => {
                    *record = NodeRecord::new(score, now_ms);
                    false
                }
                None => {
                    if !reserved {
                        if !self.adjust_count(1, max_nodes)? {
                            return Ok(Admission::OverCapacity);
                        }
                        reserved = true;
                    }
                    records.push(NodeRecord::new(score, now_ms));
                    true
                }
            };
            match self.store.set(&key, &encode(&records), version) {
                Ok(()) => {
                    if reserved && !inserted {
                        // Another worker inserted this node first; give the slot back.
                        self.adjust_count(-1, u32::MAX)?;
                    }
                    return Ok(if inserted { Admission::Inserted } else { Admission::Updated });
                }
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(host(e)),
            }
        }
        if reserved {
            self.adjust_count(-1, u32::MAX)?;
        }
        Err(FleetError::Busy)
    }

    /// Removes nodes not seen for more than `ttl_ms` and returns the rest.
    pub fn sweep(&self, now_ms: u64, ttl_ms: u64) -> Result<Vec<NodeRecord>, FleetError> {
        let mut live = Vec::new();
        for key in (0..self.shards).map(shard_key) {
            live.extend(self.sweep_shard(&key, now_ms, ttl_ms)?);
        }
        Ok(live)
    }

    /// Every stored record, expired or not, without changing anything.
    pub fn records(&self) -> Result<Vec<NodeRecord>, FleetError> {
        let mut all = Vec::new();
        for key in (0..self.shards).map(shard_key) {
            all.extend(self.load_shard(&key)?.0);
        }
        Ok(all)
    }

    /// Number of nodes currently holding a slot under `max_expected_nodes`.
    pub fn tracked_nodes(&self) -> Result<u32, FleetError> {
        Ok(self.load_count()?.0)
    }

    fn sweep_shard(&self, key: &str, now_ms: u64, ttl_ms: u64) -> Result<Vec<NodeRecord>, FleetError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (records, version) = self.load_shard(key)?;
            let before = records.len();
            let live: Vec<NodeRecord> =
                records.into_iter().filter(|r| now_ms.saturating_sub(r.last_seen_ms) <= ttl_ms).collect();
            let expired = before - live.len();
            if expired == 0 {
                return Ok(live);
            }
            match self.store.set(key, &encode(&live), version) {
                Ok(()) => {
                    self.adjust_count(-(expired as i64), u32::MAX)?;
                    return Ok(live);
                }
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(host(e)),
            }
        }
        Err(FleetError::Busy)
    }

    fn shard_of(&self, cluster: &str, node: &str) -> u32 {
        let mut h = DefaultHasher::new();
        (cluster, node).hash(&mut h);
        (h.finish() % u64::from(self.shards)) as u32
    }

    /// The shard's records and the version to write back against.
    fn load_shard(&self, key: &str) -> Result<(Vec<NodeRecord>, Option<u32>), FleetError> {
        match self.store.get(key).map_err(host)? {
            Some((bytes, version)) => Ok((decode(&bytes), Some(version))),
            None => Ok((Vec::new(), None)),
        }
    }

    fn load_count(&self) -> Result<(u32, Option<u32>), FleetError> {
        match self.store.get(&count_key()).map_err(host)? {
            Some((bytes, version)) => {
                let count = bytes.try_into().map(u32::from_le_bytes).unwrap_or(0);
                Ok((count, Some(version)))
            }
            None => Ok((0, None)),
        }
    }

    /// Adds `delta` to the node count unless that would pass `max`; false if it would.
    fn adjust_count(&self, delta: i64, max: u32) -> Result<bool, FleetError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (count, version) = self.load_count()?;
            let next = (i64::from(count) + delta).clamp(0, i64::from(u32::MAX)) as u32;
            if delta > 0 && next > max {
                return Ok(false);
            }
            match self.store.set(&count_key(), &next.to_le_bytes(), version) {
                Ok(()) => return Ok(true),
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(host(e)),
            }
        }
        Err(FleetError::Busy)
    }
}

fn shard_key(index: u32) -> String {
    format!("{KEY_PREFIX}shard/{index}")
}

fn count_key() -> String {
    format!("{KEY_PREFIX}tracked_nodes")
}

fn encode(records: &[NodeRecord]) -> Vec<u8> {
    postcard::to_allocvec(records).unwrap_or_default()
}

/// An unreadable shard (written by another version) counts as empty and is rewritten.
fn decode(bytes: &[u8]) -> Vec<NodeRecord> {
    postcard::from_bytes(bytes).unwrap_or_default()
}

fn host(e: StoreError) -> FleetError {
    FleetError::SharedData(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    pub(crate) fn score(cluster: &str, node: &str, value: f64) -> NodeScore {
        NodeScore {
            cluster: cluster.into(),
            cohort: String::new(),
            node: node.into(),
            score: value,
            state: NodeState::Active,
            details: NodeDetails::default(),
        }
    }

    #[test]
    fn keeps_the_latest_score_per_node() {
        let store = MemoryStore::default();
        let reg = Registry::new(&store, 100);
        assert_eq!(reg.record(&score("c", "n1", 0.5), 1_000, 100), Ok(Admission::Inserted));
        assert_eq!(reg.record(&score("c", "n1", 0.7), 2_000, 100), Ok(Admission::Updated));
        assert_eq!(reg.record(&score("d", "n1", 0.9), 2_000, 100), Ok(Admission::Inserted));
        let mut all = reg.records().unwrap_or_default();
        all.sort_by(|a, b| a.cluster.cmp(&b.cluster));
        assert_eq!(all.len(), 2);
        assert_eq!((all[0].score, all[0].last_seen_ms), (0.7, 2_000));
        assert_eq!(all[1].cluster, "d");
        assert_eq!(reg.tracked_nodes(), Ok(2));
    }

    #[test]
    fn caps_new_nodes_but_not_known_ones() {
        let store = MemoryStore::default();
        let reg = Registry::new(&store, 2);
        assert_eq!(reg.record(&score("c", "a", 0.5), 0, 2), Ok(Admission::Inserted));
        assert_eq!(reg.record(&score("c", "b", 0.5), 0, 2), Ok(Admission::Inserted));
        assert_eq!(reg.record(&score("c", "x", 0.5), 0, 2), Ok(Admission::OverCapacity));
        assert_eq!(reg.record(&score("c", "a", 0.6), 0, 2), Ok(Admission::Updated));
        assert_eq!(reg.records().map(|r| r.len()), Ok(2));
    }

    #[test]
    fn sweep_expires_after_the_ttl_edge_and_frees_slots() {
        let store = MemoryStore::default();
        let reg = Registry::new(&store, 2);
        let _ = reg.record(&score("c", "old", 0.5), 1_000, 2);
        let _ = reg.record(&score("c", "new", 0.5), 5_000, 2);
        assert_eq!(reg.sweep(51_000, 50_000).map(|l| l.len()), Ok(2), "exactly at the TTL still counts");
        let live = reg.sweep(51_001, 50_000).unwrap_or_default();
        assert_eq!(live.iter().map(|r| r.node.as_str()).collect::<Vec<_>>(), ["new"]);
        assert_eq!(reg.tracked_nodes(), Ok(1));
        assert_eq!(reg.record(&score("c", "third", 0.5), 51_001, 2), Ok(Admission::Inserted));
    }

    #[test]
    fn shard_count_is_bounded() {
        let store = MemoryStore::default();
        assert_eq!(Registry::new(&store, 1).shard_count(), 16);
        assert_eq!(Registry::new(&store, 10_000).shard_count(), 2048);
        assert_eq!(Registry::new(&store, 1_000_000).shard_count(), 16384);
    }

    /// A store that fails the first CAS of every write, as a busy Envoy would.
    struct Contended {
        inner: MemoryStore,
        fail_next: std::cell::Cell<bool>,
    }

    impl SharedStore for Contended {
        fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<(), StoreError> {
            if version.is_some() && self.fail_next.replace(false) {
                // Someone else wrote in between: bump the version under the caller.
                let current = self.inner.get(key)?.map(|(v, _)| v).unwrap_or_default();
                self.inner.set(key, &current, None)?;
                return Err(StoreError::CasMismatch);
            }
            self.fail_next.set(true);
            self.inner.set(key, value, version)
        }
    }

    #[test]
    fn retries_on_cas_conflicts_without_losing_writes() {
        let store = Contended { inner: MemoryStore::default(), fail_next: std::cell::Cell::new(false) };
        let reg = Registry::new(&store, 100);
        let _ = reg.init();
        for i in 0..20 {
            assert_eq!(reg.record(&score("c", &format!("n{i}"), 0.5), 0, 100), Ok(Admission::Inserted));
        }
        assert_eq!(reg.records().map(|r| r.len()), Ok(20));
        assert_eq!(reg.tracked_nodes(), Ok(20));
    }

    #[test]
    fn concurrent_writers_lose_nothing() {
        let store = std::sync::Arc::new(MemoryStore::new(8));
        let _ = Registry::new(&*store, 1_000).init();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    let reg = Registry::new(&*store, 1_000);
                    for round in 0..3 {
                        for i in 0..100 {
                            let _ = reg.record(&score("c", &format!("t{t}-n{i}"), 0.5), round, 1_000);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            let _ = t.join();
        }
        let reg = Registry::new(&*store, 1_000);
        assert_eq!(reg.records().map(|r| r.len()), Ok(400));
        assert_eq!(reg.tracked_nodes(), Ok(400));
    }
}
