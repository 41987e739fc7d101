"""Bad input against every front door: a table of malformed, hostile and
over-limit requests, each with the status and message it must get; then proof
that a control cluster's stored scores, threshold and metrics did not move and
that every refusal was counted (contract §8). Every bad request carries scores
that would drag the control cluster down if any of it were stored."""

from __future__ import annotations

import gzip
import json
import socket
import time
from dataclasses import dataclass, field

import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest

from fleet import agent_push, expected_threshold, push, request, scrape, threshold, wait_for
from frontdoors import FRONT_DOORS

CONFIG = {
    "push_interval": "1s",
    # Long enough that the control nodes outlive the matrix without pushing again.
    "ttl_multiplier": 120,
    "threshold": {"k": 2.0, "ema_alpha": 1.0},
    "quorum": {"statistical_min": 5},
    "max_body_bytes": 65536,
    "max_id_bytes": 64,
    "max_points_per_push": 100,
}
CONTROL = "control"
CONTROL_SCORES = {f"n{i}": s for i, s in enumerate([0.9, 0.88, 0.93, 0.86, 0.91, 0.89])}
JSON, PROTOBUF = "application/json", "application/x-protobuf"
REASON = {400: "bad_request", 405: "method_not_allowed", 413: "body_too_large", 415: "unsupported_media_type"}


# === the bodies ===

def poison(node: str = "n0", score=0.0, **attrs) -> bytes:
    """An agent push for the control cluster that would change it if stored."""
    return agent_push(node, score, cluster=attrs.pop("cluster", CONTROL), **attrs)


def with_resource_attr(body: bytes, key: str, value) -> bytes:
    doc = json.loads(body)
    attrs = doc["resourceMetrics"][0]["resource"]["attributes"]
    attrs[:] = [a for a in attrs if a["key"] != key]
    if value is not None:
        attrs.append({"key": key, "value": value})
    return json.dumps(doc).encode()


def with_point_attr(body: bytes, key: str, value) -> bytes:
    doc = json.loads(body)
    point = doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["gauge"]["dataPoints"][0]
    point["attributes"] = [a for a in point["attributes"] if a["key"] != key] + [{"key": key, "value": value}]
    return json.dumps(doc).encode()


def score_as(raw: str) -> bytes:
    """The poison push with the score spelled as raw JSON text."""
    return poison().replace(b'"asDouble": 0.0', b'"asDouble": ' + raw.encode())


def protobuf(body: bytes) -> bytes:
    return json_format.Parse(body, ExportMetricsServiceRequest()).SerializeToString()


def many_points(n: int) -> bytes:
    doc = json.loads(poison("many"))
    gauge = doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"][0]["gauge"]
    gauge["dataPoints"] = gauge["dataPoints"] * n
    doc["resourceMetrics"][0]["scopeMetrics"][0]["metrics"] = [{"name": "ingero.node.health_score", "gauge": gauge}]
    return json.dumps(doc).encode()


def nested(depth: int) -> bytes:
    inner = "[" * depth + "]" * depth
    return ('{"resourceMetrics":[{"resource":{"attributes":[{"key":"k","value":{"arrayValue":%s}}]}}]}'
            % inner).encode()


def raw_http(path: str, headers: list[str], body: bytes = b"") -> bytes:
    return ("POST %s HTTP/1.1\r\nHost: fleet\r\n%s\r\n" % (path, "".join(h + "\r\n" for h in headers))).encode() + body


PUSH = "/v1/metrics?cluster_id=" + CONTROL
CHUNKED = ["Content-Type: application/json", "Transfer-Encoding: chunked"]


# === the table ===

@dataclass
class Case:
    name: str
    body: bytes = b""
    status: int | None | tuple = 400  # a tuple: any of these
    message: str = ""
    content_type: str | None = JSON
    cluster: str | None = CONTROL  # the raw (encoded) query value; None: no parameter
    method: str = "POST"
    headers: dict = field(default_factory=dict)
    api_path: str | None = None  # a request to the API port instead of a push
    raw: bytes | None = None  # bytes written to a socket as they are, then the socket is closed
    rejected: int = 0  # for 200 answers: points in partialSuccess
    counted: bool = True  # Fleet (not Envoy's HTTP codec) answers and counts it
    reason: str | None = None  # the dropped_total reason, when not the status's own (REASON)


