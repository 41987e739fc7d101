//! Why the server could not start or keep running.

use ingero_fleet_core::config::ConfigError;
use ingero_fleet_core::StoreError;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// A start-up or serving failure; each names what to fix.
#[derive(Debug, Error)]
pub enum ServerError {
    #[error("usage: {0}\n{usage}", usage = crate::USAGE)]
    Usage(String),
    #[error("cannot read {}: {source}", path.display())]
    ReadConfig { path: PathBuf, source: std::io::Error },
    #[error("configuration is not valid YAML: {0}")]
    Yaml(String),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{}: {source}", path.display())]
    InFile { path: PathBuf, source: Box<ServerError> },
    #[error("cannot listen on {key} = {addr}: {source}")]
    Bind { key: &'static str, addr: String, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("cannot create the node store: {0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl ServerError {
    /// The same error, saying which file it came from.
    pub fn in_file(self, path: &Path) -> Self {
        Self::InFile { path: path.to_owned(), source: Box::new(self) }
    }
}
