//! The per-deployment hash seed: a keyed, stable hash for every shard and table key.
//!
//! Shard and table keys persist in shared data and are compared across VMs and
//! threads, so the hash must be the same everywhere (one seed, created once and
//! read back by all) and never change with the Rust release (SipHash-1-3 with
//! explicit keys, not `DefaultHasher`). The seed is random, so an outsider cannot
//! pick ids that all land in one shard.

use crate::store::{update, SharedStore, StoreError, Update, KEY_PREFIX, SEED_BYTES};
use siphasher::sip::SipHasher13;
use std::hash::Hasher;

/// The two SipHash keys every worker of a deployment shares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashSeed {
    k0: u64,
    k1: u64,
}

impl HashSeed {
    /// A seed from 16 bytes (little-endian keys).
    pub fn from_bytes(bytes: [u8; SEED_BYTES]) -> Self {
        let (a, b) = bytes.split_at(8);
        let key = |half: &[u8]| half.iter().rev().fold(0u64, |k, byte| (k << 8) | u64::from(*byte));
        Self { k0: key(a), k1: key(b) }
    }

    /// The stored form.
    pub fn to_bytes(self) -> [u8; SEED_BYTES] {
        let mut out = [0u8; SEED_BYTES];
        out[..8].copy_from_slice(&self.k0.to_le_bytes());
        out[8..].copy_from_slice(&self.k1.to_le_bytes());
        out
    }

    /// SipHash-1-3 of `parts`, each prefixed by its length so that ("ab", "c")
    /// and ("a", "bc") differ. Start `parts` with a domain tag per use.
    pub fn hash(&self, parts: &[&str]) -> u64 {
        let mut h = SipHasher13::new_with_keys(self.k0, self.k1);
        for part in parts {
            h.write(&(part.len() as u64).to_le_bytes());
            h.write(part.as_bytes());
        }
        h.finish()
    }

    /// The deployment's seed, created from `entropy` if none is stored yet. The
    /// first writer wins and every caller returns what the store holds, so all
    /// VMs and threads agree; a second init (a VM reload) keeps the stored seed.
    ///
    /// A missing key cannot be written by compare-and-swap (the host writes it
    /// unconditionally), so an empty placeholder is created first and the seed
    /// is then CAS-written over it. Two inits racing on the placeholder can only
    /// overwrite each other at start, and every worker reads the stored seed
    /// again on each tick (`Fleet::tick`; `EventLog` per request), so all
    /// converge on it within a tick.
    pub fn establish<S: SharedStore + ?Sized>(store: &S, entropy: [u8; SEED_BYTES]) -> Result<Self, StoreError> {
        let key = seed_key();
        if store.get(&key)?.is_none() {
            store.set(&key, &[], None)?;
        }
        update(store, &key, |bytes| {
            Ok(match bytes.and_then(Self::decode) {
                Some(stored) => Update::Keep(stored),
                None => Update::Write(entropy.to_vec(), Self::from_bytes(entropy)),
            })
        })
    }

    /// The stored seed; an error if [`HashSeed::establish`] has not run.
    pub fn load<S: SharedStore + ?Sized>(store: &S) -> Result<Self, StoreError> {
        match store.get(&seed_key())? {
            Some((bytes, _)) => Self::decode(&bytes)
                .ok_or_else(|| StoreError::Host(format!("the hash seed is {} bytes, not {SEED_BYTES}", bytes.len()))),
            None => Err(StoreError::Host("no hash seed: the store was not initialised".into())),
        }
    }

    /// Seed bytes for a host with no random source: the clock's nanoseconds and
    /// a few addresses, hashed under a fixed key. Only ~20–30 bits an outsider
    /// who knows the start time cannot guess (docs/limits.md); the shard caps
    /// still bound what a collision costs.
    pub fn fallback_entropy(nanos: u128, addresses: [u64; 2]) -> [u8; SEED_BYTES] {
        let fixed = Self::from_bytes(*b"ingero-fleet-wsm");
        let text = [nanos as u64, (nanos >> 64) as u64, addresses[0], addresses[1]].map(|n| n.to_string());
        let mut bytes = [0u8; SEED_BYTES];
        for (half, tag) in bytes.chunks_exact_mut(8).zip(["k0", "k1"]) {
            let parts = [tag, &text[0], &text[1], &text[2], &text[3]];
            half.copy_from_slice(&fixed.hash(&parts).to_le_bytes());
        }
        bytes
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        <[u8; SEED_BYTES]>::try_from(bytes).ok().map(Self::from_bytes)
    }
}

