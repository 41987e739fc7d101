"""The Envoy dynamic module (libingero_fleet.so) in real Envoy at --concurrency 4:
what is particular to it. The contract's shared cases (cold start, thresholds
of 60 nodes in 3 clusters against an independent computation, quorum headers,
bad input, expiry, metrics) run against it in test_conformance.py and
test_bad_input.py through the "dynamic" front door.

Hooks exercised: program init (ABI check), filter config new (valid and
refused), filter new/destroy, request headers, request body (one piece and
several), request trailers, response headers/body (requests Fleet passes to
the router). Callbacks: log, get headers (+size), get body size, body chunks
(+size), received-buffered check, send response. The callout, stream,
scheduler and watermark hooks are required by Envoy but never reached: the
module starts no callouts and schedules nothing."""

import http.client
import re
import socket
import time

import pytest

from dynamic import dynamic_envoy
from fleet import ROOT, agent_push, expected_threshold, request, scrape, until_piggybacked, wait_for
from test_conformance import CONFIG, published, push_all, wait_threshold


@pytest.fixture(scope="module")
def fleet():
    envoy, ports = dynamic_envoy(CONFIG, concurrency=4, log_level="info")
    with envoy:
        yield envoy, ports.push, ports.api, ports.metrics


def chunked_push(port: int, cluster: str, pieces: list[bytes], trailers: dict | None = None):
    """A push whose body arrives as separate chunks (Transfer-Encoding: chunked), optionally
    ending in trailers; returns (status, headers, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall((f"POST /v1/metrics?cluster_id={cluster} HTTP/1.1\r\nHost: fleet\r\n"
                   "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").encode())
        for piece in pieces:
            s.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            time.sleep(0.02)  # separate reads, so Envoy hands the filter several body events
        s.sendall(b"0\r\n" + b"".join(f"{k}: {v}\r\n".encode() for k, v in (trailers or {}).items()) + b"\r\n")
        r = http.client.HTTPResponse(s)
        r.begin()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()


def split(body: bytes, parts: int) -> list[bytes]:
    step = -(-len(body) // parts)
    return [body[i:i + step] for i in range(0, len(body), step)]


def test_the_module_loads_with_abi_v0_2_0(fleet):
    envoy, *_ = fleet
    assert "Dynamic module ABI version v0.2.0 matched" in envoy.log()


def test_workers_and_listeners_share_one_registry(fleet):
    envoy, push_port, api_port, metrics_port = fleet
    scores = [round(0.6 + 0.015 * i, 4) for i in range(24)] + [0.2]
    assert push_all(push_port, "spread", scores) == [200] * len(scores)
    # Pushed on one listener, answered on the others: one Fleet per filter_name.
    body = wait_threshold(api_port, "spread", expected_threshold(scores), len(scores))
    assert body["stragglers"] == sum(1 for s in scores if s + 1e-9 < body["threshold"])
    labels = '{cluster_id="spread",cgroup_path_hash=""}'
    assert wait_for(lambda: scrape(metrics_port).get("ingero_fleet_active_nodes" + labels) == len(scores),
                    what="the cohort on /metrics")
    # The pushes really were spread over several Envoy workers.
    stats = request(envoy.admin_port, "GET", "/stats?filter=worker_.*downstream_cx_total").body.decode()
    busy = {m.group(1) for m in re.finditer(r"\.worker_(\d+)\.downstream_cx_total: ([1-9]\d*)", stats)}
    assert len(busy) >= 2, stats


def test_a_body_in_several_chunks_and_one_ending_in_trailers_are_stored(fleet):
    _, push_port, api_port, _ = fleet
    scores = [0.95, 0.9, 0.92, 0.5, 0.94]
    for i, score in enumerate(scores):
        pieces = split(agent_push(f"n{i}", score, cluster="chunked"), 5)
        trailers = {"x-trailer": "end"} if i % 2 else None
        status, _, body = chunked_push(push_port, "chunked", pieces, trailers)
        assert (status, body) == (200, b"{}")
    wait_threshold(api_port, "chunked", expected_threshold(scores), len(scores))


def test_a_body_without_length_is_refused_once_past_the_limit(fleet):
    _, push_port, api_port, metrics_port = fleet
    scores = [0.9, 0.88, 0.93, 0.86, 0.91]
    push_all(push_port, "limited", scores)
    before = wait_threshold(api_port, "limited", expected_threshold(scores), len(scores))
    refused = scrape(metrics_port)['ingero_fleet_dropped_total{reason="body_too_large"}']
    # No Content-Length: the filter counts the body as it arrives.
    poison = agent_push("n0", 0.0, cluster="limited")
    sent = []

    def send():
        sent.append(chunked_push(push_port, "limited", [poison] + [b" " * 16384] * 5))
        return sent[-1]
    # Errors piggyback the threshold too.
    status, _, body = until_piggybacked(send, before["threshold"], headers=lambda answer: answer[1])
    assert status == 413 and b"max_body_bytes" in body, body
    assert scrape(metrics_port)['ingero_fleet_dropped_total{reason="body_too_large"}'] == refused + len(sent)
    time.sleep(2.5)  # two recomputes: the refused push changed nothing
    assert published(api_port, "limited") == before


def test_other_paths_pass_through_to_the_router(fleet):
    _, push_port, api_port, _ = fleet
    for port in (push_port, api_port):
        r = request(port, "GET", "/not-fleet")
        assert (r.status, r.body) == (404, b"not found\n")


def test_an_invalid_configuration_is_refused_naming_the_key():
    envoy, _ = dynamic_envoy({"threshold": {"k": 9}}, concurrency=1)
    with pytest.raises(AssertionError) as refused:
        with envoy:
            pass
    assert "threshold.k" in str(refused.value)


def test_the_module_logs_its_version_once_at_start():
    version = re.search(r'^version = "(.+)"', (ROOT / "Cargo.toml").read_text(), re.M).group(1)
    envoy, _ = dynamic_envoy({}, log_level="info")
    with envoy:
        lines = [line for line in envoy.log().splitlines() if "(Envoy dynamic module) loaded" in line]
        assert len(lines) == 1 and f"ingero-fleet {version} " in lines[0], lines
