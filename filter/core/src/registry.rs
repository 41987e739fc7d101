//! Every tracked node's latest score, kept in a fixed set of shared-data shards.
//!
//! A node lives in shard `hash(cluster, node) % shards`; a push rewrites only
//! its node's shard (a few records) with CAS, so the cost of a push does not
//! grow with the cluster. The shard count is fixed by `max_expected_nodes`, so
//! the set of keys is bounded no matter which ids arrive. A cluster table key
//! holds the node count of every cluster with tracked nodes and enforces the
//! caps (`max_expected_nodes`, `max_nodes_per_cluster`, `max_clusters`); it is
//! written only when a node is added or expires, never on an update.

use crate::config::NodeCaps;
use crate::error::FleetError;
use crate::node::{LiveNode, NodeRecord, NodeScore, NodeState, DETAIL_GAUGES};
use crate::outcome::DropReason;
use crate::store::{SharedStore, StoreError, KEY_PREFIX, MAX_CAS_ATTEMPTS};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hash, Hasher};

/// Target records per shard at `max_expected_nodes`.
const NODES_PER_SHARD: u32 = 8;

/// A stored record read without copying its text. Its layout is
/// [`NodeRecord`]'s field for field (postcard has no field names), which
/// `record_views_read_and_write_records` checks.
#[derive(Serialize, Deserialize)]
struct RecordView<'a> {
    cluster: &'a str,
    node: &'a str,
    cohort: &'a str,
    score: f64,
    state: NodeState,
    last_seen_ms: u64,
    #[serde(borrow)]
    details: DetailsView<'a>,
}

/// [`NodeDetails`] without copying its text.
#[derive(Serialize, Deserialize)]
struct DetailsView<'a> {
    rank: Option<i64>,
    world_size: Option<i64>,
    #[serde(borrow)]
    gpu_model: Option<&'a str>,
    gpu_count: Option<i64>,
    #[serde(borrow)]
    detection_mode: Option<&'a str>,
    gauges: [Option<f64>; DETAIL_GAUGES.len()],
}

impl NodeRecord {
    fn view(&self) -> RecordView<'_> {
        let d = &self.details;
        RecordView {
            cluster: &self.cluster,
            node: &self.node,
            cohort: &self.cohort,
            score: self.score,
            state: self.state,
            last_seen_ms: self.last_seen_ms,
            details: DetailsView {
                rank: d.rank,
                world_size: d.world_size,
                gpu_model: d.gpu_model.as_deref(),
                gpu_count: d.gpu_count,
                detection_mode: d.detection_mode.as_deref(),
                gauges: d.gauges,
            },
        }
    }
}

impl RecordView<'_> {
    fn live_node(&self) -> LiveNode<'_> {
        LiveNode {
            cluster: self.cluster,
            node: self.node,
            cohort: self.cohort,
            score: self.score,
            state: self.state,
            world_size: self.details.world_size,
        }
    }
}

/// What happened to a reported score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Updated,
    Inserted,
    /// A new node past a node cap; nothing was stored.
    OverCapacity(NodeCap),
}

/// The node cap a new node did not fit under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeCap {
    /// `max_expected_nodes`, over all clusters.
    Total,
    /// `max_nodes_per_cluster`.
    PerCluster,
}

impl NodeCap {
    /// How the refusal is counted.
    pub fn drop_reason(self) -> DropReason {
        match self {
            Self::Total => DropReason::MaxExpectedNodes,
            Self::PerCluster => DropReason::MaxNodesPerCluster,
        }
    }

