"""What only the standalone server (`ingero-fleet`) has: its configuration
file, probes, a graceful SIGTERM, the deployment guide's curl lines run
verbatim, and the filter's fail-open fallback to it as Envoy's upstream.
Pushes, thresholds and the OTLP clients are in tests/test_conformance.py."""

from __future__ import annotations

import copy
import hashlib
import json
import signal
import socket
import subprocess

import pytest
import yaml

from fleet import (ROOT, WASM, Envoy, agent_push, expected_threshold, free_port, push, request, scrape,
                   threshold, wait_for)
from frontdoors import Standalone, render_upstream


def refused(config: dict | None = None, config_text: str | None = None, args: tuple = ()) -> str:
    """Starts the server with a configuration it must refuse; its log."""
    server = Standalone(config, config_text, args)
    assert server.start().wait(timeout=30) == 2, server.log()
    return server.log()


# === configuration ===

@pytest.mark.parametrize("config, message", [
    ({"threshold": {"k": 7}}, "threshold.k = 7 is out of range: must be a number in [1, 4]"),
    ({"threshold": {"ema_alpha": 0}}, "threshold.ema_alpha = 0 is out of range"),
    ({"push_interval": "soon"}, 'push_interval = "soon" is out of range'),
    ({"ttl_multiplier": 1}, "ttl_multiplier = 1 is out of range: must be an integer in [2, 1000]"),
    ({"quorum": {"statistical_min": 0}}, "quorum.statistical_min = 0 is out of range"),
    ({"quorum": {"coverage_fraction": 1.5}}, "quorum.coverage_fraction = 1.5 is out of range"),
    ({"max_expected_nodes": 0}, "max_expected_nodes = 0 is out of range"),
    ({"max_body_bytes": 10}, "max_body_bytes = 10 is out of range"),
    ({"max_id_bytes": 1}, "max_id_bytes = 1 is out of range"),
    ({"max_points_per_push": 0}, "max_points_per_push = 0 is out of range"),
    ({"threshold": 3}, "threshold must be an object"),
], ids=lambda v: v if isinstance(v, str) else None)
def test_each_invalid_value_is_refused_with_its_key(config, message):
    log = refused(config)
    assert message in log and "ERROR" in log, log


def test_every_invalid_key_is_named_at_once():
    log = refused({"threshold": {"k": 0.5}, "ttl_multiplier": 0})
    assert "threshold.k = 0.5" in log and "ttl_multiplier = 0" in log, log


def test_listen_addresses_are_checked_at_start():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        address = f"127.0.0.1:{taken.getsockname()[1]}"
        assert f"cannot listen on listen.api = {address}" in refused({"listen": {"api": address}})
    assert 'listen.metrics = "" must be a non-empty string' in refused({"listen": {"metrics": ""}})


def test_an_envoy_on_the_same_host_reaches_the_server_over_a_unix_socket(tmp_path):
    """`listen.otlp_http: unix:/path` with Envoy's `pipe` address: pushes go over the socket.
    A socket file left by an earlier run is replaced; the threshold is what the pushes make."""
    sock = tmp_path / "push.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(sock))
    stale.close()
    with Standalone({"push_interval": "1s", "listen": {"otlp_http": f"unix:{sock}"}}) as server:
        assert f"listen.otlp_http: listening on unix:{sock}" in server.log()
        listen = {name: free_port() for name in server.ports}
        config = render_upstream(listen, server.ports, free_port())
        pushes = next(c for c in config["static_resources"]["clusters"] if c["name"] == "fleet_otlp_http")
        pushes["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"] = {
            "pipe": {"path": str(sock)}}
        scores = [0.9, 0.88, 0.93, 0.86, 0.91]
        with Envoy(config):
            for i, score in enumerate(scores):
                r = push(listen["otlp_http"], "piped", agent_push(f"n{i}", score, cluster="piped"))
                assert (r.status, r.body) == (200, b"{}")
            want = expected_threshold(scores)
            wait_for(lambda: abs(threshold(listen["api"], "piped").json().get("threshold", 0) - want) < 1e-9,
                     what="the threshold of the piped pushes")
        assert scrape(server.door.metrics)["ingero_fleet_total_pushes"] == len(scores)


