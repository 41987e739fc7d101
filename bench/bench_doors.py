"""The front doors scripts/bench measures, each started on free loopback ports
from its build artefact. Adding a front door is one entry in DOORS."""

from __future__ import annotations

import copy
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import frontdoors  # noqa: E402
from dynamic import MODULE as DYNAMIC_MODULE, dynamic_envoy  # noqa: E402
from fleet import WASM, Envoy, free_port, render_envoy  # noqa: E402
from frontdoors import Standalone, render_upstream  # noqa: E402

ANCHOR = ROOT / "envoy/bench-anchor.yaml"
LISTENERS = ("otlp_http", "api", "metrics")


def _built(*candidates: Path) -> Path:
    """The first build that exists (else the first): release builds, or the tests' debug build for --smoke."""
    return next((c for c in candidates if c.exists()), candidates[0])


# The tests' Standalone runs this binary: the bench measures the release build when there is one.
SERVER = frontdoors.SERVER = _built(ROOT / "target/release/ingero-fleet", frontdoors.SERVER)


@dataclass
class Running:
    """A started front door: the processes to watch and its loopback ports."""
    pids: tuple
    push: int
    api: int
    metrics: int
    # Envoy's admin port (its /memory reports the heap in use), when the door is Envoy itself.
    admin: int | None = None


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


# === Envoy ===

def _ports() -> dict:
    return {name: free_port() for name in LISTENERS}


@contextmanager
def _envoy(config: dict, ports: dict, concurrency: int) -> Iterator[Running]:
    with Envoy(config, concurrency=concurrency, log_level="error") as envoy:
        yield Running((envoy.process.pid,), ports["otlp_http"], ports["api"], ports["metrics"], envoy.admin_port)


@contextmanager
def anchor(_plugin_config: dict, concurrency: int) -> Iterator[Running]:
    """envoy/bench-anchor.yaml: buffer filter, then direct_response 200."""
    ports = _ports()
    with _envoy(render_envoy({}, ports, free_port(), template=ANCHOR), ports, concurrency) as running:
        yield running


@contextmanager
def wasm(plugin_config: dict, concurrency: int, variant: Callable[[dict], dict] = lambda c: c) -> Iterator[Running]:
    """Envoy + the proxy-wasm filter (envoy/envoy.yaml rendered as the tests do); `variant` may rewrite it."""
    ports = _ports()
    config = variant(render_envoy(copy.deepcopy(plugin_config), ports, free_port()))
    with _envoy(config, ports, concurrency) as running:
        yield running


@contextmanager
def dynamic(plugin_config: dict, concurrency: int) -> Iterator[Running]:
    """envoy/envoy-dynamic.yaml: Envoy + the native dynamic module, as the tests start it."""
    envoy, ports = dynamic_envoy(plugin_config, concurrency, log_level="error")
    with envoy:
        yield Running((envoy.process.pid,), ports.push, ports.api, ports.metrics, envoy.admin_port)


# === the standalone server, alone or behind Envoy ===

@contextmanager
def server(plugin_config: dict, _concurrency: int) -> Iterator[Running]:
    """ingero-fleet with the same keys in its YAML file (its runtime uses every core)."""
    with Standalone(plugin_config) as s:
        yield Running((s.process.pid,), s.ports["otlp_http"], s.ports["api"], s.ports["metrics"])


@contextmanager
def upstream(plugin_config: dict, concurrency: int) -> Iterator[Running]:
    """envoy/envoy-upstream.yaml: Envoy with no filter proxying to ingero-fleet (CPU and RSS of both)."""
    with Standalone(plugin_config) as s:
        listen = {name: free_port() for name in s.ports}
        with Envoy(render_upstream(listen, s.ports, free_port()), concurrency=concurrency, log_level="error") as e:
            yield Running((e.process.pid, s.process.pid), listen["otlp_http"], listen["api"], listen["metrics"])


DOORS = [
    Door("anchor", "Envoy buffer + direct_response (anchor)", None, anchor, fleet=False),
    Door("wasm", "Envoy + wasm filter", WASM, wasm),
    Door("dynamic", "Envoy + dynamic module", DYNAMIC_MODULE, dynamic),
    Door("server", "standalone ingero-fleet", SERVER, server),
    Door("upstream", "Envoy proxying to ingero-fleet", SERVER, upstream, detail=False),
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
def wasm_passing(plugin_config: dict, concurrency: int) -> Iterator[Running]:
    with wasm(plugin_config, concurrency, _pass_to_direct_response) as running:
        yield running


# (title, start, loadgen arguments): what a wasm-filter push costs, step by step.
WASM_VARIANTS = [
    ("anchor: buffer + direct_response", anchor, ["--body", "json"]),
    ("wasm filter passes (non-Fleet path) to buffer + direct_response", wasm_passing,
     ["--body", "json", "--path", "/bench/pass"]),
    ("wasm filter answers an empty push", wasm, ["--body", "empty"]),
    ("wasm filter stores an agent push (protobuf)", wasm, ["--body", "protobuf"]),
    ("wasm filter stores an agent push (JSON)", wasm, ["--body", "json"]),
]
