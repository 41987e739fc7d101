//! The host's shared key/value store with compare-and-swap, as the core sees it.
//!
//! Semantics follow proxy-wasm shared data in Envoy: every write bumps a
//! version; a write naming a stale version fails with `CasMismatch`; keys are
//! never deleted; writing a missing key always succeeds (so first writes are
//! not CAS-protected, and [`crate::registry::Registry::init`] creates keys up front).

use siphasher::sip::SipHasher13;
use std::collections::HashMap;
use std::hash::Hasher;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use thiserror::Error;

/// Prefix of every shared-data key, so other plugins in one VM id never collide.
/// v2: shard keys come from the keyed hash (a v1 layout is never read);
/// v3: shard records in `shard.rs`'s layout (a v2 shard is never read);
/// v4: records carry their cohort key.
pub const KEY_PREFIX: &str = "ingero_fleet/v4/";

/// Bytes of entropy a host gives for the per-deployment hash seed.
pub const SEED_BYTES: usize = 16;

/// Attempts at one compare-and-swap update before it gives up (answered 503):
/// conflicts are normal under concurrency, but a writer must never spin.
pub const MAX_CAS_ATTEMPTS: usize = 32;

/// Why a shared-data operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    #[error("shared data changed concurrently")]
    CasMismatch,
    /// Every attempt of a compare-and-swap update met a concurrent write.
    #[error("shared data kept changing: gave up after {MAX_CAS_ATTEMPTS} attempts")]
    Contended,
    #[error("shared data host error: {0}")]
    Host(String),
    /// A stored value could not be written or read in its format.
    #[error("shared data value {key} cannot be {action}: {reason}")]
    Format { key: String, action: &'static str, reason: String },
}

/// What a compare-and-swap update decided after reading the current value.
pub enum Update<T> {
    /// Write these bytes (against the version read), then return `T`.
    Write(Vec<u8>, T),
    /// Leave the value as it is and return `T`.
    Keep(T),
}

/// The one compare-and-swap loop: reads `key`, lets `change` decide from the
/// current bytes (`None`: never written), writes by CAS and retries on a
/// concurrent write, at most [`MAX_CAS_ATTEMPTS`] times.
pub fn update<S, T, E>(
    store: &S,
    key: &str,
    mut change: impl FnMut(Option<&[u8]>) -> Result<Update<T>, E>,
) -> Result<T, E>
where
    S: SharedStore + ?Sized,
    E: From<StoreError>,
{
    for _ in 0..MAX_CAS_ATTEMPTS {
        let current = store.get(key)?;
        let version = current.as_ref().map(|(_, v)| *v);
        match change(current.as_ref().map(|(bytes, _)| bytes.as_slice()))? {
            Update::Keep(out) => return Ok(out),
            Update::Write(bytes, out) => match store.set(key, &bytes, version) {
                Ok(()) => return Ok(out),
                Err(StoreError::CasMismatch) => continue,
                Err(e) => return Err(e.into()),
            },
        }
    }
    Err(StoreError::Contended.into())
}

/// Encodes a stored value; a failure names the key and is an error, never an empty write.
pub fn encode<T: serde::Serialize + ?Sized>(key: &str, value: &T) -> Result<Vec<u8>, StoreError> {
    postcard::to_allocvec(value).map_err(|e| StoreError::Format {
        key: key.to_owned(),
        action: "encoded",
        reason: e.to_string(),
    })
}

/// Decodes a stored value; an empty value (a key created empty) is `T::default()`,
/// an unreadable one is an error, never read as empty and overwritten.
pub fn decode<'a, T: serde::Deserialize<'a> + Default>(key: &str, bytes: &'a [u8]) -> Result<T, StoreError> {
    if bytes.is_empty() {
        return Ok(T::default());
    }
    postcard::from_bytes(bytes).map_err(|e| StoreError::Format {
        key: key.to_owned(),
        action: "decoded",
        reason: e.to_string(),
    })
}

/// A versioned key/value store shared by every worker.
pub trait SharedStore {
    /// The value and version of `key`, or `None` if it was never written.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Writes `value` if `key` is still at `version` (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<(), StoreError>;
    /// Random bytes for the per-deployment hash seed, asked once when no seed
    /// is stored yet (natively the OS's random source; a wasm host mixes what it has).
    fn entropy(&self) -> Result<[u8; SEED_BYTES], StoreError>;
}

/// One lock's share of the keys: value and version by key.
type Stripe = HashMap<String, (Vec<u8>, u32)>;

