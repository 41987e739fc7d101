//! Per-cohort thresholds (contract §4): quorum, spread, EMA, clamp, stragglers.
//!
//! A [`ThresholdBook`] is computed from the live records once per push
//! interval, from the previous book (the EMA state), and published for every
//! worker to read.

use crate::config::Config;
use crate::node::{LiveNode, NodeState};
use crate::shard::ShardError;
use crate::stats::Spread;
use crate::store::{decode, encode, StoreError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// The agent accepts thresholds in this range only.
pub const THRESHOLD_RANGE: (f64, f64) = (0.1, 0.99);
/// A node is a straggler when `score + STRAGGLER_EPSILON < threshold`, as the agent decides.
pub const STRAGGLER_EPSILON: f64 = 1e-9;

/// One cohort's state at the last recompute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdSnapshot {
    pub cluster: String,
    /// The cgroup path hash; empty for the default cohort.
    pub cohort: String,
    /// Unexpired nodes in state `active`: the ones scored.
    pub active_nodes: u32,
    /// Unexpired nodes in any state.
    pub live_nodes: u32,
    pub median: f64,
    pub mad: f64,
    /// The smoothed, clamped threshold; `None` until quorum is met.
    pub threshold: Option<f64>,
    /// Active nodes below the threshold.
    pub stragglers: u32,
    /// The largest `world_size` the cohort's nodes report (0 if none).
    pub world_size: u32,
    pub coverage_low: bool,
    /// Active nodes by score in [`HISTOGRAM_BINS`] bins of equal width (1.0 in the last):
    /// the dashboard's histogram without listing every node.
    pub histogram: Vec<u32>,
}

/// Bins of [`ThresholdSnapshot::histogram`].
pub const HISTOGRAM_BINS: usize = 20;

impl ThresholdSnapshot {
    /// Whether the cohort has enough active nodes for a threshold.
    pub fn quorum_met(&self) -> bool {
        self.threshold.is_some()
    }
}

/// Every cohort's snapshot, sorted by (cluster, cohort).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ThresholdBook {
    /// The push-interval number this book was computed in.
    pub epoch: u64,
    pub computed_at_ms: u64,
    pub cohorts: Vec<ThresholdSnapshot>,
    /// Cohorts left out of this book by `max_cohorts_per_cluster`.
    pub cohorts_over_cap: u32,
}

/// The live nodes grouped by cohort, reduced to what the statistics need, so a
/// recompute holds 8 bytes per active node instead of every record.
#[derive(Debug, Default)]
pub struct CohortTally {
    /// Group by the cohort key a record was stored with, which identifies its
    /// cohort as the cluster table's keyed hash identifies a cluster: a node's
    /// ids are neither hashed nor read (reading them was most of a recompute).
    by_key: HashMap<u64, usize, BuildHasherDefault<KeyedHash>>,
    /// Group by ids ([`group_ids`]), read once per key: a cohort whose records
    /// were written under two seeds has two keys and is still one group.
    by_ids: HashMap<Box<[u8]>, usize>,
    /// Every cohort met, in the order met; ids are copied once per cohort.
    groups: Vec<Group>,
}

#[derive(Debug)]
struct Group {
    cluster: String,
    cohort: String,
    active_scores: Vec<f64>,
    live_nodes: u32,
    world_size: u32,
}

/// Hashes a cohort key to itself: keys come from the deployment's keyed
/// SipHash, already uniform and unknown to clients.
#[derive(Debug, Default)]
struct KeyedHash(u64);

impl Hasher for KeyedHash {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only `write_u64` is used (the map's keys are u64); fold anything else in.
        bytes.iter().for_each(|b| self.0 = self.0.rotate_left(8) ^ u64::from(*b));
    }
    fn write_u64(&mut self, key: u64) {
        self.0 = key;
    }
}

/// One key per (cluster, cohort): the cluster's length first, so no two pairs share a key.
fn group_ids(cluster: &[u8], cohort: &[u8]) -> Box<[u8]> {
    [&(cluster.len() as u64).to_le_bytes()[..], cluster, cohort].concat().into_boxed_slice()
}

