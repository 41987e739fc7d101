"""Real Go-built peers on loopback ports: the OpenTelemetry Collector (`otelcol`)
and the OpenTelemetry Go SDK's OTLP/HTTP exporter as an agent-shaped client
(`otel-go-push`), both installed by scripts/setup.d/40-go-peers. Tests that need
them skip with a reason only where Go is absent; where Go is there and the peer
is missing, they fail (setup did not run or broke)."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pytest
import yaml

from fleet import ROOT, free_port, start_serving, stop

OTELCOL = ROOT / ".tools/bin/otelcol"
GO_PUSH = ROOT / ".tools/bin/otel-go-push"
GO = shutil.which("go") or ("/usr/local/go/bin/go" if Path("/usr/local/go/bin/go").exists() else None)


def need(binary: Path) -> None:
    """Skips where Go is absent (the peer cannot be built here); fails where Go is
    present but the peer is not installed."""
    if GO is None:
        pytest.skip(f"no `go` on this machine: {binary.name} (a real Go-built peer) cannot be installed")
    assert binary.exists(), f"{binary} missing: run scripts/setup (scripts/setup.d/40-go-peers)"


@dataclass
class Collector:
    """A running real OpenTelemetry Collector; use as a context manager.

    `pipeline` is the collector config's `exporters` (and optional `processors`)
    for a metrics pipeline fed by an OTLP/HTTP receiver on `self.otlp_port`;
    internal telemetry (Prometheus) on `self.telemetry_port`."""
    exporters: dict
    otlp_port: int = field(default_factory=free_port)
    telemetry_port: int = field(default_factory=free_port)
    log_level: str = "info"
    process: subprocess.Popen | None = None
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="otelcol-")))

    @property
    def log_path(self) -> Path:
        return self.tmp / "otelcol.log"

    def config(self) -> dict:
        return {
            "receivers": {"otlp": {"protocols": {"http": {"endpoint": f"127.0.0.1:{self.otlp_port}"}}}},
            "exporters": copy.deepcopy(self.exporters),
            "service": {
                "telemetry": {
                    "logs": {"level": self.log_level, "encoding": "json"},
                    "metrics": {"level": "detailed", "readers": [{"pull": {"exporter": {"prometheus": {
                        "host": "127.0.0.1", "port": self.telemetry_port}}}}]},
                },
                "pipelines": {"metrics": {"receivers": ["otlp"], "exporters": list(self.exporters)}},
            },
        }

    def __enter__(self) -> "Collector":
        need(OTELCOL)
        config_path = self.tmp / "config.yaml"
        config_path.write_text(yaml.safe_dump(self.config()))
        self.process = subprocess.Popen([str(OTELCOL), "--config", str(config_path)],
                                        stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, cwd=self.tmp)
        start_serving(self, "otelcol", self.telemetry_port, "/metrics", timeout=30)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict]:
        """The collector's JSON log lines."""
        records = []
        for line in self.log().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
        return records

    def stop(self) -> None:
        stop(self.process)

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class GoPush:
    """One `otel-go-push` process: the Go SDK's OTLP/HTTP exporter pushing one
    node's gauges every `interval`; its stdout is one JSON line per push with the
    status and the X-Ingero-* headers it got back."""
    endpoint: str
    cluster: str
    node: str
    score: float
    interval: str = "500ms"
    gzip: bool = False
    process: subprocess.Popen | None = None
    tmp: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="go-push-")))

    def start(self) -> "GoPush":
        need(GO_PUSH)
        args = [str(GO_PUSH), "-endpoint", self.endpoint, "-cluster-id", self.cluster, "-node-id", self.node,
                "-score", repr(self.score), "-interval", self.interval]
        if self.gzip:
            args.append("-gzip")
        self.process = subprocess.Popen(args, stdout=open(self.tmp / "out.jsonl", "wb"),
                                        stderr=open(self.tmp / "err.log", "wb"))
        return self

    def pushes(self) -> list[dict]:
        """What the client logged so far, one dict per push."""
        lines = (self.tmp / "out.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]

    def stderr(self) -> str:
        return (self.tmp / "err.log").read_text(errors="replace")

    def stop(self) -> None:
        stop(self.process)


def prometheus_value(text: str, name: str, **labels) -> float:
    """Sum of the samples of `name` whose labels include `labels` in Prometheus text."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        series, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in series for k, v in labels.items()):
            total += float(value)
    return total


# === Fleet in observe mode in front of a real collector ===

OBSERVE_ENVOY = ROOT / "envoy/envoy-observe.yaml"


def observe_envoy(plugin_config: dict, upstream_port: int, concurrency: int = 4):
    """envoy/envoy-observe.yaml with test ports, the filter in observe mode and
    the otel_collector cluster pointing at `upstream_port`; returns (Envoy, Ports)."""
    from fleet import Envoy, Ports, render_envoy

    ports = Ports(free_port(), free_port(), free_port())
    by_listener = {"otlp_http": ports.push, "api": ports.api, "metrics": ports.metrics}
    config = render_envoy({"mode": "observe"} | plugin_config, by_listener, free_port(), OBSERVE_ENVOY)
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "otel_collector":
            for group in cluster["load_assignment"]["endpoints"]:
                for endpoint in group["lb_endpoints"]:
                    endpoint["endpoint"]["address"]["socket_address"]["port_value"] = upstream_port
    return Envoy(config, concurrency=concurrency), ports


def file_collector(port: int | None = None) -> Collector:
    """A collector whose metrics pipeline writes every push it accepted to a JSON
    lines file (`collector.output()`)."""
    collector = Collector({})
    if port is not None:
        collector.otlp_port = port
    collector.exporters = {"file": {"path": str(collector.tmp / "metrics.jsonl"), "flush_interval": "100ms"}}
    return collector


def output(collector: Collector) -> list[dict]:
    """The file exporter's lines so far (one OTLP JSON export request each)."""
    path = collector.tmp / "metrics.jsonl"
    if not path.exists():
        return []
    # Only whole lines: the exporter may be half-way through writing the last one.
    complete, _, _ = path.read_text().rpartition("\n")
    return [json.loads(line) for line in complete.splitlines() if line.strip()]


def refusing_collector(port: int | None = None) -> Collector:
    """A real collector that answers 503 to every push: its only exporter sends to
    a closed loopback port with no queue and no retry, so the receiver gets the
    exporter's retryable error back and answers Unavailable."""
    collector = Collector({"otlphttp": {"endpoint": f"http://127.0.0.1:{free_port()}",
                                        "sending_queue": {"enabled": False},
                                        "retry_on_failure": {"enabled": False}}})
    if port is not None:
        collector.otlp_port = port
    return collector


@contextmanager
def observe_door(config: dict) -> Iterator:
    """A front door for tests/frontdoors.py's suites: the filter in observe mode
    (Envoy --concurrency 4) in front of a real collector that accepts every push."""
    from frontdoors import Door

    with file_collector() as collector:
        envoy, ports = observe_envoy(config, collector.otlp_port, concurrency=4)
        with envoy:
            yield Door("observe", ports.push, ports.api, ports.metrics)