/// The shared-data key holding the seed.
pub fn seed_key() -> String {
    format!("{KEY_PREFIX}seed")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

    /// SipHash-1-3 must not change under us (stored shard keys depend on it).
    /// Expected values come from an independent model of SipHash-c-d (written
    /// from the paper, checked against the reference SipHash-2-4 vectors
    /// 0x726fdb47dd0e0e31, 0x74f839c593dc67fd, …), run with c = 1, d = 3 on the
    /// reference inputs: key 00..0f, messages of 0, 1, 7, 8, 15 and 63 bytes 00 01 02 ….
    #[test]
    fn siphash13_matches_an_independent_model() {
        let mut key = [0u8; 16];
        key.iter_mut().enumerate().for_each(|(i, b)| *b = i as u8);
        let seed = HashSeed::from_bytes(key);
        let raw = |msg: &[u8]| {
            let mut h = SipHasher13::new_with_keys(seed.k0, seed.k1);
            h.write(msg);
            h.finish()
        };
        let message: Vec<u8> = (0u8..64).collect();
        let expected: [(usize, u64); 6] = [
            (0, 0xabac_0158_050f_c4dc),
            (1, 0xc9f4_9bf3_7d57_ca93),
            (7, 0xd392_7d98_9bb1_1140),
            (8, 0x3690_9511_8d29_9a8e),
            (15, 0xd320_d86d_2a51_9956),
            (63, 0x9d19_9062_b7bb_b3a8),
        ];
        for (len, value) in expected {
            assert_eq!(raw(&message[..len]), value, "{len} bytes");
        }
        // Each part is prefixed by its u64 little-endian length.
        assert_eq!(seed.hash(&["node", "c1", "gpu-7"]), 0xc542_1972_9f2e_d1de);
        assert_ne!(seed.hash(&["ab", "c"]), seed.hash(&["a", "bc"]));
    }

    #[test]
    fn seed_round_trips() {
        let bytes: [u8; 16] = *b"0123456789abcdef";
        assert_eq!(HashSeed::from_bytes(bytes).to_bytes(), bytes);
    }

    #[test]
    fn first_writer_wins_and_a_second_init_keeps_the_seed() {
        let store = MemoryStore::default();
        assert!(HashSeed::load(&store).is_err(), "no seed before init");
        let first = HashSeed::establish(&store, [1; 16]);
        assert_eq!(first, Ok(HashSeed::from_bytes([1; 16])));
        // A VM reload (or another worker) brings other entropy and reads the stored seed back.
        assert_eq!(HashSeed::establish(&store, [2; 16]), first);
        assert_eq!(HashSeed::load(&store), first);
    }

    #[test]
    fn os_entropy_differs() {
        let store = MemoryStore::default();
        assert_ne!(store.entropy().ok(), store.entropy().ok());
    }

    #[test]
    fn fallback_entropy_differs_with_each_input_and_keeps_its_values() {
        let base = HashSeed::fallback_entropy(1_700_000_000_000_000_000, [0x1000, 0x2000]);
        assert_ne!(base, HashSeed::fallback_entropy(1_700_000_000_000_000_001, [0x1000, 0x2000]));
        assert_ne!(base, HashSeed::fallback_entropy(1_700_000_000_000_000_000, [0x1008, 0x2000]));
        assert_ne!(base, HashSeed::fallback_entropy(1_700_000_000_000_000_000, [0x1000, 0x2008]));
        assert_ne!(base[..8], base[8..], "two independent keys");
        assert_eq!(base, HashSeed::fallback_entropy(1_700_000_000_000_000_000, [0x1000, 0x2000]));
    }
}
