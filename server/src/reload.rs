//! SIGHUP: read the configuration file again, apply what can change while
//! serving, and name every changed key that needs a restart.
//!
//! Applied at once: `log.level` (unless `RUST_LOG` is set), the `tls` file
//! paths, and the keys only the recompute reads (`threshold.k`,
//! `threshold.ema_alpha`, `quorum.*`: from the next recompute, `Fleet::retune`).
//! The core's other keys (quotas, the push interval, listeners…) shape the
//! running Fleet's store and limits, so a change to them is logged as needing
//! a restart and the running values stay in force.

use crate::config::{self, ServerConfig};
use crate::logging::Logging;
use crate::state::State;
use crate::tls::Tls;
use ingero_fleet_core::Config;
use std::path::PathBuf;
use std::sync::Arc;

/// What SIGHUP compares the file with, and what it can change.
pub struct Reloader {
    pub path: Option<PathBuf>,
    /// The server settings in force.
    pub server: ServerConfig,
    pub logging: Logging,
    pub tls: Option<Arc<Tls>>,
    /// The running Fleet, whose threshold keys a reload retunes.
    pub state: Arc<State>,
}

impl Reloader {
    /// Handles one SIGHUP; never fails the process.
    pub fn reload(&mut self) {
        let loaded = match config::load(self.path.as_deref()) {
            Ok(loaded) => loaded,
            Err(e) => {
                tracing::error!("SIGHUP: configuration not reloaded, the running one stays in force: {e}");
                return;
            }
        };
        for warning in &loaded.core.warnings {
            tracing::warn!("{warning}");
        }
        let new = loaded.server;
        let fleet = self.state.fleet();
        let mut applied = fleet.retune(&loaded.core.config);
        let mut restart = core_changes(&fleet.config_in_force(), &loaded.core.config);

        if new.log.level != self.server.log.level {
            if self.logging.filter_from_env {
                tracing::warn!("SIGHUP: log.level changed but RUST_LOG is set and takes precedence: not applied");
            } else {
                match self.logging.set_level(&new.log.level) {
                    Ok(()) => {
                        applied.push("log.level");
                        self.server.log.level = new.log.level.clone();
                    }
                    Err(e) => tracing::error!("SIGHUP: log.level not applied: {e}"),
                }
            }
        }
        if new.log.format != self.server.log.format {
            restart.push("log.format");
        }
        match (&self.tls, &self.server.tls, &new.tls) {
            (Some(tls), Some(old), Some(files)) if old != files => {
                if old.api != files.api {
                    restart.push("tls.api");
                }
                let mut files = files.clone();
                files.api = old.api;
                if &files != old {
                    match tls.replace(files.clone()) {
                        Ok(()) => {
                            applied.push("tls files");
                            self.server.tls = Some(files);
                        }
                        Err(e) => tracing::error!("SIGHUP: new TLS files not used, the current ones stay: {e}"),
                    }
                }
            }
            (_, old, files) if old.is_some() != files.is_some() => restart.push("tls (on or off)"),
            _ => {}
        }
        restart.extend(self.server.limits.changed_keys(&new.limits));

        if applied.is_empty() && restart.is_empty() {
            tracing::info!("SIGHUP: {}: nothing changed", loaded.source);
            return;
        }
        if !applied.is_empty() {
            tracing::info!("SIGHUP: {}: applied {}", loaded.source, applied.join(", "));
        }
        if !restart.is_empty() {
            tracing::warn!(
                "SIGHUP: {} changed but need a restart to take effect; the running values stay in force",
                restart.join(", ")
            );
        }
    }
}

/// The core keys whose values differ, by their YAML names.
pub fn core_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut keys = Vec::new();
    let mut check = |differs: bool, key| {
        if differs {
            keys.push(key);
        }
    };
    check(old.k != new.k, "threshold.k");
    check(old.ema_alpha != new.ema_alpha, "threshold.ema_alpha");
    check(old.push_interval != new.push_interval, "push_interval");
    check(old.ttl_multiplier != new.ttl_multiplier, "ttl_multiplier");
    check(old.statistical_min != new.statistical_min, "quorum.statistical_min");
    check(old.coverage_fraction != new.coverage_fraction, "quorum.coverage_fraction");
    check(old.max_expected_nodes != new.max_expected_nodes, "max_expected_nodes");
    check(old.max_nodes_per_cluster != new.max_nodes_per_cluster, "max_nodes_per_cluster");
    check(old.max_clusters != new.max_clusters, "max_clusters");
    check(old.max_body_bytes != new.max_body_bytes, "max_body_bytes");
    check(old.max_id_bytes != new.max_id_bytes, "max_id_bytes");
    check(old.max_points_per_push != new.max_points_per_push, "max_points_per_push");
    check(old.pause_on_headers != new.pause_on_headers, "pause_on_headers");
    check(old.listen.otlp_http != new.listen.otlp_http, "listen.otlp_http");
    check(old.listen.otlp_grpc != new.listen.otlp_grpc, "listen.otlp_grpc");
    check(old.listen.api != new.listen.api, "listen.api");
    check(old.listen.metrics != new.listen.metrics, "listen.metrics");
    // A key added to the core but not listed above still shows up here.
    if keys.is_empty() && old != new {
        keys.push("(core configuration)");
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_core_keys_are_named() {
        let old = Config::default();
        let new = Config { k: 3.0, max_clusters: 5, ..Config::default() };
        assert_eq!(core_changes(&old, &new), vec!["threshold.k", "max_clusters"]);
        assert!(core_changes(&old, &old).is_empty());
    }
}
