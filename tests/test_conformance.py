"""One conformance suite for every front door (tests/frontdoors.py): the same
case, the same expected answer, each target. Pushes, thresholds against an
independent computation, expiry, bad input, metrics, listings, OTLP/HTTP JSON and
protobuf (plain and gzip), OTLP/gRPC and the OpenTelemetry SDK exporters.

The observe-mode door (the filter in front of the real Collector) runs the
threshold cases too (`OBSERVED`); the cases about Fleet's own answers to bad
input do not apply to it: it forwards every push, and the collector answers."""

from __future__ import annotations

import gzip
import random
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter
from opentelemetry.metrics import Observation
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (ExportMetricsServiceRequest,
                                                                           ExportMetricsServiceResponse)
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from fleet import (COLD_START, agent_push, expected_threshold, push, request, scrape, threshold,
                   until_piggybacked, wait_for)
from frontdoors import FRONT_DOORS, observe_door

# Short intervals so thresholds and expiry happen within seconds; alpha 1 makes
# the published threshold the raw one, so the test can compute it exactly.
CONFIG = {
    "push_interval": "1s",
    "ttl_multiplier": 4,
    "threshold": {"k": 2.0, "ema_alpha": 1.0},
    "quorum": {"statistical_min": 5},
    "max_body_bytes": 65536,
}
EXPORT = "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export"
PROTOBUF = "application/x-protobuf"


# The cases an observe-mode door passes as every other door does.
OBSERVED = {
    "test_cold_start_and_unknown_cluster_are_byte_exact",
    "test_thresholds_match_an_independent_computation",
    "test_empty_push_is_accepted_and_counted",
    "test_metrics_show_each_cohort",
    "test_listings_and_dashboard_match_the_pushes",
    "test_nodes_expire_after_the_ttl",
    "test_protobuf_and_gzip_pushes_count_like_json",
    "test_sdk_http_exporter_pushes_are_counted",
}


@pytest.fixture(scope="module", params=[*sorted(FRONT_DOORS), "observe"])
def door(request):
    with (observe_door if request.param == "observe" else FRONT_DOORS[request.param])(CONFIG) as door:
        yield door


@pytest.fixture(autouse=True)
def observed_cases_only(request):
    params = getattr(request.node, "callspec", None)
    if params and params.params.get("door") == "observe" and request.node.originalname not in OBSERVED:
        pytest.skip("observe mode forwards every push: the collector, not Fleet, answers this case")


# === helpers ===

def push_all(port, cluster, scores, prefix="n"):
    """Every node pushes once, each over its own connection, in parallel."""
    def one(item):
        i, score = item
        return push(port, cluster, agent_push(f"{prefix}{i}", score, cluster=cluster)).status
    with ThreadPoolExecutor(max_workers=12) as pool:
        return list(pool.map(one, enumerate(scores)))


def published(api_port, cluster, cohort=None):
    r = threshold(api_port, cluster, cohort)
    assert r.status == 200
    return r.json()


def wait_threshold(api_port, cluster, expected, active):
    def ok():
        body = published(api_port, cluster)
        return body if body["quorum_met"] and body.get("active_nodes") == active \
            and abs(body["threshold"] - expected) < 1e-9 else None
    return wait_for(ok, what=f"threshold {expected} over {active} nodes in {cluster}")


def as_protobuf(json_body: bytes) -> bytes:
    """The same push in OTLP protobuf (the OTLP JSON mapping is proto3 JSON)."""
    return json_format.Parse(json_body, ExportMetricsServiceRequest()).SerializeToString()


def grpc_door(door):
    if door.grpc is None:
        pytest.skip(f"the {door.name} front door has no OTLP/gRPC port")
    return door.grpc


