"""envoy/envoy-rbac.yaml on loopback: who may push, read thresholds, read node
details and scrape metrics is decided by the connection's source address.
127.0.0.1 is in both example ranges; 127.0.0.2 is in none; the test adds
127.0.0.3 to the agent range only, as an agent that is not an operator. The
mTLS variant matches the client certificate's identity instead of the address.

Every path is also tried on every port, here and on each Envoy front door of
the shared registry: a port answers its own role's paths only (pushes on the
push port; threshold, listings and dashboard on the API port; /metrics on the
metrics port) and 404 (or RBAC's 403) for the rest."""

from __future__ import annotations

import http.client
import json
import ssl
import subprocess

import pytest
import yaml

from fleet import ROOT, WASM, Envoy, agent_push, free_port, render_envoy, scrape, wait_for
from frontdoors import FRONT_DOORS

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


# === every path on every port ===

# Each Fleet path, the port whose role it belongs to, and the request.
PATHS = {
    "push": ("otlp_http", "POST", "/v1/metrics?cluster_id=acl"),
    "threshold": ("api", "GET", "/api/v1/threshold?cluster_id=acl"),
    "clusters": ("api", "GET", "/api/v1/clusters"),
    "nodes": ("api", "GET", "/api/v1/nodes?cluster_id=acl"),
    "dashboard": ("api", "GET", "/"),
    "metrics": ("metrics", "GET", "/metrics"),
    "elsewhere": (None, "GET", "/not-fleet"),
}


def rbac_allows(source: str, port: str, path: str) -> bool:
    """envoy-rbac.yaml's policies, as the header comment states them."""
    if port == "otlp_http":
        return source in (OPERATOR, AGENT)
    if port == "api":
        return source == OPERATOR or (source == AGENT and path.startswith("/api/v1/threshold?"))
    return source == OPERATOR


def try_path(ports: dict, source: str, port: str, name: str) -> int:
    _, method, path = PATHS[name]
    body = agent_push(f"matrix-{source}", 0.9, cluster="acl") if method == "POST" else None
    return call(ports[port], source, method, path, body)[0]


@pytest.mark.parametrize("port", ["otlp_http", "api", "metrics"])
@pytest.mark.parametrize("source", [OPERATOR, AGENT, STRANGER])
def test_rbac_every_path_on_every_port(ports, source, port):
    seen = {name: try_path(ports, source, port, name) for name in PATHS}
    expected = {name: (403 if not rbac_allows(source, port, path) else 200 if role == port else 404)
                for name, (role, _, path) in PATHS.items()}
    assert seen == expected


@pytest.mark.parametrize("door", sorted(FRONT_DOORS))
def test_each_port_serves_its_role_only(door):
    with FRONT_DOORS[door]({"push_interval": "1s"}) as d:
        by_port = {"otlp_http": d.push, "api": d.api, "metrics": d.metrics}
        seen = {(port, name): try_path(by_port, OPERATOR, port, name) for port in by_port for name in PATHS}
    expected = {(port, name): 200 if PATHS[name][0] == port else 404 for port in by_port for name in PATHS}
    assert seen == expected


@pytest.mark.parametrize("template", ["envoy.yaml", "envoy-dynamic.yaml"])
def test_each_listener_filter_answers_only_its_routes(template):
    """The shipped files' per-listener `routes`, with the route table opened up (one catch-all 404 route
    that leaves the filter on): the filter itself answers only its port's role."""
    config = yaml.safe_load((ROOT / "envoy" / template).read_text())
    ports = {name: free_port() for name in ("otlp_http", "api", "metrics")}
    config["admin"]["address"]["socket_address"]["port_value"] = free_port()
    for listener in config["static_resources"]["listeners"]:
        listener["address"]["socket_address"].update(address="127.0.0.1", port_value=ports[listener["name"]])
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        hcm["route_config"] = {"virtual_hosts": [{"name": "open", "domains": ["*"], "routes": [
            {"match": {"prefix": "/"}, "direct_response": {"status": 404, "body": {"inline_string": "not found\n"}}}]}]}
        for hf in hcm["http_filters"]:
            if hf["name"] == "envoy.filters.http.wasm":
                hf["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(WASM)
    with Envoy(config, concurrency=1):
        seen = {(port, name): try_path(ports, OPERATOR, port, name) for port in ports for name in PATHS}
    expected = {(port, name): 200 if PATHS[name][0] == port else 404 for port in ports for name in PATHS}
    assert seen == expected


# === mutual TLS: the same policies, matched on the client certificate ===

def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def issue(tmp, name: str, san: str) -> None:
    """A key and a certificate for `name`, signed by the test CA, with one subjectAltName."""
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-subj", f"/CN={name}",
            "-out", f"{name}.csr", cwd=tmp)
    (tmp / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-days", "1", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=tmp)


@pytest.fixture(scope="module")
def mtls(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pki")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-subj", "/CN=fleet-test-ca",
            "-days", "1", "-out", "ca.crt", cwd=tmp)
    issue(tmp, "server", "IP:127.0.0.1")
    issue(tmp, "agent", "URI:spiffe://ingero/agent")
    issue(tmp, "other", "URI:spiffe://ingero/other")
    ports = {"otlp_http": free_port(), "api": free_port(), "metrics": free_port()}
    config = render_envoy({}, ports, free_port(), template=ROOT / "envoy/envoy-rbac.yaml")
    push_listener = next(x for x in config["static_resources"]["listeners"] if x["name"] == "otlp_http")
    push_listener["filter_chains"][0]["transport_socket"] = {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
            "require_client_certificate": True,
            "common_tls_context": {
                "tls_certificates": [{"certificate_chain": {"filename": str(tmp / "server.crt")},
                                      "private_key": {"filename": str(tmp / "server.key")}}],
                "validation_context": {"trusted_ca": {"filename": str(tmp / "ca.crt")}},
            },
        },
    }
    for policies in rbac_filters(config, "otlp_http"):
        policies["agents-push"]["principals"] = [
            {"authenticated": {"principal_name": {"exact": "spiffe://ingero/agent"}}}]
    with Envoy(config):
        yield ports["otlp_http"], tmp


def tls_push(port: int, tmp, client: str | None) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(tmp / "ca.crt"))
    if client:
        context.load_cert_chain(str(tmp / f"{client}.crt"), str(tmp / f"{client}.key"))
    conn = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
    try:
        conn.request("POST", "/v1/metrics?cluster_id=mtls", agent_push("n1", 0.9, cluster="mtls"),
                     {"Content-Type": "application/json"})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_mtls_variant_admits_only_the_agent_identity(mtls):
    port, tmp = mtls
    assert tls_push(port, tmp, "agent") == (200, b"{}")
    assert tls_push(port, tmp, "other") == DENIED
    with pytest.raises((ssl.SSLError, ConnectionError)):
        tls_push(port, tmp, None)