CASES = [
    # Unparseable or wrongly shaped JSON: 400, nothing stored.
    Case("truncated JSON", poison()[:-7], message="invalid OTLP JSON"),
    Case("JSON cut in half", poison()[: len(poison()) // 2], message="invalid OTLP JSON"),
    Case("not JSON", b"garbage", message="invalid OTLP JSON"),
    Case("JSON list", b"[]", message="must be a JSON object"),
    Case("JSON string", b'"resourceMetrics"', message="must be a JSON object"),
    Case("whitespace only", b"   \n", message="must be a JSON object"),
    Case("resourceMetrics is an object", b'{"resourceMetrics":{}}', message="invalid OTLP JSON"),
    Case("resourceMetrics is a string", b'{"resourceMetrics":"x"}', message="invalid OTLP JSON"),
    Case("resource is a number", b'{"resourceMetrics":[1]}', message="invalid OTLP JSON"),
    Case("attributes are a string", b'{"resourceMetrics":[{"resource":{"attributes":"x"}}]}',
         message="invalid OTLP JSON"),
    Case("trailing garbage", b'{"resourceMetrics":[]} x', message="invalid OTLP JSON"),
    Case("invalid UTF-8", poison().replace(b'"n0"', b'"n\xff"'), message="invalid OTLP JSON"),
    Case("bare NaN literal", score_as("NaN"), message="invalid OTLP JSON"),
    Case("deeply nested lists", nested(20_000), message="nesting deeper"),
    Case("deeply nested objects", b'{"a":' * 8000 + b"1" + b"}" * 8000, message="nesting deeper"),
    Case("empty body", b"", message="body is empty"),
    # Protobuf.
    Case("truncated protobuf", protobuf(poison())[:-5], content_type=PROTOBUF, message="invalid OTLP protobuf"),
    Case("protobuf garbage", b"\x0a\x05\x01", content_type=PROTOBUF, message="invalid OTLP protobuf"),
    Case("protobuf wrong wire type", b"\x0b\x0c\x0d", content_type=PROTOBUF, message="invalid OTLP protobuf"),
    Case("JSON sent as protobuf", poison(), content_type=PROTOBUF, message="invalid OTLP protobuf"),
    # Sizes.
    Case("body over max_body_bytes", poison() + b" " * 70_000, status=413, message="max_body_bytes"),
    Case("gzip bomb", gzip.compress(poison() + b" " * 30_000_000), status=413, message="max_body_bytes",
         headers={"Content-Encoding": "gzip"}),
    Case("broken gzip", b"\x1f\x8b\x08\x00garbage", message="invalid gzip", headers={"Content-Encoding": "gzip"}),
    Case("truncated gzip", gzip.compress(poison())[:-12], message="invalid gzip",
         headers={"Content-Encoding": "gzip"}),
    Case("gzip header but plain body", poison(), message="invalid gzip", headers={"Content-Encoding": "gzip"}),
    Case("points over max_points_per_push", many_points(101), status=413, message="max_points_per_push",
         reason="max_points_per_push"),
    # Content types and encodings.
    Case("text/plain", poison(), status=415, message="Content-Type", content_type="text/plain"),
    Case("application/xml", poison(), status=415, message="Content-Type", content_type="application/xml"),
    Case("application/octet-stream", poison(), status=415, message="Content-Type",
         content_type="application/octet-stream"),
    Case("no content type", poison(), status=415, message="Content-Type", content_type=None),
    Case("brotli encoding", poison(), status=415, message="Content-Encoding", headers={"Content-Encoding": "br"}),
    Case("deflate encoding", poison(), status=415, message="Content-Encoding",
         headers={"Content-Encoding": "deflate"}),
    # Cluster ids in the query.
    Case("no cluster anywhere", poison(cluster=None), cluster=None, message="cluster_id is missing"),
    Case("empty cluster_id", poison(cluster=None), cluster="", message="cluster_id is missing"),
    Case("cluster_id over max_id_bytes", poison(), cluster="c" * 65, message="max_id_bytes"),
    Case("bad escape %zz", poison(), cluster="con%zztrol", message="percent-encoded"),
    Case("truncated escape", poison(), cluster="control%4", message="percent-encoded"),
    Case("lone percent", poison(), cluster="control%", message="percent-encoded"),
    Case("escape of non-UTF-8", poison(), cluster="control%ff", message="percent-encoded"),
    Case("overlong UTF-8 escape", poison(), cluster="%c0%afcontrol", message="percent-encoded"),
    # Per-point rejections: 200 with partialSuccess, nothing stored.
    Case("NaN score", score_as('"NaN"'), status=200, rejected=1, message="not a finite number"),
    Case("+Infinity score", score_as('"Infinity"'), status=200, rejected=1, message="not a finite number"),
    Case("-Infinity score", score_as('"-Infinity"'), status=200, rejected=1, message="not a finite number"),
    Case("score above 1", score_as("1.5"), status=200, rejected=1, message="not a finite number in [0, 1]"),
    Case("negative score", score_as("-0.1"), status=200, rejected=1, message="not a finite number in [0, 1]"),
    Case("huge score", score_as("1e308"), status=200, rejected=1, message="not a finite number"),
    Case("score is text", score_as('"abc"'), status=200, rejected=1, message="not a number"),
    Case("score is a boolean", score_as("true"), status=200, rejected=1, message="not a number"),
    Case("score is null", score_as("null"), status=200, rejected=1, message="not a number"),
    Case("score is an object", score_as('{"v":0}'), status=200, rejected=1, message="not a number"),
    Case("score is a list", score_as("[0]"), status=200, rejected=1, message="not a number"),
    Case("NaN score in protobuf", protobuf(score_as('"NaN"')), content_type=PROTOBUF, status=200, rejected=1),
    Case("unknown node state", with_point_attr(poison(), "ingero.node.state", {"stringValue": "asleep"}),
         status=200, rejected=1, message="ingero.node.state"),
    Case("node state of the wrong type", with_point_attr(poison(), "ingero.node.state", {"intValue": "1"}),
         status=200, rejected=1, message="ingero.node.state"),
    Case("missing node id", with_resource_attr(poison(), "ingero.node.id", None), status=200, rejected=1,
         message="ingero.node.id"),
    Case("empty node id", poison(""), status=200, rejected=1, message="ingero.node.id"),
    Case("node id of the wrong type", with_resource_attr(poison(), "ingero.node.id", {"intValue": "7"}),
         status=200, rejected=1, message="ingero.node.id"),
    Case("node id over max_id_bytes", poison("n" * 65), status=200, rejected=1, message="max_id_bytes"),
    Case("cohort over max_id_bytes", poison(cohort="h" * 65), status=200, rejected=1, message="max_id_bytes"),
    Case("cluster attribute over max_id_bytes", poison(cluster="c" * 65), cluster=None, status=200, rejected=1,
         message="max_id_bytes"),
    # Isolation: the query names the cluster, whatever the attribute says.
    Case("query wins over the attribute", poison("n0"), cluster="elsewhere", status=200),
    Case("empty push", b'{"resourceMetrics":[]}', status=200),
    # Methods.
    Case("GET on the push path", method="GET", status=405, message="use POST", content_type=None),
    Case("PUT on the push path", poison(), method="PUT", status=405, message="use POST"),
    Case("DELETE on the push path", method="DELETE", status=405, message="use POST", content_type=None),
    Case("POST on the threshold API", b"{}", api_path=f"/api/v1/threshold?cluster_id={CONTROL}", status=405,
         message="use GET"),
    Case("DELETE on the threshold API", api_path=f"/api/v1/threshold?cluster_id={CONTROL}", method="DELETE",
         status=405, message="use GET", content_type=None),
    Case("threshold API with a bad escape", api_path="/api/v1/threshold?cluster_id=%zz", method="GET",
         message="percent-encoded", content_type=None),
    Case("threshold API with a long cohort", method="GET", content_type=None, message="max_id_bytes",
         api_path=f"/api/v1/threshold?cluster_id={CONTROL}&cgroup_path_hash={'h' * 65}"),
    # Broken HTTP framing, written to a raw socket.
    Case("Content-Length over the limit, no body", status=413, message="max_body_bytes",
         raw=raw_http(PUSH, ["Content-Type: application/json", "Content-Length: 10000000"])),
    Case("chunked body over the limit", status=413, message="max_body_bytes",
         raw=raw_http(PUSH, CHUNKED, b"".join(b"4000\r\n" + b" " * 0x4000 + b"\r\n" for _ in range(5)))),
    # Envoy's codec refuses it: a plain 400, or just a closed connection when the
    # head had already reached the filter (it depends on how the bytes were read).
    Case("malformed chunk size", status=(400, None), counted=False,
         raw=raw_http(PUSH, CHUNKED, b"zz\r\n" + poison() + b"\r\n0\r\n\r\n")),
    Case("disconnect mid-body", status=None, counted=False,
         raw=raw_http(PUSH, ["Content-Type: application/json", f"Content-Length: {len(poison()) + 50}"], poison())),
    Case("disconnect mid-chunk", status=None, counted=False,
         raw=raw_http(PUSH, CHUNKED, b"%x\r\n" % (len(poison()) + 50) + poison())),
]


# === sending ===

@dataclass
class Answer:
    status: int | None
    body: bytes
    headers: dict


def send_raw(port: int, data: bytes, hang_up: bool) -> Answer:
    """Writes the bytes and reads one answer until it is complete or the connection
    closes (status None: no answer). `hang_up` closes right after writing."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        if hang_up:
            return Answer(None, b"", {})
        received = b""
        try:
            while not complete(received) and (chunk := s.recv(65536)):
                received += chunk
        except (ConnectionResetError, socket.timeout):
            pass
    if not received.startswith(b"HTTP/1.1 "):
        return Answer(None, received, {})
    status, headers, body = parse_head(received)
    return Answer(status, body, headers)


def parse_head(received: bytes) -> tuple[int, dict, bytes]:
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def complete(received: bytes) -> bool:
    if b"\r\n\r\n" not in received:
        return False
    _, headers, body = parse_head(received)
    return len(body) >= int(headers.get("content-length", 0))


def send(ports, case: Case) -> Answer:
    if case.raw is not None:
        return send_raw(ports.push, case.raw, hang_up=case.status is None)
    headers = dict(case.headers)
    if case.content_type:
        headers["Content-Type"] = case.content_type
    if case.api_path:
        r = request(ports.api, case.method, case.api_path, case.body or None, headers)
    else:
        path = "/v1/metrics" + (f"?cluster_id={case.cluster}" if case.cluster is not None else "")
        r = request(ports.push, case.method, path, case.body if case.method != "GET" else None, headers)
    return Answer(r.status, r.body, r.headers)


# === the control cluster ===

def control_state(ports) -> dict:
    """Everything a leak would change: the published threshold, the stored scores, the cohort's metrics."""
    nodes = json.loads(request(ports.api, "GET", f"/api/v1/nodes?cluster_id={CONTROL}&limit=1000").body)
    metrics = {k: v for k, v in scrape(ports.metrics).items() if f'cluster_id="{CONTROL}"' in k}
    return {
        "threshold": threshold(ports.api, CONTROL).json(),
        "scores": {n["node_id"]: n["score"] for n in nodes["nodes"]},
        "metrics": metrics,
    }


def drops(ports) -> dict:
    return {k: v for k, v in scrape(ports.metrics).items() if k.startswith("ingero_fleet_dropped_total")}


@dataclass
class Door:
    ports: object
    before: dict
    drops_before: dict
    ran: list = field(default_factory=list)


@pytest.fixture(scope="module", params=sorted(FRONT_DOORS))
def door(request):
    with FRONT_DOORS[request.param](CONFIG) as ports:
        for node, score in CONTROL_SCORES.items():
            assert push(ports.push, CONTROL, agent_push(node, score, cluster=CONTROL)).status == 200
        expected = expected_threshold(list(CONTROL_SCORES.values()))
        wait_for(lambda: abs(threshold(ports.api, CONTROL).json()["threshold"] - expected) < 1e-9,
                 what="the control threshold")
        wait_for(lambda: control_state(ports)["metrics"], what="control metrics")
        yield Door(ports, control_state(ports), drops(ports))


assert len(CASES) >= 40


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_gets_its_answer(door, case):
    answer = send(door.ports, case)
    door.ran.append(case)
    allowed = case.status if isinstance(case.status, tuple) else (case.status,)
    assert answer.status in allowed, f"{answer.status} {answer.body[:300]!r}"
    if case.status == 200 and case.content_type == JSON and not case.api_path:
        partial = json.loads(answer.body).get("partialSuccess", {})
        assert int(partial.get("rejectedDataPoints", 0)) == case.rejected, answer.body
        assert case.message in partial.get("errorMessage", ""), answer.body
    elif case.message:
        # A google.rpc.Status in the request's encoding: the message is in the body either way.
        assert case.message.encode() in answer.body, answer.body[:300]


def test_control_cluster_is_unchanged_and_every_refusal_counted(door):
    # Two recomputes later, so that anything stored would have been published.
    time.sleep(2.5)
    after = control_state(door.ports)
    assert after == door.before
    expected = dict(door.drops_before)
    for case in door.ran:
        if not case.counted:
            continue
        if case.reason or case.status in REASON:
            key = f'ingero_fleet_dropped_total{{reason="{case.reason or REASON[case.status]}"}}'
            expected[key] += 1
        key = 'ingero_fleet_dropped_total{reason="invalid_point"}'
        expected[key] += case.rejected
    assert drops(door.ports) == expected
    # The proxy still serves after all of it.
    assert request(door.ports.api, "GET", f"/api/v1/threshold?cluster_id={CONTROL}").status == 200


# === limits ===

LIMITS = {"push_interval": "1s", "ttl_multiplier": 3, "max_expected_nodes": 6, "max_nodes_per_cluster": 4,
          "max_clusters": 2}


@pytest.fixture(scope="module", params=sorted(FRONT_DOORS))
def limited(request):
    with FRONT_DOORS[request.param](LIMITS) as ports:
        yield ports


def partial(r) -> tuple[int, str]:
    assert r.status == 200, r.body
    p = r.json().get("partialSuccess", {})
    return int(p.get("rejectedDataPoints", 0)), p.get("errorMessage", "")


def test_limits_refuse_new_nodes_and_clusters_naming_the_limit(limited):
    ports = limited
    ok = lambda cluster, node: partial(push(ports.push, cluster, agent_push(node, 0.9, cluster=cluster)))  # noqa: E731
    assert [ok("a", f"a{i}") for i in range(4)] == [(0, "")] * 4
    assert ok("a", "a4") == (1, "new nodes past max_nodes_per_cluster (4) are not tracked")
    assert ok("a", "a0") == (0, ""), "known nodes still update"
    assert [ok("b", f"b{i}") for i in range(2)] == [(0, "")] * 2
    assert ok("b", "b2") == (1, "new nodes past max_expected_nodes (6) are not tracked")

    r = push(ports.push, "c", agent_push("c0", 0.9, cluster="c"))
    assert (r.status, r.headers.get("retry-after")) == (429, "1")
    assert r.json()["message"] == "new cluster refused: max_clusters (2) clusters already have tracked nodes"

    samples = scrape(ports.metrics)
    for reason in ("max_nodes_per_cluster", "max_expected_nodes", "max_clusters"):
        assert samples[f'ingero_fleet_dropped_total{{reason="{reason}"}}'] == 1, reason
    assert samples["ingero_fleet_tracked_nodes"] == 6

    # Once a and b stop pushing, their nodes expire (3 s) and free both caps.
    wait_for(lambda: push(ports.push, "c", agent_push("c0", 0.9, cluster="c")).status == 200, timeout=15,
             interval=0.5, what="cluster c to be admitted after expiry")
    wait_for(lambda: scrape(ports.metrics)["ingero_fleet_tracked_nodes"] == 1, what="expired nodes to stop counting")
