"""The front doors scripts/bench measures, each started on free loopback ports
from its build artefact. Adding a front door is one entry in DOORS."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from fleet import WASM, Envoy, free_port, render_envoy, request, wait_for  # noqa: E402

ANCHOR = ROOT / "envoy/bench-anchor.yaml"
DYNAMIC_TEMPLATE = ROOT / "envoy/envoy-dynamic.yaml"
DYNAMIC_MODULE = ROOT / "target/release/libingero_fleet.so"


def _built(*candidates: Path) -> Path:
    """The first build that exists (else the first): release builds, or the tests' debug build for --smoke."""
    return next((c for c in candidates if c.exists()), candidates[0])


SERVER = _built(ROOT / "target/release/ingero-fleet", ROOT / "target/debug/ingero-fleet")
LISTENERS = ("otlp_http", "api", "metrics")


@dataclass
class Running:
    """A started front door: the process to watch and its loopback ports."""
    pid: int
    push: int
    api: int
    metrics: int


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

    def available(self) -> bool:
        return self.artefact is None or self.artefact.exists()


# === Envoy ===

def _ports() -> dict:
    return {name: free_port() for name in LISTENERS}


@contextmanager
def _envoy(config: dict, ports: dict, concurrency: int) -> Iterator[Running]:
    with Envoy(config, concurrency=concurrency, log_level="error") as envoy:
        yield Running(envoy.process.pid, ports["otlp_http"], ports["api"], ports["metrics"])


@contextmanager
def anchor(_plugin_config: dict, concurrency: int) -> Iterator[Running]:
    """envoy/bench-anchor.yaml: buffer filter, then direct_response 200."""
    ports = _ports()
    with _envoy(render_envoy({}, ports, free_port(), template=ANCHOR), ports, concurrency) as running:
        yield running


def wasm_config(plugin_config: dict, ports: dict) -> dict:
    """envoy/envoy.yaml rendered as tests/fleet.py does."""
    return render_envoy(copy.deepcopy(plugin_config), ports, free_port())


@contextmanager
def wasm(plugin_config: dict, concurrency: int, variant: Callable[[dict], dict] = lambda c: c) -> Iterator[Running]:
    """Envoy + the proxy-wasm filter; `variant` may rewrite the rendered configuration."""
    ports = _ports()
    with _envoy(variant(wasm_config(plugin_config, ports)), ports, concurrency) as running:
        yield running


@contextmanager
def dynamic(plugin_config: dict, concurrency: int) -> Iterator[Running]:
    """envoy/envoy-dynamic.yaml: Envoy + the native dynamic module from target/release."""
    ports = _ports()
    config = render_envoy({}, ports, free_port(), template=DYNAMIC_TEMPLATE)
    for listener in config["static_resources"]["listeners"]:
        for f in listener["filter_chains"][0]["filters"]:
            for hf in f["typed_config"].get("http_filters", []):
                if hf["name"] == "envoy.filters.http.dynamic_modules":
                    hf["typed_config"]["filter_config"]["value"] = json.dumps(plugin_config)
    os.environ["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(DYNAMIC_MODULE.parent)
    with _envoy(config, ports, concurrency) as running:
        yield running


# === the standalone server ===

@contextmanager
def server(plugin_config: dict, _concurrency: int) -> Iterator[Running]:
    """target/release/ingero-fleet with the same keys in its YAML file (its runtime uses every core)."""
    ports = _ports()
    tmp = Path(tempfile.mkdtemp(prefix="bench-server-"))
    document = copy.deepcopy(plugin_config)
    document["listen"] = {"otlp_http": f"127.0.0.1:{ports['otlp_http']}", "otlp_grpc": f"127.0.0.1:{free_port()}",
                          "api": f"127.0.0.1:{ports['api']}", "metrics": f"127.0.0.1:{ports['metrics']}"}
    (tmp / "config.yaml").write_text(yaml.safe_dump(document))
    log = open(tmp / "server.log", "wb")
    process = subprocess.Popen([str(SERVER), "--config", str(tmp / "config.yaml")], stdout=log,
                               stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ | {"RUST_LOG": "warn"})

    def ready() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"ingero-fleet exited: {(tmp / 'server.log').read_text(errors='replace')}")
        try:
            return request(ports["api"], "GET", "/api/v1/threshold?cluster_id=ready", timeout=1).status == 200
        except OSError:
            return False

    try:
        wait_for(ready, timeout=20, what="ingero-fleet to be ready")
        yield Running(process.pid, ports["otlp_http"], ports["api"], ports["metrics"])
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


DOORS = [
    Door("anchor", "Envoy buffer + direct_response (anchor)", None, anchor, fleet=False),
    Door("wasm", "Envoy + wasm filter", WASM, wasm),
    Door("dynamic", "Envoy + dynamic module", DYNAMIC_MODULE, dynamic),
    Door("server", "standalone ingero-fleet", SERVER, server),
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
