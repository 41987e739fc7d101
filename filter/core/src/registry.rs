//! Every tracked node's latest score, kept in a fixed set of shared-data shards.
//!
//! A node lives in shard `hash(cluster, node) % shards`; a push rewrites only
//! its node's shard (a few records) with CAS, so the cost of a push does not
//! grow with the cluster. The shard count is fixed by `max_expected_nodes`, so
//! the set of keys is bounded no matter which ids arrive. A cluster table key
//! holds the node count of every cluster with tracked nodes and enforces the
//! caps (`max_expected_nodes`, `max_nodes_per_cluster`, `max_clusters`); it is
//! written only when a node is added or expires, never on an update.
//!
//! Shards and table entries are picked by the deployment's keyed hash
//! ([`HashSeed`]), so nobody outside can aim ids at one shard; a shard still
//! holds at most [`Registry::shard_cap`] records, and a new node past it is
//! refused and counted (`shard_full`) rather than making every push to that
//! shard slower.

use crate::config::NodeCaps;
use crate::error::FleetError;
use crate::node::{LiveNode, NodeRecord, NodeScore};
use crate::outcome::DropReason;
use crate::seed::HashSeed;
use crate::shard::{self, Record, ShardError};
use crate::store::{update, SharedStore, StoreError, Update, KEY_PREFIX};
use std::cell::OnceCell;

/// Target records per shard at `max_expected_nodes`.
const NODES_PER_SHARD: u32 = 16;
/// A shard holds at most this many times its share at `max_expected_nodes`
/// (and at least [`MIN_SHARD_CAP`]): with a random seed the fullest of 1 024
/// shards holds ~21 of 10 000 nodes, so the cap (40) is only reached by an attack.
const SHARD_CAP_FACTOR: u32 = 4;
const MIN_SHARD_CAP: u32 = 32;

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
    /// The node's shard already holds [`Registry::shard_cap`] records.
    Shard,
}

impl NodeCap {
    /// How the refusal is counted.
    pub fn drop_reason(self) -> DropReason {
        match self {
            Self::Total => DropReason::MaxExpectedNodes,
            Self::PerCluster => DropReason::MaxNodesPerCluster,
            Self::Shard => DropReason::ShardFull,
        }
    }

    /// The `partialSuccess` message naming the limit.
    pub fn message(self, caps: NodeCaps) -> String {
        match self {
            Self::Total => format!("new nodes past max_expected_nodes ({}) are not tracked", caps.nodes),
            Self::PerCluster => {
                format!("new nodes past max_nodes_per_cluster ({}) are not tracked", caps.nodes_per_cluster)
            }
            Self::Shard => "new node refused: its registry shard is full (too many ids hash alike)".into(),
        }
    }
}

/// The node registry over a shared store.
pub struct Registry<'s, S: ?Sized> {
    store: &'s S,
    shards: u32,
    shard_cap: usize,
    /// Given by the Fleet (read at init and on each tick), else read from the store on first use.
    seed: OnceCell<HashSeed>,
}

impl<'s, S: SharedStore + ?Sized> Registry<'s, S> {
    /// The registry sized for `max_expected_nodes`.
    pub fn new(store: &'s S, max_expected_nodes: u32) -> Self {
        let shards = (max_expected_nodes / NODES_PER_SHARD).clamp(16, 1 << 14).next_power_of_two();
        let share = max_expected_nodes.div_ceil(shards);
        let shard_cap = share.saturating_mul(SHARD_CAP_FACTOR).max(MIN_SHARD_CAP) as usize;
        Self { store, shards, shard_cap, seed: OnceCell::new() }
    }

    /// The same registry with the deployment's hash seed already known (read once per process).
    pub fn with_seed(self, seed: Option<HashSeed>) -> Self {
        if let Some(seed) = seed {
            let _ = self.seed.set(seed);
        }
        self
    }

    /// Number of shard keys.
    pub fn shard_count(&self) -> u32 {
        self.shards
    }

    /// Most records one shard holds.
    pub fn shard_cap(&self) -> usize {
        self.shard_cap
    }

