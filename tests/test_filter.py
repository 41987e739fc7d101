"""What only the proxy-wasm filter has: one node registry shared by several
Envoy workers (--concurrency 4), and its counters mirrored in Envoy's stats.
Every front-door-independent case lives in tests/test_conformance.py."""

import copy
import json
import random
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from fleet import ROOT, agent_push, expected_threshold, fleet_envoy, push, request, scrape, threshold, wait_for

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


def test_an_envoy_that_ignores_the_header_pause_gets_an_answer_naming_the_setting():
    """Without allow_on_headers_stop_iteration Envoy never passes a held push's body
    on: the filter answers it (500) within seconds instead of letting it hang until
    Envoy's stream timeout, and logs the setting to fix."""
    config = yaml.safe_load((ROOT / "envoy/envoy.yaml").read_text())
    removed = 0
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for hf in f["typed_config"].get("http_filters", []):
                    removed += hf.get("typed_config", {}).get("config", {}).pop("allow_on_headers_stop_iteration", 0)
    assert removed, "envoy/envoy.yaml sets allow_on_headers_stop_iteration"
    envoy, ports = fleet_envoy(CONFIG, template=config)
    with envoy:
        started = time.monotonic()
        r = push(ports.push, "c", agent_push("n", 0.9, cluster="c"), timeout=8)
        waited = time.monotonic() - started
        assert r.status == 500 and b"allow_on_headers_stop_iteration" in r.body, (r.status, r.body)
        assert waited < 4, f"answered after {waited:.1f} s"
        assert scrape(ports.metrics)['ingero_fleet_dropped_total{reason="host_config"}'] == 1
        wait_for(lambda: "allow_on_headers_stop_iteration: true" in envoy.log(), what="the error in Envoy's log")


def singleton_envoy(plugin_config: dict):
    """envoy/envoy.yaml whose filters defer the recompute to Envoy's singleton Wasm
    service (the same module on the main thread, sharing the filters' vm_id)."""
    envoy, ports = fleet_envoy(plugin_config | {"recompute": "deferred"}, concurrency=4)
    envoy.log_level = "debug"
    filter_plugin = next(hf["typed_config"]["config"]
                         for listener in envoy.config["static_resources"]["listeners"]
                         for chain in listener["filter_chains"] for f in chain["filters"]
                         for hf in f["typed_config"].get("http_filters", []) if hf["name"] == "envoy.filters.http.wasm")
    service = copy.deepcopy(filter_plugin)
    service.pop("allow_on_headers_stop_iteration", None)
    service["name"] = "ingero_fleet_recompute"
    service["configuration"]["value"] = json.dumps(plugin_config | {"recompute": "singleton"})
    envoy.config["bootstrap_extensions"] = [{
        "name": "envoy.bootstrap.wasm",
        "typed_config": {"@type": "type.googleapis.com/envoy.extensions.wasm.v3.WasmService",
                         "singleton": True, "config": service}}]
    return envoy, ports


def test_a_singleton_service_recomputes_on_envoys_main_thread():
    """With `recompute: deferred` on the filters and a singleton Wasm service with
    `recompute: singleton`, every recompute runs on Envoy's main thread, never on
    a worker that also serves requests, and thresholds are published as before."""
    envoy, ports = singleton_envoy(CONFIG)
    with envoy:
        scores = [0.95, 0.9, 0.92, 0.6, 0.97]
        for i, score in enumerate(scores):
            assert push(ports.push, "single", agent_push(f"n{i}", score, cluster="single")).status == 200
        wait_for(lambda: abs(threshold(ports.api, "single").json()["threshold"] - expected_threshold(scores)) < 1e-9,
                 what="the singleton's threshold")
        log = envoy.log()
        main = re.search(r"\]\[(\d+)\]\[info\]\[main\].*starting main dispatch loop", log)
        assert main, "Envoy's main thread in its log"
        threads = re.findall(r"\]\[(\d+)\]\[debug\]\[wasm\].*ingero-fleet: recomputed interval", log)
        assert threads and set(threads) == {main.group(1)}, (main.group(1), threads)


def test_the_filter_logs_its_version_at_start():
    version = re.search(r'^version = "(.+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    envoy, _ = fleet_envoy(CONFIG, concurrency=1)
    envoy.log_level = "info"
    with envoy:
        wait_for(lambda: f"ingero-fleet {version} (proxy-wasm filter) starting" in envoy.log(),
                 what="the version line in Envoy's log")
