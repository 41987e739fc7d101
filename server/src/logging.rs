//! Logs: `tracing` events (this server's, and hyper's, h2's, tonic's and rustls's,
//! plus `log` records) as plain or JSON lines on stderr, filtered like `RUST_LOG`.

use std::str::FromStr;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

/// Environment variable choosing the log format (below `--log-format`, above `log.format`).
pub const FORMAT_ENV: &str = "INGERO_FLEET_LOG_FORMAT";
/// Environment variable with the filter; it overrides `log.level`.
pub const FILTER_ENV: &str = "RUST_LOG";

/// One log line per event, as text or as a JSON object.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Plain,
    Json,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "plain" | "text" => Ok(Self::Plain),
            "json" => Ok(Self::Json),
            other => Err(format!("log format {other:?} is neither \"plain\" nor \"json\"")),
        }
    }
}

/// The `log` section.
#[derive(Debug, Clone, PartialEq)]
pub struct LogConfig {
    pub format: Format,
    /// A `RUST_LOG`-style filter, e.g. `info` or `info,ingero_fleet=debug,h2=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { format: Format::Plain, level: "info".into() }
    }
}

/// Whether `filter` is a valid `RUST_LOG`-style filter.
pub fn check_filter(filter: &str) -> Result<(), String> {
    EnvFilter::builder().parse(filter).map(drop).map_err(|e| e.to_string())
}

/// The installed logger; its filter can be replaced at run time (SIGHUP).
pub struct Logging {
    handle: reload::Handle<EnvFilter, Registry>,
    /// Set when `RUST_LOG` chose the filter: the file's `log.level` is then ignored.
    pub filter_from_env: bool,
}

impl Logging {
    /// Installs the global logger; `format` and `level` are the configuration's,
    /// overridden by `RUST_LOG` for the filter.
    pub fn init(format: Format, level: &str) -> Self {
        let from_env = std::env::var(FILTER_ENV).ok().filter(|v| !v.trim().is_empty());
        let filter = match &from_env {
            Some(directives) => EnvFilter::builder().parse_lossy(directives),
            None => EnvFilter::builder().parse_lossy(level),
        };
        let (filter, handle) = reload::Layer::new(filter);
        let plain = (format == Format::Plain).then(|| fmt::layer().with_writer(std::io::stderr).with_ansi(false));
        let json = (format == Format::Json)
            .then(|| fmt::layer().json().flatten_event(true).with_current_span(true).with_writer(std::io::stderr));
        // Fails only if a logger is already installed (unit tests), which is then kept.
        let _ = tracing_subscriber::registry().with(filter).with(plain).with(json).try_init();
        Self { handle, filter_from_env: from_env.is_some() }
    }

    /// Replaces the filter with the configuration's `log.level`.
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = EnvFilter::builder().parse(level).map_err(|e| e.to_string())?;
        self.handle.reload(filter).map_err(|e| e.to_string())
    }
}
