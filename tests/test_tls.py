"""TLS and mTLS on the standalone server and on the Envoy TLS front
(envoy/envoy-tls.yaml), with real handshakes and certificates made by
`openssl`: an agents' CA, a server certificate, an agent certificate, and a
second CA whose certificate must be refused. Certificate rotation is picked up
without a restart and without dropping a push in flight; the OpenTelemetry
SDK's HTTP and gRPC exporters push over mTLS."""

from __future__ import annotations

import http.client
import os
import socket
import ssl
import subprocess
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter as HttpExporter

from test_conformance import sdk_export
from fleet import (ROOT, WASM, Envoy, agent_push, free_port, load_envoy, render_envoy, request, scrape, start_serving,
                   wait_for)
from frontdoors import Standalone

ENVOY_TLS = ROOT / "envoy/envoy-tls.yaml"


# === certificates ===

def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", f"{name}.key", "-out", f"{name}.crt", "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=d)


def make_leaf(d: Path, name: str, ca: str, usage: str, key_type: str = "ec") -> None:
    """A certificate for `name` signed by `ca`; `usage` is serverAuth or clientAuth."""
    key_args = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"] if key_type == "ec" else ["-newkey", "rsa:2048"]
    openssl("req", *key_args, "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)
    (d / f"{name}.ext").write_text(
        "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        f"extendedKeyUsage={usage}\nsubjectAltName=DNS:localhost,IP:127.0.0.1,URI:spiffe://fleet.test/{name}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-set_serial",
            str(int.from_bytes(os.urandom(8), "big")), "-days", "2", "-out", f"{name}.crt",
            "-extfile", f"{name}.ext", cwd=d)


@dataclass
class Pki:
    dir: Path

    def path(self, name: str) -> str:
        return str(self.dir / name)

    def der(self, name: str) -> bytes:
        return ssl.PEM_cert_to_DER_cert((self.dir / name).read_text())

    def client(self, cert: str | None = "agent") -> ssl.SSLContext:
        """A client trusting the agents' CA, presenting `cert` (None: no certificate)."""
        ctx = ssl.create_default_context(cafile=self.path("ca.crt"))
        if cert:
            ctx.load_cert_chain(self.path(f"{cert}.crt"), self.path(f"{cert}.key"))
        return ctx


@pytest.fixture(scope="module")
def pki() -> Pki:
    d = Path(tempfile.mkdtemp(prefix="fleet-pki-"))
    make_ca(d, "ca")
    make_ca(d, "other-ca")
    make_leaf(d, "server", "ca", "serverAuth")
    make_leaf(d, "server2", "ca", "serverAuth", key_type="rsa")
    make_leaf(d, "agent", "ca", "clientAuth")
    make_leaf(d, "intruder", "other-ca", "clientAuth")
    return Pki(d)


def tls_config(pki: Pki, mutual: bool = True, **extra) -> dict:
    tls = {"cert_file": pki.path("server.crt"), "key_file": pki.path("server.key")}
    if mutual:
        tls["client_ca_file"] = pki.path("ca.crt")
    return {"tls": tls | extra}


# === HTTPS helpers ===

def https(port: int, ctx: ssl.SSLContext, method: str = "GET", path: str = "/readyz", body: bytes | None = None,
          headers: dict | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=5)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def https_push(port: int, ctx: ssl.SSLContext, node: str, cluster: str = "tls", score: float = 0.9):
    return https(port, ctx, "POST", f"/v1/metrics?cluster_id={cluster}", agent_push(node, score, cluster),
                 {"Content-Type": "application/json"})


def refused(port: int, ctx: ssl.SSLContext) -> str:
    """The error a client gets when the server refuses its certificate (in TLS 1.3 the
    alert arrives after the client's side of the handshake, at the first read)."""
    with pytest.raises(OSError) as e:
        https(port, ctx)
    return str(e.value)


def peer_cert(port: int, ctx: ssl.SSLContext) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s:
            return s.getpeercert(binary_form=True)


def plain_http(port: int) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/readyz")
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


# === the standalone server ===

def test_mtls_on_the_standalone_push_ports(pki):
    with Standalone(tls_config(pki) | {"log": {"level": "info,ingero_fleet=debug"}}) as server:
        p = server.ports
        # The agent's certificate is accepted: a push stores the node.
        assert https_push(p["otlp_http"], pki.client(), "n1")[0] == 200
        assert scrape(p["metrics"])["ingero_fleet_total_pushes"] == 1
        # A certificate from another CA, and no certificate, are refused at the handshake.
        assert refused(p["otlp_http"], pki.client("intruder"))
        assert refused(p["otlp_http"], pki.client(None))
        assert refused(p["otlp_grpc"], pki.client(None))
        # Plain HTTP to a TLS port gets a readable 400, not a hang or a bare reset.
        status, body = plain_http(p["otlp_http"])
        assert status == 400 and b"serves HTTPS (TLS) only" in body
        # The API stays plain unless tls.api is set.
        assert request(p["api"], "GET", "/readyz").status == 200
        assert scrape(p["metrics"])["ingero_fleet_total_pushes"] == 1
        log = server.log()
    assert "TLS on" in log and "client_certificates" in log
    # The server says why each handshake failed.
    assert "TLS handshake failed: invalid peer certificate: UnknownIssuer" in log, log
    assert "TLS handshake failed: peer sent no certificates" in log, log
    assert "plain HTTP on a TLS port: refused" in log


def test_server_only_tls_and_tls_on_the_api(pki):
    server = Standalone(tls_config(pki, mutual=False, api=True))
    server.start()
    try:
        # Readiness through the metrics port, which stays plain.
        start_serving(server, "ingero-fleet", server.ports["metrics"], "/readyz", timeout=20)
        assert https(server.ports["otlp_http"], pki.client(None), "GET", "/readyz") == (200, b"ready\n")
        assert https(server.ports["api"], pki.client(None), "GET", "/readyz") == (200, b"ready\n")
        assert plain_http(server.ports["api"])[0] == 400
        # A client that does not trust the CA refuses the server.
        with pytest.raises(ssl.SSLCertVerificationError):
            https(server.ports["otlp_http"], ssl.create_default_context(cafile=pki.path("other-ca.crt")))
    finally:
        server.__exit__(None, None, None)


def test_tls_is_not_served_on_a_unix_socket(pki, tmp_path):
    server = Standalone(tls_config(pki) | {"listen": {"otlp_http": f"unix:{tmp_path / 'push.sock'}"}})
    assert server.start().wait(timeout=30) == 2, server.log()
    assert "cannot listen on listen.otlp_http" in server.log()
    assert "TLS is not served on a Unix socket" in server.log()


@contextmanager
def push_in_flight(port: int, pki, cluster: str):
    """A push whose body is half sent on a connection made with the old
    certificate while the block rotates it; it must then complete on that
    connection, answered 200."""
    assert peer_cert(port, pki.client()) == pki.der("server.crt")
    body = agent_push("rot-1", 0.9, cluster)
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=pki.client(), timeout=10)
    conn.putrequest("POST", f"/v1/metrics?cluster_id={cluster}")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(len(body)))
    conn.endheaders()
    conn.send(body[:100])
    yield
    conn.send(body[100:])
    r = conn.getresponse()
    assert r.status == 200, r.read()
    conn.close()


