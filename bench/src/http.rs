//! A tiny blocking HTTP/1.1 client: one keep-alive connection, requests with
//! a `Content-Length` body, responses framed by `Content-Length` (what every
//! front door under test sends). No pipelining, no chunked responses.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use thiserror::Error;

/// How long a request may take before it counts as a timeout (the agent's own timeout).
pub const TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request got no response.
#[derive(Debug, Error)]
pub enum HttpError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("write: {0}")]
    Write(std::io::Error),
    #[error("read: {0}")]
    Read(std::io::Error),
    #[error("timed out after {TIMEOUT:?}")]
    Timeout,
    #[error("connection closed before a full response")]
    Closed,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
}

impl HttpError {
    /// The error's kind, as counted in the report.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Write(_) => "write",
            Self::Read(_) => "read",
            Self::Timeout => "timeout",
            Self::Closed => "closed",
            Self::Malformed(_) => "malformed",
        }
    }
}

/// A response (its body is read for framing, then dropped).
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    /// An OTLP JSON answer with `partialSuccess.rejectedDataPoints`: points were dropped.
    pub rejected_points: bool,
}

/// A request, serialized once and sent as one write.
pub fn request(method: &str, path: &str, content_type: Option<&str>, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 160);
    out.extend_from_slice(format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n").as_bytes());
    if let Some(content_type) = content_type {
        out.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
    }
    if method == "POST" {
        out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    } else {
        out.extend_from_slice(b"Accept: application/json\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// One keep-alive connection that reconnects when the server closes it.
pub struct Connection {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    /// Connections opened, including the first.
    pub connects: u64,
}

impl Connection {
    /// A connection to `addr`, opened on first use.
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, stream: None, buf: Vec::with_capacity(4096), connects: 0 }
    }

    /// Sends `request` and reads the response. A request on a reused
    /// connection that the server had already closed is retried once on a new one.
    pub fn send(&mut self, request: &[u8]) -> Result<Response, HttpError> {
        let reused = self.stream.is_some();
        match self.exchange(request) {
            Err(HttpError::Closed | HttpError::Write(_)) if reused && self.buf.is_empty() => self.exchange(request),
            other => other,
        }
    }

    fn exchange(&mut self, request: &[u8]) -> Result<Response, HttpError> {
        let result = self.try_exchange(request);
        if !matches!(result, Ok((_, true))) {
            self.stream = None;
        }
        result.map(|(response, _)| response)
    }

    /// The response and whether the connection stays open.
    fn try_exchange(&mut self, request: &[u8]) -> Result<(Response, bool), HttpError> {
        self.buf.clear();
        let stream = match &mut self.stream {
            Some(s) => s,
            None => {
                let s = TcpStream::connect_timeout(&self.addr, TIMEOUT).map_err(HttpError::Connect)?;
                s.set_nodelay(true).map_err(HttpError::Connect)?;
                s.set_read_timeout(Some(TIMEOUT)).map_err(HttpError::Connect)?;
                s.set_write_timeout(Some(TIMEOUT)).map_err(HttpError::Connect)?;
                self.connects += 1;
                self.stream.insert(s)
            }
        };
        stream.write_all(request).map_err(HttpError::Write)?;
        let head_end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end + 4;
            }
            read_more(stream, &mut self.buf)?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end]).map_err(|_| HttpError::Malformed("head not UTF-8"))?;
        let (status, length, keep_alive) = parse_head(head)?;
        while self.buf.len() < head_end + length {
            read_more(stream, &mut self.buf)?;
        }
        let rejected_points = find(&self.buf[head_end..head_end + length], b"rejectedDataPoints").is_some();
        Ok((Response { status, rejected_points }, keep_alive))
    }
}

fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), HttpError> {
    let mut chunk = [0u8; 8192];
    match stream.read(&mut chunk) {
        Ok(0) => Err(HttpError::Closed),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Err(HttpError::Timeout),
        Err(e) => Err(HttpError::Read(e)),
    }
}

/// Status, `Content-Length` (0 when absent) and whether the server keeps the connection.
fn parse_head(head: &str) -> Result<(u16, usize, bool), HttpError> {
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| status_line.strip_prefix("HTTP/1.0 "))
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .ok_or(HttpError::Malformed("status line"))?;
    let mut length = 0;
    let mut keep_alive = status_line.starts_with("HTTP/1.1");
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse().map_err(|_| HttpError::Malformed("content-length"))?;
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::Malformed("chunked response"));
        } else if name.eq_ignore_ascii_case("connection") {
            keep_alive = !value.eq_ignore_ascii_case("close");
        }
    }
    Ok((status, length, keep_alive))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heads_are_parsed() {
        let head = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nx-ingero-threshold: 0.9\r\n\r\n";
        assert_eq!(parse_head(head).ok(), Some((200, 2, true)));
        let head = "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\n\r\n";
        assert_eq!(parse_head(head).ok(), Some((503, 0, false)));
        assert!(parse_head("garbage\r\n\r\n").is_err());
    }
}
