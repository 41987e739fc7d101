//! The configuration file: YAML with the contract's keys, validated by the core.

use crate::error::ServerError;
use ingero_fleet_core::config::Parsed;
use ingero_fleet_core::Config;
use serde_json::Value;
use std::path::Path;

/// Where the configuration lives unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/ingero-fleet/config.yaml";

/// Reads and validates the configuration. A missing file at the default path
/// means the embedded defaults; a missing file the operator named is an error.
pub fn load(path: Option<&Path>) -> Result<Parsed, ServerError> {
    let (path, named) = match path {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_PATH), false),
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            log::info!("configuration from {}", path.display());
            parse(&text).map_err(|e| e.in_file(path))
        }
        Err(e) if !named && e.kind() == std::io::ErrorKind::NotFound => {
            log::info!("no {}: using the embedded defaults", path.display());
            parse("")
        }
        Err(source) => Err(ServerError::ReadConfig { path: path.to_owned(), source }),
    }
}

/// Parses YAML text; an empty document means defaults.
pub fn parse(text: &str) -> Result<Parsed, ServerError> {
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| ServerError::Yaml(e.to_string()))?;
    let value = if value.is_null() { Value::Object(Default::default()) } else { value };
    Ok(Config::from_value(&value)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn yaml_reaches_the_core() {
        let parsed = parse("threshold:\n  k: 2.5\npush_interval: 30s\nlisten:\n  api: 127.0.0.1:9\n");
        let config = parsed.map(|p| p.config).ok();
        assert_eq!(config.as_ref().map(|c| c.k), Some(2.5));
        assert_eq!(config.as_ref().map(|c| c.push_interval.as_secs()), Some(30));
        assert_eq!(config.map(|c| c.listen.api), Some("127.0.0.1:9".to_owned()));
    }

    #[test]
    fn empty_is_defaults() {
        assert_eq!(parse("").map(|p| p.config).ok(), Some(Config::default()));
        assert_eq!(parse("# only a comment\n").map(|p| p.config).ok(), Some(Config::default()));
    }

    #[test]
    fn bad_values_and_bad_yaml_are_refused() {
        let e = parse("threshold:\n  k: 7\n").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("threshold.k = 7 is out of range"), "{e}");
        assert!(matches!(parse("threshold: [1, 2"), Err(ServerError::Yaml(_))));
    }
}
