"""The front doors scripts/bench measures: tests/frontdoors.py's registry (the
same factories the conformance suite runs), started with the release server,
plus the anchor, which answers without Fleet. Measuring another front door is
one entry in DOORS. Also the observe-mode pair: an Envoy proxying pushes to an
upstream, without and with the filter in observe mode (PIPELINES)."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, ContextManager, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from dynamic import MODULE as DYNAMIC_MODULE  # noqa: E402
from fleet import WASM, Envoy, fleet_envoy, free_port, render_envoy  # noqa: E402
from frontdoors import FRONT_DOORS, SERVER as DEBUG_SERVER  # noqa: E402
from frontdoors import Door as Running  # noqa: E402,F401  (bench_run's name for a started door)
from peers import observe_envoy  # noqa: E402

ANCHOR = ROOT / "envoy/bench-anchor.yaml"
LISTENERS = ("otlp_http", "api", "metrics")
RELEASE_SERVER = ROOT / "target/release/ingero-fleet"
# The release build when there is one; --smoke may run on the tests' debug build.
SERVER = RELEASE_SERVER if RELEASE_SERVER.exists() else DEBUG_SERVER


Start = Callable[[dict, int], ContextManager[Running]]


@dataclass
class Door:
    key: str
    title: str
    # The build artefact; a door whose artefact is missing is skipped.
    artefact: Path | None
    start: Start
    # False for the anchor, which answers without Fleet (no threshold, no nodes).
    fleet: bool = True
    # Whether memory per node, recompute cost and stalls are measured (for a door of its own process).
    detail: bool = True

    def available(self) -> bool:
        return self.artefact is None or self.artefact.exists()


def registered(name: str) -> Start:
    """tests/frontdoors.py's door `name`, with the bench's Envoy workers, quiet Envoy logs and SERVER."""
    def start(plugin_config: dict, concurrency: int) -> ContextManager[Running]:
        return FRONT_DOORS[name](plugin_config, concurrency=concurrency, server=SERVER, log_level="error")
    return start


@contextmanager
def anchor(_plugin_config: dict, concurrency: int) -> Iterator[Running]:
    """envoy/bench-anchor.yaml: buffer filter, then direct_response 200 (not a Fleet front door)."""
    ports = {name: free_port() for name in LISTENERS}
    config = render_envoy({}, ports, free_port(), template=ANCHOR)
    with Envoy(config, concurrency=concurrency, log_level="error") as envoy:
        yield Running("anchor", ports["otlp_http"], ports["api"], ports["metrics"], None, (envoy.process.pid,),
                      envoy.admin_port)


DOORS = [
    Door("anchor", "Envoy buffer + direct_response (anchor)", None, anchor, fleet=False),
    Door("wasm", "Envoy + wasm filter", WASM, registered("filter")),
    Door("dynamic", "Envoy + dynamic module", DYNAMIC_MODULE, registered("dynamic")),
    Door("server", "standalone ingero-fleet", SERVER, registered("standalone")),
    Door("upstream", "Envoy proxying to ingero-fleet", SERVER, registered("upstream"), detail=False),
]


# === configuration variants of the wasm filter, for the profile ===

def _pass_to_direct_response(config: dict) -> dict:
    """Non-Fleet paths pass the filter to a buffer filter and a direct_response 200."""
    for listener in config["static_resources"]["listeners"]:
        for f in listener["filter_chains"][0]["filters"]:
            manager = f["typed_config"]
            for route in manager["route_config"]["virtual_hosts"][0]["routes"]:
                route["direct_response"] = {"status": 200, "body": {"inline_string": "{}"}}
            router = manager["http_filters"][-1]
            buffer = {"name": "envoy.filters.http.buffer", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer",
                "max_request_bytes": 1048576}}
            manager["http_filters"] = manager["http_filters"][:-1] + [buffer, router]
    return config


@contextmanager
def wasm_variant(variant: Callable[[dict], dict], plugin_config: dict, concurrency: int) -> Iterator[Running]:
    """The filter door's Envoy (envoy/envoy.yaml rendered as the tests do), rewritten by `variant`."""
    envoy, ports = fleet_envoy(plugin_config, concurrency=concurrency)
    envoy.config, envoy.log_level = variant(envoy.config), "error"
    with envoy:
        yield Running("wasm", ports.push, ports.api, ports.metrics, None, (envoy.process.pid,), envoy.admin_port)


wasm = registered("filter")
wasm_passing = partial(wasm_variant, _pass_to_direct_response)


# (title, start, loadgen arguments): what a wasm-filter push costs, step by step.
WASM_VARIANTS = [
    ("anchor: buffer + direct_response", anchor, ["--body", "json"]),
    ("wasm filter passes (non-Fleet path) to buffer + direct_response", wasm_passing,
     ["--body", "json", "--path", "/bench/pass"]),
    ("wasm filter answers an empty push", wasm, ["--body", "empty"]),
    ("wasm filter stores an agent push (protobuf)", wasm, ["--body", "protobuf"]),
    ("wasm filter stores an agent push (JSON)", wasm, ["--body", "json"]),
]

dynamic = registered("dynamic")

# The same steps for the dynamic module: an empty push is Envoy's filter chain and the module ABI (header
# and body reads, the reply) with almost no core work; an agent push adds the core's decode and store.
DYNAMIC_VARIANTS = [
    ("anchor: buffer + direct_response", anchor, ["--body", "json"]),
    ("dynamic module answers an empty push", dynamic, ["--body", "empty"]),
    ("dynamic module stores an agent push (protobuf)", dynamic, ["--body", "protobuf"]),
    ("dynamic module stores an agent push (JSON)", dynamic, ["--body", "json"]),
]


# === observe mode: Fleet added to a pipeline that already proxies pushes ===

def _without_filter(config: dict) -> dict:
    """envoy/envoy-observe.yaml with the wasm filter taken off the push listener (and its per-route
    switch with it): the pipeline as it was before Fleet joined it. The API and metrics listeners keep the
    filter; no request reaches them during the comparison."""
    for listener in config["static_resources"]["listeners"]:
        if listener["name"] != "otlp_http":
            continue
        for f in listener["filter_chains"][0]["filters"]:
            manager = f["typed_config"]
            manager["http_filters"] = [hf for hf in manager["http_filters"] if hf["name"] != "envoy.filters.http.wasm"]
            for route in manager["route_config"]["virtual_hosts"][0]["routes"]:
                route.pop("typed_per_filter_config", None)
    return config


@contextmanager
def pipeline(filtered: bool, plugin_config: dict, upstream_push: int, concurrency: int) -> Iterator[Running]:
    """envoy/envoy-observe.yaml rendered as the tests render it (tests/peers.py `observe_envoy`), its
    otel_collector cluster pointed at `upstream_push`; with the filter in observe mode, or without it."""
    envoy, ports = observe_envoy(plugin_config, upstream_push, concurrency=concurrency)
    envoy.log_level = "error"
    if not filtered:
        envoy.config = _without_filter(envoy.config)
    with envoy:
        yield Running("observe" if filtered else "proxy", ports.push, ports.api, ports.metrics, None,
                      (envoy.process.pid,), envoy.admin_port)


# (key, title, filtered): the two sides of the observe-mode comparison, each in front of the same upstream,
# an anchor Envoy (buffer + direct_response 200 `{}`): cheap and steady, so the ratio is the filter's cost.
PIPELINES = [
    ("proxy", "Envoy proxying pushes to an upstream (no Fleet)", False),
    ("observe", "the same Envoy + wasm filter in observe mode", True),
]
OBSERVE_ARTEFACT = WASM
