"""Test harness: real Envoy processes on loopback ports, agent-like pushes,
and an independent threshold computation to check Fleet against."""

from __future__ import annotations

import copy
import http.client
import json
import os
import re
import socket
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
WASM = ROOT / "target/wasm32-unknown-unknown/wasm/ingero_fleet_wasm.wasm"
ENVOY = ROOT / ".venv/bin/envoy"
COLD_START = b'{"threshold":0,"quorum_met":false}'

_next_base_id = iter(range(100 + (os.getpid() % 1000) * 10, 10**7))


# Every port free_port has handed out in this process.
_HANDED_OUT: set[int] = set()


def free_port() -> int:
    """A loopback port nothing listens on, never one handed out before in this process: the kernel may
    give a just-closed port out again, and one Envoy binds several of them at once."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port


# === what the agent sends ===

def agent_push(node: str, score, cluster: str | None = None, state: str = "active",
               cohort: str = "", world_size: int | None = None) -> bytes:
    """An OTLP/HTTP JSON push shaped like the Ingero agent's (contract §1)."""
    attrs = [{"key": "ingero.node.id", "value": {"stringValue": node}}]
    if cluster is not None:
        attrs.append({"key": "ingero.cluster.id", "value": {"stringValue": cluster}})
    if world_size is not None:
        attrs.append({"key": "ingero.world_size", "value": {"intValue": str(world_size)}})
    now = str(time.time_ns())
    gauge = lambda name, value, extra=(): {  # noqa: E731
        "name": name,
        "gauge": {"dataPoints": [{"timeUnixNano": now, "asDouble": value, "attributes": list(extra)}]},
    }
    point_attrs = [
        {"key": "ingero.node.state", "value": {"stringValue": state}},
        {"key": "ingero.workload_type", "value": {"stringValue": "training"}},
        {"key": "ingero.cgroup_path_hash", "value": {"stringValue": cohort}},
    ]
    metrics = [
        gauge("ingero.node.health_score", score, point_attrs),
        gauge("ingero.node.throughput_ratio", 0.97),
        gauge("ingero.node.compute_efficiency", 0.91),
        gauge("ingero.node.memory_headroom", 0.4),
        gauge("ingero.node.cpu_availability", 0.8),
        gauge("ingero.node.degradation_warning", 0.0),
        gauge("ingero.agent.fleet_reachable", 1.0),
        gauge("ingero.node.info", 1.0, [{"key": "gpu_model", "value": {"stringValue": "H100"}},
                                        {"key": "gpu_count", "value": {"intValue": "8"}}]),
    ]
    body = {"resourceMetrics": [{
        "resource": {"attributes": attrs},
        "scopeMetrics": [{"scope": {"name": "ingero.health"}, "metrics": metrics}],
    }]}
    return json.dumps(body).encode()


def expected_threshold(scores, k: float = 2.0) -> float:
    """median − k·1.4826·MAD, clamped to what the agent accepts (no EMA)."""
    median = statistics.median(scores)
    mad = statistics.median(abs(s - median) for s in scores)
    return min(max(median - k * 1.4826 * mad, 0.1), 0.99)


# === HTTP ===

@dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    def json(self):
        return json.loads(self.body)


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: dict | None = None, timeout: float = 5.0) -> Response:
    """One request on its own connection."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return Response(r.status, {k.lower(): v for k, v in r.getheaders()}, r.read())
    finally:
        conn.close()


def push(port: int, cluster: str | None, body: bytes, content_type: str = "application/json",
         extra_headers: dict | None = None, timeout: float = 5.0) -> Response:
    path = "/v1/metrics" + (f"?cluster_id={cluster}" if cluster is not None else "")
    headers = {"Content-Type": content_type} if content_type else {}
    headers.update(extra_headers or {})
    return request(port, "POST", path, body, headers, timeout=timeout)


def threshold(port: int, cluster: str, cohort: str | None = None) -> Response:
    path = f"/api/v1/threshold?cluster_id={cluster}"
    if cohort is not None:
        path += f"&cgroup_path_hash={cohort}"
    return request(port, "GET", path, headers={"Accept": "application/json"})


def until_piggybacked(send, threshold: float, headers=lambda answer: answer.headers):
    """Repeats `send()` until its answer's headers carry `threshold` and returns that answer:
    the worker that takes a request picks a newly published threshold up on its next tick."""
    def carried():
        answer = send()
        value = headers(answer).get("x-ingero-threshold")
        return answer if value is not None and abs(float(value) - threshold) < 1e-12 else None
    return wait_for(carried, timeout=5.0, what=f"an answer carrying the threshold {threshold}")


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.1, what: str = "condition"):
    """Polls until predicate() returns a truthy value; returns it."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last: {last!r})")


# === Envoy ===

