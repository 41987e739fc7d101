//! What one agent of the simulated fleet sends: its identity, its score, and
//! a push body shaped like the Ingero agent's (contract §1), as OTLP JSON or
//! OTLP protobuf.

use crate::proto::Writer;

/// How push bodies are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// OTLP/HTTP JSON, as the agent sends it.
    Json,
    /// OTLP protobuf, as an OpenTelemetry SDK or Collector sends it.
    Protobuf,
    /// `{"resourceMetrics":[]}`: a valid push that stores nothing.
    Empty,
}

impl BodyKind {
    /// Parses `json`, `protobuf` or `empty`.
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "json" => Some(Self::Json),
            "protobuf" => Some(Self::Protobuf),
            "empty" => Some(Self::Empty),
            _ => None,
        }
    }

    /// The request's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Protobuf => "application/x-protobuf",
            Self::Json | Self::Empty => "application/json",
        }
    }
}

/// The simulated fleet: `nodes` agents spread round-robin over `clusters` clusters.
#[derive(Debug, Clone, Copy)]
pub struct Fleet {
    pub nodes: u64,
    pub clusters: u64,
}

/// One agent of the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct Agent {
    pub index: u64,
    pub node_id: String,
    pub cluster_id: String,
    pub rank: u64,
    pub world_size: u64,
    pub score: f64,
}

impl Fleet {
    /// The agent at `index` (taken modulo the fleet size).
    pub fn agent(&self, index: u64) -> Agent {
        let index = index % self.nodes.max(1);
        let clusters = self.clusters.max(1);
        let cluster = index % clusters;
        Agent {
            index,
            node_id: format!("gpu-node-{index:06}"),
            cluster_id: cluster_id(cluster),
            rank: index / clusters,
            world_size: self.nodes / clusters + u64::from(cluster < self.nodes % clusters),
            score: score(index),
        }
    }
}

/// The id of cluster `n`.
pub fn cluster_id(n: u64) -> String {
    format!("bench-cluster-{n:03}")
}

/// A node's health score: fixed per node so the expected threshold is known;
/// about one node in twenty is a straggler.
fn score(index: u64) -> f64 {
    let h = splitmix64(index);
    let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
    let raw = if h % 20 == 0 { 0.55 + 0.1 * unit } else { 0.88 + 0.1 * unit };
    (raw * 10_000.0).round() / 10_000.0
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// An attribute value of the agent's push.
enum Value<'a> {
    Str(&'a str),
    Int(u64),
}

/// A gauge (or a cumulative sum when `sum`) with one data point.
struct Gauge<'a> {
    name: &'a str,
    value: f64,
    sum: bool,
    attributes: Vec<(&'a str, Value<'a>)>,
}

impl<'a> Gauge<'a> {
    fn plain(name: &'a str, value: f64) -> Self {
        Self { name, value, sum: false, attributes: Vec::new() }
    }
}

impl Agent {
    /// This agent's push body at `now_ns`.
    pub fn body(&self, kind: BodyKind, now_ns: u64) -> Vec<u8> {
        match kind {
            BodyKind::Json => self.json(now_ns).into_bytes(),
            BodyKind::Protobuf => self.protobuf(now_ns),
            BodyKind::Empty => br#"{"resourceMetrics":[]}"#.to_vec(),
        }
    }

    fn resource(&self) -> Vec<(&str, Value<'_>)> {
        vec![
            ("ingero.node.id", Value::Str(&self.node_id)),
            ("ingero.cluster.id", Value::Str(&self.cluster_id)),
            ("ingero.world_size", Value::Int(self.world_size)),
            ("ingero.node.rank", Value::Int(self.rank)),
            ("ingero.provider", Value::Str("aws")),
            ("host.name", Value::Str(&self.node_id)),
            ("service.name", Value::Str("ingero-agent")),
            ("service.version", Value::Str("0.10.2")),
        ]
    }

