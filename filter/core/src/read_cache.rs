//! Renders of the expensive read routes (`/metrics`' per-cohort part, the
//! listings), made at most once per stamp and served from memory until the
//! stamp moves on.
//!
//! A stamp is what the render depends on: the published book's epoch for
//! what is derived from the book alone, the tick number (`now_ms / tick`) for
//! what reads the stored records. A front door keeps one cache per process
//! (or per VM) beside its [`crate::service::Fleet`]; the first reader of a
//! stamp renders while later readers of the same stamp wait for that render
//! instead of repeating it, so however many clients poll, the store is read
//! and the text built once per stamp.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

/// What a service caches of its reads: `/metrics`' per-cohort text and the
/// cluster listing's bodies, both stamped with the book they were rendered from
/// (a node listing reads the records per request: it shows the latest push).
#[derive(Default)]
pub struct Reads {
    /// The per-cohort part of `/metrics`.
    pub cohort_metrics: TickCell<Arc<str>>,
    /// Listing bodies by path and query.
    pub bodies: ReadCache,
}

/// One value per stamp.
pub struct TickCell<T> {
    slot: Mutex<Option<(u64, T)>>,
}

impl<T: Clone> Default for TickCell<T> {
    fn default() -> Self {
        Self { slot: Mutex::new(None) }
    }
}

impl<T: Clone> TickCell<T> {
    /// The value built for `stamp`, building it with `build` if this stamp has none yet.
    /// A failed build is not cached: the next reader tries again.
    pub fn get_or_build<E>(&self, stamp: u64, build: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        // Held while building: concurrent readers of a stamp wait for the one render.
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((at, value)) = slot.as_ref() {
            if *at == stamp {
                return Ok(value.clone());
            }
        }
        let value = build()?;
        *slot = Some((stamp, value.clone()));
        Ok(value)
    }
}

/// Rendered bodies by request key (route and query), for one stamp at a time,
/// at most `capacity` keys: past it a key is rendered without being kept, so
/// memory stays bounded whatever queries arrive.
pub struct ReadCache {
    capacity: usize,
    entries: Mutex<Bodies>,
}

/// The stamp the bodies were rendered for, and the bodies by key.
type Bodies = (u64, BTreeMap<String, Arc<[u8]>>);

/// Keys kept per stamp by default: every page a dashboard and a few scrapers ask for.
pub const DEFAULT_CAPACITY: usize = 64;

impl Default for ReadCache {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

impl ReadCache {
    /// A cache keeping at most `capacity` bodies.
    pub fn new(capacity: usize) -> Self {
        Self { capacity, entries: Mutex::new((0, BTreeMap::new())) }
    }

    /// The body of `key` rendered for `stamp`, rendering it if needed. A failed
    /// render is not cached.
    pub fn get_or_render<E>(
        &self,
        key: &str,
        stamp: u64,
        render: impl FnOnce() -> Result<Vec<u8>, E>,
    ) -> Result<Arc<[u8]>, E> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.0 != stamp {
            *entries = (stamp, BTreeMap::new());
        }
        if let Some(body) = entries.1.get(key) {
            return Ok(body.clone());
        }
        let body: Arc<[u8]> = render()?.into();
        if entries.1.len() < self.capacity {
            entries.1.insert(key.to_owned(), body.clone());
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn renders_once_per_stamp() {
        let cache = ReadCache::new(2);
        let renders = Cell::new(0);
        let render = |text: &str| {
            renders.set(renders.get() + 1);
            Ok::<_, ()>(text.as_bytes().to_vec())
        };
        for _ in 0..10 {
            assert_eq!(cache.get_or_render("/metrics", 1, || render("a")).as_deref(), Ok(&b"a"[..]));
        }
        assert_eq!(renders.get(), 1);
        assert_eq!(cache.get_or_render("/metrics", 2, || render("b")).as_deref(), Ok(&b"b"[..]));
        assert_eq!(renders.get(), 2);
        // Past capacity a key is rendered each time, never stored.
        let _ = cache.get_or_render("/x?offset=1", 2, || render("c"));
        let _ = cache.get_or_render("/x?offset=2", 2, || render("d"));
        let _ = cache.get_or_render("/x?offset=2", 2, || render("d"));
        assert_eq!(renders.get(), 5);
        assert_eq!(cache.get_or_render("/metrics", 2, || render("b")).as_deref(), Ok(&b"b"[..]));
        assert_eq!(renders.get(), 5);
        assert_eq!(cache.get_or_render("/err", 2, || Err::<Vec<u8>, _>("no")), Err("no"));
    }

    #[test]
    fn tick_cell_builds_once_and_retries_failures() {
        let cell: TickCell<u32> = TickCell::default();
        let builds = Cell::new(0);
        let build = |v: u32| {
            builds.set(builds.get() + 1);
            Ok::<_, ()>(v)
        };
        assert_eq!(cell.get_or_build(5, || build(1)), Ok(1));
        assert_eq!(cell.get_or_build(5, || build(2)), Ok(1));
        assert_eq!(cell.get_or_build(6, || Err::<u32, _>(())), Err(()));
        assert_eq!(cell.get_or_build(6, || build(3)), Ok(3));
        assert_eq!(builds.get(), 2);
    }
}