def unshared(node):
    """A copy of a parsed YAML tree in which no two places share one dict or list. YAML aliases
    (`*router`) load as the same Python object, and copy.deepcopy keeps that sharing, so an edit
    meant for one listener would otherwise change every listener that names the anchor."""
    if isinstance(node, dict):
        return {key: unshared(value) for key, value in node.items()}
    if isinstance(node, list):
        return [unshared(value) for value in node]
    return node


def load_envoy(path: Path) -> dict:
    """An Envoy YAML file as a tree safe to edit in place (see `unshared`)."""
    return unshared(yaml.safe_load(path.read_text()))


def render_envoy(plugin_config: dict, ports: dict, admin_port: int,
                 template: Path | dict = ROOT / "envoy/envoy.yaml") -> dict:
    """envoy/envoy.yaml (or another config, a file or parsed) with test ports (by listener name), the built
    filter and a plugin configuration."""
    config = unshared(template) if isinstance(template, dict) else load_envoy(template)
    config["admin"]["address"]["socket_address"]["port_value"] = admin_port
    for listener in config["static_resources"]["listeners"]:
        listener["address"]["socket_address"]["address"] = "127.0.0.1"
        listener["address"]["socket_address"]["port_value"] = ports[listener["name"]]
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for hf in f["typed_config"].get("http_filters", []):
                    if hf["name"] == "envoy.filters.http.wasm":
                        plugin = hf["typed_config"]["config"]
                        plugin["configuration"]["value"] = json.dumps(plugin_config)
                        plugin["vm_config"]["code"]["local"]["filename"] = str(WASM)
    return config


def stop(process: subprocess.Popen | None, timeout: float = 10) -> None:
    """Terminates a test's process if it still runs; kills it if it does not exit in time."""
    if process and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def start_serving(server, name: str, port: int, path: str, timeout: float) -> None:
    """Waits until the just-started `server` (with .process, .log() and context
    exit) answers 200 on `path`; stops it and fails with its log otherwise."""
    def ready() -> bool:
        if server.process.poll() is not None:
            raise AssertionError(f"{name} exited with {server.process.returncode}")
        try:
            return request(port, "GET", path, timeout=1).status == 200
        except OSError:
            return False
    try:
        wait_for(ready, timeout=timeout, what=f"{name} to be ready")
    except AssertionError as e:
        server.__exit__(None, None, None)
        raise AssertionError(f"{name} did not start ({e}):\n{server.log()}")


@dataclass
class Envoy:
    """A running Envoy; use as a context manager."""
    config: dict
    concurrency: int = 2
    log_level: str = "warn"
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    base_id: int = field(default_factory=lambda: next(_next_base_id))

    @property
    def admin_port(self) -> int:
        return self.config["admin"]["address"]["socket_address"]["port_value"]

    def __enter__(self) -> "Envoy":
        tmp = Path(tempfile.mkdtemp(prefix="envoy-"))
        config_path = tmp / "envoy.yaml"
        config_path.write_text(yaml.safe_dump(self.config))
        self.log_path = tmp / "envoy.log"
        self.process = subprocess.Popen(
            [str(ENVOY), "-c", str(config_path), "--concurrency", str(self.concurrency),
             "--base-id", str(self.base_id), "-l", self.log_level, "--disable-hot-restart"],
            stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, cwd=ROOT)
        start_serving(self, "Envoy", self.admin_port, "/ready", timeout=30)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stat(self, name: str) -> int:
        """A counter or gauge from the admin stats, 0 when absent."""
        body = request(self.admin_port, "GET", f"/stats?filter=^{name}$").body.decode()
        for line in body.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    def __exit__(self, *exc) -> None:
        stop(self.process)


@dataclass
class Ports:
    push: int
    api: int
    metrics: int


def fleet_envoy(plugin_config: dict | None = None, concurrency: int = 2,
                template: Path | dict = ROOT / "envoy/envoy.yaml") -> tuple[Envoy, Ports]:
    """An Envoy running the filter, and its push, API and metrics ports."""
    ports = Ports(free_port(), free_port(), free_port())
    by_listener = {"otlp_http": ports.push, "api": ports.api, "metrics": ports.metrics}
    config = render_envoy(copy.deepcopy(plugin_config or {}), by_listener, free_port(), template)
    return Envoy(config, concurrency=concurrency), ports


def scrape(port: int) -> dict:
    """GET /metrics as {'name{labels}': value}, checking the text format line by line."""
    r = request(port, "GET", "/metrics")
    assert r.status == 200 and r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for line in r.body.decode().splitlines():
        if line.startswith("#"):
            assert re.fullmatch(r"# (HELP|TYPE) [a-z_]+ .+", line), line
            continue
        name, _, value = line.rpartition(" ")
        assert re.fullmatch(r'[a-z_]+(\{([a-z_]+="([^"\\]|\\.)*",?)*\})?', name), line
        samples[name] = float(value)
    return samples
