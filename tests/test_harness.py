"""The harness renders what it says: configs built from the committed Envoy files put each
filter where the front door has it, and no edit to one listener leaks into another through
a YAML alias (no Envoy is started here)."""

from collections import defaultdict

import pytest

from dynamic import TEMPLATE as DYNAMIC_TEMPLATE
from fleet import ROOT, render_envoy
from frontdoors import render_sidecar, render_upstream

WASM_FILTER = "envoy.filters.http.wasm"
PORTS = {"otlp_http": 14318, "otlp_grpc": 14317, "api": 18080, "metrics": 18888}


def http_filters(listener: dict) -> list[str]:
    return [hf["name"] for chain in listener["filter_chains"] for f in chain["filters"]
            for hf in f["typed_config"].get("http_filters", [])]


def shared_nodes(tree) -> list[str]:
    """Paths of dicts or lists reached a second time (the same Python object in two places)."""
    seen, twice = set(), []

    def walk(node, path):
        if not isinstance(node, (dict, list)):
            return
        if id(node) in seen:
            twice.append(path)
            return
        seen.add(id(node))
        for key, value in (node.items() if isinstance(node, dict) else enumerate(node)):
            walk(value, f"{path}/{key}")
    walk(tree, "")
    return twice


def test_the_sidecar_has_one_filter_per_http_listener_and_none_on_grpc():
    config = render_sidecar(PORTS, PORTS, 9901, {"push_interval": "1s"})
    per_listener = {listener["name"]: http_filters(listener) for listener in config["static_resources"]["listeners"]}
    assert {name: names.count(WASM_FILTER) for name, names in per_listener.items()} == {
        "otlp_http": 1, "otlp_grpc": 0, "api": 1, "metrics": 1}
    # Before the router, as Istio's WasmPlugin inserts it.
    assert all(names[0] == WASM_FILTER for name, names in per_listener.items() if name != "otlp_grpc")


def test_upstream_has_no_filter_but_the_router():
    config = render_upstream(PORTS, PORTS, 9901)
    assert {listener["name"]: http_filters(listener) for listener in config["static_resources"]["listeners"]} == {
        name: ["envoy.filters.http.router"] for name in PORTS}


@pytest.mark.parametrize("template", ["envoy.yaml", "envoy-rbac.yaml", "envoy-observe.yaml",
                                      DYNAMIC_TEMPLATE.name, "bench-anchor.yaml"])
def test_rendered_envoy_configs_share_no_node(template):
    config = render_envoy({"push_interval": "1s"}, defaultdict(lambda: 10000), 9901, ROOT / "envoy" / template)
    assert shared_nodes(config) == []


def test_the_front_door_renderings_share_no_node():
    assert shared_nodes(render_upstream(PORTS, PORTS, 9901)) == []
    assert shared_nodes(render_sidecar(PORTS, PORTS, 9901, {})) == []


def test_the_bench_leaves_the_tests_server_binary_alone():
    """The bench passes its release server per call; the suite keeps running the debug build it just built."""
    import sys

    import frontdoors
    sys.path.insert(0, str(ROOT / "bench"))
    import bench_doors  # noqa: F401

    assert frontdoors.SERVER == ROOT / "target/debug/ingero-fleet"
    assert frontdoors.Standalone().binary == frontdoors.SERVER