def replace_files(pki, folder: Path, pairs: list[tuple[str, str]]) -> None:
    """Replaces `folder`'s files by the PKI's, in order, each by an atomic rename, as a secret update does."""
    for src, dst in pairs:
        tmp = folder / f".{dst}.tmp"
        tmp.write_bytes((pki.dir / src).read_bytes())
        os.replace(tmp, folder / dst)


def test_rotation_without_restart_keeps_a_push_in_flight(pki):
    d = Path(tempfile.mkdtemp(prefix="fleet-rotate-"))
    for name in ("server.crt", "server.key"):
        (d / name).write_bytes((pki.dir / name).read_bytes())
    config = {"tls": {"cert_file": str(d / "server.crt"), "key_file": str(d / "server.key"),
                      "client_ca_file": pki.path("ca.crt")}}
    with Standalone(config) as server:
        port = server.ports["otlp_http"]
        with push_in_flight(port, pki, "tls"):
            replace_files(pki, d, [("server2.key", "server.key"), ("server2.crt", "server.crt")])
            # New handshakes get the new certificate, with no restart…
            wait_for(lambda: peer_cert(port, pki.client()) == pki.der("server2.crt"), timeout=10, what="rotation")
            assert https_push(port, pki.client(), "rot-2")[0] == 200
        assert scrape(server.ports["metrics"])["ingero_fleet_total_pushes"] == 2
        assert server.process.poll() is None
        assert "TLS certificate files changed: reloaded" in server.log()


# === OpenTelemetry SDK exporters over mTLS ===

def test_otel_sdk_exporters_push_over_mtls(pki):
    with Standalone(tls_config(pki)) as server:
        p = server.ports
        http_exporter = HttpExporter(endpoint=f"https://127.0.0.1:{p['otlp_http']}/v1/metrics",
                                     certificate_file=pki.path("ca.crt"),
                                     client_certificate_file=pki.path("agent.crt"),
                                     client_key_file=pki.path("agent.key"), timeout=5)
        assert sdk_export(http_exporter, "sdk-http", "otel-tls", 0.9)
        credentials = grpc.ssl_channel_credentials(
            root_certificates=(pki.dir / "ca.crt").read_bytes(),
            private_key=(pki.dir / "agent.key").read_bytes(),
            certificate_chain=(pki.dir / "agent.crt").read_bytes())
        grpc_exporter = GrpcExporter(endpoint=f"localhost:{p['otlp_grpc']}", credentials=credentials,
                                     insecure=False, timeout=5)
        assert sdk_export(grpc_exporter, "sdk-grpc", "otel-tls", 0.9)
        # Each exporter's push arrived (force_flush alone does not say the export succeeded).
        assert scrape(p["metrics"])["ingero_fleet_total_pushes"] == 2


# === the Envoy TLS front ===