impl CohortTally {
    /// Counts one live node; ids are read, and checked as UTF-8, once per cohort key.
    pub fn add(&mut self, node: LiveNode<'_>) -> Result<(), ShardError> {
        let at = match self.by_key.get(&node.cohort_key) {
            Some(&at) => at,
            None => self.group_of(&node)?,
        };
        let group = &mut self.groups[at];
        group.live_nodes += 1;
        if node.state == NodeState::Active {
            group.active_scores.push(node.score);
        }
        let world_size = node.world_size.unwrap_or(0).clamp(0, i64::from(u32::MAX)) as u32;
        group.world_size = group.world_size.max(world_size);
        Ok(())
    }

    /// The group of `node`'s ids, created when new, under `node`'s key from now on.
    fn group_of(&mut self, node: &LiveNode<'_>) -> Result<usize, ShardError> {
        let ids = group_ids(node.cluster, node.cohort);
        let at = match self.by_ids.get(&ids) {
            Some(&at) => at,
            None => {
                let text = |id: &[u8]| String::from_utf8(id.to_vec()).map_err(|e| format!("an id is not UTF-8: {e}"));
                self.groups.push(Group {
                    cluster: text(node.cluster)?,
                    cohort: text(node.cohort)?,
                    active_scores: Vec::new(),
                    live_nodes: 0,
                    world_size: 0,
                });
                self.by_ids.insert(ids, self.groups.len() - 1);
                self.groups.len() - 1
            }
        };
        self.by_key.insert(node.cohort_key, at);
        Ok(at)
    }
}

impl ThresholdBook {
    /// The next book from the live nodes' tally, smoothing against `self`.
    /// A cluster keeps at most `max_cohorts_per_cluster` cohorts: the default
    /// cohort, then the ones with most live nodes (ties by id); the others get
    /// no snapshot and are counted in `cohorts_over_cap`, so a cluster whose
    /// nodes each name their own cohort cannot grow the book, `/metrics` or the listings.
    pub fn next(&self, tally: CohortTally, config: &Config, epoch: u64, now_ms: u64) -> ThresholdBook {
        let cap = config.max_cohorts_per_cluster as usize;
        let mut groups = tally.groups;
        groups.sort_unstable_by(|a, b| (&a.cluster, &a.cohort).cmp(&(&b.cluster, &b.cohort)));
        let mut cohorts = Vec::with_capacity(groups.len());
        let mut cohorts_over_cap = 0u32;
        for cluster in groups.chunk_by(|a, b| a.cluster == b.cluster) {
            let keep = (cluster.len() > cap).then(|| largest_cohorts(cluster, cap));
            if let Some(keep) = &keep {
                cohorts_over_cap = cohorts_over_cap.saturating_add((cluster.len() - keep.len()) as u32);
            }
            for (i, group) in cluster.iter().enumerate() {
                if keep.as_ref().is_none_or(|keep| keep.contains(&i)) {
                    let previous = self.cohort(&group.cluster, &group.cohort).and_then(|s| s.threshold);
                    cohorts.push(snapshot(group, previous, config));
                }
            }
        }
        ThresholdBook { epoch, computed_at_ms: now_ms, cohorts, cohorts_over_cap }
    }

    /// The snapshot of one cohort, if it has live nodes.
    pub fn cohort(&self, cluster: &str, cohort: &str) -> Option<&ThresholdSnapshot> {
        self.cohorts
            .binary_search_by(|s| (s.cluster.as_str(), s.cohort.as_str()).cmp(&(cluster, cohort)))
            .ok()
            .map(|i| &self.cohorts[i])
    }

    /// The published threshold of a cohort, when it has quorum.
    pub fn threshold(&self, cluster: &str, cohort: &str) -> Option<f64> {
        self.cohort(cluster, cohort).and_then(|s| s.threshold)
    }

    /// Serialized form for shared data; a failure is an error, never an empty book written.
    pub fn encode(&self) -> Result<Vec<u8>, StoreError> {
        encode("book", self)
    }

    /// Reads a published book (the key as created at init reads as the empty
    /// book); an unreadable one is an error, never read as "no thresholds".
    pub fn decode(bytes: &[u8]) -> Result<ThresholdBook, StoreError> {
        decode("book", bytes)
    }
}