/// An in-process store with Envoy's semantics, striped so threads rarely contend.
pub struct MemoryStore {
    stripes: Vec<Mutex<Stripe>>,
    next_version: AtomicU32,
}

impl MemoryStore {
    /// A store whose keys spread over `stripes` independent locks.
    pub fn new(stripes: usize) -> Self {
        Self {
            stripes: (0..stripes.max(1)).map(|_| Mutex::new(HashMap::new())).collect(),
            next_version: AtomicU32::new(1),
        }
    }

    fn stripe(&self, key: &str) -> std::sync::MutexGuard<'_, Stripe> {
        // Fixed keys: the keys striped are Fleet's own (a bounded set), never a client's.
        let mut h = SipHasher13::new_with_keys(0, 0);
        h.write(key.as_bytes());
        let index = (h.finish() % self.stripes.len() as u64) as usize;
        // A poisoned stripe still holds consistent data: writes replace whole values.
        self.stripes[index].lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new(64)
    }
}

impl SharedStore for MemoryStore {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        Ok(self.stripe(key).get(key).cloned())
    }

    fn set(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<(), StoreError> {
        let mut map = self.stripe(key);
        let next = self.next_version.fetch_add(1, Ordering::Relaxed).max(1);
        match map.get_mut(key) {
            Some((_, current)) if version.is_some_and(|v| v != *current) => Err(StoreError::CasMismatch),
            Some(entry) => {
                *entry = (value.to_vec(), next);
                Ok(())
            }
            None => {
                map.insert(key.to_owned(), (value.to_vec(), next));
                Ok(())
            }
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    fn entropy(&self) -> Result<[u8; SEED_BYTES], StoreError> {
        let mut bytes = [0u8; SEED_BYTES];
        getrandom::fill(&mut bytes).map_err(|e| StoreError::Host(format!("no OS randomness: {e}")))?;
        Ok(bytes)
    }

    #[cfg(target_arch = "wasm32")]
    fn entropy(&self) -> Result<[u8; SEED_BYTES], StoreError> {
        Err(StoreError::Host("no OS randomness on wasm32: the host adapter supplies entropy".into()))
    }
}

impl<T: SharedStore + ?Sized> SharedStore for std::sync::Arc<T> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        (**self).get(key)
    }
    fn set(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<(), StoreError> {
        (**self).set(key, value, version)
    }
    fn entropy(&self) -> Result<[u8; SEED_BYTES], StoreError> {
        (**self).entropy()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_is_enforced() {
        let s = MemoryStore::new(4);
        assert_eq!(s.get("k"), Ok(None));
        assert_eq!(s.set("k", b"a", Some(99)), Ok(()), "missing keys are always written");
        let (value, v1) = s.get("k").unwrap().unwrap();
        assert_eq!(value, b"a");
        assert_eq!(s.set("k", b"b", Some(v1)), Ok(()));
        assert_eq!(s.set("k", b"c", Some(v1)), Err(StoreError::CasMismatch));
        assert_eq!(s.set("k", b"d", None), Ok(()));
        assert_eq!(s.get("k").ok().flatten().map(|(v, _)| v), Some(b"d".to_vec()));
    }
}

#[cfg(test)]
mod update_tests {
    use super::*;

    #[test]
    fn update_retries_and_keeps() {
        let s = MemoryStore::new(1);
        let out: Result<u32, StoreError> = update(&s, "k", |cur| {
            assert_eq!(cur, None);
            Ok(Update::Write(b"x".to_vec(), 1))
        });
        assert_eq!(out, Ok(1));
        let mut calls = 0;
        // A concurrent write lands after every read: the update gives up, counted as contention.
        let out: Result<(), StoreError> = update(&s, "k", |_| {
            calls += 1;
            s.set("k", b"other", None)?;
            Ok(Update::Write(b"mine".to_vec(), ()))
        });
        assert_eq!((out, calls), (Err(StoreError::Contended), MAX_CAS_ATTEMPTS));
        let kept: Result<&str, StoreError> = update(&s, "k", |_| Ok(Update::Keep("kept")));
        assert_eq!(kept, Ok("kept"));
    }

    #[test]
    fn unreadable_values_are_errors_not_empty() {
        let bad: Result<Vec<String>, _> = decode("k", &[0xff, 0xff, 0xff]);
        assert!(matches!(bad, Err(StoreError::Format { action: "decoded", .. })));
        assert_eq!(decode::<Vec<String>>("k", &[]), Ok(Vec::new()));
    }
}