def grpc_export(port, message: bytes, metadata=(), compression=None):
    """A raw unary Export call: (status code, details, trailing+initial metadata, response bytes)."""
    with grpc.insecure_channel(f"127.0.0.1:{port}", compression=compression) as channel:
        call = channel.unary_unary(EXPORT, request_serializer=None, response_deserializer=None)
        try:
            response, info = call.with_call(message, metadata=metadata, timeout=5)
            return grpc.StatusCode.OK, "", dict(info.initial_metadata()), response
        except grpc.RpcError as e:
            return e.code(), e.details(), dict(e.initial_metadata() or ()) | dict(e.trailing_metadata() or ()), None


def sdk_export(exporter, node: str, cluster: str, score: float) -> bool:
    """One SDK 'node': a MeterProvider whose resource names the node, exporting one gauge."""
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    resource = Resource.create({"ingero.node.id": node, "ingero.cluster.id": cluster, "ingero.world_size": 5})
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    provider.get_meter("ingero.health").create_observable_gauge(
        "ingero.node.health_score",
        callbacks=[lambda _options: [Observation(score, {"ingero.node.state": "active"})]],
    )
    try:
        return provider.force_flush(timeout_millis=5000)
    finally:
        provider.shutdown()


# === the threshold API and pushes ===

def test_cold_start_and_unknown_cluster_are_byte_exact(door):
    r = threshold(door.api, "never-seen")
    assert (r.status, r.body) == (200, COLD_START)
    assert r.headers["content-type"] == "application/json"
    assert threshold(door.api, "never-seen", cohort="abc").body == COLD_START


def test_thresholds_match_an_independent_computation(door):
    rng = random.Random(7)
    clusters = {
        "alpha": [round(rng.uniform(0.7, 1.0), 4) for _ in range(30)] + [0.31, 0.42],
        "beta": [round(rng.uniform(0.5, 0.9), 4) for _ in range(24)],
        "gamma": [0.9, 0.8, 0.85, 0.95],  # below quorum
    }
    for cluster, scores in clusters.items():
        assert push_all(door.push, cluster, scores) == [200] * len(scores)

    for cluster in ("alpha", "beta"):
        scores = clusters[cluster]
        body = wait_threshold(door.api, cluster, expected_threshold(scores), len(scores))
        assert body["stragglers"] == sum(1 for s in scores if s + 1e-9 < body["threshold"])
        # The push answer piggybacks the same threshold.
        r = until_piggybacked(lambda: push(door.push, cluster, agent_push("n0", scores[0], cluster=cluster)),
                              body["threshold"])
        assert r.status == 200 and r.headers["x-ingero-quorum-met"] == "true"

    # Below quorum: the cold-start body, and no threshold headers (never 0).
    assert threshold(door.api, "gamma").body == COLD_START
    r = push(door.push, "gamma", agent_push("n0", 0.9, cluster="gamma"))
    assert r.status == 200
    assert "x-ingero-threshold" not in r.headers and "x-ingero-quorum-met" not in r.headers


def accepted(door, content_type: str = "application/json") -> bytes:
    """The answer to an accepted push: Fleet's own (`{}`, or an empty protobuf
    response), or in observe mode the collector's, which reaches the client untouched."""
    if door.name == "observe":
        answer = ExportMetricsServiceResponse()
        answer.partial_success.SetInParent()
        return answer.SerializeToString() if content_type == PROTOBUF else b'{"partialSuccess":{}}'
    return b"" if content_type == PROTOBUF else b"{}"


def test_empty_push_is_accepted_and_counted(door):
    before = scrape(door.metrics)["ingero_fleet_total_pushes"]
    for _ in range(10):
        r = push(door.push, "test-hash", b'{"resourceMetrics":[]}')
        assert (r.status, r.body) == (200, accepted(door))
    assert scrape(door.metrics)["ingero_fleet_total_pushes"] - before == 10


