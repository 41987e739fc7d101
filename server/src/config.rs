//! The configuration file: YAML with the contract's keys, validated by the core,
//! plus the sections only this server reads (`tls`, `limits`, `log`).

use crate::error::ServerError;
use crate::limits::Limits;
use crate::logging::{Format, LogConfig};
use crate::tls::TlsConfig;
use ingero_fleet_core::config::{ConfigError, Mode, Parsed};
use ingero_fleet_core::Config;
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the configuration lives unless `--config` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/ingero-fleet/config.yaml";

/// The server's own sections, taken out before the core validates the rest.
const SERVER_SECTIONS: [&str; 3] = ["tls", "limits", "log"];

/// A validated configuration file.
#[derive(Debug)]
pub struct Loaded {
    /// The contract's keys, as the core validated them.
    pub core: Parsed,
    /// What only the standalone server reads.
    pub server: ServerConfig,
    /// Where it came from, for the log.
    pub source: String,
}

/// The standalone server's own settings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ServerConfig {
    /// TLS on the push ports (and the API port when `tls.api`); `None` means plain.
    pub tls: Option<TlsConfig>,
    pub limits: Limits,
    pub log: LogConfig,
}

/// Reads and validates the configuration. A missing file at the default path
/// means the embedded defaults; a missing file the operator named is an error.
pub fn load(path: Option<&Path>) -> Result<Loaded, ServerError> {
    let (path, named) = match path {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_PATH), false),
    };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let (core, server) = parse_all(&text).map_err(|e| e.in_file(path))?;
            Ok(Loaded { core, server, source: format!("configuration from {}", path.display()) })
        }
        Err(e) if !named && e.kind() == std::io::ErrorKind::NotFound => {
            let (core, server) = parse_all("")?;
            Ok(Loaded { core, server, source: format!("no {}: using the embedded defaults", path.display()) })
        }
        Err(source) => Err(ServerError::ReadConfig { path: path.to_owned(), source }),
    }
}

/// Parses YAML text; an empty document means defaults.
#[cfg(test)]
pub fn parse(text: &str) -> Result<Parsed, ServerError> {
    parse_all(text).map(|(core, _)| core)
}

/// Parses YAML text into the core's part and the server's part.
pub fn parse_all(text: &str) -> Result<(Parsed, ServerConfig), ServerError> {
    let value: Value = serde_yaml_ng::from_str(text).map_err(|e| ServerError::Yaml(e.to_string()))?;
    let mut value = if value.is_null() { Value::Object(Default::default()) } else { value };
    let mut own = Map::new();
    if let Value::Object(root) = &mut value {
        for key in SERVER_SECTIONS {
            if let Some(section) = root.remove(key) {
                own.insert(key.to_owned(), section);
            }
        }
    }
    let core = Config::from_value(&value)?;
    let mut check = Check::default();
    // The server is the pushes' destination; observe mode and the wasm header pause are for proxy filters.
    if core.config.mode == Mode::Observe {
        check.problems.push(
            "mode = \"observe\" is for a filter in a proxy in front of a collector (envoy/envoy-observe.yaml); \
             the standalone server always answers pushes"
                .into(),
        );
    }
    let server = ServerConfig {
        tls: tls_section(&mut check, own.get("tls")),
        limits: limits_section(&mut check, own.get("limits")),
        log: log_section(&mut check, own.get("log")),
    };
    if !check.problems.is_empty() {
        return Err(ConfigError { problems: check.problems }.into());
    }
    let mut core = core;
    core.warnings.extend(check.warnings);
    Ok((core, server))
}

fn tls_section(check: &mut Check, section: Option<&Value>) -> Option<TlsConfig> {
    let map = check.section("tls", section, &["cert_file", "key_file", "client_ca_file", "api"])?;
    let cert_file = check.path(map, "tls.cert_file");
    let key_file = check.path(map, "tls.key_file");
    let client_ca_file = check.path(map, "tls.client_ca_file");
    let api = check.boolean(map, "tls.api", false);
    match (cert_file, key_file) {
        (Some(cert_file), Some(key_file)) => Some(TlsConfig { cert_file, key_file, client_ca_file, api }),
        (None, None) if client_ca_file.is_none() && !api => None,
        _ => {
            check.problems.push("tls needs both cert_file and key_file (or neither, for plain HTTP)".into());
            None
        }
    }
}

