"""Observe mode in the Envoy dynamic module: envoy/envoy-observe.yaml with the
native module in the wasm filter's place, in front of the real OpenTelemetry
Collector. The same core exchange as the wasm filter: the push reaches the
collector, a 2xx stores its scores, a refusal does not, and the collector's
answer gains the threshold headers."""

import copy
import json

from dynamic import FILTER, MODULE, TEMPLATE
from fleet import ROOT, Envoy, Ports, agent_push, expected_threshold, free_port, push, render_envoy, request, \
    scrape, wait_for
from peers import OBSERVE_ENVOY, file_collector, output, refusing_collector
import yaml

SCORES = [0.93, 0.91, 0.9, 0.92, 0.89, 0.35]
CONFIG = {"mode": "observe", "push_interval": "1s", "threshold": {"ema_alpha": 1.0}}


def dynamic_filter(filter_config: dict) -> dict:
    """envoy/envoy-dynamic.yaml's Fleet filter entry with this configuration."""
    template = yaml.safe_load(TEMPLATE.read_text())
    for listener in template["static_resources"]["listeners"]:
        for f in listener["filter_chains"][0]["filters"]:
            for hf in f["typed_config"].get("http_filters", []):
                if hf["name"] == FILTER:
                    entry = copy.deepcopy(hf)
                    entry["typed_config"]["filter_config"]["value"] = json.dumps(filter_config)
                    return entry
    raise AssertionError("no dynamic module filter in envoy/envoy-dynamic.yaml")


def observe_dynamic_envoy(upstream_port: int) -> tuple[Envoy, Ports]:
    assert MODULE.exists(), f"{MODULE} is missing: run scripts/build"
    ports = Ports(free_port(), free_port(), free_port())
    by_listener = {"otlp_http": ports.push, "api": ports.api, "metrics": ports.metrics}
    config = render_envoy(CONFIG, by_listener, free_port(), OBSERVE_ENVOY)
    for listener in config["static_resources"]["listeners"]:
        for f in listener["filter_chains"][0]["filters"]:
            typed = f["typed_config"]
            typed["http_filters"] = [dynamic_filter(CONFIG) if hf["name"] == "envoy.filters.http.wasm" else hf
                                     for hf in typed.get("http_filters", [])]
            for host in typed.get("route_config", {}).get("virtual_hosts", []):
                for route in host["routes"]:
                    per_filter = route.get("typed_per_filter_config", {})
                    if "envoy.filters.http.wasm" in per_filter:
                        per_filter[FILTER] = per_filter.pop("envoy.filters.http.wasm")
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "otel_collector":
            for group in cluster["load_assignment"]["endpoints"]:
                for endpoint in group["lb_endpoints"]:
                    endpoint["endpoint"]["address"]["socket_address"]["port_value"] = upstream_port
    assert "envoy.filters.http.wasm" not in json.dumps(config)
    return Envoy(config, concurrency=4), ports


def test_dynamic_module_observes_pushes_to_the_real_collector():
    with file_collector() as collector:
        envoy, ports = observe_dynamic_envoy(collector.otlp_port)
        with envoy:
            def push_round():
                answers = [push(ports.push, "observed", agent_push(f"node-{i}", s, cluster="observed"))
                           for i, s in enumerate(SCORES)]
                assert [a.status for a in answers] == [200] * len(SCORES), [a.body for a in answers]
                return answers[-1]
            answer = wait_for(lambda: (r := push_round()).headers.get("x-ingero-quorum-met") == "true" and r,
                              timeout=30, interval=0.3, what="quorum in the push answers")
            assert abs(float(answer.headers["x-ingero-threshold"]) - expected_threshold(SCORES)) < 1e-9
            # The collector, not Fleet, answered: its body, and it received the pushes.
            assert answer.body == b'{"partialSuccess":{}}', answer.body
            wait_for(lambda: len(output(collector)) >= len(SCORES), timeout=10, what="the collector's output")
            nodes = request(ports.api, "GET", "/api/v1/nodes?cluster_id=observed").json()["nodes"]
            assert {n["node_id"] for n in nodes} == {f"node-{i}" for i in range(len(SCORES))}

        # A collector that refuses: nothing stored, counted.
        port = free_port()
        with refusing_collector(port):
            envoy, ports = observe_dynamic_envoy(port)
            with envoy:
                r = push(ports.push, "refused", agent_push("n0", 0.5, cluster="refused"))
                assert r.status == 503, (r.status, r.body)
                assert request(ports.api, "GET", "/api/v1/nodes?cluster_id=refused").json()["nodes"] == []
                assert scrape(ports.metrics)['ingero_fleet_dropped_total{reason="upstream_refused"}'] == 1