def render_envoy_tls(cert_dir: Path, listen: dict, admin: int) -> dict:
    """envoy/envoy-tls.yaml with test ports, its SDS files copied with /etc/fleet/tls replaced by `cert_dir`."""
    config = render_envoy({}, listen, admin, template=ENVOY_TLS)
    sds_dir = Path(tempfile.mkdtemp(prefix="envoy-sds-"))
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            if "transport_socket" not in chain:
                continue
            common = chain["transport_socket"]["typed_config"]["common_tls_context"]
            for sds in [*common["tls_certificate_sds_secret_configs"], common["validation_context_sds_secret_config"]]:
                source = sds["sds_config"]["path_config_source"]
                text = (ROOT / source["path"]).read_text().replace("/etc/fleet/tls", str(cert_dir))
                target = sds_dir / Path(source["path"]).name
                target.write_text(text)
                source["path"] = str(target)
    return config


def envoy_certs(pki: Pki) -> Path:
    """A directory laid out like the cert-manager Secret the example expects."""
    d = Path(tempfile.mkdtemp(prefix="envoy-tls-"))
    for src, dst in (("server.crt", "tls.crt"), ("server.key", "tls.key"), ("ca.crt", "ca.crt")):
        (d / dst).write_bytes((pki.dir / src).read_bytes())
    return d


def test_envoy_tls_is_envoy_yaml_plus_tls():
    """envoy-tls.yaml is envoy.yaml (limits, overload manager, routes, filter) with only the TLS
    parts added, so a change to envoy.yaml that is not carried over fails here."""
    plain = load_envoy(ROOT / "envoy/envoy.yaml")
    tls = load_envoy(ENVOY_TLS)
    assert tls.pop("node") == {"id": "ingero-fleet", "cluster": "ingero-fleet"}
    push = tls["static_resources"]["listeners"][0]
    assert push["name"] == "otlp_http"
    assert [f["name"] for f in push.pop("listener_filters")] == ["envoy.filters.listener.tls_inspector"]
    agents, refuse_plain = push["filter_chains"]
    assert refuse_plain["filter_chain_match"] == {"transport_protocol": "raw_buffer"}
    assert agents.pop("filter_chain_match") == {"transport_protocol": "tls"} and agents.pop("name") == "agents_mtls"
    assert agents.pop("transport_socket")["typed_config"]["require_client_certificate"] is True
    push["filter_chains"] = [agents]
    # The access log names the agent's certificate (on every listener: one format for all).
    for listener in tls["static_resources"]["listeners"]:
        for log in listener["filter_chains"][0]["filters"][0]["typed_config"]["access_log"]:
            line = log["typed_config"]["log_format"]["text_format_source"]
            assert " san=%DOWNSTREAM_PEER_URI_SAN% " in line["inline_string"], listener["name"]
            line["inline_string"] = line["inline_string"].replace(" san=%DOWNSTREAM_PEER_URI_SAN% ", " ")
    assert tls == plain


def test_envoy_tls_front_with_mtls(pki):
    assert WASM.exists(), "scripts/build-wasm first"
    listen = {"otlp_http": free_port(), "api": free_port(), "metrics": free_port()}
    with Envoy(render_envoy_tls(envoy_certs(pki), listen, free_port())) as envoy:
        port = listen["otlp_http"]
        assert https_push(port, pki.client(), "envoy-1", "envoy-tls")[0] == 200
        assert scrape(listen["metrics"])["ingero_fleet_total_pushes"] == 1
        assert refused(port, pki.client("intruder"))
        assert refused(port, pki.client(None))
        status, body = plain_http(port)
        assert status == 400 and b"serves HTTPS (TLS) only" in body
        stats = request(envoy.admin_port, "GET", f"/stats?filter=^listener.127.0.0.1_{port}.ssl").body.decode()
        counts = dict(line.split(": ") for line in stats.splitlines())
        assert int(counts[f"listener.127.0.0.1_{port}.ssl.fail_verify_error"]) >= 1, stats
        assert int(counts[f"listener.127.0.0.1_{port}.ssl.fail_verify_no_cert"]) >= 1, stats
        assert scrape(listen["metrics"])["ingero_fleet_total_pushes"] == 1
        # The access log names the agent by its certificate's URI SAN.
        wait_for(lambda: "san=spiffe://fleet.test/agent" in envoy.log(), what="the access log line")


def test_envoy_picks_up_a_rotated_certificate_without_restart(pki):
    certs = envoy_certs(pki)
    listen = {"otlp_http": free_port(), "api": free_port(), "metrics": free_port()}
    with Envoy(render_envoy_tls(certs, listen, free_port())) as envoy:
        port = listen["otlp_http"]
        with push_in_flight(port, pki, "envoy-tls"):
            replace_files(pki, certs, [("server2.key", "tls.key"), ("server2.crt", "tls.crt")])
            wait_for(lambda: peer_cert(port, pki.client()) == pki.der("server2.crt"), timeout=10, what="rotation")
        assert envoy.process.poll() is None
        assert scrape(listen["metrics"])["ingero_fleet_total_pushes"] == 1