    /// Creates the hash seed (from the host's entropy, unless one is stored)
    /// and every missing key, empty. Run before serving: writes to missing keys
    /// are not CAS-protected, so they must never race with real data.
    pub fn init(&self) -> Result<(), StoreError> {
        let seed = HashSeed::establish(self.store, self.store.entropy()?)?;
        let _ = self.seed.set(seed);
        for key in (0..self.shards).map(shard_key).chain([clusters_key()]) {
            if self.store.get(&key)?.is_none() {
                self.store.set(&key, &[], None)?;
            }
        }
        Ok(())
    }

    /// Stores a node's latest score; new nodes are admitted within `caps` and
    /// the shard cap, and a new cluster past `caps.clusters` is an error (answered 429).
    pub fn record(&self, score: &NodeScore, now_ms: u64, caps: NodeCaps) -> Result<Admission, FleetError> {
        let seed = self.seed()?;
        let key = shard_key(self.shard_of(&seed, &score.cluster, &score.node));
        let cluster = cluster_hash(&seed, &score.cluster);
        let cohort = shard::cohort_key(&seed, &score.cluster, &score.cohort);
        let fresh =
            shard::encode(&NodeRecord::new(score, now_ms), cohort).map_err(|e| format_error(&key, "encoded", e))?;
        let mut reserved = false;
        let result = update(self.store, &key, |bytes| {
            // The shard's other records are copied as they are, never decoded.
            let bytes = bytes.unwrap_or(&[]);
            let records = read_shard(&key, bytes)?;
            let found = records.iter().position(|r| r.is_node(&score.cluster, &score.node));
            let admission = match found {
                Some(_) => Admission::Updated,
                None if records.len() >= self.shard_cap => {
                    return Ok(Update::Keep(Admission::OverCapacity(NodeCap::Shard)))
                }
                None => {
                    if !reserved {
                        if let Some(cap) = self.reserve(cluster, caps)? {
                            return Ok(Update::Keep(Admission::OverCapacity(cap)));
                        }
                        reserved = true;
                    }
                    Admission::Inserted
                }
            };
            let mut written = Vec::with_capacity(bytes.len() + fresh.len());
            for (at, record) in records.iter().enumerate() {
                written.extend_from_slice(if Some(at) == found { &fresh } else { record.bytes() });
            }
            if found.is_none() {
                written.extend_from_slice(&fresh);
            }
            Ok(Update::Write(written, admission))
        });
        if reserved && result != Ok(Admission::Inserted) {
            // Another worker inserted this node first, or the write failed: give the slot back.
            self.release(&[cluster])?;
        }
        result
    }