    /// The `partialSuccess` message naming the limit.
    pub fn message(self, caps: NodeCaps) -> String {
        match self {
            Self::Total => format!("new nodes past max_expected_nodes ({}) are not tracked", caps.nodes),
            Self::PerCluster => {
                format!("new nodes past max_nodes_per_cluster ({}) are not tracked", caps.nodes_per_cluster)
            }
        }
    }
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
        for key in (0..self.shards).map(shard_key).chain([clusters_key()]) {
            if self.store.get(&key)?.is_none() {
                self.store.set(&key, &[], None)?;
            }
        }
        Ok(())
    }

    /// Stores a node's latest score; new nodes are admitted within `caps`, and a
    /// new cluster past `caps.clusters` is an error (answered 429).
    pub fn record(&self, score: &NodeScore, now_ms: u64, caps: NodeCaps) -> Result<Admission, FleetError> {
        let key = shard_key(self.shard_of(&score.cluster, &score.node));
        let fresh = NodeRecord::new(score, now_ms);
        let mut reserved = false;
        for _ in 0..MAX_CAS_ATTEMPTS {
            // The shard's other records are carried over as borrowed views, never copied.
            let (bytes, version) =
                self.store.get(&key).map_err(host)?.map_or((Vec::new(), None), |(b, v)| (b, Some(v)));
            let mut records: Vec<RecordView<'_>> = postcard::from_bytes(&bytes).unwrap_or_default();
            let inserted = match records.iter_mut().find(|r| r.node == score.node && r.cluster == score.cluster) {
                Some(record) => {
                    *record = fresh.view();
                    false
                }
                None => {
                    if !reserved {
                        if let Some(cap) = self.reserve(&score.cluster, caps)? {
                            return Ok(Admission::OverCapacity(cap));
                        }
                        reserved = true;
                    }
                    records.push(fresh.view());
                    true
                }
            };
            match self.store.set(&key, &postcard::to_allocvec(&records).unwrap_or_default(), version) {
                Ok(()) => {
                    if reserved && !inserted {
                        // Another worker inserted this node first; give the slot back.
                        self.release(&[cluster_hash(&score.cluster)])?;
                    }
                    return Ok(if inserted { Admission::Inserted } else { Admission::Updated });
                }
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(host(e)),
            }
        }
        if reserved {
            self.release(&[cluster_hash(&score.cluster)])?;
        }
        Err(FleetError::Busy)
    }

    /// Removes nodes not seen for more than `ttl_ms` and shows each live one to
    /// `visit`, borrowed from its shard: the sweep copies no record and holds one
    /// shard at a time. Freed slots go back to the cluster table in one write,
    /// also when a shard fails.
    pub fn sweep(&self, now_ms: u64, ttl_ms: u64, mut visit: impl FnMut(LiveNode<'_>)) -> Result<(), FleetError> {
        let mut expired = Vec::new();
        let swept = (0..self.shards)
            .map(shard_key)
            .try_for_each(|key| self.sweep_shard(&key, now_ms, ttl_ms, &mut visit, &mut expired));
        self.release(&expired)?;
        swept
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
        Ok(self.load_clusters()?.0.total())
    }

    /// Number of clusters with tracked nodes (counted against `max_clusters`).
    pub fn tracked_clusters(&self) -> Result<u32, FleetError> {
        Ok(self.load_clusters()?.0.len())
    }

    /// Sweeps one shard: rewrites it without its expired records (noting their
    /// clusters in `expired`), then visits the live ones.
    fn sweep_shard(
        &self,
        key: &str,
        now_ms: u64,
        ttl_ms: u64,
        visit: &mut impl FnMut(LiveNode<'_>),
        expired: &mut Vec<u64>,
    ) -> Result<(), FleetError> {
        for _ in 0..MAX_CAS_ATTEMPTS {
            let Some((bytes, version)) = self.store.get(key).map_err(host)? else { return Ok(()) };
            let records: Vec<RecordView<'_>> = postcard::from_bytes(&bytes).unwrap_or_default();
            let (live, gone): (Vec<_>, Vec<_>) =
                records.into_iter().partition(|r| now_ms.saturating_sub(r.last_seen_ms) <= ttl_ms);
            if !gone.is_empty() {
                match self.store.set(key, &postcard::to_allocvec(&live).unwrap_or_default(), Some(version)) {
                    Ok(()) => expired.extend(gone.iter().map(|r| cluster_hash(r.cluster))),
                    Err(StoreError::CasMismatch) => continue,
                    Err(e) => return Err(host(e)),
                }
            }
            live.iter().for_each(|r| visit(r.live_node()));
            return Ok(());
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

    fn load_clusters(&self) -> Result<(ClusterTable, Option<u32>), FleetError> {
        match self.store.get(&clusters_key()).map_err(host)? {
            Some((bytes, version)) => Ok((ClusterTable::decode(&bytes), Some(version))),
            None => Ok((ClusterTable::default(), None)),
        }
    }

    /// Takes a slot for a new node of `cluster`; the cap it would pass, if any.
    fn reserve(&self, cluster: &str, caps: NodeCaps) -> Result<Option<NodeCap>, FleetError> {
        let id = cluster_hash(cluster);
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (mut table, version) = self.load_clusters()?;
            match table.nodes_of(id) {
                None if table.len() >= caps.clusters => {
                    return Err(FleetError::TooManyClusters { limit: caps.clusters, retry_after_s: caps.retry_after_s })
                }
                _ if table.total() >= caps.nodes => return Ok(Some(NodeCap::Total)),
                Some(n) if n >= caps.nodes_per_cluster => return Ok(Some(NodeCap::PerCluster)),
                _ => table.add(id),
            }
            match self.store.set(&clusters_key(), &table.encode(), version) {
                Ok(()) => return Ok(None),
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(host(e)),
            }
        }
        Err(FleetError::Busy)
    }

    /// Gives back one slot per entry of `clusters` (cluster hashes), in one write.
    fn release(&self, clusters: &[u64]) -> Result<(), FleetError> {
        if clusters.is_empty() {
            return Ok(());
        }
        for _ in 0..MAX_CAS_ATTEMPTS {
            let (mut table, version) = self.load_clusters()?;
            clusters.iter().for_each(|id| table.remove(*id));
            match self.store.set(&clusters_key(), &table.encode(), version) {
                Ok(()) => return Ok(()),
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(host(e)),
            }
        }
        Err(FleetError::Busy)
    }
}

// === impl ClusterTable ===

/// Node counts by cluster, keyed by a 64-bit hash of the cluster id so that an
/// entry is 12 bytes whatever the id's length; clusters leave when their last
/// node expires. Fixed-width encoding: (hash u64, nodes u32) little-endian.
#[derive(Debug, Default, PartialEq)]
struct ClusterTable {
    nodes: BTreeMap<u64, u32>,
}

const TABLE_ENTRY_BYTES: usize = 12;

impl ClusterTable {
    fn total(&self) -> u32 {
        self.nodes.values().fold(0u32, |sum, n| sum.saturating_add(*n))
    }

    fn len(&self) -> u32 {
        u32::try_from(self.nodes.len()).unwrap_or(u32::MAX)
    }

    fn nodes_of(&self, id: u64) -> Option<u32> {
        self.nodes.get(&id).copied()
    }

    fn add(&mut self, id: u64) {
        let n = self.nodes.entry(id).or_insert(0);
        *n = n.saturating_add(1);
    }

    fn remove(&mut self, id: u64) {
        if let Some(n) = self.nodes.get_mut(&id) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.nodes.remove(&id);
            }
        }
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.nodes.len() * TABLE_ENTRY_BYTES);
        for (id, n) in &self.nodes {
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&n.to_le_bytes());
        }
        out
    }

    /// A table of another layout (or a torn one) reads as empty and is rewritten.
    fn decode(bytes: &[u8]) -> Self {
        let entries = bytes.chunks_exact(TABLE_ENTRY_BYTES);
        if !entries.remainder().is_empty() {
            return Self::default();
        }
        let nodes = entries
            .filter_map(|e| {
                let id = u64::from_le_bytes(e.get(..8)?.try_into().ok()?);
                let n = u32::from_le_bytes(e.get(8..)?.try_into().ok()?);
                Some((id, n))
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        Self { nodes }
    }
}

fn cluster_hash(cluster: &str) -> u64 {
    let mut h = DefaultHasher::new();
    cluster.hash(&mut h);
    h.finish()
}

fn shard_key(index: u32) -> String {
    format!("{KEY_PREFIX}shard/{index}")
}

fn clusters_key() -> String {
    format!("{KEY_PREFIX}clusters")
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
    use crate::node::NodeDetails;
    use crate::store::MemoryStore;

    fn caps(nodes: u32) -> NodeCaps {
        NodeCaps { nodes, nodes_per_cluster: nodes, clusters: 1_000, retry_after_s: 1 }
    }

    /// Sweeps and returns the live nodes' ids.
    fn live(reg: &Registry<'_, MemoryStore>, now_ms: u64, ttl_ms: u64) -> Vec<String> {
        let mut live = Vec::new();
        assert_eq!(reg.sweep(now_ms, ttl_ms, |n| live.push(n.node.to_owned())), Ok(()));
        live
    }

    #[test]
    fn record_views_read_and_write_records() {
        let mut record = NodeRecord::new(&score("c", "n", 0.5), 7);
        record.details = NodeDetails {
            rank: Some(3),
            world_size: Some(8),
            gpu_model: Some("H100".into()),
            gpu_count: Some(8),
            detection_mode: Some("ebpf".into()),
            gauges: [Some(0.9), None, Some(0.4), None, None, Some(1.0)],
        };
        let bytes = postcard::to_allocvec(std::slice::from_ref(&record)).unwrap_or_default();
        let views: Vec<RecordView<'_>> = postcard::from_bytes(&bytes).unwrap_or_default();
        assert_eq!(views.iter().map(RecordView::live_node).collect::<Vec<_>>(), [record.live_node()]);
        assert_eq!(postcard::to_allocvec(&views).ok(), Some(bytes.clone()), "a rewritten shard is the same bytes");
        assert_eq!(postcard::to_allocvec(&vec![record.view()]).ok(), Some(bytes), "a view writes its record");
    }

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
        assert_eq!(reg.record(&score("c", "n1", 0.5), 1_000, caps(100)), Ok(Admission::Inserted));
        assert_eq!(reg.record(&score("c", "n1", 0.7), 2_000, caps(100)), Ok(Admission::Updated));
        assert_eq!(reg.record(&score("d", "n1", 0.9), 2_000, caps(100)), Ok(Admission::Inserted));
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
        assert_eq!(reg.record(&score("c", "a", 0.5), 0, caps(2)), Ok(Admission::Inserted));
        assert_eq!(reg.record(&score("c", "b", 0.5), 0, caps(2)), Ok(Admission::Inserted));
        assert_eq!(reg.record(&score("c", "x", 0.5), 0, caps(2)), Ok(Admission::OverCapacity(NodeCap::Total)));
        assert_eq!(reg.record(&score("c", "a", 0.6), 0, caps(2)), Ok(Admission::Updated));
        assert_eq!(reg.records().map(|r| r.len()), Ok(2));
    }

    #[test]
    fn sweep_expires_after_the_ttl_edge_and_frees_slots() {
        let store = MemoryStore::default();
        let reg = Registry::new(&store, 2);
        let _ = reg.record(&score("c", "old", 0.5), 1_000, caps(2));
        let _ = reg.record(&score("c", "new", 0.5), 5_000, caps(2));
        assert_eq!(live(&reg, 51_000, 50_000).len(), 2, "exactly at the TTL still counts");
        let live = live(&reg, 51_001, 50_000);
        assert_eq!(live, ["new"]);
        assert_eq!(reg.tracked_nodes(), Ok(1));
        assert_eq!(reg.record(&score("c", "third", 0.5), 51_001, caps(2)), Ok(Admission::Inserted));
    }

    #[test]
    fn caps_nodes_per_cluster_and_new_clusters() {
        let store = MemoryStore::default();
        let reg = Registry::new(&store, 100);
        let caps = NodeCaps { nodes: 100, nodes_per_cluster: 2, clusters: 2, retry_after_s: 7 };
        assert_eq!(reg.record(&score("a", "1", 0.5), 0, caps), Ok(Admission::Inserted));
        assert_eq!(reg.record(&score("a", "2", 0.5), 0, caps), Ok(Admission::Inserted));
        assert_eq!(reg.record(&score("a", "3", 0.5), 0, caps), Ok(Admission::OverCapacity(NodeCap::PerCluster)));
        assert_eq!(
            reg.record(&score("b", "1", 0.5), 0, caps),
            Ok(Admission::Inserted),
            "a full cluster blocks no other"
        );
        let refused = Err(FleetError::TooManyClusters { limit: 2, retry_after_s: 7 });
        assert_eq!(reg.record(&score("c", "1", 0.5), 0, caps), refused);
        assert_eq!((reg.tracked_nodes(), reg.tracked_clusters()), (Ok(3), Ok(2)));
        // Once every node of a cluster expires, its slot is free for a new cluster.
        assert_eq!(reg.record(&score("b", "1", 0.5), 10, caps), Ok(Admission::Updated));
        assert_eq!(live(&reg, 6, 5).len(), 1);
        assert_eq!((reg.tracked_nodes(), reg.tracked_clusters()), (Ok(1), Ok(1)));
        assert_eq!(reg.record(&score("c", "1", 0.5), 10, caps), Ok(Admission::Inserted));
    }

    #[test]
    fn cluster_table_round_trips_and_survives_garbage() {
        let mut table = ClusterTable::default();
        (0..3).for_each(|_| table.add(7));
        table.add(u64::MAX);
        table.remove(u64::MAX);
        table.remove(12345);
        assert_eq!(ClusterTable::decode(&table.encode()), table);
        assert_eq!((table.total(), table.len()), (3, 1));
        assert_eq!(ClusterTable::decode(b"torn"), ClusterTable::default());
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
            assert_eq!(reg.record(&score("c", &format!("n{i}"), 0.5), 0, caps(100)), Ok(Admission::Inserted));
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
                            let _ = reg.record(&score("c", &format!("t{t}-n{i}"), 0.5), round, caps(1_000));
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
