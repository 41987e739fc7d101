"""The Envoy dynamic module (libingero_fleet.so) in real Envoy at --concurrency 4:
every hook and callback it uses, checked against an independent computation.

Hooks exercised: program init (ABI check), filter config new (valid and
refused), filter new/destroy, request headers, request body (one piece and
several), request trailers, response headers/body (requests Fleet passes to
the router). Callbacks: log, get headers (+size), get body size, body chunks
(+size), received-buffered check, send response. The callout, stream,
scheduler and watermark hooks are required by Envoy but never reached: the
module starts no callouts and schedules nothing."""

import http.client
import random
import re
import socket
import time

import pytest

from dynamic import dynamic_envoy
from fleet import COLD_START, agent_push, expected_threshold, push, request, scrape, threshold, wait_for
from test_filter import published, push_all, wait_threshold

# As in test_filter.py: short intervals, and alpha 1 so the published threshold is the raw one.
CONFIG = {
    "push_interval": "1s",
    "ttl_multiplier": 4,
    "threshold": {"k": 2.0, "ema_alpha": 1.0},
    "quorum": {"statistical_min": 5},
    "max_body_bytes": 65536,
}


@pytest.fixture(scope="module")
def fleet():
    envoy, ports = dynamic_envoy(CONFIG, concurrency=4, log_level="info")
    with envoy:
        yield envoy, ports.push, ports.api, ports.metrics