    /// Removes nodes not seen for more than `ttl_ms` and shows each live one to
    /// `visit`, borrowed from its shard: the sweep copies no record and holds one
    /// shard at a time; an error of `visit` fails the shard as unreadable. Freed
    /// slots go back to the cluster table in one write, also when a shard fails.
    pub fn sweep(
        &self,
        now_ms: u64,
        ttl_ms: u64,
        mut visit: impl FnMut(LiveNode<'_>) -> Result<(), ShardError>,
    ) -> Result<(), FleetError> {
        let seed = self.seed()?;
        let mut expired = Vec::new();
        let mut key = String::new();
        let swept = (0..self.shards).try_for_each(|index| {
            write_shard_key(&mut key, index);
            self.sweep_shard(&seed, &key, now_ms, ttl_ms, &mut visit, &mut expired)
        });
        self.release(&expired)?;
        swept
    }

    /// Every stored record, expired or not, without changing anything.
    pub fn records(&self) -> Result<Vec<NodeRecord>, FleetError> {
        let mut all = Vec::new();
        for key in (0..self.shards).map(shard_key) {
            if let Some((bytes, _)) = self.store.get(&key)? {
                for record in read_shard(&key, &bytes)? {
                    all.push(record.to_node_record().map_err(|e| format_error(&key, "decoded", e))?);
                }
            }
        }
        Ok(all)
    }

    /// Number of nodes currently holding a slot under `max_expected_nodes`.
    pub fn tracked_nodes(&self) -> Result<u32, FleetError> {
        Ok(self.load_clusters()?.total())
    }

    /// Number of clusters with tracked nodes (counted against `max_clusters`).
    pub fn tracked_clusters(&self) -> Result<u32, FleetError> {
        Ok(self.load_clusters()?.len())
    }

    /// The deployment's hash seed (created by [`Registry::init`]).
    pub fn seed(&self) -> Result<HashSeed, FleetError> {
        if let Some(seed) = self.seed.get() {
            return Ok(*seed);
        }
        let seed = HashSeed::load(self.store)?;
        Ok(*self.seed.get_or_init(|| seed))
    }

    /// Sweeps one shard: rewrites it without its expired records (noting their
    /// clusters in `expired`), then visits the live ones.
    fn sweep_shard(
        &self,
        seed: &HashSeed,
        key: &str,
        now_ms: u64,
        ttl_ms: u64,
        visit: &mut impl FnMut(LiveNode<'_>) -> Result<(), ShardError>,
        expired: &mut Vec<u64>,
    ) -> Result<(), FleetError> {
        let live = |r: &Record<'_>| now_ms.saturating_sub(r.last_seen_ms()) <= ttl_ms;
        let unreadable = |e: ShardError| FleetError::from(format_error(key, "decoded", e));
        let rewritten = update(self.store, key, |bytes| {
            let bytes = bytes.unwrap_or(&[]);
            // Most shards have nothing to expire: read them in place, with no allocation.
            if shard::records(bytes).all(|r| r.as_ref().is_ok_and(live)) {
                for record in shard::records(bytes) {
                    record.and_then(|r| visit(r.live_node()?)).map_err(unreadable)?;
                }
                return Ok::<_, FleetError>(Update::Keep(None));
            }
            let records = read_shard(key, bytes)?;
            let (mut kept, mut gone) = (Vec::new(), Vec::new());
            for record in &records {
                if live(record) {
                    kept.extend_from_slice(record.bytes());
                } else {
                    gone.push(cluster_hash(seed, record.cluster().map_err(unreadable)?));
                }
            }
            Ok(Update::Write(kept.clone(), Some((kept, gone))))
        })?;
        if let Some((bytes, gone)) = rewritten {
            expired.extend(gone);
            for record in read_shard(key, &bytes)? {
                visit(record.live_node().map_err(unreadable)?).map_err(unreadable)?;
            }
        }
        Ok(())
    }

    fn shard_of(&self, seed: &HashSeed, cluster: &str, node: &str) -> u32 {
        (seed.hash(&["node", cluster, node]) % u64::from(self.shards)) as u32
    }

    fn load_clusters(&self) -> Result<ClusterTable, FleetError> {
        let key = clusters_key();
        match self.store.get(&key)? {
            Some((bytes, _)) => Ok(ClusterTable::decode(&key, &bytes)?),
            None => Ok(ClusterTable::default()),
        }
    }

    /// Takes a slot for a new node of `cluster` (its hash); the cap it would pass, if any.
    fn reserve(&self, cluster: u64, caps: NodeCaps) -> Result<Option<NodeCap>, FleetError> {
        let key = clusters_key();
        update(self.store, &key, |bytes| {
            let mut table = ClusterTable::decode(&key, bytes.unwrap_or(&[]))?;
            match table.nodes_of(cluster) {
                None if table.len() >= caps.clusters => {
                    Err(FleetError::TooManyClusters { limit: caps.clusters, retry_after_s: caps.retry_after_s })
                }
                _ if table.total() >= caps.nodes => Ok(Update::Keep(Some(NodeCap::Total))),
                Some(n) if n >= caps.nodes_per_cluster => Ok(Update::Keep(Some(NodeCap::PerCluster))),
                _ => {
                    table.add(cluster);
                    Ok(Update::Write(table.encode(), None))
                }
            }
        })
    }

    /// Gives back one slot per entry of `clusters` (cluster hashes), in one write.
    fn release(&self, clusters: &[u64]) -> Result<(), FleetError> {
        if clusters.is_empty() {
            return Ok(());
        }
        let key = clusters_key();
        update(self.store, &key, |bytes| {
            let mut table = ClusterTable::decode(&key, bytes.unwrap_or(&[]))?;
            clusters.iter().for_each(|id| table.remove(*id));
            Ok::<_, FleetError>(Update::Write(table.encode(), ()))
        })
    }
}

// === impl ClusterTable ===

/// Node counts by cluster, keyed by the keyed 64-bit hash of the cluster id so
/// that an entry is 12 bytes whatever the id's length; clusters leave when their
/// last node expires. Fixed-width encoding: (hash u64, nodes u32) little-endian.
#[derive(Debug, Default, PartialEq)]
struct ClusterTable {
    /// (cluster hash, nodes) sorted by hash, as stored: a new node's push reads
    /// and writes the table, so it is a flat list, not a tree built per read.
    nodes: Vec<(u64, u32)>,
}

const TABLE_ENTRY_BYTES: usize = 12;

impl ClusterTable {
    fn total(&self) -> u32 {
        self.nodes.iter().fold(0u32, |sum, (_, n)| sum.saturating_add(*n))
    }

    fn len(&self) -> u32 {
        u32::try_from(self.nodes.len()).unwrap_or(u32::MAX)
    }

    fn find(&self, id: u64) -> Result<usize, usize> {
        self.nodes.binary_search_by_key(&id, |(id, _)| *id)
    }

    fn nodes_of(&self, id: u64) -> Option<u32> {
        self.find(id).ok().map(|at| self.nodes[at].1)
    }

    fn add(&mut self, id: u64) {
        match self.find(id) {
            Ok(at) => self.nodes[at].1 = self.nodes[at].1.saturating_add(1),
            Err(at) => self.nodes.insert(at, (id, 1)),
        }
    }

    fn remove(&mut self, id: u64) {
        if let Ok(at) = self.find(id) {
            self.nodes[at].1 = self.nodes[at].1.saturating_sub(1);
            if self.nodes[at].1 == 0 {
                self.nodes.remove(at);
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

    /// A torn or unordered table is an error: read as empty it would free every slot.
    fn decode(key: &str, bytes: &[u8]) -> Result<Self, StoreError> {
        let unreadable = |reason: String| format_error(key, "decoded", reason);
        let entries = bytes.chunks_exact(TABLE_ENTRY_BYTES);
        if !entries.remainder().is_empty() {
            return Err(unreadable(format!(
                "{} bytes is not a whole number of {TABLE_ENTRY_BYTES}-byte entries",
                bytes.len()
            )));
        }
        let mut nodes = Vec::with_capacity(entries.len());
        for e in entries {
            let (id, n) = e.split_at(8);
            let le = |b: &[u8]| b.iter().rev().fold(0u64, |v, byte| (v << 8) | u64::from(*byte));
            let entry = (le(id), le(n) as u32);
            if nodes.last().is_some_and(|(last, _)| *last >= entry.0) {
                return Err(unreadable(format!("cluster {:#x} is out of order", entry.0)));
            }
            if entry.1 > 0 {
                nodes.push(entry);
            }
        }
        Ok(Self { nodes })
    }
}

fn cluster_hash(seed: &HashSeed, cluster: &str) -> u64 {
    seed.hash(&["cluster", cluster])
}

/// A shard's records; an unreadable one is an error naming the key, never read as empty.
fn read_shard<'a>(key: &str, bytes: &'a [u8]) -> Result<Vec<Record<'a>>, StoreError> {
    shard::records(bytes).collect::<Result<_, _>>().map_err(|e| format_error(key, "decoded", e))
}

/// A stored value (a shard, the cluster table) that could not be `action`
/// ("encoded", "decoded"), naming its key.
fn format_error(key: &str, action: &'static str, reason: String) -> StoreError {
    StoreError::Format { key: key.to_owned(), action, reason }
}

fn shard_key(index: u32) -> String {
    let mut key = String::new();
    write_shard_key(&mut key, index);
    key
}

/// Writes shard `index`'s key into `key`, reusing its allocation.
fn write_shard_key(key: &mut String, index: u32) {
    use std::fmt::Write;
    key.clear();
    let _ = write!(key, "{KEY_PREFIX}shard/{index}"); // writing to a String cannot fail
}

fn clusters_key() -> String {
    format!("{KEY_PREFIX}clusters")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{NodeDetails, NodeState};
    use crate::store::MemoryStore;
    use std::collections::BTreeMap;

    fn caps(nodes: u32) -> NodeCaps {
        NodeCaps { nodes, nodes_per_cluster: nodes, clusters: 1_000, retry_after_s: 1 }
    }

    /// Sweeps and returns the live nodes' ids.
    fn live(reg: &Registry<'_, MemoryStore>, now_ms: u64, ttl_ms: u64) -> Vec<String> {
        let mut visited = 0;
        assert_eq!(
            reg.sweep(now_ms, ttl_ms, |_| {
                visited += 1;
                Ok(())
            }),
            Ok(())
        );
        // The sweep removed the expired: what is stored now is what it visited.
        let live: Vec<String> = reg.records().unwrap_or_default().into_iter().map(|r| r.node).collect();
        assert_eq!(live.len(), visited);
        live
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
        reg.init().unwrap();
        assert_eq!(reg.record(&score("c", "n1", 0.5), 1_000, caps(100)), Ok(Admission::Inserted));
        assert_eq!(reg.record(&score("c", "n1", 0.7), 2_000, caps(100)), Ok(Admission::Updated));
        assert_eq!(reg.record(&score("d", "n1", 0.9), 2_000, caps(100)), Ok(Admission::Inserted));
        let mut all = reg.records().unwrap();
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
        reg.init().unwrap();
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
        reg.init().unwrap();
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
        reg.init().unwrap();
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
        assert_eq!((table.total(), table.len()), (3, 1));
        assert_eq!(ClusterTable::decode("k", &table.encode()), Ok(table));
        assert!(matches!(ClusterTable::decode("k", b"torn"), Err(StoreError::Format { .. })));
        let unordered: Vec<u8> =
            [9u64, 8].iter().flat_map(|id| [&id.to_le_bytes()[..], &1u32.to_le_bytes()].concat()).collect();
        assert!(matches!(ClusterTable::decode("k", &unordered), Err(StoreError::Format { .. })));
    }

    #[test]
    fn cluster_table_counts_like_a_map() {
        let (mut table, mut model) = (ClusterTable::default(), BTreeMap::<u64, u32>::new());
        for step in 0..2_000u64 {
            let id = step.wrapping_mul(0x9e37_79b9_7f4a_7c15) % 97;
            if step % 3 == 2 {
                table.remove(id);
                if let Some(n) = model.get_mut(&id) {
                    *n -= 1;
                    if *n == 0 {
                        model.remove(&id);
                    }
                }
            } else {
                table.add(id);
                *model.entry(id).or_default() += 1;
            }
        }
        assert_eq!(table.nodes, model.into_iter().collect::<Vec<_>>());
        assert_eq!(ClusterTable::decode("k", &table.encode()), Ok(table));
    }

    #[test]
    fn shard_count_is_bounded() {
        let store = MemoryStore::default();
        assert_eq!(Registry::new(&store, 1).shard_count(), 16);
        assert_eq!(Registry::new(&store, 10_000).shard_count(), 1024);
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
                let current = self.inner.get(key)?.map(|(v, _)| v).unwrap();
                self.inner.set(key, &current, None)?;
                return Err(StoreError::CasMismatch);
            }
            self.fail_next.set(true);
            self.inner.set(key, value, version)
        }
        fn entropy(&self) -> Result<[u8; 16], StoreError> {
            self.inner.entropy()
        }
    }

    #[test]
    fn retries_on_cas_conflicts_without_losing_writes() {
        let store = Contended { inner: MemoryStore::default(), fail_next: std::cell::Cell::new(false) };
        let reg = Registry::new(&store, 100);
        reg.init().unwrap();
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

    /// Node ids that all land in shard 0 under the old fixed hash
    /// (`DefaultHasher` of `(cluster, node)`), found in well under a second.
    fn colliding_under_the_old_hash(count: usize, shards: u64) -> Vec<String> {
        use std::hash::{DefaultHasher, Hash, Hasher};
        (0u64..)
            .map(|i| format!("attacker-{i}"))
            .filter(|node| {
                let mut h = DefaultHasher::new();
                ("victim", node.as_str()).hash(&mut h);
                h.finish() % shards == 0
            })
            .take(count)
            .collect()
    }

    #[test]
    fn ids_aimed_at_one_shard_spread_out_and_no_shard_passes_its_cap() {
        let store = MemoryStore::default();
        let reg = Registry::new(&store, 10_000);
        reg.init().unwrap();
        let shards = u64::from(reg.shard_count());
        let ids = colliding_under_the_old_hash(400, shards);
        let caps = NodeCaps { nodes: 10_000, nodes_per_cluster: 10_000, clusters: 1_000, retry_after_s: 1 };
        for id in &ids {
            assert_eq!(reg.record(&score("victim", id, 0.5), 0, caps), Ok(Admission::Inserted));
        }
        let mut per_shard = BTreeMap::new();
        let seed = reg.seed().unwrap();
        for id in &ids {
            *per_shard.entry(reg.shard_of(&seed, "victim", id)).or_insert(0u32) += 1;
        }
        let fullest = per_shard.values().max().copied().unwrap_or(0);
        assert!(per_shard.len() > 250 && fullest <= 6, "{} shards, fullest {fullest}", per_shard.len());

        // Even a shard filled on purpose stops at its cap, counted as shard_full.
        let mut aimed = 0;
        let mut refused = 0;
        for i in 0u64.. {
            let node = format!("aimed-{i}");
            if reg.shard_of(&seed, "victim", &node) != 7 {
                continue;
            }
            match reg.record(&score("victim", &node, 0.5), 0, caps) {
                Ok(Admission::Inserted) => aimed += 1,
                Ok(Admission::OverCapacity(NodeCap::Shard)) => refused += 1,
                other => panic!("{other:?}"),
            }
            if refused == 3 {
                break;
            }
        }
        assert_eq!(aimed + per_shard.get(&7).copied().unwrap_or(0) as usize, reg.shard_cap());
        assert_eq!(NodeCap::Shard.drop_reason(), DropReason::ShardFull);
    }

    #[test]
    fn every_worker_and_a_reload_use_the_first_seed() {
        let store = MemoryStore::default();
        let first = Registry::new(&store, 100);
        first.init().unwrap();
        let caps = caps(100);
        assert_eq!(first.record(&score("c", "n", 0.5), 0, caps), Ok(Admission::Inserted));
        // A second VM (or the same one reloaded) inits again: the seed, and so every shard, stays.
        let reloaded = Registry::new(&store, 100);
        reloaded.init().unwrap();
        assert_eq!(reloaded.seed(), first.seed());
        assert_eq!(reloaded.record(&score("c", "n", 0.6), 0, caps), Ok(Admission::Updated));
        assert_eq!(reloaded.tracked_nodes(), Ok(1));
    }

    #[test]
    fn unreadable_shards_are_errors_and_stay_untouched() {
        let store = MemoryStore::default();
        let reg = Registry::new(&store, 100);
        reg.init().unwrap();
        let seed = reg.seed().unwrap();
        let key = shard_key(reg.shard_of(&seed, "c", "n"));
        store.set(&key, &[0xff, 0xff, 0xff, 0xff], None).unwrap();
        assert!(matches!(reg.record(&score("c", "n", 0.5), 0, caps(100)), Err(FleetError::SharedData(_))));
        assert_eq!(store.get(&key).unwrap().map(|(b, _)| b), Some(vec![0xff; 4]), "never overwritten with empty");
        assert_eq!(reg.tracked_nodes(), Ok(0), "the reserved slot was given back");
    }
}
