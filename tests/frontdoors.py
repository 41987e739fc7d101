"""Every way to reach a Fleet, behind one interface, so a suite runs the same
cases against each: `FRONT_DOORS[name](config)` is a context manager yielding
a `Door` (push, API, metrics and, where offered, OTLP/gRPC ports). The
configuration is the contract's keys (§6), the same dict for every door.
A new front door is one factory and one entry in FRONT_DOORS. scripts/bench
measures the same registry (bench/bench_doors.py), passing per call the Envoy
worker count, a log level and the server binary (its release build)."""

from __future__ import annotations

import copy
import json
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import yaml

from dynamic import dynamic_envoy
from fleet import ROOT, WASM, Envoy, fleet_envoy, free_port, load_envoy, start_serving
from peers import Collector, observe_envoy

SERVER = ROOT / "target/debug/ingero-fleet"
UPSTREAM_ENVOY = ROOT / "envoy/envoy-upstream.yaml"


@dataclass
class Door:
    """A running front door's loopback ports; `grpc` is None when it has no OTLP/gRPC."""
    name: str
    push: int
    api: int
    metrics: int
    grpc: int | None = None
    # The processes serving the door (Envoy and/or the server), whose CPU and memory the bench reads.
    pids: tuple = ()
    # Envoy's admin port when Envoy runs the door (the bench reads its heap from /memory).
    admin: int | None = None


# === the standalone server ===

