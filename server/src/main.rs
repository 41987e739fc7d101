//! `ingero-fleet`: the standalone Fleet server. The same core as the proxy
//! filters, over in-process memory: OTLP/HTTP, OTLP/gRPC, the threshold API,
//! Prometheus self-metrics, probes, and a graceful SIGTERM.
#![forbid(unsafe_code)]

mod body;
mod config;
mod error;
mod grpc;
mod http;
mod limits;
mod listener;
mod logging;
mod refusals;
mod reload;
mod serve;
mod shutdown;
mod state;
mod tls;

use error::ServerError;
use ingero_fleet_core::config::{Listen, RouteSet};
use listener::Listener;
use logging::{Format, Logging};
use serve::Port;
use shutdown::Received;
use state::State;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tls::Tls;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The command line.
pub const USAGE: &str = "ingero-fleet [--config PATH] [--log-format plain|json] [--version]
  --config PATH      configuration file (default /etc/ingero-fleet/config.yaml)
  --log-format F     plain or json lines on stderr (or INGERO_FLEET_LOG_FORMAT, or log.format)
  RUST_LOG           log filter, e.g. info,ingero_fleet=debug,h2=debug (overrides log.level; default info)
  SIGHUP             reloads the configuration file; SIGTERM drains and exits";

/// The version, from Cargo.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// How long in-flight requests get after SIGTERM before the process exits anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    let (config_path, format_flag) = match parse_args(std::env::args().skip(1)) {
        Ok(Command::Serve { config, log_format }) => (config, log_format),
        Ok(Command::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("ingero-fleet {VERSION}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    // The file is read before the logger exists (it chooses the format); its problems are logged just after.
    let loaded = config::load(config_path.as_deref());
    let file_log = loaded.as_ref().map(|l| l.server.log.clone()).unwrap_or_default();
    let env_format = std::env::var(logging::FORMAT_ENV).ok().filter(|v| !v.trim().is_empty());
    let format = match format_flag.or(env_format).map(|f| f.parse::<Format>()) {
        Some(Ok(format)) => format,
        Some(Err(e)) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
        None => file_log.format,
    };
    let logging = Logging::init(format, &file_log.level);
    match loaded.and_then(|loaded| run(loaded, config_path, logging)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::from(2)
        }
    }
}

fn run(loaded: config::Loaded, config_path: Option<PathBuf>, logging: Logging) -> Result<(), ServerError> {
    tracing::info!(version = VERSION, "ingero-fleet starting: {}", loaded.source);
    for warning in &loaded.core.warnings {
        tracing::warn!("{warning}");
    }
    let tls = match &loaded.server.tls {
        Some(files) => Some(Arc::new(Tls::load(files.clone()).map_err(ServerError::Tls)?)),
        None => None,
    };
    // Four ports, each up to max_connections, plus the process's own files.
    limits::raise_open_file_limit(loaded.server.limits.max_connections as u64 * 4 + 64);
    let state = Arc::new(State::new(loaded.core.config)?);
    let reloader = reload::Reloader {
        path: config_path,
        server: loaded.server.clone(),
        logging,
        tls: tls.clone(),
        state: state.clone(),
    };
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(state, reloader))
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Help,
    Version,
    /// Serve, with this configuration file instead of the default one, and this log format.
    Serve {
        config: Option<PathBuf>,
        log_format: Option<String>,
    },
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, ServerError> {
    let mut path = None;
    let mut log_format = None;
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_owned(), Some(value.to_owned())),
            _ => (arg.clone(), None),
        };
        let mut value = |what: &str| {
            inline.clone().or_else(|| args.next()).ok_or_else(|| ServerError::Usage(format!("{name} needs {what}")))
        };
        match name.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--config" => path = Some(PathBuf::from(value("a path")?)),
            "--log-format" => log_format = Some(value("plain or json")?),
            other => return Err(ServerError::Usage(format!("unknown argument {other:?}"))),
        }
    }
    Ok(Command::Serve { config: path, log_format })
}

