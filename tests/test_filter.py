"""The proxy-wasm filter in real Envoy at --concurrency 4: pushes, thresholds,
expiry and bad input, checked against an independent computation."""

import random
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from fleet import (COLD_START, agent_push, expected_threshold, fleet_envoy, push, request,
                   scrape, threshold, wait_for)

# Short intervals so thresholds and expiry happen within seconds; alpha 1 makes
# the published threshold the raw one, so the test can compute it exactly.
CONFIG = {
    "push_interval": "1s",
    "ttl_multiplier": 4,
    "threshold": {"k": 2.0, "ema_alpha": 1.0},
    "quorum": {"statistical_min": 5},
    "max_body_bytes": 65536,
}


@pytest.fixture(scope="module")
def fleet():
    envoy, ports = fleet_envoy(CONFIG, concurrency=4)
    with envoy:
        yield envoy, ports.push, ports.api, ports.metrics


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


def test_cold_start_and_unknown_cluster_are_byte_exact(fleet):
    _, _, api_port, _ = fleet
    r = threshold(api_port, "never-seen")
    assert (r.status, r.body) == (200, COLD_START)
    assert r.headers["content-type"] == "application/json"
    assert threshold(api_port, "never-seen", cohort="abc").body == COLD_START


def test_three_clusters_aggregate_across_workers(fleet):
    envoy, push_port, api_port, _ = fleet
    rng = random.Random(7)
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
        expected_stragglers = sum(1 for s in scores if s + 1e-9 < body["threshold"])
        assert body["stragglers"] == expected_stragglers
        # The push answer piggybacks the same threshold.
        r = push(push_port, cluster, agent_push("n0", scores[0], cluster=cluster))
        assert r.status == 200
        assert abs(float(r.headers["x-ingero-threshold"]) - body["threshold"]) < 1e-12
        assert r.headers["x-ingero-quorum-met"] == "true"

    # Below quorum: the cold-start body, and no threshold headers (never 0).
    assert threshold(api_port, "gamma").body == COLD_START
    r = push(push_port, "gamma", agent_push("n0", 0.9, cluster="gamma"))
    assert r.status == 200
    assert "x-ingero-threshold" not in r.headers and "x-ingero-quorum-met" not in r.headers

    # The pushes really were spread over several Envoy workers.
    stats = request(envoy.admin_port, "GET", "/stats?filter=worker_.*downstream_cx_total").body.decode()
    busy = {m.group(1) for m in re.finditer(r"\.worker_(\d+)\.downstream_cx_total: ([1-9]\d*)", stats)}
    assert len(busy) >= 2, stats


def test_empty_push_is_accepted_and_counted(fleet):
    envoy, push_port, _, metrics_port = fleet
    before = scrape(metrics_port)["ingero_fleet_total_pushes"]
    for _ in range(10):
        r = push(push_port, "test-hash", b'{"resourceMetrics":[]}')
        assert (r.status, r.body) == (200, b"{}")
    assert scrape(metrics_port)["ingero_fleet_total_pushes"] - before == 10
    assert envoy.stat("wasmcustom.ingero_fleet_total_pushes") == scrape(metrics_port)["ingero_fleet_total_pushes"]


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
    assert samples['ingero_fleet_dropped_total{reason="bad_request"}'] >= 0


def test_nodes_expire_after_the_ttl(fleet):
    _, push_port, api_port, _ = fleet
    scores = [0.9, 0.91, 0.92, 0.93, 0.94]
    push_all(push_port, "ephemeral", scores)
    wait_threshold(api_port, "ephemeral", expected_threshold(scores), 5)
    # No more pushes: after 4 s (1s x 4) and one recompute, the cluster is cold again.
    wait_for(lambda: threshold(api_port, "ephemeral").body == COLD_START, timeout=10,
             what="nodes to expire")


def test_bad_input_is_refused_and_changes_nothing(fleet):
    envoy, push_port, api_port, _ = fleet
    scores = [0.9, 0.88, 0.93, 0.86, 0.91, 0.89]
    push_all(push_port, "control", scores)
    before = wait_threshold(api_port, "control", expected_threshold(scores), 6)

    # Each bad request would drag the control cluster down if any of it were stored.
    poison = agent_push("n0", 0.0, cluster="control")
    no_cluster = agent_push("n0", 0.0)
    cases = [
        ("missing cluster_id", push(push_port, None, no_cluster), 400, "cluster_id is missing"),
        ("bad JSON", push(push_port, "control", poison[:-7]), 400, "invalid OTLP JSON"),
        ("not JSON at all", push(push_port, "control", b"garbage"), 400, "invalid OTLP JSON"),
        ("empty body", push(push_port, "control", b""), 400, "body is empty"),
        ("oversized", push(push_port, "control", poison + b" " * 70000), 413, "max_body_bytes"),
        ("unknown content type", push(push_port, "control", poison, "text/plain"), 415, "Content-Type"),
        ("no content type", push(push_port, "control", poison, None), 415, "Content-Type"),
        ("bad protobuf", push(push_port, "control", b"\x0a\x05\x01", "application/x-protobuf"), 400,
         "invalid OTLP protobuf"),
        ("bad encoding", push(push_port, "control", poison, extra_headers={"Content-Encoding": "br"}), 415,
         "Content-Encoding"),
        ("bad percent-encoding", push(push_port, "con%zztrol", poison), 400, "percent-encoded"),
        ("GET on the push path", request(push_port, "GET", "/v1/metrics?cluster_id=control"), 405, "use POST"),
        ("POST on the API", request(api_port, "POST", "/api/v1/threshold?cluster_id=control", b"{}"), 405,
         "use GET"),
    ]
    for name, r, status, message in cases:
        assert r.status == status, f"{name}: {r.status} {r.body!r}"
        # JSON or protobuf google.rpc.Status, as the request was: the message is in the body.
        assert message.encode() in r.body, f"{name}: {r.body!r}"

    # Per-point rejections: 200 with partialSuccess, nothing stored.
    r = push(push_port, "control", agent_push("n0", "NaN", cluster="control"))
    assert r.status == 200 and r.json()["partialSuccess"]["rejectedDataPoints"] == "1"
    r = push(push_port, "control", agent_push("n0", 1.7, cluster="control"))
    assert r.json()["partialSuccess"]["rejectedDataPoints"] == "1"

    # Two more recomputes later, the control cluster is exactly as before.
    time.sleep(2.5)
    after = published(api_port, "control")
    assert after == before


def test_error_answers_carry_the_threshold_of_a_known_cluster(fleet):
    _, push_port, api_port, _ = fleet
    scores = [0.8, 0.82, 0.84, 0.86, 0.88]
    push_all(push_port, "known", scores)
    body = wait_threshold(api_port, "known", expected_threshold(scores), 5)
    r = push(push_port, "known", b"{bad")
    assert r.status == 400
    assert abs(float(r.headers["x-ingero-threshold"]) - body["threshold"]) < 1e-12
