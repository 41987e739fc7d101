//! Ingero Fleet as an Envoy dynamic module: a native HTTP filter, loaded by
//! Envoy as `libingero_fleet.so` (module name `ingero_fleet`). Only host glue
//! lives here; every rule is in `ingero-fleet-core`.
//!
//! - `abi`: the C ABI (hooks and callbacks), the crate's only `unsafe` code.
//! - [`filter`]: one stream's hooks handed to the core's exchange over a small [`filter::Envoy`] trait.
//! - [`front`]: the process-wide Fleet every Envoy worker shares.

// The hooks call Envoy, which a test binary cannot link against.
#[cfg(not(test))]
mod abi;
pub mod filter;
pub mod front;
