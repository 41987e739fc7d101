"""Observe mode (Option A): Envoy + filter in front of the real OpenTelemetry
Collector (envoy/envoy-observe.yaml, --concurrency 4). Every push goes on to
the collector unchanged, its answer comes back with the threshold headers
added, and a score counts only when the collector answered 2xx."""

import gzip
import json

import pytest

from fleet import ROOT, agent_push, expected_threshold, push, request, scrape, threshold, wait_for
from peers import file_collector, observe_envoy, output, refusing_collector

# Until observe mode is in both the core's configuration and the wasm glue.
OBSERVE_KEY = '"observe"' in (ROOT / "filter/core/src/config.rs").read_text() and any(
    "observe" in f.read_text().lower() for f in (ROOT / "filter/wasm/src").rglob("*.rs"))
pytestmark = pytest.mark.skipif(
    not OBSERVE_KEY, reason='observe mode (plugin key "mode": "observe") is not in filter/core and filter/wasm yet')

SCORES = [0.93, 0.91, 0.9, 0.92, 0.89, 0.35]
CONFIG = {"push_interval": "1s", "threshold": {"ema_alpha": 1.0}}


# === what was sent, what the collector wrote ===

def _scalar(value: dict):
    (kind, v), = value.items()
    return int(v) if kind == "intValue" else v


def _attrs(attributes) -> tuple:
    return tuple(sorted((a["key"], _scalar(a["value"])) for a in attributes or []))


def points(request_json: dict) -> list:
    """Every data point of an OTLP JSON export request as comparable tuples
    (resource attributes, scope, metric, time, value, point attributes)."""
    out = []
    for rm in request_json.get("resourceMetrics", []):
        resource = _attrs(rm.get("resource", {}).get("attributes"))
        for sm in rm.get("scopeMetrics", []):
            scope = sm.get("scope", {}).get("name", "")
            for m in sm.get("metrics", []):
                for kind in ("gauge", "sum"):
                    for p in m.get(kind, {}).get("dataPoints", []):
                        value = p["asDouble"] if "asDouble" in p else int(p["asInt"])
                        out.append((resource, scope, m["name"], int(p["timeUnixNano"]), value,
                                    _attrs(p.get("attributes"))))
    return sorted(out, key=repr)


def to_protobuf(body: bytes) -> bytes:
    from google.protobuf import json_format
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
    return json_format.Parse(body.decode(), ExportMetricsServiceRequest()).SerializeToString()


ENCODINGS = {
    "json": ("application/json", False),
    "protobuf": ("application/x-protobuf", False),
    "json-gzip": ("application/json", True),
    "protobuf-gzip": ("application/x-protobuf", True),
}


def encode(body: bytes, encoding: str) -> tuple[bytes, dict]:
    content_type, gzipped = ENCODINGS[encoding]
    if content_type == "application/x-protobuf":
        body = to_protobuf(body)
    headers = {}
    if gzipped:
        body = gzip.compress(body)
        headers["Content-Encoding"] = "gzip"
    return body, headers


def nodes(api_port: int, cluster: str) -> dict:
    return request(api_port, "GET", f"/api/v1/nodes?cluster_id={cluster}").json()


# === tests ===

@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_pushes_reach_the_collector_unchanged_with_threshold_headers(encoding):
    content_type = ENCODINGS[encoding][0]
    with file_collector() as collector:
        envoy, ports = observe_envoy(CONFIG, collector.otlp_port, concurrency=4)
        with envoy:
            sent = []

            def push_round():
                last = None
                for i, score in enumerate(SCORES):
                    plain = agent_push(f"node-{i}", score, cluster="observed")
                    body, headers = encode(plain, encoding)
                    r = push(ports.push, "observed", body, content_type, headers)
                    assert r.status == 200, (r.status, r.body)
                    sent.extend(points(json.loads(plain)))
                    last = r
                return last

            answer = wait_for(lambda: (r := push_round()).headers.get("x-ingero-quorum-met") == "true" and r,
                              timeout=30, interval=0.3, what="quorum in the push answers")
            want = expected_threshold(SCORES)
            assert abs(float(answer.headers["x-ingero-threshold"]) - want) < 1e-9
            assert threshold(ports.api, "observed").json()["quorum_met"] is True
            # The collector's own answer reaches the client: the same as it gives directly.
            plain = agent_push("direct", 0.9, cluster="direct")
            body, headers = encode(plain, encoding)
            direct = push(collector.otlp_port, "direct", body, content_type, headers)
            assert (answer.status, answer.headers["content-type"], answer.body) == \
                   (direct.status, direct.headers["content-type"], direct.body)
            sent.extend(points(json.loads(plain)))
            # Every accepted push arrived with the same points, nothing more.
            wait_for(lambda: sum(len(points(x)) for x in output(collector)) >= len(sent), timeout=10,
                     what="the file exporter to write every push")
            written = sorted((p for x in output(collector) for p in points(x)), key=repr)
            assert written == sorted(sent, key=repr)
            flagged = {n["node_id"]: n["straggler"] for n in nodes(ports.api, "observed")["nodes"]}
            assert flagged == {f"node-{i}": i == len(SCORES) - 1 for i in range(len(SCORES))}


