"""What only the proxy-wasm filter has: one node registry shared by several
Envoy workers (--concurrency 4), and its counters mirrored in Envoy's stats.
Every front-door-independent case lives in tests/test_conformance.py."""

import random
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from fleet import agent_push, expected_threshold, fleet_envoy, push, request, scrape, threshold, wait_for

CONFIG = {"push_interval": "1s", "threshold": {"k": 2.0, "ema_alpha": 1.0}, "quorum": {"statistical_min": 5}}


@pytest.fixture(scope="module")
def fleet():
    envoy, ports = fleet_envoy(CONFIG, concurrency=4)
    with envoy:
        yield envoy, ports


def test_nodes_pushed_through_every_worker_make_one_cohort(fleet):
    envoy, ports = fleet
    rng = random.Random(7)
    scores = [round(rng.uniform(0.7, 1.0), 4) for _ in range(60)] + [0.31, 0.42]

    def one(item):
        i, score = item
        return push(ports.push, "workers", agent_push(f"n{i}", score, cluster="workers")).status
    with ThreadPoolExecutor(max_workers=12) as pool:
        assert list(pool.map(one, enumerate(scores))) == [200] * len(scores)

    expected = expected_threshold(scores)

    def one_cohort():
        body = threshold(ports.api, "workers").json()
        return body.get("active_nodes") == len(scores) and abs(body["threshold"] - expected) < 1e-9
    wait_for(one_cohort, what="one threshold over every node")

    # The pushes really were spread over several Envoy workers.
    stats = request(envoy.admin_port, "GET", "/stats?filter=worker_.*downstream_cx_total").body.decode()
    busy = {m.group(1) for m in re.finditer(r"\.worker_(\d+)\.downstream_cx_total: ([1-9]\d*)", stats)}
    assert len(busy) >= 2, stats


def test_envoy_stats_mirror_the_scrape(fleet):
    envoy, ports = fleet
    for _ in range(3):
        assert push(ports.push, "stats", b'{"resourceMetrics":[]}').status == 200
    assert envoy.stat("wasmcustom.ingero_fleet_total_pushes") == scrape(ports.metrics)["ingero_fleet_total_pushes"]