def test_metrics_show_each_cohort(door):
    scores = [0.7, 0.75, 0.8, 0.85, 0.9, 0.2]
    push_all(door.push, "scraped", scores)
    body = wait_threshold(door.api, "scraped", expected_threshold(scores), 6)
    labels = '{cluster_id="scraped",cgroup_path_hash=""}'
    samples = wait_for(lambda: (m := scrape(door.metrics)).get("ingero_fleet_active_nodes" + labels) and m,
                       what="cohort metrics")
    assert samples["ingero_fleet_active_nodes" + labels] == 6
    assert samples["ingero_fleet_median" + labels] == pytest.approx(0.775)
    assert samples["ingero_fleet_threshold" + labels] == pytest.approx(body["threshold"])
    assert samples["ingero_fleet_straggler_count" + labels] == body["stragglers"] == 1
    assert samples['ingero_fleet_dropped_total{reason="bad_request"}'] >= 0


def test_listings_and_dashboard_match_the_pushes(door):
    scores = [0.9, 0.91, 0.92, 0.93, 0.35]
    push_all(door.push, "listed", scores)
    body = wait_threshold(door.api, "listed", expected_threshold(scores), 5)
    clusters = request(door.api, "GET", "/api/v1/clusters").json()["clusters"]
    listed = next(c for c in clusters if c["cluster_id"] == "listed")
    assert (listed["active_nodes"], listed["quorum_met"], listed["stragglers"]) == (5, True, body["stragglers"])
    nodes = request(door.api, "GET", "/api/v1/nodes?cluster_id=listed").json()
    assert {n["node_id"]: n["score"] for n in nodes["nodes"]} == {f"n{i}": s for i, s in enumerate(scores)}
    assert [n["node_id"] for n in nodes["nodes"] if n["straggler"]] == ["n4"]
    page = request(door.api, "GET", "/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")


def test_nodes_expire_after_the_ttl(door):
    scores = [0.9, 0.91, 0.92, 0.93, 0.94]
    push_all(door.push, "ephemeral", scores)
    wait_threshold(door.api, "ephemeral", expected_threshold(scores), 5)
    # No more pushes: after 4 s (1s x 4) and one recompute, the cluster is cold again.
    wait_for(lambda: threshold(door.api, "ephemeral").body == COLD_START, timeout=10, what="nodes to expire")


def test_bad_input_is_refused_and_changes_nothing(door):
    scores = [0.9, 0.88, 0.93, 0.86, 0.91, 0.89]
    push_all(door.push, "control", scores)
    before = wait_threshold(door.api, "control", expected_threshold(scores), 6)

    # Each bad request would drag the control cluster down if any of it were stored.
    poison = agent_push("n0", 0.0, cluster="control")
    no_cluster = agent_push("n0", 0.0)
    p = door.push
    cases = [
        ("missing cluster_id", push(p, None, no_cluster), 400, "cluster_id is missing"),
        ("bad JSON", push(p, "control", poison[:-7]), 400, "invalid OTLP JSON"),
        ("not JSON at all", push(p, "control", b"garbage"), 400, "invalid OTLP JSON"),
        ("empty body", push(p, "control", b""), 400, "body is empty"),
        ("oversized", push(p, "control", poison + b" " * 70000), 413, "max_body_bytes"),
        ("unknown content type", push(p, "control", poison, "text/plain"), 415, "Content-Type"),
        ("no content type", push(p, "control", poison, None), 415, "Content-Type"),
        ("bad protobuf", push(p, "control", b"\x0a\x05\x01", PROTOBUF), 400, "invalid OTLP protobuf"),
        ("bad encoding", push(p, "control", poison, extra_headers={"Content-Encoding": "br"}), 415,
         "Content-Encoding"),
        ("broken gzip", push(p, "control", b"\x1f\x8b not gzip", extra_headers={"Content-Encoding": "gzip"}), 400,
         "invalid gzip"),
        ("bad percent-encoding", push(p, "con%zztrol", poison), 400, "percent-encoded"),
        ("GET on the push path", request(p, "GET", "/v1/metrics?cluster_id=control"), 405, "use POST"),
        ("POST on the API", request(door.api, "POST", "/api/v1/threshold?cluster_id=control", b"{}"), 405,
         "use GET"),
    ]
    for name, r, status, message in cases:
        assert r.status == status, f"{name}: {r.status} {r.body!r}"
        # JSON or protobuf google.rpc.Status, as the request was: the message is in the body.
        assert message.encode() in r.body, f"{name}: {r.body!r}"

    # Per-point rejections: 200 with partialSuccess, nothing stored.
    r = push(p, "control", agent_push("n0", "NaN", cluster="control"))
    assert r.status == 200 and r.json()["partialSuccess"]["rejectedDataPoints"] == "1"
    r = push(p, "control", agent_push("n0", 1.7, cluster="control"))
    assert r.json()["partialSuccess"]["rejectedDataPoints"] == "1"

    # Two more recomputes later, the control cluster is exactly as before.
    time.sleep(2.5)
    assert published(door.api, "control") == before


