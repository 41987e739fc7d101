"""The Istio manifests (istio/): they parse, carry the fields Istio and the
guide need, agree with each other and with envoy/envoy.yaml, and the
EnvoyFilter's filter config runs in real Envoy."""

from __future__ import annotations

import copy
import json

import kubernetes_validate
import pytest
import yaml

from fleet import ROOT, COLD_START, agent_push, fleet_envoy, push, scrape, threshold

ISTIO = ROOT / "istio"
PORTS = {4318, 8080, 8888}


def load(name: str) -> list[dict]:
    return [doc for doc in yaml.safe_load_all((ISTIO / name).read_text()) if doc]


def one(name: str, kind: str) -> dict:
    (doc,) = [d for d in load(name) if d["kind"] == kind]
    return doc


def reference_filter() -> dict:
    """The Fleet http filter of envoy/envoy.yaml: the same on every listener but for
    the plugin configuration (each listener's `routes`)."""
    config = yaml.safe_load((ROOT / "envoy/envoy.yaml").read_text())
    filters = [copy.deepcopy(hf) for listener in config["static_resources"]["listeners"]
               for chain in listener["filter_chains"] for f in chain["filters"]
               for hf in f["typed_config"]["http_filters"] if hf["name"] == "envoy.filters.http.wasm"]
    for f in filters:
        f["typed_config"]["config"]["configuration"]["value"] = ""
    assert len(filters) == 3 and all(f == filters[0] for f in filters)
    return filters[0]


def envoyfilter_filters() -> list[dict]:
    return [p["patch"]["value"] for p in one("envoyfilter.yaml", "EnvoyFilter")["spec"]["configPatches"]]


def pod_labels() -> dict:
    return one("workload.yaml", "Deployment")["spec"]["template"]["metadata"]["labels"]


def sidecar_mount() -> str:
    annotations = one("workload.yaml", "Deployment")["spec"]["template"]["metadata"]["annotations"]
    (volume,) = json.loads(annotations["sidecar.istio.io/userVolume"])
    (mount,) = json.loads(annotations["sidecar.istio.io/userVolumeMount"])
    assert volume["name"] == mount["name"] and volume["configMap"]["name"] == "ingero-fleet-wasm"
    return mount["mountPath"]


def test_every_manifest_parses():
    kinds = {(d["apiVersion"], d["kind"]) for f in sorted(ISTIO.glob("*.yaml")) for d in load(f.name)}
    assert kinds == {("extensions.istio.io/v1alpha1", "WasmPlugin"), ("networking.istio.io/v1alpha3", "EnvoyFilter"),
                     ("networking.istio.io/v1", "DestinationRule"), ("v1", "Service"), ("apps/v1", "Deployment")}
    assert all(d["metadata"]["namespace"] == "ingero" for f in ISTIO.glob("*.yaml") for d in load(f.name))


def test_workload_is_valid_kubernetes_behind_a_clusterip_service():
    for doc in load("workload.yaml"):
        kubernetes_validate.validate(doc, "1.30", strict=True)
    service = one("workload.yaml", "Service")
    assert service["metadata"]["name"] == "ingero-fleet"
    assert service["spec"].get("clusterIP") != "None", "Istio ignores consistent hashing for headless Services"
    assert service["spec"]["selector"].items() <= pod_labels().items()
    assert {p["port"] for p in service["spec"]["ports"]} == PORTS
    assert all(p["name"].startswith("http-") for p in service["spec"]["ports"])


def test_destination_rule_is_the_guides():
    rule = one("destinationrule.yaml", "DestinationRule")
    assert rule["metadata"]["name"] == "ingero-fleet"
    assert rule["spec"]["host"] == one("workload.yaml", "Service")["metadata"]["name"]
    policy = rule["spec"]["trafficPolicy"]
    assert policy["loadBalancer"]["consistentHash"] == {"httpQueryParameterName": "cluster_id"}
    assert policy["connectionPool"]["http"] == {"h2UpgradePolicy": "UPGRADE", "idleTimeout": "30s"}


