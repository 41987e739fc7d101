"""Envoy + the wasm filter or the dynamic module under connection and stream
exhaustion (issue 16), with envoy/envoy.yaml's (envoy-dynamic.yaml's) limits
as shipped: while 1 000 idle or slow HTTP/1.1 connections and one h2c
connection with hundreds of stalled uploads are open, legit pushes and
threshold queries keep their latency (within 2x of an idle baseline measured
in the same test), the h2c connection gets at most max_concurrent_streams
streams, Envoy's resident memory stays under a stated bound, and the stalled
uploads are cut by the stream idle timeout. Stalled uploads cannot grow the
heap much past the overload manager's limit. docs/limits-envoy.md explains
the numbers. Loopback only, a few seconds each."""

from __future__ import annotations

import json
import socket
import statistics
import threading
import time

import h2.config
import h2.connection
import h2.errors
import h2.events
import pytest

from dynamic import dynamic_envoy
from fleet import Envoy, agent_push, fleet_envoy, free_port, push, render_envoy, request, threshold, wait_for

IDLE, SLOW = 700, 300           # 1 000 HTTP/1.1 connections
H2_STREAMS = 300                # stalled uploads tried on one h2c connection
MAX_STREAMS = 16                # envoy.yaml: http2_protocol_options.max_concurrent_streams
SLOW_SENT = 64 << 10            # each slow HTTP/1.1 upload sends 64 KiB of a 4 MiB body
H2_SENT = 1 << 20               # each h2 stream tries to send 1 MiB of a 4 MiB body
DECLARED = 4 << 20
# Envoy's RSS while under attack may exceed its idle RSS by at most this much:
# 1 000 connections (about 1 000 x 40 KiB) + 300 x 64 KiB + 16 x 1 MiB buffered
# is under 100 MiB; without max_concurrent_streams the h2c connection alone
# would buffer 300 MiB.
RSS_GROWTH_BOUND = 160 << 20
SAMPLES = 120


def rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) << 10
    raise AssertionError("no VmRSS")


def legit_latencies(ports, tag: str) -> list[float]:
    """SAMPLES requests, half agent pushes and half threshold queries, each timed; all must succeed."""
    out = []
    for i in range(SAMPLES):
        start = time.perf_counter()
        if i % 2:
            r = threshold(ports.api, "legit")
            assert r.status == 200 and r.json()["quorum_met"], r.body
        else:
            r = push(ports.push, "legit", agent_push(f"legit-{i % 14}", 0.9 + (i % 7) / 100, cluster="legit"))
            assert r.status == 200, (tag, r.status, r.body)
        out.append(time.perf_counter() - start)
    return out


def p99(values: list[float]) -> float:
    return statistics.quantiles(values, n=100)[98]


