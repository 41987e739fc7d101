"""scripts/run drains on SIGTERM (issue 16): a push half-sent before the signal
still gets its answer, Envoy exits once nothing is in flight, and a stalled
request cannot hold the exit past INGERO_FLEET_DRAIN_SECONDS. scripts/run runs
envoy/envoy.yaml, rendered with free loopback ports (ENVOY_CONFIG)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from fleet import ROOT, _next_base_id, agent_push, free_port, render_envoy, request, wait_for

DRAIN_SECONDS = 4


@pytest.fixture
def run():
    """scripts/run on free ports: (process, push port, log path); the process is stopped at the end."""
    ports = {"otlp_http": free_port(), "api": free_port(), "metrics": free_port()}
    admin = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="run-"))
    (tmp / "envoy.yaml").write_text(yaml.safe_dump(render_envoy({}, ports, admin)))
    log = tmp / "run.log"
    env = os.environ | {"ENVOY_CONFIG": str(tmp / "envoy.yaml"), "INGERO_FLEET_DRAIN_SECONDS": str(DRAIN_SECONDS)}
    process = subprocess.Popen([str(ROOT / "scripts/run"), "--concurrency", "1", "--base-id", str(next(_next_base_id)),
                                "--disable-hot-restart", "-l", "warn"],
                               env=env, stdout=open(log, "wb"), stderr=subprocess.STDOUT)

    def ready():
        assert process.poll() is None, log.read_text(errors="replace")
        try:
            return request(admin, "GET", "/ready", timeout=1).status == 200
        except OSError:
            return False
    wait_for(ready, timeout=30, what="scripts/run to serve")
    yield process, ports["otlp_http"], log
    if process.poll() is None:
        process.kill()
        process.wait()


def half_sent_push(port: int, body: bytes) -> socket.socket:
    """A push whose head and first half of the body are sent; the rest is not."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    head = (f"POST /v1/metrics?cluster_id=drain HTTP/1.1\r\nHost: fleet\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode()
    s.sendall(head + body[: len(body) // 2])
    return s


def answer(s: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or not data.endswith(b"{}"):
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def test_a_push_half_sent_before_sigterm_gets_its_answer(run):
    process, push_port, log = run
    body = agent_push("n1", 0.9, cluster="drain")
    s = half_sent_push(push_port, body)
    time.sleep(0.3)  # the head has reached the filter
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    time.sleep(1.0)  # Envoy is draining; the push is still in flight
    assert process.poll() is None, f"exited with a request in flight:\n{log.read_text(errors='replace')}"
    s.sendall(body[len(body) // 2:])
    reply = answer(s)
    s.close()
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n") and reply.endswith(b"{}"), reply
    assert b"\r\nconnection: close\r\n" in reply.lower(), "a draining Envoy tells the client to reconnect"
    assert process.wait(timeout=DRAIN_SECONDS + 5) == 0
    elapsed = time.monotonic() - signalled
    assert elapsed < DRAIN_SECONDS, f"exit {elapsed:.1f}s after SIGTERM, not soon after the last answer"


def test_sigterm_with_nothing_in_flight_exits_at_once(run):
    process, _, _ = run
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=DRAIN_SECONDS + 5) == 0
    assert time.monotonic() - signalled < 2


def test_a_stalled_push_cannot_hold_the_exit_past_the_drain_bound(run):
    process, push_port, _ = run
    s = half_sent_push(push_port, agent_push("n1", 0.9, cluster="drain"))
    time.sleep(0.3)
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=DRAIN_SECONDS + 5) == 0
    elapsed = time.monotonic() - signalled
    s.close()
    assert DRAIN_SECONDS - 0.5 < elapsed < DRAIN_SECONDS + 2, f"{elapsed:.1f}s"