def test_wasm_plugin_fields():
    spec = one("wasmplugin.yaml", "WasmPlugin")["spec"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels().items()
    assert spec["url"] == f"file://{sidecar_mount()}/ingero_fleet_wasm.wasm"
    assert spec["pluginName"] == reference_filter()["typed_config"]["config"]["root_id"]
    assert spec["phase"] in {"AUTHN", "AUTHZ", "STATS"}
    assert spec["failStrategy"] == "FAIL_CLOSE"
    (match,) = spec["match"]
    assert match["mode"] == "SERVER" and {p["number"] for p in match["ports"]} == PORTS
    # pluginConfig's keys and values: tests/test_config_table.py.


def test_envoy_filter_inserts_the_reference_filter_on_each_port():
    spec = one("envoyfilter.yaml", "EnvoyFilter")["spec"]
    assert spec["workloadSelector"]["labels"].items() <= pod_labels().items()
    patches = spec["configPatches"]
    assert {p["match"]["listener"]["portNumber"] for p in patches} == PORTS
    for p in patches:
        assert p["applyTo"] == "HTTP_FILTER" and p["match"]["context"] == "SIDECAR_INBOUND"
        assert p["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"] == "envoy.filters.http.router"
        assert p["patch"]["operation"] == "INSERT_BEFORE"
    reference = reference_filter()
    for value in envoyfilter_filters():
        config = value["typed_config"]["config"]
        assert config["allow_on_headers_stop_iteration"] is True and config["vm_config"]["vm_id"] == "ingero_fleet"
        assert config["vm_config"]["code"]["local"]["filename"] == f"{sidecar_mount()}/ingero_fleet_wasm.wasm"
        # Apart from where the .wasm lives and the plugin configuration, it is envoy/envoy.yaml's filter.
        mine, theirs = copy.deepcopy(value), copy.deepcopy(reference)
        for f in (mine, theirs):
            del f["typed_config"]["config"]["vm_config"]["code"]
            del f["typed_config"]["config"]["configuration"]["value"]
        assert mine == theirs


def test_envoy_filter_and_wasm_plugin_carry_the_same_plugin_config():
    wasm_plugin = one("wasmplugin.yaml", "WasmPlugin")["spec"]["pluginConfig"]
    # The WasmPlugin cannot set allow_on_headers_stop_iteration, so it alone does not pause on headers.
    assert wasm_plugin["pause_on_headers"] is False
    for value in envoyfilter_filters():
        plugin_config = json.loads(value["typed_config"]["config"]["configuration"]["value"])
        assert plugin_config.get("pause_on_headers", True) is True
        assert plugin_config | {"pause_on_headers": False} == wasm_plugin


@pytest.fixture(scope="module")
def envoyfilter_envoy():
    """envoy/envoy.yaml with its Fleet filter replaced by the EnvoyFilter's, on loopback (render_envoy)."""
    config = yaml.safe_load((ROOT / "envoy/envoy.yaml").read_text())
    (value, *_) = envoyfilter_filters()
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                hfs = f["typed_config"]["http_filters"]
                hfs[:] = [copy.deepcopy(value) if hf["name"] == value["name"] else hf for hf in hfs]
    envoy, ports = fleet_envoy(json.loads(value["typed_config"]["config"]["configuration"]["value"]),
                               template=config)
    with envoy:
        yield ports


def test_envoy_filter_config_answers_pushes_and_queries(envoyfilter_envoy):
    ports = envoyfilter_envoy
    assert threshold(ports.api, "mesh").body == COLD_START
    r = push(ports.push, "mesh", agent_push("n1", 0.9, cluster="mesh"))
    assert r.status == 200 and r.body == b"{}"
    assert scrape(ports.metrics)["ingero_fleet_total_pushes"] == 1