def slow_upload(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall((f"POST /v1/metrics?cluster_id=slow HTTP/1.1\r\nHost: fleet\r\nContent-Type: application/json\r\n"
               f"Content-Length: {DECLARED}\r\n\r\n").encode() + b" " * SLOW_SENT)
    return s


class StalledH2:
    """One h2c connection that opens H2_STREAMS uploads at once and sends each up to H2_SENT bytes."""

    def __init__(self, port: int):
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        self.conn.initiate_connection()
        # All HEADERS go out before Envoy's SETTINGS are read: Envoy itself must refuse the excess.
        for n in range(H2_STREAMS):
            self.conn.send_headers(2 * n + 1, [(":method", "POST"), (":scheme", "http"), (":authority", "fleet"),
                                               (":path", "/v1/metrics?cluster_id=h2"),
                                               ("content-type", "application/json"),
                                               ("content-length", str(DECLARED))])
        self.sock.sendall(self.conn.data_to_send())
        self.sent = {2 * n + 1: 0 for n in range(H2_STREAMS)}
        self.refused: set[int] = set()
        self.reset: set[int] = set()

    def pump(self, seconds: float) -> None:
        """Reads Envoy's frames and sends body bytes as its windows allow, for `seconds`."""
        self.sock.settimeout(0.05)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                data = self.sock.recv(1 << 16)
            except TimeoutError:
                data = None
            if data == b"":
                break
            for event in self.conn.receive_data(data) if data else []:
                if isinstance(event, h2.events.StreamReset):
                    (self.refused if event.error_code == h2.errors.ErrorCodes.REFUSED_STREAM
                     else self.reset).add(event.stream_id)
                    self.sent.pop(event.stream_id, None)
                elif isinstance(event, h2.events.ResponseReceived):
                    self.sent.pop(event.stream_id, None)
                    self.reset.add(event.stream_id)
            for stream, done in list(self.sent.items()):
                room = min(H2_SENT - done, self.conn.local_flow_control_window(stream), 16384)
                if room > 0:
                    self.conn.send_data(stream, b" " * room)
                    self.sent[stream] += room
            self.sock.sendall(self.conn.data_to_send())


@pytest.fixture(scope="module", params=["filter", "dynamic"])
def fleet(request):
    """Envoy with the wasm filter (envoy.yaml) or the dynamic module (envoy-dynamic.yaml), as shipped."""
    start = fleet_envoy if request.param == "filter" else dynamic_envoy
    envoy, ports = start({"push_interval": "1s", "ttl_multiplier": 30}, concurrency=2)
    with envoy:
        for i in range(14):
            assert push(ports.push, "legit", agent_push(f"legit-{i}", 0.9, cluster="legit")).status == 200
        wait_for(lambda: threshold(ports.api, "legit").json()["quorum_met"], what="quorum in legit")
        yield envoy, ports


def test_legit_traffic_and_memory_hold_under_idle_slow_and_stalled_h2_connections(fleet):
    envoy, ports = fleet
    pid = envoy.process.pid
    legit_latencies(ports, "warm-up")
    baseline = legit_latencies(ports, "baseline")
    idle_rss = rss(pid)

    idle = [socket.create_connection(("127.0.0.1", ports.push)) for _ in range(IDLE)]
    slow = [slow_upload(ports.push) for _ in range(SLOW)]
    stalled = StalledH2(ports.push)
    stalled.pump(1.0)
    try:
        legit_latencies(ports, "settling")  # Envoy absorbs the attack's opening burst
        attacked = legit_latencies(ports, "under attack")
        stalled.pump(0.5)
        attack_rss = rss(pid)

        base_median, attack_median = statistics.median(baseline), statistics.median(attacked)
        print(f"\nmedian {base_median * 1e3:.2f} -> {attack_median * 1e3:.2f} ms, "
              f"p99 {p99(baseline) * 1e3:.2f} -> {p99(attacked) * 1e3:.2f} ms, "
              f"RSS {idle_rss >> 20} -> {attack_rss >> 20} MiB, h2 streams accepted "
              f"{H2_STREAMS - len(stalled.refused)}, refused {len(stalled.refused)}")
        # Both within 2x of the baseline. Legit requests take well under a millisecond
        # here, where one scheduling hiccup of the shared machine is several: so the
        # median gets 1 ms and p99 a 20 ms floor, still 250x below the agent's 5 s
        # timeout that the unbounded configuration made requests hit (issue 16).
        assert attack_median <= 2 * base_median + 0.001, (base_median, attack_median)
        assert p99(attacked) <= max(2 * p99(baseline), 0.020), (p99(baseline), p99(attacked))
        assert H2_STREAMS - len(stalled.refused) <= MAX_STREAMS, "Envoy must refuse streams over the limit"
        assert attack_rss - idle_rss < RSS_GROWTH_BOUND, f"RSS grew {(attack_rss - idle_rss) >> 20} MiB"

        # stream_idle_timeout (5 s): every stalled upload is answered 408 or closed.
        def cut(s: socket.socket) -> bool:
            s.settimeout(0.01)
            try:
                data = s.recv(64)
            except TimeoutError:
                return False
            except ConnectionResetError:
                return True
            return data == b"" or data.startswith(b"HTTP/1.1 408")
        pending = list(slow)
        def all_cut():
            pending[:] = [s for s in pending if not cut(s)]
            return not pending
        wait_for(all_cut, timeout=10, interval=0.25, what="the stalled HTTP/1.1 uploads to be cut")
        stalled.pump(1.0)
        wait_for(lambda: stalled.pump(0.25) or not stalled.sent, timeout=10,
                 what="the stalled h2 streams to be reset")
    finally:
        for s in idle + slow + [stalled.sock]:
            s.close()


# === the heap limit: N stalled uploads cannot grow the heap past it ===

HEAP_LIMIT = 128 << 20          # envoy.yaml's fixed_heap limit, lowered so the test stays small
UPLOADS = 250                   # stalled HTTP/1.1 uploads of 1 MiB each: 250 MiB if nothing stopped them
# The overload manager samples the heap every 0.1 s, so the heap may overshoot the
# limit by what arrives in between: the uploads are paced at ~100 MiB/s (as fast as
# loopback they overshot by 73 MiB once, on a busy machine that delayed the samples).
HEAP_BOUND = HEAP_LIMIT * 3 // 2
UPLOAD_PAUSE_S = 0.01


def heap_in_use(envoy) -> int:
    """What the fixed_heap monitor measures: tcmalloc's heap less its free and unmapped pages."""
    m = json.loads(request(envoy.admin_port, "GET", "/memory").body)
    return int(m["heap_size"]) - int(m["pageheap_free"]) - int(m["pageheap_unmapped"])


class HeapWatch:
    """Samples the heap and the stop_accepting_requests action every 20 ms in the
    background: the action is on only while the heap is over 95 %, which the
    timeouts end within a second, so sampling between uploads can miss it."""

    def __init__(self, envoy):
        self.envoy, self.peak, self.overloaded, self.done = envoy, 0, False, threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.done.wait(0.02):
            try:
                self.peak = max(self.peak, heap_in_use(self.envoy))
                self.overloaded |= self.envoy.stat(
                    "overload.envoy.overload_actions.stop_accepting_requests.active") == 1
            except OSError:
                pass  # the admin port is busy too; the next sample tells

    def __enter__(self) -> "HeapWatch":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.thread.join()


def test_stalled_uploads_cannot_grow_the_heap_past_the_overload_limit():
    config = render_envoy({}, {"otlp_http": free_port(), "api": free_port(), "metrics": free_port()}, free_port())
    heap = next(m for m in config["overload_manager"]["resource_monitors"]
                if m["name"] == "envoy.resource_monitors.fixed_heap")
    heap["typed_config"]["max_heap_size_bytes"] = HEAP_LIMIT
    push_port = next(x for x in config["static_resources"]["listeners"] if x["name"] == "otlp_http")[
        "address"]["socket_address"]["port_value"]
    with Envoy(config, concurrency=2) as envoy, HeapWatch(envoy) as watch:
        uploads = []
        try:
            for _ in range(UPLOADS):
                s = socket.create_connection(("127.0.0.1", push_port))
                s.settimeout(0.5)
                uploads.append(s)
                try:  # a refused or paused connection may not take it all
                    s.sendall((f"POST /v1/metrics?cluster_id=slow HTTP/1.1\r\nHost: fleet\r\n"
                               f"Content-Type: application/json\r\nContent-Length: {DECLARED}\r\n\r\n").encode()
                              + b" " * (1 << 20))
                except OSError:
                    pass
                time.sleep(UPLOAD_PAUSE_S)
            # The manager acts on its next refresh, which a busy machine may delay.
            wait_for(lambda: watch.overloaded or watch.peak < 0.95 * HEAP_LIMIT, timeout=2,
                     what="the overload manager to act on the heap it sampled")
            peak, overloaded = watch.peak, watch.overloaded
            print(f"\nheap peak {peak >> 20} MiB (limit {HEAP_LIMIT >> 20} MiB)")
            assert overloaded, "the overload manager never engaged"
            assert peak < HEAP_BOUND, f"heap reached {peak >> 20} MiB"
            # The shrunk stream idle timeout cuts the stalled uploads; legit pushes work again.
            wait_for(lambda: push(push_port, "legit", agent_push("n1", 0.9, cluster="legit"), timeout=2).status == 200,
                     timeout=10, what="a legit push to succeed after the attack")
            wait_for(lambda: heap_in_use(envoy) < 0.85 * HEAP_LIMIT, timeout=10, what="the heap to be freed")
        finally:
            for s in uploads:
                s.close()
