//! The host's shared key/value store with compare-and-swap, as the core sees it.
//!
//! Semantics follow proxy-wasm shared data in Envoy: every write bumps a
//! version; a write naming a stale version fails with `CasMismatch`; keys are
//! never deleted; writing a missing key always succeeds (so first writes are
//! not CAS-protected, and [`crate::registry::Registry::init`] creates keys up front).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use thiserror::Error;

/// Prefix of every shared-data key, so other plugins in one VM id never collide.
pub const KEY_PREFIX: &str = "ingero_fleet/v1/";

/// Attempts at one compare-and-swap update before it gives up (answered 503):
/// conflicts are normal under concurrency, but a writer must never spin.
pub const MAX_CAS_ATTEMPTS: usize = 32;

/// Why a shared-data operation failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    #[error("shared data changed concurrently")]
    CasMismatch,
    #[error("shared data host error: {0}")]
    Host(String),
}

/// A versioned key/value store shared by every worker.
pub trait SharedStore {
    /// The value and version of `key`, or `None` if it was never written.
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError>;
    /// Writes `value` if `key` is still at `version` (`None`: unconditionally).
    fn set(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<(), StoreError>;
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
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
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
}

impl<T: SharedStore + ?Sized> SharedStore for std::sync::Arc<T> {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        (**self).get(key)
    }
    fn set(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<(), StoreError> {
        (**self).set(key, value, version)
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
        let (value, v1) = s.get("k").ok().flatten().unwrap_or_default();
        assert_eq!(value, b"a");
        assert_eq!(s.set("k", b"b", Some(v1)), Ok(()));
        assert_eq!(s.set("k", b"c", Some(v1)), Err(StoreError::CasMismatch));
        assert_eq!(s.set("k", b"d", None), Ok(()));
        assert_eq!(s.get("k").ok().flatten().map(|(v, _)| v), Some(b"d".to_vec()));
    }
}
