//! What the server refused, in the log: one debug line per refused push (or
//! dropped points) with the core's reason, one debug line per refused
//! connection, and every 10 s one warning that sums them up by reason, so a
//! flood of bad pushes costs a few log lines, not one per push.

use ingero_fleet_core::otlp::RpcStatus;
use ingero_fleet_core::reply::Reply;
use ingero_fleet_core::{Answer, RequestHead};
use prost::Message;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::time::Duration;
use tokio::sync::watch;

/// How often the warning summary is written (when anything was refused).
pub const SUMMARY_PERIOD: Duration = Duration::from_secs(10);

/// Refused pushes and dropped points by reason, since the last summary.
static PUSHES: Mutex<BTreeMap<&'static str, u64>> = Mutex::new(BTreeMap::new());
/// Refused or closed connections and requests by (port, reason), since the last summary.
static CONNECTIONS: Mutex<BTreeMap<(&'static str, &'static str), u64>> = Mutex::new(BTreeMap::new());

/// Logs what the core refused or dropped in `answer`, and hands back its reply.
pub fn note(head: &RequestHead<'_>, answer: &Answer) -> Reply {
    if answer.outcome.drops.is_empty() {
        return answer.reply.clone();
    }
    let what = if answer.outcome.accepted_push { "push accepted, points dropped" } else { "push refused" };
    let detail = detail(&answer.reply);
    for &(reason, count) in &answer.outcome.drops {
        tracing::debug!(
            reason = reason.label(),
            count,
            status = answer.reply.status,
            path = head.path,
            content_type = head.content_type.unwrap_or(""),
            detail = detail.as_str(),
            "{what}"
        );
        *lock(&PUSHES).entry(reason.label()).or_default() += count;
    }
    answer.reply.clone()
}

/// Connections and requests cut by (port, reason) since start, for `/metrics`.
static CONNECTIONS_TOTAL: Mutex<BTreeMap<(&'static str, &'static str), u64>> = Mutex::new(BTreeMap::new());

/// Counts a connection or request the server closed or refused on `port`, for the summary and `/metrics`.
pub fn connection(port: &'static str, reason: &'static str) {
    *lock(&CONNECTIONS).entry((port, reason)).or_default() += 1;
    *lock(&CONNECTIONS_TOTAL).entry((port, reason)).or_default() += 1;
}

/// This server's own counters in the Prometheus text format, appended to the core's `/metrics`.
pub fn metrics() -> String {
    let mut out = String::from(
        "# HELP ingero_fleet_server_cut_total Connections or requests the standalone server cut or refused, by port and limit.\n\
         # TYPE ingero_fleet_server_cut_total counter\n",
    );
    for ((port, reason), n) in lock(&CONNECTIONS_TOTAL).iter() {
        let _ = writeln!(out, "ingero_fleet_server_cut_total{{port=\"{port}\",reason=\"{reason}\"}} {n}");
    }
    out
}

/// Writes the summary every [`SUMMARY_PERIOD`] until shutdown, and once more at the end.
pub async fn run_summaries(mut shutdown: watch::Receiver<bool>) {
    let mut interval = tokio::time::interval(SUMMARY_PERIOD);
    interval.tick().await;
    loop {
        tokio::select! {
            _ = interval.tick() => summarize(),
            _ = shutdown.changed() => {
                summarize();
                return;
            }
        }
    }
}

/// One warning per kind for what was counted since the last call.
pub fn summarize() {
    let pushes = std::mem::take(&mut *lock(&PUSHES));
    if !pushes.is_empty() {
        let total: u64 = pushes.values().sum();
        let mut by_reason = String::new();
        for (reason, n) in &pushes {
            let _ = write!(by_reason, " {reason}={n}");
        }
        tracing::warn!("refused pushes (or dropped points) since the last summary: {total} by reason:{by_reason}");
    }
    let connections = std::mem::take(&mut *lock(&CONNECTIONS));
    if !connections.is_empty() {
        let total: u64 = connections.values().sum();
        let mut by_reason = String::new();
        for ((port, reason), n) in &connections {
            let _ = write!(by_reason, " {port}:{reason}={n}");
        }
        tracing::warn!(
            "connections or requests cut by the server since the last summary: {total} by port:reason:{by_reason}"
        );
    }
}

/// The reply's error text: JSON or text as sent, a protobuf `google.rpc.Status` decoded.
fn detail(reply: &Reply) -> String {
    let protobuf = reply.header("content-type").is_some_and(|t| t.contains("protobuf"));
    let text = match (protobuf, reply.status) {
        (false, _) => match serde_json::from_slice::<serde_json::Value>(&reply.body) {
            // The core's JSON errors are {"code", "message"}; partial successes carry errorMessage.
            Ok(json) => json
                .get("message")
                .or_else(|| json.pointer("/partialSuccess/errorMessage"))
                .and_then(|m| m.as_str())
                .map_or_else(|| json.to_string(), str::to_owned),
            Err(_) => String::from_utf8_lossy(&reply.body).trim().to_owned(),
        },
        (true, 200) => String::new(),
        (true, _) => RpcStatus::decode(reply.body.as_slice()).map(|s| s.message).unwrap_or_default(),
    };
    text.chars().take(300).collect()
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The maps hold counts only; a poisoned one is still usable.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
