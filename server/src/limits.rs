//! Connection limits (issue 16): how long a client may take to send a request's
//! head and body, how long an idle connection stays open, how many connections
//! and requests one port holds at once, and the process's open file limit.

use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
use std::time::Duration;

/// Per-port limits, from the `limits` section. The defaults are sized to the
/// agent's 5 s push timeout: a request the agent has given up on is not worth
/// a connection, and an idle agent connection is kept across several 10 s pushes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// Time from accept (or from the end of the previous request) to a complete
    /// request head, and for the TLS handshake.
    pub header_read_timeout: Duration,
    /// Time to receive a request's body and answer it.
    pub body_timeout: Duration,
    /// A request body from which no byte arrives for this long is cut.
    pub body_stall_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections per port; a new one past it is closed at once.
    pub max_connections: usize,
    /// Requests being handled per port; one past it is answered 503 (gRPC UNAVAILABLE).
    pub max_in_flight: usize,
    /// Request body bytes one port holds at once, over all its requests; a
    /// request whose bytes do not fit is answered 503 (gRPC UNAVAILABLE).
    pub max_buffered_bytes: usize,
    /// HTTP/2 streams per connection.
    pub max_concurrent_streams: u32,
}

/// `limits.header_read_timeout` default: the agent's whole push timeout.
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// `limits.body_timeout` default: twice the agent's push timeout.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// `limits.body_stall_timeout` default: as the shipped Envoy configs' stream_idle_timeout.
pub const DEFAULT_BODY_STALL_TIMEOUT: Duration = Duration::from_secs(5);
/// `limits.idle_timeout` default: several 10 s push intervals, as in the shipped Envoy configs.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Default for Limits {
    fn default() -> Self {
        Self {
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            body_timeout: DEFAULT_BODY_TIMEOUT,
            body_stall_timeout: DEFAULT_BODY_STALL_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: 4096,
            // Slow uploads hold a slot each: enough that hundreds of them leave room for agents.
            max_in_flight: 1024,
            // Bounds body memory per port (64 bodies of the default 4 MiB at once).
            max_buffered_bytes: 256 << 20,
            // As in the shipped Envoy configs: one HTTP/2 connection buffers at most 16 bodies.
            max_concurrent_streams: 16,
        }
    }
}

impl Limits {
    /// The keys whose values differ, by their YAML names.
    pub fn changed_keys(&self, other: &Self) -> Vec<&'static str> {
        let mut keys = Vec::new();
        let mut check = |differs: bool, key| {
            if differs {
                keys.push(key);
            }
        };
        check(self.header_read_timeout != other.header_read_timeout, "limits.header_read_timeout");
        check(self.body_timeout != other.body_timeout, "limits.body_timeout");
        check(self.body_stall_timeout != other.body_stall_timeout, "limits.body_stall_timeout");
        check(self.idle_timeout != other.idle_timeout, "limits.idle_timeout");
        check(self.max_connections != other.max_connections, "limits.max_connections");
        check(self.max_in_flight != other.max_in_flight, "limits.max_in_flight");
        check(self.max_buffered_bytes != other.max_buffered_bytes, "limits.max_buffered_bytes");
        check(self.max_concurrent_streams != other.max_concurrent_streams, "limits.max_concurrent_streams");
        keys
    }
}

/// Raises the soft open-file limit to the hard limit (the inherited soft limit is
/// often 1 024, which a few idle clients exhaust), and warns when even the hard
/// limit is below what the connection caps need.
pub fn raise_open_file_limit(needed: u64) {
    let limit = getrlimit(Resource::Nofile);
    let soft = limit.current;
    if soft != limit.maximum {
        match setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum }) {
            Ok(()) => tracing::info!(from = ?soft, to = ?limit.maximum, "raised the open file limit to the hard limit"),
            Err(e) => tracing::warn!(soft = ?soft, hard = ?limit.maximum, "cannot raise the open file limit: {e}"),
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    if let Some(now) = now.filter(|&n| n < needed) {
        tracing::warn!(
            "the open file limit ({now}) is below what limits.max_connections allows on every port ({needed}): \
             past it, new connections wait in the kernel's backlog"
        );
    }
}
