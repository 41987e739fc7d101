"""envoy/envoy-rbac.yaml on loopback: who may push, read thresholds, read node
details and scrape metrics is decided by the connection's source address.
127.0.0.1 is in both example ranges; 127.0.0.2 is in none; the test adds
127.0.0.3 to the agent range only, as an agent that is not an operator."""

from __future__ import annotations

import http.client
import json

import pytest

from fleet import ROOT, Envoy, agent_push, free_port, render_envoy, scrape, wait_for

OPERATOR, STRANGER, AGENT = "127.0.0.1", "127.0.0.2", "127.0.0.3"
DENIED = (403, b"RBAC: access denied")


def rbac_filters(config: dict, listener: str):
    for candidate in config["static_resources"]["listeners"]:
        if candidate["name"] == listener:
            for hf in candidate["filter_chains"][0]["filters"][0]["typed_config"]["http_filters"]:
                if hf["name"] == "envoy.filters.http.rbac":
                    yield hf["typed_config"]["rules"]["policies"]


@pytest.fixture(scope="module")
def ports():
    ports = {"otlp_http": free_port(), "api": free_port(), "metrics": free_port()}
    config = render_envoy({"push_interval": "1s"}, ports, free_port(), template=ROOT / "envoy/envoy-rbac.yaml")
    # An agent-only source: its pushes and threshold reads pass, listings and scrapes do not.
    agent = {"direct_remote_ip": {"address_prefix": AGENT, "prefix_len": 32}}
    for policies in rbac_filters(config, "otlp_http"):
        policies["agents-push"]["principals"].append(agent)
    for policies in rbac_filters(config, "api"):
        policies["agents-read-thresholds"]["principals"].append(agent)
    with Envoy(config):
        yield ports


def call(port: int, source: str, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
    """One request from a given loopback source address."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=(source, 0))
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"} if body else {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def push_from(ports, source: str, node: str) -> tuple[int, bytes]:
    return call(ports["otlp_http"], source, "POST", "/v1/metrics?cluster_id=acl", agent_push(node, 0.9, cluster="acl"))


def test_only_agent_networks_may_push(ports):
    assert push_from(ports, OPERATOR, "n1") == (200, b"{}")
    assert push_from(ports, AGENT, "n2") == (200, b"{}")
    assert push_from(ports, STRANGER, "n3") == DENIED
    nodes = wait_for(lambda: json.loads(call(ports["api"], OPERATOR, "GET", "/api/v1/nodes?cluster_id=acl")[1]),
                     what="the node listing")
    assert sorted(n["node_id"] for n in nodes["nodes"]) == ["n1", "n2"], "the denied push stored nothing"
    assert scrape(ports["metrics"])["ingero_fleet_total_pushes"] == 2


@pytest.mark.parametrize("source, threshold, listing, scraping", [
    (OPERATOR, 200, 200, 200),
    (AGENT, 200, 403, 403),
    (STRANGER, 403, 403, 403),
])
def test_reads_are_split_between_agents_and_operators(ports, source, threshold, listing, scraping):
    assert call(ports["api"], source, "GET", "/api/v1/threshold?cluster_id=acl")[0] == threshold
    assert call(ports["api"], source, "GET", "/api/v1/nodes?cluster_id=acl")[0] == listing
    assert call(ports["api"], source, "GET", "/api/v1/clusters")[0] == listing
    assert call(ports["api"], source, "GET", "/")[0] == listing
    assert call(ports["metrics"], source, "GET", "/metrics")[0] == scraping
