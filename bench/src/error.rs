//! Why a benchmark could not run.

use thiserror::Error;

/// A failed benchmark run.
#[derive(Debug, Error)]
pub enum BenchError {
    #[error("{0}\n{usage}", usage = crate::USAGE)]
    Usage(String),
    #[error("latency histogram: {0}")]
    Histogram(#[from] hdrhistogram::CreationError),
    #[error("cannot start a connection thread: {0}")]
    Thread(std::io::Error),
    #[error("a connection thread panicked")]
    ConnectionThread,
    #[error("fleet core: {0}")]
    Fleet(#[from] ingero_fleet_core::FleetError),
    #[error("fleet store: {0}")]
    Store(#[from] ingero_fleet_core::StoreError),
    #[error("fleet configuration: {0}")]
    Config(String),
    #[error("unexpected answer from the core: {0}")]
    Unexpected(String),
}