def test_a_unix_socket_never_replaces_a_file_that_is_not_a_socket(tmp_path):
    keep = tmp_path / "notes.txt"
    keep.write_text("not a socket")
    assert f"cannot listen on listen.api = unix:{keep}: {keep} exists and is not a socket" in refused(
        {"listen": {"api": f"unix:{keep}"}})
    assert keep.read_text() == "not a socket"


def test_bad_yaml_a_missing_file_and_bad_arguments_are_refused(tmp_path):
    assert "configuration is not valid YAML" in refused(config_text="threshold: [1, 2\n")
    missing = tmp_path / "nowhere.yaml"
    assert f"cannot read {missing}" in refused(args=("--config", str(missing)))
    assert "unknown argument" in refused(args=("--verbose",))


def test_unknown_keys_are_warned_about_and_valid_keys_apply():
    config = {"threshold": {"k": 2.0, "kk": 1}, "colour": "blue", "quorum": {"statistical_min": 3},
              "push_interval": "1s", "threshold_k": 2}
    with Standalone(config) as server:
        log = server.log()
        for key in ("threshold.kk", "colour", "threshold_k"):
            assert f"WARN ingero_fleet: unknown configuration key {key} ignored" in log, log
        # statistical_min 3 is in force: three nodes make a quorum.
        for i, score in enumerate([0.9, 0.91, 0.92]):
            assert push(server.door.push, "three", agent_push(f"n{i}", score, cluster="three")).status == 200
        wait_for(lambda: threshold(server.door.api, "three").json()["quorum_met"], what="quorum of three")


# === probes and shutdown ===

def test_probes():
    with Standalone() as server:
        assert request(server.door.api, "GET", "/healthz").status == 200
        r = request(server.door.api, "GET", "/readyz")
        assert (r.status, r.body) == (200, b"ready\n")
        assert request(server.door.api, "GET", "/no-such-page").status == 404


def test_sigterm_answers_the_push_in_flight_then_exits():
    with Standalone({"push_interval": "1s"}) as server:
        port = server.door.push
        body = agent_push("n0", 0.9, cluster="drain")
        head = (f"POST /v1/metrics?cluster_id=drain HTTP/1.1\r\nHost: fleet\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", port), timeout=10) as client:
            client.sendall(head + body[:20])
            # A later connection answered means this one was accepted first (one listener, FIFO).
            assert request(port, "GET", "/healthz").status == 200
            server.process.send_signal(signal.SIGTERM)
            wait_for(lambda: "SIGTERM: draining" in server.log(), what="the server to start draining")
            client.sendall(body[20:])
            answer = client.makefile("rb").read()
        assert answer.startswith(b"HTTP/1.1 200 OK"), answer
        assert answer.endswith(b"\r\n\r\n{}"), answer
        assert server.process.wait(timeout=30) == 0, server.log()
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2)
        assert "stopped" in server.log()


# === the deployment guide, verbatim ===

# From the guide (Verify, Verifying the hash); only the host and ports change.
GUIDE = {
    "threshold": "curl http://fleet:8080/api/v1/threshold?cluster_id=your-cluster",
    "pushes": """for i in $(seq 1 10); do
    curl -s "http://<lb>:4318/v1/metrics?cluster_id=test-hash" \\
        -X POST -H 'Content-Type: application/json' \\
        -d '{"resourceMetrics":[]}' > /dev/null
done""",
    "scrape": "curl -s localhost:8888/metrics | grep ingero_fleet_total_pushes",
}