def test_a_push_the_collector_refuses_leaves_scores_unchanged():
    """Scores stored from accepted pushes stay as they were when the collector
    (really) answers 503, and when it is gone and Envoy answers 503 itself."""
    with file_collector() as good:
        port = good.otlp_port
        envoy, ports = observe_envoy(CONFIG, port, concurrency=4)
        with envoy:
            for i, score in enumerate(SCORES):
                assert push(ports.push, "refused", agent_push(f"node-{i}", score)).status == 200
            before = {n["node_id"]: n["score"] for n in nodes(ports.api, "refused")["nodes"]}
            assert len(before) == len(SCORES)
            good.stop()
            refused = 0
            with refusing_collector(port):
                # The first push may meet Envoy's pooled connection to the stopped
                # collector (Envoy's own 503); wait for the new collector's answer.
                def refused_by_collector(node, score):
                    nonlocal refused
                    r = push(ports.push, "refused", agent_push(node, score))
                    assert r.status == 503, (r.status, r.body)
                    refused += 1
                    return b'"code":14' in r.body  # the collector's Unavailable status
                wait_for(lambda: refused_by_collector("node-0", 0.11), timeout=10, what="the collector's 503")
                assert refused_by_collector("newcomer", 0.5)
            r = push(ports.push, "refused", agent_push("node-1", 0.12))
            assert r.status == 503  # no collector at all: Envoy's own answer
            after = {n["node_id"]: n["score"] for n in nodes(ports.api, "refused")["nodes"]}
            assert after == before
            assert scrape(ports.metrics)['ingero_fleet_dropped_total{reason="upstream_refused"}'] == refused + 1


def test_a_body_past_the_limit_is_forwarded_and_counted_unscored():
    with file_collector() as collector:
        envoy, ports = observe_envoy(CONFIG | {"max_body_bytes": 1024}, collector.otlp_port, concurrency=4)
        with envoy:
            big = agent_push("big-node", 0.9, cluster="big")
            assert len(big) > 1024
            before = scrape(ports.metrics)
            r = push(ports.push, "big", big)
            assert r.status == 200, (r.status, r.body)
            wait_for(lambda: any(p[0] == (("ingero.cluster.id", "big"), ("ingero.node.id", "big-node"))
                                 for x in output(collector) for p in points(x)), timeout=10,
                     what="the large push at the collector")
            assert nodes(ports.api, "big")["total"] == 0
            after = scrape(ports.metrics)
            grew = {k: after[k] - before.get(k, 0) for k in after
                    if k.startswith("ingero_fleet_dropped_total") and after[k] != before.get(k, 0)}
            assert grew == {'ingero_fleet_dropped_total{reason="body_too_large"}': 1}, grew


def test_go_sdk_agents_through_observe_mode_read_the_threshold():
    """Seven Go SDK clients push through observe mode: the collector gets every
    node, Fleet reaches quorum, and every client reads the served threshold in
    the collector's answers."""
    from peers import GoPush
    scores = SCORES[:-1] + [0.94, SCORES[-1]]
    with file_collector() as collector:
        envoy, ports = observe_envoy(CONFIG, collector.otlp_port, concurrency=4)
        with envoy:
            agents = [GoPush(f"http://127.0.0.1:{ports.push}", "go-observe", f"node-{i}", s, gzip=i % 2 == 1).start()
                      for i, s in enumerate(scores)]
            try:
                want = expected_threshold(scores)
                api = wait_for(lambda: (t := threshold(ports.api, "go-observe").json())["quorum_met"] and t,
                               timeout=30, what="quorum")
                assert abs(api["threshold"] - want) < 1e-9

                def all_read_it():
                    return all((seen := [p for p in a.pushes() if p.get("quorum_met") == "true"])
                               and abs(float(seen[-1]["threshold"]) - want) < 1e-9 for a in agents)
                wait_for(all_read_it, timeout=20, what="every client to read the threshold")
                assert all(p.get("status") == 200 for a in agents for p in a.pushes())
            finally:
                for a in agents:
                    a.stop()
            at_collector = {dict(p[0]).get("ingero.node.id") for x in output(collector) for p in points(x)}
            assert at_collector >= {f"node-{i}" for i in range(len(scores))}
            flagged = {n["node_id"]: n["straggler"] for n in nodes(ports.api, "go-observe")["nodes"]}
            assert flagged == {f"node-{i}": i == len(scores) - 1 for i in range(len(scores))}
