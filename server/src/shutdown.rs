//! Graceful shutdown: SIGTERM or SIGINT stops accepting, in-flight requests finish.

use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

/// The termination signals, caught from the moment they are installed.
pub struct Signals {
    term: Signal,
    int: Signal,
}

impl Signals {
    /// Replaces the default action (exit at once) of SIGTERM and SIGINT.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self { term: signal(SignalKind::terminate())?, int: signal(SignalKind::interrupt())? })
    }

    /// Waits for either; the name of the one received.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Resolves once shutdown has been announced on `rx`.
pub async fn announced(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means shutting down.
    let _ = rx.wait_for(|stop| *stop).await;
}