def test_error_answers_carry_the_threshold_of_a_known_cluster(door):
    scores = [0.8, 0.82, 0.84, 0.86, 0.88]
    push_all(door.push, "known", scores)
    body = wait_threshold(door.api, "known", expected_threshold(scores), 5)
    r = until_piggybacked(lambda: push(door.push, "known", b"{bad"), body["threshold"])
    assert r.status == 400


# === encodings: protobuf and gzip over HTTP ===

def test_protobuf_and_gzip_pushes_count_like_json(door):
    scores = [0.95, 0.9, 0.92, 0.6, 0.97]
    encodings = [
        ("application/json", lambda b: b, {}),
        ("application/json", gzip.compress, {"Content-Encoding": "gzip"}),
        (PROTOBUF, as_protobuf, {}),
        (PROTOBUF, lambda b: gzip.compress(as_protobuf(b)), {"Content-Encoding": "gzip"}),
        (PROTOBUF, as_protobuf, {}),
    ]
    for i, (score, (content_type, encode, headers)) in enumerate(zip(scores, encodings)):
        r = push(door.push, "encodings", encode(agent_push(f"e{i}", score, cluster="encodings")), content_type,
                 headers)
        assert r.status == 200, r.body
        # Envoy drops the content type of an empty local reply (an empty ExportMetricsServiceResponse).
        assert (r.body, r.headers.get("content-type", content_type)) == (accepted(door, content_type), content_type)
    body = wait_threshold(door.api, "encodings", expected_threshold(scores), 5)

    # A protobuf push answer piggybacks the threshold; a protobuf error is a google.rpc.Status.
    until_piggybacked(lambda: push(door.push, "encodings", as_protobuf(agent_push("e0", 0.95, cluster="encodings")),
                                   PROTOBUF), body["threshold"])
    partial = ExportMetricsServiceResponse.FromString(
        push(door.push, "encodings", as_protobuf(agent_push("e0", 1.7, cluster="encodings")), PROTOBUF).body)
    # Fleet's own answer names the rejected point; in observe mode the collector answers, having taken it.
    assert partial.partial_success.rejected_data_points == (0 if door.name == "observe" else 1)


# === OTLP/gRPC ===

def test_grpc_export_counts_and_carries_the_threshold(door):
    port = grpc_door(door)
    scores = [0.88, 0.9, 0.86, 0.93, 0.5]
    before = scrape(door.metrics)["ingero_fleet_total_pushes"]
    for i, score in enumerate(scores):
        message = as_protobuf(agent_push(f"g{i}", score, cluster="grpc"))
        # Gzip message compression half of the time; the cluster named by the resource attribute.
        compression = grpc.Compression.Gzip if i % 2 else None
        code, details, metadata, response = grpc_export(port, message, compression=compression)
        assert (code, details, response) == (grpc.StatusCode.OK, "", b"")
        assert "ingero-threshold" not in metadata, "no threshold before quorum"
    assert scrape(door.metrics)["ingero_fleet_total_pushes"] - before == len(scores)
    body = wait_threshold(door.api, "grpc", expected_threshold(scores), 5)

    code, _, metadata, _ = grpc_export(port, as_protobuf(agent_push("g0", 0.88, cluster="grpc")))
    assert code == grpc.StatusCode.OK
    assert abs(float(metadata["ingero-threshold"]) - body["threshold"]) < 1e-12
    assert metadata["ingero-quorum-met"] == "true"

    # Optional cluster_id metadata plays the query parameter's part.
    code, _, metadata, _ = grpc_export(port, as_protobuf(agent_push("g0", 0.88)), metadata=[("cluster_id", "grpc")])
    assert code == grpc.StatusCode.OK and metadata["ingero-quorum-met"] == "true"


