//! Signals: SIGTERM or SIGINT stops accepting and lets in-flight requests
//! finish; SIGHUP reloads the configuration file instead of ending the process.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

/// A signal the server acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// SIGTERM or SIGINT (named): drain and exit.
    Stop(&'static str),
    /// SIGHUP: read the configuration file again.
    Reload,
}

/// The handled signals, caught from the moment they are installed.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Replaces the default action (exit at once) of SIGTERM, SIGINT and SIGHUP.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }

    /// Waits for the next one.
    pub async fn recv(&mut self) -> Received {
        tokio::select! {
            _ = self.term.recv() => Received::Stop("SIGTERM"),
            _ = self.int.recv() => Received::Stop("SIGINT"),
            _ = self.hup.recv() => Received::Reload,
        }
    }
}

/// Resolves once shutdown has been announced on `rx`.
pub async fn announced(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means shutting down.
    let _ = rx.wait_for(|stop| *stop).await;
}