class Standalone:
    """A running `ingero-fleet` process; use as a context manager."""

    def __init__(self, config: dict | None = None, config_text: str | None = None, args: tuple = (),
                 binary: Path = SERVER):
        self.ports = {key: free_port() for key in ("otlp_http", "otlp_grpc", "api", "metrics")}
        tmp = Path(tempfile.mkdtemp(prefix="ingero-fleet-"))
        self.config_path = tmp / "config.yaml"
        self.log_path = tmp / "server.log"
        if config_text is None:
            document = copy.deepcopy(config or {})
            # Loopback test ports, unless the case sets an address itself.
            own = {key: f"127.0.0.1:{port}" for key, port in self.ports.items()}
            document["listen"] = own | document.get("listen", {})
            config_text = yaml.safe_dump(document)
        self.config_path.write_text(config_text)
        self.args = args
        self.binary = binary
        self.process: subprocess.Popen | None = None

    @property
    def door(self) -> Door:
        p = self.ports
        return Door("standalone", p["otlp_http"], p["api"], p["metrics"], p["otlp_grpc"],
                    (self.process.pid,) if self.process else ())

    def start(self) -> subprocess.Popen:
        self.process = subprocess.Popen([str(self.binary), "--config", str(self.config_path), *self.args],
                                        stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
        return self.process

    def __enter__(self) -> "Standalone":
        self.start()
        start_serving(self, "ingero-fleet", self.ports["api"], "/readyz", timeout=20)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


# === Envoy in front of the standalone ===

def render_upstream(listen: dict, upstream: dict, admin_port: int) -> dict:
    """envoy/envoy-upstream.yaml with test ports: `listen` and `upstream` map listener names to ports."""
    config = load_envoy(UPSTREAM_ENVOY)
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    for listener in config["static_resources"]["listeners"]:
        listener["address"]["socket_address"].update(address="127.0.0.1", port_value=listen[listener["name"]])
    for cluster in config["static_resources"]["clusters"]:
        name = cluster["name"].removeprefix("fleet_")
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                endpoint["endpoint"]["address"]["socket_address"]["port_value"] = upstream[name]
    return config


# === the filter as an Istio WasmPlugin runs it ===

def render_sidecar(listen: dict, app: dict, admin_port: int, plugin_config: dict) -> dict:
    """The filter the way Istio's WasmPlugin installs it: before the router to the
    pod's app (here the standalone server), without `allow_on_headers_stop_iteration`,
    which the WasmPlugin API cannot set, so the plugin runs with `pause_on_headers: false`."""
    config = render_upstream(listen, app, admin_port)
    reference = load_envoy(ROOT / "envoy/envoy.yaml")["static_resources"]["listeners"][0]
    wasm = next(hf for hf in reference["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]
                if hf["name"] == "envoy.filters.http.wasm")
    plugin = wasm["typed_config"]["config"]
    del plugin["allow_on_headers_stop_iteration"]
    plugin["configuration"]["value"] = json.dumps(plugin_config | {"pause_on_headers": False})
    plugin["vm_config"]["code"]["local"]["filename"] = str(WASM)
    for listener in config["static_resources"]["listeners"]:
        if listener["name"] == "otlp_grpc":
            continue  # the filter speaks OTLP/HTTP only
        for f in listener["filter_chains"][0]["filters"]:
            f["typed_config"]["http_filters"].insert(0, copy.deepcopy(wasm))
    return config


# === the registry ===
# Every factory: (config, concurrency=None (the door's default Envoy workers), server=SERVER
# (the ingero-fleet binary, where the door runs one), log_level="warn" (Envoy's)).

@contextmanager
def filter_door(config: dict, concurrency: int | None = None, server: Path = SERVER,
                log_level: str = "warn") -> Iterator[Door]:
    """Envoy running the proxy-wasm filter (--concurrency 2); no OTLP/gRPC."""
    envoy, ports = fleet_envoy(config, concurrency=concurrency or 2)
    envoy.log_level = log_level
    with envoy:
        yield Door("filter", ports.push, ports.api, ports.metrics, None, (envoy.process.pid,), envoy.admin_port)


@contextmanager
def dynamic_door(config: dict, concurrency: int | None = None, server: Path = SERVER,
                 log_level: str = "warn") -> Iterator[Door]:
    """Envoy running the native dynamic module (--concurrency 4: workers share one registry)."""
    envoy, ports = dynamic_envoy(config, concurrency=concurrency or 4, log_level=log_level)
    with envoy:
        yield Door("dynamic", ports.push, ports.api, ports.metrics, None, (envoy.process.pid,), envoy.admin_port)


@contextmanager
def standalone_door(config: dict, concurrency: int | None = None, server: Path = SERVER,
                    log_level: str = "warn") -> Iterator[Door]:
    """The standalone server, reached directly (its runtime uses every core)."""
    with Standalone(config, binary=server) as app:
        yield app.door


@contextmanager
def sidecar_door(config: dict, concurrency: int | None = None, server: Path = SERVER,
                 log_level: str = "warn") -> Iterator[Door]:
    """The filter as an Istio WasmPlugin runs it, in front of the standalone server as the pod's app."""
    with Standalone(config, binary=server) as app:
        listen = {name: free_port() for name in app.ports}
        config = render_sidecar(listen, app.ports, free_port(), config)
        with Envoy(config, concurrency=concurrency or 2, log_level=log_level) as envoy:
            yield Door("sidecar", listen["otlp_http"], listen["api"], listen["metrics"], None,
                       (envoy.process.pid, app.process.pid), envoy.admin_port)


@contextmanager
def upstream_door(config: dict, concurrency: int | None = None, server: Path = SERVER,
                  log_level: str = "warn") -> Iterator[Door]:
    """Envoy with no filter, proxying every port to the standalone server."""
    with Standalone(config, binary=server) as app:
        listen = {name: free_port() for name in app.ports}
        config = render_upstream(listen, app.ports, free_port())
        with Envoy(config, concurrency=concurrency or 2, log_level=log_level) as envoy:
            yield Door("upstream", listen["otlp_http"], listen["api"], listen["metrics"], listen["otlp_grpc"],
                       (envoy.process.pid, app.process.pid), envoy.admin_port)


@contextmanager
def observe_door(config: dict, concurrency: int | None = None, server: Path = SERVER,
                 log_level: str = "warn") -> Iterator[Door]:
    """Envoy with the filter in observe mode in front of the real OpenTelemetry Collector
    (the deployment guide's Option A). Not in FRONT_DOORS: it forwards every push and
    the collector, not Fleet, answers bad input, so only the conformance suite's
    threshold cases apply (tests/test_conformance.py `OBSERVED`)."""
    with Collector({"debug": {"verbosity": "basic"}}) as collector:
        envoy, ports = observe_envoy(config, collector.otlp_port, concurrency=concurrency or 4)
        envoy.log_level = log_level
        with envoy:
            yield Door("observe", ports.push, ports.api, ports.metrics, None,
                       (envoy.process.pid, collector.process.pid), envoy.admin_port)


FRONT_DOORS: dict[str, Callable[..., ContextManager[Door]]] = {
    "filter": filter_door,
    "dynamic": dynamic_door,
    "upstream": upstream_door,
    "standalone": standalone_door,
    "sidecar": sidecar_door,
}
