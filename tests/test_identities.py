"""Clusters bound to identities (push_identities): a bearer token on every front
door, and the client certificate's SPIFFE ID in the wasm filter behind Envoy's
mTLS listener. A push for a cluster its identity does not list is refused 403
and counted; the default ({}) stays open, as the upstream product is."""

import json

import pytest

from fleet import agent_push, push, scrape
from frontdoors import FRONT_DOORS
from test_tls import envoy_certs, https_push, pki, render_envoy_tls  # noqa: F401 (pki is a fixture)
from fleet import Envoy, free_port

FORBIDDEN = 'ingero_fleet_dropped_total{reason="forbidden"}'
CONFIG = {"push_identities": {"token:s3cret-gpu-a": ["gpu-a"], "token:ops": ["*"]}}


@pytest.fixture(scope="module", params=sorted(FRONT_DOORS))
def door(request):
    with FRONT_DOORS[request.param](CONFIG) as door:
        yield door


def bearer(token: str) -> dict:
    return {"Authorization": f"Bearer {token}"}


def test_a_token_pushes_only_its_clusters(door):
    if door.name == "sidecar":
        pytest.skip("the sidecar's pushes are answered by the pod's app, configured apart")
    status = lambda cluster, headers=None, body_cluster=None: push(  # noqa: E731
        door.push, cluster, agent_push("n1", 0.9, cluster=body_cluster or cluster or "gpu-a"),
        extra_headers=headers).status
    before = scrape(door.metrics).get(FORBIDDEN, 0)
    assert status("gpu-a") == 403, "no identity"
    assert status("gpu-a", bearer("wrong")) == 403, "an unknown token"
    assert status("gpu-b", bearer("s3cret-gpu-a")) == 403, "another cluster"
    assert status(None, bearer("s3cret-gpu-a"), body_cluster="gpu-b") == 403, "another cluster named in the body"
    assert status("gpu-a", bearer("s3cret-gpu-a")) == 200
    assert status("gpu-b", bearer("ops")) == 200, "a wildcard identity"
    assert scrape(door.metrics)[FORBIDDEN] - before == 4
    r = push(door.push, "gpu-b", agent_push("n1", 0.9, cluster="gpu-b"), extra_headers=bearer("s3cret-gpu-a"))
    assert b"may not push cluster" in r.body and b"gpu-b" in r.body, r.body


def test_the_wasm_filter_binds_a_client_certificate_to_its_clusters(pki):  # noqa: F811
    listen = {"otlp_http": free_port(), "api": free_port(), "metrics": free_port()}
    config = render_envoy_tls(envoy_certs(pki), listen, free_port())
    plugin = {"push_identities": {"spiffe://fleet.test/agent": ["gpu-a"]}}
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for hf in f["typed_config"].get("http_filters", []):
                    if hf["name"] == "envoy.filters.http.wasm":
                        hf["typed_config"]["config"]["configuration"]["value"] = json.dumps(plugin)
    with Envoy(config):
        port = listen["otlp_http"]
        assert https_push(port, pki.client(), "n1", "gpu-a")[0] == 200
        status, body = https_push(port, pki.client(), "n1", "gpu-b")
        assert status == 403 and b"gpu-b" in body, body
        assert scrape(listen["metrics"])[FORBIDDEN] == 1
