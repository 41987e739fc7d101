//! Graceful shutdown: SIGTERM or SIGINT stops accepting, in-flight requests finish.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Waits for SIGTERM or SIGINT.
pub async fn termination() -> std::io::Result<&'static str> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// Resolves once shutdown has been announced on `rx`.
pub async fn announced(mut rx: watch::Receiver<bool>) {
    // An error means the sender is gone, which also means shutting down.
    let _ = rx.wait_for(|stop| *stop).await;
}
