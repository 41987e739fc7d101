//! Ingero Fleet's core: everything Fleet decides, with no host calls.
//!
//! Front doors (the proxy-wasm filter, the standalone server, the Envoy
//! dynamic module) adapt their host to [`store::SharedStore`] and call
//! [`service::Fleet`]; they add no rules of their own.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod events;
pub mod exchange;
pub mod ingress;
pub mod listing;
pub mod metrics;
pub mod node;
pub mod otlp;
pub mod outcome;
pub mod push;
pub mod read_cache;
pub mod registry;
pub mod reply;
pub mod seed;
pub mod service;
pub mod shard;
pub mod stats;
pub mod store;
pub mod threshold;

pub use config::{Config, Mode};
pub use error::FleetError;
pub use exchange::{Exchange, Flow, Host};
pub use metrics::{CounterSink, MemoryCounters};
pub use outcome::{Answer, DropReason, Outcome};
pub use service::{Fleet, HeadStep, PendingPush, RequestHead, ScoredPush};
pub use store::{MemoryStore, SharedStore, StoreError};
pub use threshold::{ThresholdBook, ThresholdSnapshot};
