//! proxy-wasm shared data as the core's [`SharedStore`].

use ingero_fleet_core::{SharedStore, StoreError};
use proxy_wasm::hostcalls;
use proxy_wasm::types::Status;

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
}

fn host_error(status: Status) -> StoreError {
    StoreError::Host(format!("{status:?}"))
}
