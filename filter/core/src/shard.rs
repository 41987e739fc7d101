//! A registry shard's bytes: node records laid out so that a recompute and a
//! push read only what they need. A push splices its own record between the
//! others' bytes, copied as they are; a sweep reads each record's fixed head
//! and ids and skips its details. Only listings decode the details.
//!
//! A shard is its records back to back. A record, little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 0..4 | length of the whole record |
//! | 4..12 | `last_seen_ms` |
//! | 12..20 | `score` (f64) |
//! | 20..28 | `world_size` (i64; 0 when absent) |
//! | 28 | state: 0 active, 1 calibrating, 2 idle |
//! | 29 | 1 when `world_size` is present |
//! | 30..32, 32..34, 34..36 | lengths of the cluster, cohort and node ids |
//! | 36..44 | [`cohort_key`], so a recompute groups nodes without reading their ids |
//! | 44.. | the three ids (UTF-8), then the details (postcard) |

use crate::node::{LiveNode, NodeDetails, NodeRecord, NodeState};
use crate::seed::HashSeed;

/// The fixed part of a record.
const HEAD: usize = 44;

/// One stored record, borrowed from its shard; its head and id lengths are checked.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    bytes: &'a [u8],
}

/// Why a shard could not be read (the store names the key).
pub type ShardError = String;

/// The records of a shard, in order; a malformed record ends them with an error.
pub fn records(shard: &[u8]) -> Records<'_> {
    Records { rest: shard }
}

/// Iterator over a shard's records (see [`records`]).
pub struct Records<'a> {
    rest: &'a [u8],
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<Record<'a>, ShardError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let split = split_record(self.rest);
        self.rest = split.as_ref().map_or(&[], |(_, rest)| rest);
        Some(split.map(|(record, _)| record))
    }
}

fn split_record(bytes: &[u8]) -> Result<(Record<'_>, &[u8]), ShardError> {
    if bytes.len() < HEAD {
        return Err(format!("a record head is cut short ({} of {HEAD} bytes)", bytes.len()));
    }
    let len = u32::from_le_bytes(array(bytes, 0)) as usize;
    let ids = (0..3).map(|i| usize::from(u16::from_le_bytes(array(bytes, 30 + 2 * i)))).sum::<usize>();
    if len < HEAD + ids || len > bytes.len() {
        return Err(format!("a record claims {len} bytes ({} left, ids {ids})", bytes.len()));
    }
    Ok((Record { bytes: &bytes[..len] }, &bytes[len..]))
}

/// `N` bytes at `at`; callers have checked the length.
fn array<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    let mut out = [0; N];
    out.copy_from_slice(&bytes[at..at + N]);
    out
}

impl<'a> Record<'a> {
    /// The record as stored, to copy into a rewritten shard.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// When the node last pushed.
    pub fn last_seen_ms(&self) -> u64 {
        u64::from_le_bytes(array(self.bytes, 4))
    }

    /// The length of id `which` (0 cluster, 1 cohort, 2 node).
    fn id_len(&self, which: usize) -> usize {
        usize::from(u16::from_le_bytes(array(self.bytes, 30 + 2 * which)))
    }

    fn id(&self, which: usize) -> &'a [u8] {
        let start = HEAD + (0..which).map(|i| self.id_len(i)).sum::<usize>();
        &self.bytes[start..start + self.id_len(which)]
    }

    fn text(&self, which: usize) -> Result<&'a str, ShardError> {
        std::str::from_utf8(self.id(which)).map_err(|e| format!("an id is not UTF-8: {e}"))
    }

    /// Whether this is the record of `node` in `cluster`.
    pub fn is_node(&self, cluster: &str, node: &str) -> bool {
        self.id(2) == node.as_bytes() && self.id(0) == cluster.as_bytes()
    }

    /// The cluster id.
    pub fn cluster(&self) -> Result<&'a str, ShardError> {
        self.text(0)
    }

    fn state(&self) -> Result<NodeState, ShardError> {
        match self.bytes[28] {
            0 => Ok(NodeState::Active),
            1 => Ok(NodeState::Calibrating),
            2 => Ok(NodeState::Idle),
            other => Err(format!("unknown node state {other}")),
        }
    }

    /// What a recompute reads, without decoding the details.
    pub fn live_node(&self) -> Result<LiveNode<'a>, ShardError> {
        Ok(LiveNode {
            cluster: self.id(0),
            cohort: self.id(1),
            cohort_key: u64::from_le_bytes(array(self.bytes, 36)),
            score: f64::from_le_bytes(array(self.bytes, 12)),
            state: self.state()?,
            world_size: (self.bytes[29] == 1).then(|| i64::from_le_bytes(array(self.bytes, 20))),
        })
    }

    /// The whole record, details included (listings).
    pub fn to_node_record(&self) -> Result<NodeRecord, ShardError> {
        let live = self.live_node()?;
        let details_at = HEAD + (0..3).map(|i| self.id_len(i)).sum::<usize>();
        let details: NodeDetails =
            postcard::from_bytes(&self.bytes[details_at..]).map_err(|e| format!("a record's details: {e}"))?;
        Ok(NodeRecord {
            cluster: self.text(0)?.to_owned(),
            node: self.text(2)?.to_owned(),
            cohort: self.text(1)?.to_owned(),
            score: live.score,
            state: live.state,
            last_seen_ms: self.last_seen_ms(),
            details,
        })
    }
}

