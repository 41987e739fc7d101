//! A listening socket: TCP (`host:port`), or a Unix domain socket
//! (`unix:/path`) for an Envoy on the same host, which spares every proxied
//! request the TCP stack on both sides (docs/performance.md has the measurement).

use std::io;
use std::os::unix::fs::FileTypeExt;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// The prefix of a Unix socket address in `listen.*`.
pub const UNIX_PREFIX: &str = "unix:";

/// A bound listening socket.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

/// An accepted connection.
pub enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Listener {
    /// Binds `addr`. A socket file left by an earlier run is replaced; any other
    /// file at that path is an error, never removed.
    pub async fn bind(addr: &str) -> io::Result<Self> {
        let Some(path) = addr.strip_prefix(UNIX_PREFIX) else {
            return Ok(Self::Tcp(TcpListener::bind(addr).await?));
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path)?,
            Ok(_) => return Err(io::Error::other(format!("{path} exists and is not a socket"))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        Ok(Self::Unix(UnixListener::bind(path)?))
    }

    /// Where it listens, for the logs.
    pub fn local(&self) -> io::Result<String> {
        Ok(match self {
            Self::Tcp(l) => l.local_addr()?.to_string(),
            Self::Unix(l) => format!(
                "{UNIX_PREFIX}{}",
                l.local_addr()?.as_pathname().map_or_else(|| "(unnamed)".into(), |p| p.display().to_string(),)
            ),
        })
    }

    /// The next connection and its peer, for the logs.
    pub async fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Self::Tcp(l) => l.accept().await.map(|(s, peer)| (Stream::Tcp(s), peer.to_string())),
            Self::Unix(l) => l.accept().await.map(|(s, _)| (Stream::Unix(s), "unix".to_owned())),
        }
    }
}