fn limits_section(check: &mut Check, section: Option<&Value>) -> Limits {
    let d = Limits::default();
    let keys = [
        "header_read_timeout",
        "body_timeout",
        "body_stall_timeout",
        "idle_timeout",
        "max_connections",
        "max_in_flight",
        "max_buffered_bytes",
        "max_concurrent_streams",
    ];
    let Some(map) = check.section("limits", section, &keys) else {
        return d;
    };
    let (short, long) = (Duration::from_millis(100), Duration::from_secs(3600));
    Limits {
        header_read_timeout: check.duration(map, "limits.header_read_timeout", d.header_read_timeout, short, long),
        body_timeout: check.duration(map, "limits.body_timeout", d.body_timeout, short, long),
        body_stall_timeout: check.duration(map, "limits.body_stall_timeout", d.body_stall_timeout, short, long),
        idle_timeout: check.duration(map, "limits.idle_timeout", d.idle_timeout, short, long),
        max_connections: check.int(map, "limits.max_connections", d.max_connections, 1, 1_000_000),
        max_in_flight: check.int(map, "limits.max_in_flight", d.max_in_flight, 1, 100_000),
        max_buffered_bytes: check.int(map, "limits.max_buffered_bytes", d.max_buffered_bytes, 1 << 20, 64 << 30),
        max_concurrent_streams: check.int(map, "limits.max_concurrent_streams", d.max_concurrent_streams, 1, 10_000),
    }
}

fn log_section(check: &mut Check, section: Option<&Value>) -> LogConfig {
    let d = LogConfig::default();
    let Some(map) = check.section("log", section, &["format", "level"]) else {
        return d;
    };
    let format = match map.get("format") {
        None => d.format,
        Some(Value::String(s)) => match s.parse::<Format>() {
            Ok(f) => f,
            Err(e) => {
                check.problems.push(format!("log.format: {e}"));
                d.format
            }
        },
        Some(other) => {
            check.problems.push(format!("log.format must be \"plain\" or \"json\", not {other}"));
            d.format
        }
    };
    let level = match map.get("level") {
        None => d.level,
        Some(Value::String(s)) => match crate::logging::check_filter(s) {
            Ok(()) => s.clone(),
            Err(e) => {
                check.problems.push(format!("log.level = {s:?} is not a valid filter: {e}"));
                d.level
            }
        },
        Some(other) => {
            check
                .problems
                .push(format!("log.level must be a string such as \"info\" or \"info,h2=debug\", not {other}"));
            d.level
        }
    };
    LogConfig { format, level }
}

/// Collects every problem of the server's sections, so one start names them all.
#[derive(Default)]
struct Check {
    problems: Vec<String>,
    warnings: Vec<String>,
}

impl Check {
    /// The section as a map; unknown keys are warned about, like the core does.
    fn section<'a>(&mut self, name: &str, value: Option<&'a Value>, known: &[&str]) -> Option<&'a Map<String, Value>> {
        match value? {
            Value::Null => None,
            Value::Object(map) => {
                for key in map.keys().filter(|k| !known.contains(&k.as_str())) {
                    self.warnings.push(format!("unknown configuration key {name}.{key} ignored"));
                }
                Some(map)
            }
            other => {
                self.problems.push(format!("{name} must be a mapping, not {other}"));
                None
            }
        }
    }

    fn path(&mut self, map: &Map<String, Value>, key: &str) -> Option<PathBuf> {
        match map.get(leaf(key))? {
            Value::Null => None,
            Value::String(s) if !s.is_empty() => Some(PathBuf::from(s)),
            other => {
                self.problems.push(format!("{key} must be a file path, not {other}"));
                None
            }
        }
    }

    fn boolean(&mut self, map: &Map<String, Value>, key: &str, default: bool) -> bool {
        match map.get(leaf(key)) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.problems.push(format!("{key} must be true or false, not {other}"));
                default
            }
        }
    }

    fn int<T: TryFrom<u64> + Copy>(
        &mut self,
        map: &Map<String, Value>,
        key: &str,
        default: T,
        min: u64,
        max: u64,
    ) -> T {
        match map.get(leaf(key)) {
            None | Some(Value::Null) => default,
            Some(value) => match value.as_u64().filter(|n| (min..=max).contains(n)).and_then(|n| T::try_from(n).ok()) {
                Some(n) => n,
                None => {
                    self.problems.push(format!("{key} = {value} is out of range (a whole number from {min} to {max})"));
                    default
                }
            },
        }
    }

    fn duration(
        &mut self,
        map: &Map<String, Value>,
        key: &str,
        default: Duration,
        min: Duration,
        max: Duration,
    ) -> Duration {
        let Some(value) = map.get(leaf(key)).filter(|v| !v.is_null()) else {
            return default;
        };
        match parse_duration(value).filter(|d| (min..=max).contains(d)) {
            Some(d) => d,
            None => {
                self.problems.push(format!(
                    "{key} = {value} is not a duration from {min:?} to {max:?} (write e.g. \"500ms\", \"5s\", \"1m\")"
                ));
                default
            }
        }
    }
}