/// The key a record of (`cluster`, `cohort`) is stored with: keyed by the
/// deployment's seed, so ids cannot be chosen to collide.
pub fn cohort_key(seed: &HashSeed, cluster: &str, cohort: &str) -> u64 {
    seed.hash(&["cohort", cluster, cohort])
}

/// `record`'s stored form, with its `cohort_key`.
pub fn encode(record: &NodeRecord, cohort_key: u64) -> Result<Vec<u8>, ShardError> {
    let ids = [&record.cluster, &record.cohort, &record.node];
    let mut lens = [0u16; 3];
    for (len, id) in lens.iter_mut().zip(ids) {
        *len = u16::try_from(id.len()).map_err(|_| format!("an id of {} bytes is too long to store", id.len()))?;
    }
    let details = postcard::to_allocvec(&record.details).map_err(|e| format!("a record's details: {e}"))?;
    let len = HEAD + ids.iter().map(|id| id.len()).sum::<usize>() + details.len();
    let mut out = Vec::with_capacity(len);
    out.extend_from_slice(&u32::try_from(len).map_err(|_| format!("a record of {len} bytes"))?.to_le_bytes());
    out.extend_from_slice(&record.last_seen_ms.to_le_bytes());
    out.extend_from_slice(&record.score.to_le_bytes());
    out.extend_from_slice(&record.details.world_size.unwrap_or(0).to_le_bytes());
    out.push(match record.state {
        NodeState::Active => 0,
        NodeState::Calibrating => 1,
        NodeState::Idle => 2,
    });
    out.push(u8::from(record.details.world_size.is_some()));
    lens.iter().for_each(|l| out.extend_from_slice(&l.to_le_bytes()));
    out.extend_from_slice(&cohort_key.to_le_bytes());
    ids.iter().for_each(|id| out.extend_from_slice(id.as_bytes()));
    out.extend_from_slice(&details);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::DETAIL_GAUGES;

    fn record(node: &str, world_size: Option<i64>, state: NodeState) -> NodeRecord {
        NodeRecord {
            cluster: "c1".into(),
            node: node.into(),
            cohort: "cg-é".into(),
            score: 0.875,
            state,
            last_seen_ms: 1_700_000_000_123,
            details: NodeDetails {
                rank: Some(3),
                world_size,
                gpu_model: Some("H100".into()),
                gpu_count: None,
                detection_mode: Some("full".into()),
                gauges: [Some(0.5); DETAIL_GAUGES.len()],
            },
        }
    }

    #[test]
    fn records_read_back_whole_and_as_a_recompute_sees_them() {
        let stored = [record("n1", Some(64), NodeState::Active), record("n-2", None, NodeState::Idle)];
        let shard: Vec<u8> = stored.iter().flat_map(|r| encode(r, 7).unwrap_or_default()).collect();
        let read: Vec<Record<'_>> = records(&shard).collect::<Result<_, _>>().unwrap_or_default();
        assert_eq!(read.len(), 2);
        for (r, want) in read.iter().zip(&stored) {
            assert_eq!(r.to_node_record().as_ref(), Ok(want));
            assert_eq!(r.live_node(), Ok(want.live_node(7)));
            assert_eq!(r.last_seen_ms(), want.last_seen_ms);
            assert!(r.is_node("c1", &want.node) && !r.is_node("c2", &want.node) && !r.is_node("c1", "n"));
        }
        assert_eq!(read[0].bytes().len() + read[1].bytes().len(), shard.len());
    }

    #[test]
    fn a_malformed_shard_is_an_error_never_fewer_records() {
        let whole = encode(&record("n1", None, NodeState::Active), 7).unwrap_or_default();
        for cut in [1, HEAD - 1, HEAD + 3, whole.len() - 1] {
            let errors = records(&whole[..cut]).filter(Result::is_err).count();
            assert_eq!(errors, 1, "cut at {cut}");
        }
        let mut bad_state = whole.clone();
        bad_state[28] = 9;
        assert!(records(&bad_state).next().is_some_and(|r| r.and_then(|r| r.live_node()).is_err()));
        let mut bad_len = whole;
        bad_len[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(records(&bad_len).next().is_some_and(|r| r.is_err()));
    }
}