def guide_line(name: str, server: Standalone) -> str:
    """Runs one of the guide's shell snippets against the server; its stdout."""
    door = server.door
    line = (GUIDE[name].replace("fleet:8080", f"localhost:{door.api}").replace("<lb>:4318", f"localhost:{door.push}")
            .replace("localhost:8888", f"localhost:{door.metrics}"))
    done = subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_guides_curl_lines_work_verbatim():
    with Standalone({"push_interval": "1s", "threshold": {"ema_alpha": 1.0}}) as server:
        assert guide_line("threshold", server) == '{"threshold":0,"quorum_met":false}'
        guide_line("pushes", server)
        assert "ingero_fleet_total_pushes 10\n" in guide_line("scrape", server)

        for i, score in enumerate([0.89, 0.95, 0.93, 0.97, 0.91]):
            push(server.door.push, "your-cluster", agent_push(f"n{i}", score, cluster="your-cluster"))
        answer = wait_for(lambda: (a := json.loads(guide_line("threshold", server)))["quorum_met"] and a,
                          what="the guide's expected answer once quorum is met")
        assert 0.1 <= answer["threshold"] <= 0.99


# === upstream fallback: the filter fails open to the standalone ===

def fallback_envoy(server: Standalone, failure_policy: str) -> tuple[dict, dict]:
    """envoy/envoy-upstream.yaml with the filter of envoy/envoy.yaml in front of its router, under
    `failure_policy`, its code fetched from a source that is down (the filter cannot load)."""
    template = yaml.safe_load((ROOT / "envoy/envoy.yaml").read_text())
    hcm = template["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
    wasm = copy.deepcopy(next(f for f in hcm["http_filters"] if f["name"] == "envoy.filters.http.wasm"))
    plugin = wasm["typed_config"]["config"]
    plugin.pop("failure_policy", None)
    plugin["failure_policy"] = failure_policy
    source = free_port()  # nothing listens here
    plugin["vm_config"]["code"] = {"remote": {
        "http_uri": {"uri": f"http://127.0.0.1:{source}/ingero_fleet.wasm", "cluster": "wasm_source",
                     "timeout": "1s"},
        "sha256": hashlib.sha256(WASM.read_bytes()).hexdigest(),
        "retry_policy": {"num_retries": 1},
    }}
    listen = {name: free_port() for name in server.ports}
    config = render_upstream(listen, server.ports, free_port())
    config["static_resources"]["clusters"].append({
        "name": "wasm_source", "connect_timeout": "1s", "type": "STATIC",
        "load_assignment": {"cluster_name": "wasm_source", "endpoints": [{"lb_endpoints": [
            {"endpoint": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": source}}}}]}]}})
    for listener in config["static_resources"]["listeners"]:
        if listener["name"] != "otlp_grpc":
            http = listener["filter_chains"][0]["filters"][0]["typed_config"]
            http["http_filters"] = [wasm, *http["http_filters"]]
    return config, listen


def test_a_filter_that_cannot_load_fails_open_to_the_standalone():
    with Standalone({"push_interval": "1s"}) as server:
        config, listen = fallback_envoy(server, "FAIL_OPEN")
        with Envoy(config) as envoy:
            wait_for(lambda: "Plugin ingero_fleet failed to load" in envoy.log(), what="the filter to fail")
            r = push(listen["otlp_http"], "fallback", agent_push("n0", 0.9, cluster="fallback"))
            assert (r.status, r.body) == (200, b"{}")
            assert "x-envoy-upstream-service-time" in r.headers, "answered by the upstream"
            assert threshold(listen["api"], "fallback").body == b'{"threshold":0,"quorum_met":false}'
            assert scrape(listen["metrics"])["ingero_fleet_total_pushes"] == 1
            assert scrape(server.door.metrics)["ingero_fleet_total_pushes"] == 1


def test_a_filter_that_cannot_load_fails_closed_without_fail_open():
    with Standalone({"push_interval": "1s"}) as server:
        config, listen = fallback_envoy(server, "FAIL_CLOSED")
        with Envoy(config):
            assert push(listen["otlp_http"], "fallback", agent_push("n0", 0.9, cluster="fallback")).status == 503
            assert scrape(server.door.metrics)["ingero_fleet_total_pushes"] == 0