    /// Every gauge the agent sends (contract §1), the score first.
    fn gauges(&self) -> Vec<Gauge<'_>> {
        let pushes = 1000 + self.index % 997;
        vec![
            Gauge {
                name: "ingero.node.health_score",
                value: self.score,
                sum: false,
                attributes: vec![
                    ("ingero.node.state", Value::Str("active")),
                    ("ingero.workload_type", Value::Str("training")),
                    ("ingero.cgroup_path_hash", Value::Str("")),
                ],
            },
            Gauge::plain("ingero.node.throughput_ratio", 0.97),
            Gauge::plain("ingero.node.compute_efficiency", 0.91),
            Gauge::plain("ingero.node.memory_headroom", 0.42),
            Gauge::plain("ingero.node.cpu_availability", 0.8),
            Gauge::plain("ingero.node.degradation_warning", 0.0),
            Gauge {
                name: "ingero.agent.detection_mode",
                value: 1.0,
                sum: false,
                attributes: vec![("ingero.detection_mode", Value::Str("ebpf"))],
            },
            Gauge::plain("ingero.agent.fleet_reachable", 1.0),
            Gauge {
                name: "ingero.node.info",
                value: 1.0,
                sum: false,
                attributes: vec![("gpu_model", Value::Str("NVIDIA H100 80GB HBM3")), ("gpu_count", Value::Int(8))],
            },
            Gauge::plain("ingero.node.world_size", self.world_size as f64),
            Gauge { name: "ingero.agent.pushes_total", value: pushes as f64, sum: true, attributes: Vec::new() },
            Gauge { name: "ingero.node.straggler_flags_total", value: 0.0, sum: true, attributes: Vec::new() },
        ]
    }

    fn json(&self, now_ns: u64) -> String {
        let mut out = String::with_capacity(3072);
        out.push_str(r#"{"resourceMetrics":[{"resource":{"attributes":"#);
        json_attributes(&mut out, &self.resource());
        out.push_str(r#"},"scopeMetrics":[{"scope":{"name":"ingero.health","version":"0.10.2"},"metrics":["#);
        for (i, gauge) in self.gauges().iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let point = if gauge.sum {
                format!(r#"{{"timeUnixNano":"{now_ns}","asInt":"{}","attributes":"#, gauge.value as u64)
            } else {
                format!(r#"{{"timeUnixNano":"{now_ns}","asDouble":{},"attributes":"#, gauge.value)
            };
            let kind =
                if gauge.sum { r#""sum":{"aggregationTemporality":2,"isMonotonic":true,"# } else { r#""gauge":{"# };
            out.push_str(&format!(r#"{{"name":"{}",{kind}"dataPoints":[{point}"#, gauge.name));
            json_attributes(&mut out, &gauge.attributes);
            out.push_str("}]}}");
        }
        out.push_str("]}]}]}");
        out
    }

    fn protobuf(&self, now_ns: u64) -> Vec<u8> {
        let key_values = |w: &mut Writer, field: u32, attributes: &[(&str, Value<'_>)]| {
            for (key, value) in attributes {
                w.message(field, |kv| {
                    kv.string(1, key);
                    kv.message(2, |any| match value {
                        Value::Str(s) => any.string(1, s),
                        Value::Int(n) => any.varint(3, *n),
                    });
                });
            }
        };
        let mut w = Writer::default();
        w.message(1, |rm| {
            rm.message(1, |resource| key_values(resource, 1, &self.resource()));
            rm.message(2, |sm| {
                sm.message(1, |scope| {
                    scope.string(1, "ingero.health");
                    scope.string(2, "0.10.2");
                });
                for gauge in self.gauges() {
                    sm.message(2, |metric| {
                        metric.string(1, gauge.name);
                        metric.message(if gauge.sum { 7 } else { 5 }, |data| {
                            data.message(1, |point| {
                                point.fixed64(3, now_ns);
                                if gauge.sum {
                                    point.fixed64(6, gauge.value as u64);
                                } else {
                                    point.fixed64(4, gauge.value.to_bits());
                                }
                                key_values(point, 7, &gauge.attributes);
                            });
                            if gauge.sum {
                                data.varint(2, 2);
                                data.varint(3, 1);
                            }
                        });
                    });
                }
            });
        });
        w.into_bytes()
    }
}

fn json_attributes(out: &mut String, attributes: &[(&str, Value<'_>)]) {
    out.push('[');
    for (i, (key, value)) in attributes.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let value = match value {
            Value::Str(s) => format!(r#"{{"stringValue":"{s}"}}"#),
            Value::Int(n) => format!(r#"{{"intValue":"{n}"}}"#),
        };
        out.push_str(&format!(r#"{{"key":"{key}","value":{value}}}"#));
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use ingero_fleet_core::otlp::{BodyFormat, ExportRequest};

    #[test]
    fn json_and_protobuf_bodies_decode_to_the_same_push() {
        let agent = Fleet { nodes: 100, clusters: 3 }.agent(42);
        let json = agent.body(BodyKind::Json, 1_700_000_000_000_000_000);
        assert!((2048..=4096).contains(&json.len()), "agent-sized body: {} bytes", json.len());
        let from_json = ExportRequest::decode(BodyFormat::Json, &json).ok();
        let protobuf = agent.body(BodyKind::Protobuf, 1_700_000_000_000_000_000);
        let from_proto = ExportRequest::decode(BodyFormat::Protobuf, &protobuf).ok();
        assert!(from_json.is_some());
        assert_eq!(from_json, from_proto);
    }

    #[test]
    fn the_fleet_is_spread_over_clusters() {
        let fleet = Fleet { nodes: 10, clusters: 3 };
        assert_eq!(fleet.agent(4).cluster_id, "bench-cluster-001");
        assert_eq!(fleet.agent(14), fleet.agent(4));
        assert_eq!([0, 1, 2].map(|c| fleet.agent(c).world_size), [4, 3, 3]);
        assert!((0..1000).map(score).all(|s| (0.55..=0.98).contains(&s)));
    }
}