/// Binds every port, serves until SIGTERM, then drains; SIGHUP reloads the configuration.
async fn serve(state: Arc<State>, mut reloader: reload::Reloader) -> Result<(), ServerError> {
    let mut signals = shutdown::Signals::install()?;
    let Listen { otlp_http, otlp_grpc, api, metrics } = state.fleet().config().listen.clone();
    let tls = reloader.tls.clone();
    let tls_api = reloader.server.tls.as_ref().is_some_and(|t| t.api);
    let limits = reloader.server.limits;
    // Each port serves its role only: pushes, the API and dashboard, or the scrape.
    let router = |push, api, metrics| serve::http_handler(http::router(state.clone(), RouteSet { push, api, metrics }));
    let ports = [
        ("listen.otlp_http", otlp_http, router(true, false, false), tls.clone(), false),
        ("listen.otlp_grpc", otlp_grpc, serve::grpc_handler(grpc::service(state.clone())), tls.clone(), true),
        ("listen.api", api, router(false, true, false), tls.clone().filter(|_| tls_api), false),
        ("listen.metrics", metrics, serve::with_server_metrics(router(false, false, true)), None, false),
    ];
    let mut bound = Vec::new();
    for (key, addr, handler, tls, grpc) in ports {
        let listener = bind(key, &addr, tls.is_some()).await?;
        let name = key.strip_prefix("listen.").unwrap_or(key);
        bound.push(Port { name, listener, handler, tls, grpc });
    }
    if let Some(tls) = &tls {
        tracing::info!(client_certificates = if tls.mutual() { "required" } else { "not requested" }, "TLS on");
    }

    let (stop, stopped) = watch::channel(false);
    let mut servers = JoinSet::new();
    for port in bound {
        servers.spawn(serve::run(port, limits, stopped.clone()));
    }
    let ticker = tokio::spawn(state::run_ticks(state.clone(), stopped.clone()));
    let summaries = tokio::spawn(refusals::run_summaries(stopped));

    state.set_ready(true);
    tracing::info!("ready");
    let failure = loop {
        tokio::select! {
            signal = signals.recv() => match signal {
                Received::Reload => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    reloader.reload();
                }
                Received::Stop(name) => {
                    tracing::info!("{name}: draining in-flight requests");
                    break None;
                }
            },
            // A server that stops on its own is a failure: shut the rest down too.
            Some(done) = servers.join_next() => break Some(format!("a server stopped unexpectedly: {done:?}")),
        }
    };
    state.set_ready(false);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(done) = servers.join_next().await {
            if let Ok(Err(e)) = done {
                tracing::warn!("server ended with an error: {e}");
            }
        }
    })
    .await;
    if drained.is_err() {
        tracing::warn!("requests still in flight after {DRAIN_TIMEOUT:?}: exiting anyway");
    }
    ticker.abort();
    let _ = summaries.await;
    tracing::info!("stopped");
    failure.map_or(Ok(()), |reason| Err(ServerError::Io(std::io::Error::other(reason))))
}

async fn bind(key: &'static str, addr: &str, tls: bool) -> Result<Listener, ServerError> {
    let failed = |source| ServerError::Bind { key, addr: addr.to_owned(), source };
    if tls && addr.starts_with(listener::UNIX_PREFIX) {
        return Err(failed(std::io::Error::other(
            "TLS is not served on a Unix socket (its file permissions guard it)",
        )));
    }
    let listener = Listener::bind(addr).await.map_err(failed)?;
    tracing::info!("{key}: listening on {}{}", listener.local()?, if tls { " (TLS)" } else { "" });
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Command, ServerError> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    fn serve(path: Option<&str>) -> Command {
        Command::Serve { config: path.map(PathBuf::from), log_format: None }
    }

    #[test]
    fn command_line() {
        assert_eq!(args(&[]).ok(), Some(serve(None)));
        assert_eq!(args(&["--config", "a.yaml"]).ok(), Some(serve(Some("a.yaml"))));
        assert_eq!(args(&["--config=b.yaml"]).ok(), Some(serve(Some("b.yaml"))));
        assert_eq!(args(&["--help"]).ok(), Some(Command::Help));
        assert!(matches!(args(&["--config"]), Err(ServerError::Usage(_))));
        assert!(matches!(args(&["--port", "1"]), Err(ServerError::Usage(_))));
        assert_eq!(args(&["--version"]).ok(), Some(Command::Version));
        let json = Command::Serve { config: None, log_format: Some("json".into()) };
        assert_eq!(args(&["--log-format", "json"]).ok(), Some(json));
    }
}
