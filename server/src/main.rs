//! `ingero-fleet`: the standalone Fleet server. The same core as the proxy
//! filters, over in-process memory: OTLP/HTTP, OTLP/gRPC, the threshold API,
//! Prometheus self-metrics, probes, and a graceful SIGTERM.
#![forbid(unsafe_code)]

mod config;
mod error;
mod grpc;
mod http;
mod shutdown;
mod state;

use error::ServerError;
use ingero_fleet_core::config::Listen;
use state::State;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// The command line.
pub const USAGE: &str =
    "ingero-fleet [--config PATH]  (default /etc/ingero-fleet/config.yaml; RUST_LOG sets the log level, default info)";

/// How long in-flight requests get after SIGTERM before the process exits anyway.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(20);

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            log::error!("{e}");
            ExitCode::from(2)
        }
    }
}

fn run() -> Result<(), ServerError> {
    let Command::Serve { config: config_path } = parse_args(std::env::args().skip(1))? else {
        println!("{USAGE}");
        return Ok(());
    };
    let parsed = config::load(config_path.as_deref())?;
    for warning in &parsed.warnings {
        log::warn!("{warning}");
    }
    let state = Arc::new(State::new(parsed.config)?);
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(state))
}

/// What the command line asks for.
#[derive(Debug, PartialEq)]
enum Command {
    Help,
    /// Serve, with this configuration file instead of the default one.
    Serve {
        config: Option<PathBuf>,
    },
}

fn parse_args(mut args: impl Iterator<Item = String>) -> Result<Command, ServerError> {
    let mut path = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--config" => match args.next() {
                Some(p) => path = Some(PathBuf::from(p)),
                None => return Err(ServerError::Usage("--config needs a path".into())),
            },
            other => match other.strip_prefix("--config=") {
                Some(p) => path = Some(PathBuf::from(p)),
                None => return Err(ServerError::Usage(format!("unknown argument {other:?}"))),
            },
        }
    }
    Ok(Command::Serve { config: path })
}

/// Binds every port, serves until SIGTERM, then drains.
async fn serve(state: Arc<State>) -> Result<(), ServerError> {
    let mut signals = shutdown::Signals::install()?;
    let Listen { otlp_http, otlp_grpc, api, metrics } = state.fleet().config().listen.clone();
    let http_ports = [("listen.otlp_http", otlp_http), ("listen.api", api), ("listen.metrics", metrics)];
    let mut http_listeners = Vec::new();
    for (key, addr) in http_ports {
        http_listeners.push(bind(key, &addr).await?);
    }
    let grpc_listener = bind("listen.otlp_grpc", &otlp_grpc).await?;

    let (stop, stopped) = watch::channel(false);
    let mut servers = JoinSet::new();
    for listener in http_listeners {
        let router = http::router(state.clone());
        let signal = shutdown::announced(stopped.clone());
        servers.spawn(async move { axum::serve(listener, router).with_graceful_shutdown(signal).await });
    }
    let incoming = tonic::transport::server::TcpIncoming::from(grpc_listener);
    let grpc = tonic::transport::Server::builder().serve_with_incoming_shutdown(
        grpc::service(state.clone()),
        incoming,
        shutdown::announced(stopped.clone()),
    );
    servers.spawn(async move { grpc.await.map_err(std::io::Error::other) });
    let ticker = tokio::spawn(state::run_ticks(state.clone(), stopped));

    state.set_ready(true);
    log::info!("ready");
    let failure = tokio::select! {
        signal = signals.recv() => {
            log::info!("{signal}: draining in-flight requests");
            None
        }
        // A server that stops on its own is a failure: shut the rest down too.
        Some(done) = servers.join_next() => Some(format!("a server stopped unexpectedly: {done:?}")),
    };
    state.set_ready(false);
    let _ = stop.send(true);
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while let Some(done) = servers.join_next().await {
            if let Ok(Err(e)) = done {
                log::warn!("server ended with an error: {e}");
            }
        }
    })
    .await;
    if drained.is_err() {
        log::warn!("requests still in flight after {DRAIN_TIMEOUT:?}: exiting anyway");
    }
    ticker.abort();
    log::info!("stopped");
    failure.map_or(Ok(()), |reason| Err(ServerError::Io(std::io::Error::other(reason))))
}

async fn bind(key: &'static str, addr: &str) -> Result<TcpListener, ServerError> {
    let listener =
        TcpListener::bind(addr).await.map_err(|source| ServerError::Bind { key, addr: addr.to_owned(), source })?;
    log::info!("{key}: listening on {}", listener.local_addr()?);
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Result<Command, ServerError> {
        parse_args(list.iter().map(|s| s.to_string()))
    }

    fn serve(path: Option<&str>) -> Command {
        Command::Serve { config: path.map(PathBuf::from) }
    }

    #[test]
    fn command_line() {
        assert_eq!(args(&[]).ok(), Some(serve(None)));
        assert_eq!(args(&["--config", "a.yaml"]).ok(), Some(serve(Some("a.yaml"))));
        assert_eq!(args(&["--config=b.yaml"]).ok(), Some(serve(Some("b.yaml"))));
        assert_eq!(args(&["--help"]).ok(), Some(Command::Help));
        assert!(matches!(args(&["--config"]), Err(ServerError::Usage(_))));
        assert!(matches!(args(&["--port", "1"]), Err(ServerError::Usage(_))));
    }
}