fn leaf(key: &str) -> &str {
    key.rsplit('.').next().unwrap_or(key)
}

/// A duration as the core reads one (`"500ms"`, `"5s"`, `"1m"`), or a number of seconds.
fn parse_duration(value: &Value) -> Option<Duration> {
    match value {
        Value::String(text) => ingero_fleet_core::config::parse_duration(text),
        other => other.as_f64().and_then(|secs| Duration::try_from_secs_f64(secs).ok()),
    }
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
        assert_eq!(parse_all("").map(|(_, s)| s).ok(), Some(ServerConfig::default()));
    }

    #[test]
    fn observe_mode_is_refused_with_a_reason() {
        let error = parse("mode: observe").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("standalone server always answers pushes"), "{error}");
    }

    #[test]
    fn bad_values_and_bad_yaml_are_refused() {
        let e = parse("threshold:\n  k: 7\n").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(e.contains("threshold.k = 7 is out of range"), "{e}");
        assert!(matches!(parse("threshold: [1, 2"), Err(ServerError::Yaml(_))));
    }

    #[test]
    fn server_sections_are_read_and_not_passed_to_the_core() {
        let text = "tls:\n  cert_file: /c.pem\n  key_file: /k.pem\n  client_ca_file: /ca.pem\n  api: true\n\
                    limits:\n  idle_timeout: 2s\n  body_timeout: 1500ms\n  max_connections: 50\n\
                    log:\n  format: json\n  level: debug,h2=info\n";
        let parsed = parse_all(text);
        assert!(parsed.is_ok(), "{parsed:?}");
        let Ok((core, server)) = parsed else { return };
        assert!(core.warnings.is_empty(), "{:?}", core.warnings);
        let tls = TlsConfig {
            cert_file: "/c.pem".into(),
            key_file: "/k.pem".into(),
            client_ca_file: Some("/ca.pem".into()),
            api: true,
        };
        assert_eq!(server.tls, Some(tls));
        assert_eq!(server.limits.idle_timeout, Duration::from_secs(2));
        assert_eq!(server.limits.body_timeout, Duration::from_millis(1500));
        assert_eq!(server.limits.max_connections, 50);
        assert_eq!(server.limits.max_in_flight, Limits::default().max_in_flight);
        assert_eq!(server.log, LogConfig { format: Format::Json, level: "debug,h2=info".into() });
    }

    #[test]
    fn bad_server_sections_name_every_problem() {
        let text =
            "tls:\n  cert_file: /c.pem\nlimits:\n  idle_timeout: forever\n  max_connections: 0\nlog:\n  format: xml\n";
        let e = parse_all(text).err().map(|e| e.to_string()).unwrap_or_default();
        for part in ["tls needs both", "limits.idle_timeout", "limits.max_connections = 0", "log.format"] {
            assert!(e.contains(part), "{part} missing from {e}");
        }
        let warned = parse_all("limits:\n  max_conections: 5\n").map(|(p, _)| p.warnings).unwrap_or_default();
        assert_eq!(warned, vec!["unknown configuration key limits.max_conections ignored".to_owned()]);
    }
}