/// Which of one cluster's cohorts (sorted by id) a recompute keeps, `cap` at
/// most: the default one, then the most live nodes, then the first ids.
/// One pass, O(cohorts × cap), no sort.
fn largest_cohorts(cohorts: &[Group], cap: usize) -> Vec<usize> {
    // Best first: (is the default cohort, live nodes); ties keep the earlier id.
    let mut kept: Vec<(bool, u32, usize)> = Vec::with_capacity(cap + 1);
    for (i, group) in cohorts.iter().enumerate() {
        let rank = (group.cohort.is_empty(), group.live_nodes);
        let at = kept.iter().position(|(d, n, _)| rank > (*d, *n)).unwrap_or(kept.len());
        if at < cap {
            kept.insert(at, (rank.0, rank.1, i));
            kept.truncate(cap);
        }
    }
    kept.into_iter().map(|(_, _, i)| i).collect()
}

fn snapshot(group: &Group, previous: Option<f64>, config: &Config) -> ThresholdSnapshot {
    let Group { cluster, cohort, active_scores: scores, live_nodes, world_size } = group;
    let (live_nodes, world_size) = (*live_nodes, *world_size);
    let active_nodes = scores.len() as u32;
    let spread = Spread::of(&mut scores.clone(), config.k);
    let threshold = spread.filter(|_| active_nodes >= config.statistical_min).map(|s| {
        let smoothed = match previous {
            Some(prev) => config.ema_alpha * s.raw_threshold + (1.0 - config.ema_alpha) * prev,
            None => s.raw_threshold,
        };
        smoothed.clamp(THRESHOLD_RANGE.0, THRESHOLD_RANGE.1)
    });
    let stragglers = threshold.map_or(0, |t| scores.iter().filter(|s| *s + STRAGGLER_EPSILON < t).count() as u32);
    let mut histogram = vec![0u32; HISTOGRAM_BINS];
    for s in scores {
        let bin = ((s * HISTOGRAM_BINS as f64) as usize).min(HISTOGRAM_BINS - 1);
        histogram[bin] += 1;
    }
    ThresholdSnapshot {
        cluster: cluster.clone(),
        cohort: cohort.clone(),
        active_nodes,
        live_nodes,
        median: spread.map_or(0.0, |s| s.median),
        mad: spread.map_or(0.0, |s| s.mad),
        threshold,
        stragglers,
        world_size,
        coverage_low: f64::from(active_nodes) < config.coverage_fraction * f64::from(world_size),
        histogram,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::{NodeDetails, NodeRecord};
    use crate::seed::HashSeed;
    use crate::shard::cohort_key;

    fn record(cluster: &str, cohort: &str, node: usize, score: f64) -> NodeRecord {
        NodeRecord {
            cluster: cluster.into(),
            node: format!("n{node}"),
            cohort: cohort.into(),
            score,
            state: NodeState::Active,
            last_seen_ms: 0,
            details: NodeDetails::default(),
        }
    }

    fn key(r: &NodeRecord) -> u64 {
        cohort_key(&HashSeed::from_bytes([7; 16]), &r.cluster, &r.cohort)
    }

    fn tally(records: &[NodeRecord]) -> CohortTally {
        let mut tally = CohortTally::default();
        records.iter().for_each(|r| assert_eq!(tally.add(r.live_node(key(r))), Ok(())));
        tally
    }

    fn records(cluster: &str, scores: &[f64]) -> Vec<NodeRecord> {
        scores.iter().enumerate().map(|(i, s)| record(cluster, "", i, *s)).collect()
    }

    const SCORES: [f64; 5] = [0.9, 0.5, 0.95, 0.8, 0.92];
    // median 0.9, MAD 0.05 → raw 0.9 − 2·1.4826·0.05
    const RAW: f64 = 0.9 - 2.0 * 1.4826 * 0.05;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| (a - b).abs() < 1e-12)
    }

    #[test]
    fn quorum_gates_the_threshold() {
        let config = Config::default();
        let four = ThresholdBook::default().next(tally(&records("c", &SCORES[..4])), &config, 1, 0);
        assert_eq!(four.threshold("c", ""), None);
        assert_eq!(four.cohort("c", "").map(|s| s.active_nodes), Some(4));
        let five = ThresholdBook::default().next(tally(&records("c", &SCORES)), &config, 1, 0);
        assert!(close(five.threshold("c", ""), RAW));
        assert_eq!(five.cohort("c", "").map(|s| s.stragglers), Some(1), "0.5 is below");
        let histogram = five.cohort("c", "").map(|s| s.histogram.clone()).unwrap();
        // 0.5 → bin 10, 0.8 → 16, 0.9 → 18, 0.92 and 0.95 → 18 and 19.
        assert_eq!((histogram.len(), histogram.iter().sum::<u32>()), (HISTOGRAM_BINS, 5));
        assert_eq!((histogram[10], histogram[16], histogram[18], histogram[19]), (1, 1, 2, 1));
    }

    #[test]
    fn only_active_nodes_count() {
        let mut live = records("c", &SCORES);
        live[0].state = NodeState::Calibrating;
        let book = ThresholdBook::default().next(tally(&live), &Config::default(), 1, 0);
        assert_eq!(book.threshold("c", ""), None);
        assert_eq!(book.cohort("c", "").map(|s| (s.active_nodes, s.live_nodes)), Some((4, 5)));
    }

    #[test]
    fn ema_sequence_then_reset_after_quorum_loss() {
        let config = Config::default();
        let first = ThresholdBook::default().next(tally(&records("c", &SCORES)), &config, 1, 0);
        assert!(close(first.threshold("c", ""), RAW), "the first value is the raw one");
        let all_high = records("c", &[0.9; 5]); // raw 0.9
        let second = first.next(tally(&all_high), &config, 2, 0);
        let expect2 = 0.2 * 0.9 + 0.8 * RAW;
        assert!(close(second.threshold("c", ""), expect2));
        let third = second.next(tally(&all_high), &config, 3, 0);
        assert!(close(third.threshold("c", ""), 0.2 * 0.9 + 0.8 * expect2));
        let lost = third.next(tally(&all_high[..4]), &config, 4, 0);
        assert_eq!(lost.threshold("c", ""), None);
        let back = lost.next(tally(&all_high), &config, 5, 0);
        assert!(close(back.threshold("c", ""), 0.9), "restarts from raw");
    }

    #[test]
    fn clamped_to_what_the_agent_accepts() {
        let config = Config::default();
        let low = ThresholdBook::default().next(tally(&records("c", &[0.0, 0.0, 0.3, 0.5, 0.6])), &config, 1, 0);
        assert_eq!(low.threshold("c", ""), Some(0.1));
        let high = ThresholdBook::default().next(tally(&records("c", &[1.0; 5])), &config, 1, 0);
        assert_eq!(high.threshold("c", ""), Some(0.99));
    }

    #[test]
    fn cohorts_and_clusters_are_kept_apart() {
        let mut live = records("a", &SCORES);
        live.extend(records("b", &[0.5; 5]));
        live.extend(SCORES.iter().enumerate().map(|(i, s)| record("a", "cg1", 10 + i, s - 0.2)));
        let book = ThresholdBook::default().next(tally(&live), &Config::default(), 1, 0);
        assert!(close(book.threshold("a", ""), RAW));
        assert!(close(book.threshold("b", ""), 0.5));
        assert!(close(book.threshold("a", "cg1"), RAW - 0.2));
        assert_eq!(book.threshold("c", ""), None);
        assert_eq!(book.cohorts.len(), 3);
    }

    #[test]
    fn ids_that_concatenate_alike_are_different_cohorts_and_the_book_is_sorted() {
        let mut live: Vec<NodeRecord> = (0..5).map(|i| record("ab", "c", i, 0.5)).collect();
        live.extend((0..5).map(|i| record("a", "bc", 10 + i, 0.7)));
        live.extend((0..5).map(|i| record("a", "", 20 + i, 0.9)));
        live.reverse();
        let book = ThresholdBook::default().next(tally(&live), &Config::default(), 1, 0);
        let ids: Vec<(&str, &str)> = book.cohorts.iter().map(|s| (s.cluster.as_str(), s.cohort.as_str())).collect();
        assert_eq!(ids, [("a", ""), ("a", "bc"), ("ab", "c")]);
        assert!(close(book.threshold("a", "bc"), 0.7) && close(book.threshold("ab", "c"), 0.5));
    }

    #[test]
    fn a_cohort_stored_under_two_seeds_is_one_group() {
        let live: Vec<NodeRecord> = (0..30).map(|i| record(["a", "b"][i % 2], ["", "x"][i / 15], i, 0.5)).collect();
        let under = |seed_of: &dyn Fn(usize) -> u8| {
            let mut tally = CohortTally::default();
            for (i, r) in live.iter().enumerate() {
                let key = cohort_key(&HashSeed::from_bytes([seed_of(i); 16]), &r.cluster, &r.cohort);
                assert_eq!(tally.add(r.live_node(key)), Ok(()));
            }
            ThresholdBook::default().next(tally, &Config::default(), 1, 0)
        };
        let one_seed = under(&|_| 1);
        assert_eq!(one_seed.cohorts.iter().map(|s| s.active_nodes).collect::<Vec<_>>(), [8, 7, 7, 8]);
        assert_eq!(under(&|i| (i % 3) as u8), one_seed);
    }

    #[test]
    fn an_id_that_is_not_utf8_is_an_error_not_a_cohort() {
        let mut tally = CohortTally::default();
        let node = |cohort: &'static [u8]| LiveNode {
            cluster: b"c",
            cohort,
            score: 0.5,
            state: NodeState::Active,
            world_size: None,
            cohort_key: cohort.len() as u64,
        };
        assert_eq!(tally.add(node(b"ok")), Ok(()));
        assert!(tally.add(node(b"\xff")).is_err_and(|e| e.contains("UTF-8")));
        let book = ThresholdBook::default().next(tally, &Config::default(), 1, 0);
        assert_eq!(book.cohorts.len(), 1);
    }

    #[test]
    fn coverage_is_low_below_the_fraction_of_world_size() {
        let mut live = records("c", &SCORES);
        live[0].details.world_size = Some(8);
        let book = ThresholdBook::default().next(tally(&live), &Config::default(), 1, 0);
        assert_eq!(book.cohort("c", "").map(|s| (s.world_size, s.coverage_low)), Some((8, true)));
        live[0].details.world_size = Some(6);
        let book = ThresholdBook::default().next(tally(&live), &Config::default(), 1, 0);
        assert_eq!(book.cohort("c", "").map(|s| s.coverage_low), Some(false));
    }

    #[test]
    fn round_trips_through_shared_data() {
        let book = ThresholdBook::default().next(tally(&records("c", &SCORES)), &Config::default(), 7, 42);
        assert_eq!(ThresholdBook::decode(&book.encode().unwrap()), Ok(book));
        assert_eq!(ThresholdBook::decode(&[]), Ok(ThresholdBook::default()));
        assert!(ThresholdBook::decode(&[0xff; 3]).is_err());
    }

    #[test]
    fn cohorts_per_cluster_are_capped_and_counted() {
        let config = Config { max_cohorts_per_cluster: 3, ..Config::default() };
        let mut live = records("c", &SCORES); // the default cohort, 5 nodes
        for cohort in 0..50 {
            live.push(record("c", &format!("own-{cohort:02}"), 100 + cohort, 0.5));
        }
        live.push(record("c", "big", 200, 0.5));
        live.push(record("c", "big", 201, 0.5));
        live.extend(records("other", &SCORES));
        let book = ThresholdBook::default().next(tally(&live), &config, 1, 0);
        let kept: Vec<_> = book.cohorts.iter().map(|s| (s.cluster.as_str(), s.cohort.as_str())).collect();
        assert_eq!(kept, [("c", ""), ("c", "big"), ("c", "own-00"), ("other", "")]);
        assert_eq!(book.cohorts_over_cap, 49);
        assert!(close(book.threshold("c", ""), RAW), "the default cohort is kept whole");
    }
}