def chunked_push(port: int, cluster: str, pieces: list[bytes], trailers: dict | None = None):
    """A push whose body arrives as separate chunks (Transfer-Encoding: chunked), optionally
    ending in trailers; returns (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall((f"POST /v1/metrics?cluster_id={cluster} HTTP/1.1\r\nHost: fleet\r\n"
                   "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
        for piece in pieces:
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            time.sleep(0.02)  # separate reads, so Envoy hands the filter several body events
        s.sendall(b"0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in (trailers or {}).items()) + b"\r\n")
        r = http.client.HTTPResponse(s)
        r.begin()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def split(body: bytes, parts: int) -> list[bytes]:
    step = -(-len(body) // parts)
    return [body[i:i + step] for i in range(0, len(body), step)]


def test_the_module_loads_with_abi_v0_2_0(fleet):
    envoy, *_ = fleet
    assert "Dynamic module ABI version v0.2.0 matched" in envoy.log()


def test_cold_start_and_unknown_cluster_are_byte_exact(fleet):
    _, _, api_port, _ = fleet
    r = threshold(api_port, "never-seen")
    assert (r.status, r.body) == (200, COLD_START)
    assert r.headers["content-type"] == "application/json"
    assert threshold(api_port, "never-seen", cohort="abc").body == COLD_START


def test_three_clusters_aggregate_across_workers(fleet):
    envoy, push_port, api_port, _ = fleet
    rng = random.Random(11)
    clusters = {
        "alpha": [round(rng.uniform(0.7, 1.0), 4) for _ in range(30)] + [0.31, 0.42],
        "beta": [round(rng.uniform(0.5, 0.9), 4) for _ in range(24)],
        "gamma": [0.9, 0.8, 0.85, 0.95],  # below quorum
    }
    assert sum(map(len, clusters.values())) >= 60
    for cluster, scores in clusters.items():
        assert push_all(push_port, cluster, scores) == [200] * len(scores)

    for cluster in ("alpha", "beta"):
        scores = clusters[cluster]
        body = wait_threshold(api_port, cluster, expected_threshold(scores), len(scores))
        assert body["stragglers"] == sum(1 for s in scores if s + 1e-9 < body["threshold"])
        r = push(push_port, cluster, agent_push("n0", scores[0], cluster=cluster))
        assert r.status == 200
        assert abs(float(r.headers["x-ingero-threshold"]) - body["threshold"]) < 1e-12
        assert r.headers["x-ingero-quorum-met"] == "true"

    # Below quorum: the cold-start body, and no threshold headers (never 0).
    assert threshold(api_port, "gamma").body == COLD_START
    r = push(push_port, "gamma", agent_push("n0", 0.9, cluster="gamma"))
    assert r.status == 200
    assert "x-ingero-threshold" not in r.headers and "x-ingero-quorum-met" not in r.headers

    # The pushes really were spread over several Envoy workers, all sharing one registry.
    stats = request(envoy.admin_port, "GET", "/stats?filter=worker_.*downstream_cx_total").body.decode()
    busy = {m.group(1) for m in re.finditer(r"\.worker_(\d+)\.downstream_cx_total: ([1-9]\d*)", stats)}
    assert len(busy) >= 2, stats


def test_a_body_in_several_chunks_and_one_ending_in_trailers_are_stored(fleet):
    _, push_port, api_port, _ = fleet
    scores = [0.95, 0.9, 0.92, 0.5, 0.94]
    for i, score in enumerate(scores):
        pieces = split(agent_push(f"n{i}", score, cluster="chunked"), 5)
        trailers = {"x-trailer": "end"} if i % 2 else None
        status, _, body = chunked_push(push_port, "chunked", pieces, trailers)
        assert (status, body) == (200, b"{}")
    wait_threshold(api_port, "chunked", expected_threshold(scores), len(scores))


def test_empty_push_is_accepted_and_counted(fleet):
    _, push_port, _, metrics_port = fleet
    before = scrape(metrics_port)["ingero_fleet_total_pushes"]
    for _ in range(10):
        r = push(push_port, "test-hash", b'{"resourceMetrics":[]}')
        assert (r.status, r.body) == (200, b"{}")
    assert scrape(metrics_port)["ingero_fleet_total_pushes"] - before == 10


def test_metrics_show_each_cohort(fleet):
    _, push_port, api_port, metrics_port = fleet
    scores = [0.7, 0.75, 0.8, 0.85, 0.9, 0.2]
    push_all(push_port, "scraped", scores)
    body = wait_threshold(api_port, "scraped", expected_threshold(scores), 6)
    labels = '{cluster_id="scraped",cgroup_path_hash=""}'
    samples = wait_for(lambda: (m := scrape(metrics_port)).get("ingero_fleet_active_nodes" + labels) and m,
                       what="cohort metrics")
    assert samples["ingero_fleet_active_nodes" + labels] == 6
    assert samples["ingero_fleet_median" + labels] == pytest.approx(0.775)
    assert samples["ingero_fleet_threshold" + labels] == pytest.approx(body["threshold"])
    assert samples["ingero_fleet_straggler_count" + labels] == body["stragglers"] == 1


def test_nodes_expire_after_the_ttl(fleet):
    _, push_port, api_port, _ = fleet
    scores = [0.9, 0.91, 0.92, 0.93, 0.94]
    push_all(push_port, "ephemeral", scores)
    wait_threshold(api_port, "ephemeral", expected_threshold(scores), 5)
    # No more pushes: after 4 s (1s x 4) and one recompute, the cluster is cold again.
    wait_for(lambda: threshold(api_port, "ephemeral").body == COLD_START, timeout=10, what="nodes to expire")


def test_bad_input_is_refused_and_changes_nothing(fleet):
    _, push_port, api_port, metrics_port = fleet
    scores = [0.9, 0.88, 0.93, 0.86, 0.91, 0.89]
    push_all(push_port, "control", scores)
    before = wait_threshold(api_port, "control", expected_threshold(scores), 6)
    refused_before = scrape(metrics_port)

    poison = agent_push("n0", 0.0, cluster="control")
    cases = [
        ("missing cluster_id", push(push_port, None, agent_push("n0", 0.0)), 400, "cluster_id is missing"),
        ("bad JSON", push(push_port, "control", poison[:-7]), 400, "invalid OTLP JSON"),
        ("empty body", push(push_port, "control", b""), 400, "body is empty"),
        ("oversized", push(push_port, "control", poison + b" " * 70000), 413, "max_body_bytes"),
        ("unknown content type", push(push_port, "control", poison, "text/plain"), 415, "Content-Type"),
        ("bad encoding", push(push_port, "control", poison, extra_headers={"Content-Encoding": "br"}), 415,
         "Content-Encoding"),
        ("GET on the push path", request(push_port, "GET", "/v1/metrics?cluster_id=control"), 405, "use POST"),
        ("POST on the API", request(api_port, "POST", "/api/v1/threshold?cluster_id=control", b"{}"), 405,
         "use GET"),
    ]
    for name, r, status, message in cases:
        assert r.status == status, f"{name}: {r.status} {r.body!r}"
        assert message.encode() in r.body, f"{name}: {r.body!r}"
        if r.headers.get("content-type", "").startswith("application/json"):
            assert r.headers["content-type"] == "application/json", name

    # No Content-Length: the filter counts the body as it arrives and refuses it past the limit.
    status, headers, body = chunked_push(push_port, "control", [poison] + [b" " * 16384] * 5)
    assert status == 413 and b"max_body_bytes" in body, body
    assert abs(float(headers["x-ingero-threshold"]) - before["threshold"]) < 1e-12, "errors piggyback too"

    after_metrics = scrape(metrics_port)
    for reason, n in (("bad_request", 3), ("body_too_large", 2), ("unsupported_media_type", 2),
                      ("method_not_allowed", 2)):
        key = f'ingero_fleet_dropped_total{{reason="{reason}"}}'
        assert after_metrics[key] - refused_before[key] == n, reason

    # Two more recomputes later, the control cluster is exactly as before.
    time.sleep(2.5)
    assert published(api_port, "control") == before


def test_other_paths_pass_through_to_the_router(fleet):
    _, push_port, api_port, _ = fleet
    for port in (push_port, api_port):
        r = request(port, "GET", "/not-fleet")
        assert (r.status, r.body) == (404, b"not found\n")


def test_an_invalid_configuration_is_refused_naming_the_key():
    envoy, _ = dynamic_envoy({"threshold": {"k": 9}}, concurrency=1)
    with pytest.raises(AssertionError) as refused:
        with envoy:
            pass
    assert "threshold.k" in str(refused.value)
