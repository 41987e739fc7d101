//! proxy-wasm shared data as the core's [`SharedStore`], and the host's entropy
//! for the per-deployment hash seed.

use ingero_fleet_core::seed::HashSeed;
use ingero_fleet_core::store::SEED_BYTES;
use ingero_fleet_core::{SharedStore, StoreError};
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;
use std::time::UNIX_EPOCH;

/// The Envoy-wide shared data of this plugin's VM id.
pub struct HostSharedData;

impl SharedStore for HostSharedData {
    fn get(&self, key: &str) -> Result<Option<(Vec<u8>, u32)>, StoreError> {
        match hostcalls::get_shared_data(key) {
            // A key exists exactly when it has a version; an empty value comes back as no bytes.
            Ok((value, Some(version))) => Ok(Some((value.unwrap_or_default(), version))),
            Ok((_, None)) => Ok(None),
            Err(status) => Err(host_error(status)),
        }
    }

    fn set(&self, key: &str, value: &[u8], version: Option<u32>) -> Result<(), StoreError> {
        match hostcalls::set_shared_data(key, Some(value), version) {
            Ok(()) => Ok(()),
            Err(Status::CasMismatch) => Err(StoreError::CasMismatch),
            Err(status) => Err(host_error(status)),
        }
    }

    /// Envoy's WASI `random_get` (BoringSSL's `RAND_bytes` in proxy-wasm-cpp-host),
    /// asked once when no seed is stored; should a host refuse it, the core's
    /// fallback mixes the host clock with heap and stack addresses.
    fn entropy(&self) -> Result<[u8; SEED_BYTES], StoreError> {
        let mut bytes = [0u8; SEED_BYTES];
        if wasi::random(&mut bytes) {
            return Ok(bytes);
        }
        let _ = hostcalls::log(
            proxy_wasm::types::LogLevel::Warn,
            "ingero-fleet: the host has no random_get; the hash seed comes from the clock and addresses",
        );
        let nanos =
            hostcalls::get_current_time().map_err(host_error)?.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let (heap, stack) = (Box::new(0u8), 0u8);
        Ok(HashSeed::fallback_entropy(nanos, [&*heap as *const u8 as u64, &stack as *const u8 as u64]))
    }
}

/// The one mapping of a host status to the core's store error.
fn host_error(status: Status) -> StoreError {
    StoreError::Host(format!("{status:?}"))
}

mod wasi {
    #[link(wasm_import_module = "wasi_snapshot_preview1")]
    extern "C" {
        /// WASI's `random_get`, which Envoy's proxy-wasm host provides.
        fn random_get(buf: *mut u8, len: usize) -> u16;
    }

    /// Fills `buf` from the host's random source; false if the host refused.
    pub fn random(buf: &mut [u8]) -> bool {
        // SAFETY: the host writes at most `buf.len()` bytes into `buf`, which we own mutably.
        unsafe { random_get(buf.as_mut_ptr(), buf.len()) == 0 }
    }
}