def test_grpc_errors_are_grpc_statuses(door):
    port = grpc_door(door)
    cases = [
        ("undecodable message", b"\x0a\x05\x01", grpc.StatusCode.INVALID_ARGUMENT, "invalid OTLP protobuf"),
        ("no cluster anywhere", as_protobuf(agent_push("x", 0.9)), grpc.StatusCode.INVALID_ARGUMENT,
         "cluster_id is missing"),
        # The core reads the body as it streams in and refuses it past the limit, as over HTTP.
        ("over max_body_bytes", as_protobuf(agent_push("x" * 70000, 0.9, cluster="grpc-errors")),
         grpc.StatusCode.RESOURCE_EXHAUSTED, "exceeds max_body_bytes"),
    ]
    too_large = 'ingero_fleet_dropped_total{reason="body_too_large"}'
    before = scrape(door.metrics)[too_large]
    for name, message, status, text in cases:
        code, details, _, _ = grpc_export(port, message)
        assert code == status and text in details, f"{name}: {code} {details}"
    assert scrape(door.metrics)[too_large] == before + 1, "the oversized call is counted like an HTTP one"
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        with pytest.raises(grpc.RpcError) as e:
            channel.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export")(b"", timeout=5)
        assert e.value.code() == grpc.StatusCode.UNIMPLEMENTED


# === the OpenTelemetry Python SDK ===

def test_sdk_http_exporter_pushes_are_counted(door):
    scores = [0.91, 0.87, 0.95, 0.89, 0.6]
    before = scrape(door.metrics)["ingero_fleet_total_pushes"]
    for i, score in enumerate(scores):
        # Half name the cluster in the query (as the agent does), half only in the resource.
        query = "?cluster_id=otel-http" if i % 2 else ""
        compression = Compression.Gzip if i % 2 else Compression.NoCompression
        exporter = HttpExporter(endpoint=f"http://127.0.0.1:{door.push}/v1/metrics{query}", compression=compression)
        assert sdk_export(exporter, f"sdk-{i}", "otel-http", score)
    # Flush exports once per node, and the provider's shutdown once more.
    assert scrape(door.metrics)["ingero_fleet_total_pushes"] - before >= len(scores)
    wait_threshold(door.api, "otel-http", expected_threshold(scores), 5)


def test_sdk_grpc_exporter_pushes_are_counted(door):
    port = grpc_door(door)
    scores = [0.8, 0.84, 0.82, 0.86, 0.4]
    before = scrape(door.metrics)["ingero_fleet_total_pushes"]
    for i, score in enumerate(scores):
        compression = grpc.Compression.Gzip if i % 2 else grpc.Compression.NoCompression
        exporter = GrpcExporter(endpoint=f"127.0.0.1:{port}", insecure=True, compression=compression)
        assert sdk_export(exporter, f"sdk-{i}", "otel-grpc", score)
    assert scrape(door.metrics)["ingero_fleet_total_pushes"] - before >= len(scores)
    body = wait_threshold(door.api, "otel-grpc", expected_threshold(scores), 5)
    # Once quorum is met, the gRPC answer carries the threshold as metadata.
    _, _, metadata, _ = grpc_export(port, as_protobuf(agent_push("sdk-0", 0.8, cluster="otel-grpc")))
    assert abs(float(metadata["ingero-threshold"]) - body["threshold"]) < 1e-12
