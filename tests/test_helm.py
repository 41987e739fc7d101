"""The Helm chart (helm/ingero-fleet): lint, render with the guide's value sets,
validate against Kubernetes schemas, refuse bad values, and run the Envoy
configuration it renders on loopback so the chart cannot drift from what the
end-to-end tests run."""

from __future__ import annotations

import base64
import functools
import gzip
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from fleet import (ROOT, WASM, Envoy, Ports, agent_push, expected_threshold, fleet_envoy, push, render_envoy,
                   scrape, threshold, wait_for)
from frontdoors import Standalone

HELM = ROOT / ".tools/bin/helm"
CHART = ROOT / "helm/ingero-fleet"
K8S_VERSION = "1.30"  # the oldest schema kubernetes-validate ships that we claim; the chart needs >= 1.24

# The guide's commands (Option B, Custom Values, High Availability) and a default render.
VALUE_SETS = {
    "defaults": [],
    "one-replica": ["--set", "replicaCount=1"],
    "guide-ha": ["--set", "replicaCount=2"],
    "three-replicas": ["--set", "replicaCount=3"],
    "guide-custom": ["--set", "config.threshold.k=2.5", "--set", "config.push_interval=30s",
                     "--set", "config.max_expected_nodes=100", "--set", "replicaCount=3"],
}
REPLICAS = {"defaults": 1, "one-replica": 1, "guide-ha": 2, "three-replicas": 3, "guide-custom": 3}


def helm(command: str, *args: str, chart: Path = CHART) -> subprocess.CompletedProcess:
    release = ["ingero-fleet"] if command == "template" else []
    return subprocess.run([str(HELM), command, *release, str(chart), *args], capture_output=True, text=True,
                          timeout=60)


@functools.lru_cache(maxsize=None)
def template(values: tuple[str, ...], chart: Path = CHART) -> str:
    """`helm template ingero-fleet <chart> -n ingero <values>` output (cached: helm is deterministic)."""
    result = helm("template", "--namespace", "ingero", *values, chart=chart)
    assert result.returncode == 0, result.stderr
    return result.stdout


def render(*values: str, chart: Path = CHART) -> list[dict]:
    """The rendered manifests, freshly parsed."""
    return [doc for doc in yaml.load_all(template(values, chart), Loader=yaml.CSafeLoader) if doc]


def find(manifests: list[dict], kind: str, name: str) -> dict:
    (found,) = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def envoy_config(manifests: list[dict], configmap: str = "ingero-fleet-envoy") -> dict:
    return yaml.safe_load(find(manifests, "ConfigMap", configmap)["data"]["envoy.yaml"])


def wasm_filters(config: dict) -> list[dict]:
    """The Fleet filter's `config` in every listener, in order."""
    return [hf["typed_config"]["config"]
            for listener in config["static_resources"]["listeners"]
            for chain in listener["filter_chains"] for f in chain["filters"]
            for hf in f["typed_config"].get("http_filters", []) if hf["name"] == "envoy.filters.http.wasm"]


def plugin_config(config: dict) -> dict:
    (value,) = {f["configuration"]["value"] for f in wasm_filters(config)}
    return json.loads(value)


# === lint, schemas, values ===

@pytest.mark.parametrize("name", VALUE_SETS)
def test_lint(name):
    result = helm("lint", "--strict", *VALUE_SETS[name])
    assert result.returncode == 0, result.stdout + result.stderr


def validate(manifests: list[dict]) -> list[str]:
    """Checks every manifest against the Kubernetes schemas (unknown fields are errors); their kind/name."""
    for m in manifests:
        try:
            kubernetes_validate.validate(m, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{m['kind']}/{m['metadata']['name']}: {e.message} at {list(e.absolute_path)}")
    return sorted(f"{m['kind']}/{m['metadata']['name']}" for m in manifests)


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_manifests_are_valid_kubernetes(name):
    kinds = validate(render(*VALUE_SETS[name]))
    lb = ["ConfigMap/ingero-fleet-lb", "Deployment/ingero-fleet-lb", "Service/ingero-fleet-lb",
          "PodDisruptionBudget/ingero-fleet", "PodDisruptionBudget/ingero-fleet-lb"]
    assert kinds == sorted(["ConfigMap/ingero-fleet-envoy", "ConfigMap/ingero-fleet-wasm",
                            "Pod/ingero-fleet-test-threshold", "Service/ingero-fleet", "StatefulSet/ingero-fleet",
                            *(lb if REPLICAS[name] > 1 else [])])


@pytest.mark.parametrize("name", VALUE_SETS)
def test_replicas_have_stable_names_and_a_hardened_pod(name):
    manifests = render(*VALUE_SETS[name])
    sts = find(manifests, "StatefulSet", "ingero-fleet")
    svc = find(manifests, "Service", "ingero-fleet")
    assert sts["spec"]["replicas"] == REPLICAS[name]
    assert sts["spec"]["serviceName"] == "ingero-fleet" and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    assert {p["port"] for p in svc["spec"]["ports"]} == {4318, 8080, 8888}
    pod = sts["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "envoyproxy/envoy:v1.40.0"
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["readinessProbe"]["httpGet"]["path"] == "/metrics"
    assert container["livenessProbe"] and container["resources"]["limits"]["memory"]
    # The mounted files are the rendered Envoy config and the built filter.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    args = container["args"]
    assert args[args.index("--config-path") + 1] == mounts["config"] + "/envoy.yaml"
    wasm_path = wasm_filters(envoy_config(manifests))[0]["vm_config"]["code"]["local"]["filename"]
    assert wasm_path == mounts["wasm"] + "/ingero_fleet_wasm.wasm"
    binary = find(manifests, "ConfigMap", "ingero-fleet-wasm")["binaryData"]["ingero_fleet_wasm.wasm"]
    assert base64.b64decode(binary) == WASM.read_bytes()


def test_existing_configmap_replaces_the_embedded_wasm():
    manifests = render("--set", "wasm.existingConfigMap=my-wasm")
    assert not [m for m in manifests if m["metadata"]["name"] == "ingero-fleet-wasm"]
    volumes = find(manifests, "StatefulSet", "ingero-fleet")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "wasm", "configMap": {"name": "my-wasm"}} in volumes


def test_release_fits_in_a_kubernetes_secret():
    """Helm stores a release (chart files + manifest) gzipped and base64-encoded in a Secret (1 MiB max);
    the .wasm is in it twice, so watch its size."""
    files = {str(p.relative_to(CHART)): base64.b64encode(p.read_bytes()).decode()
             for p in CHART.rglob("*") if p.is_file()}
    release = json.dumps({"chart": files, "manifest": template(tuple(VALUE_SETS["guide-custom"]))}).encode()
    stored = len(base64.b64encode(gzip.compress(release)))
    assert stored < 900 * 1024, f"release would take {stored} bytes of the Secret's 1 MiB"


@pytest.mark.parametrize("name", ["guide-ha", "three-replicas"])
def test_more_than_one_replica_gets_the_ring_hash_front(name):
    manifests = render(*VALUE_SETS[name])
    lb = envoy_config(manifests, "ingero-fleet-lb")
    (cluster,) = lb["static_resources"]["clusters"]
    assert cluster["lb_policy"] == "RING_HASH" and cluster["ring_hash_lb_config"]["minimum_ring_size"] == 1024
    endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    assert [e["endpoint"]["address"]["socket_address"]["address"] for e in endpoints] == \
        [f"ingero-fleet-{i}.ingero-fleet.ingero.svc.cluster.local" for i in range(REPLICAS[name])]
    assert [e["metadata"]["filter_metadata"]["envoy.lb"]["hash_key"] for e in endpoints] == \
        [f"ingero-fleet-{i}" for i in range(REPLICAS[name])]
    for listener in lb["static_resources"]["listeners"]:
        route = listener["filter_chains"][0]["filters"][0]["typed_config"]["route_config"]
        assert route["virtual_hosts"][0]["routes"][0]["route"]["hash_policy"] == \
            [{"query_parameter": {"name": "cluster_id"}}]
    # Everything but the endpoints is envoy/front-lb.yaml as committed (and tested in test_pinning.py).
    reference = yaml.safe_load((ROOT / "envoy/front-lb.yaml").read_text())
    for config in (lb, reference):
        del config["static_resources"]["clusters"][0]["load_assignment"]["endpoints"]
    assert lb == reference
    service = find(manifests, "Service", "ingero-fleet-lb")
    assert {p["port"] for p in service["spec"]["ports"]} == {4318, 8080}


@pytest.mark.parametrize("values, complaint", [
    (["--set", "config.threshold.k=7"], "config.threshold.k"),
    (["--set", "config.threshold.k=0.5"], "config.threshold.k"),
    (["--set", "replicaCount=-1"], "replicaCount"),
    (["--set", "replicaCount=0"], "replicaCount"),
    (["--set", "config.push_interval=soon"], "config.push_interval"),
    (["--set", "config.threshold.ema_alpha=0"], "config.threshold.ema_alpha"),
    (["--set", "config.max_expected_nodes=0"], "config.max_expected_nodes"),
    (["--set", "config.max_clusters=0"], "config.max_clusters"),
    (["--set", "config.max_nodes_per_cluster=0"], "config.max_nodes_per_cluster"),
    (["--set", "config.ttl_multiplier=1"], "config.ttl_multiplier"),
    (["--set", "config.listen.api=8080"], "config.listen.api"),
    (["--set", "config.thresold.k=2"], "thresold"),
])
def test_invalid_values_are_rejected(values, complaint):
    result = helm("template", *values)
    assert result.returncode != 0
    assert "don't meet the specifications of the schema" in result.stderr and complaint in result.stderr, \
        result.stderr


def readme_config_keys() -> set[str]:
    """The dotted keys of README's Configuration table (the contract's §6 keys as the filter takes them)."""
    section = (ROOT / "README.md").read_text().split("\n## Configuration\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_.]+)` \|", section, re.M))


def dotted(config: dict, prefix: str = "") -> set[str]:
    return {key for k, v in config.items()
            for key in (dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"})}


def test_values_carry_every_configuration_key():
    config = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    del config["listen"]  # listener addresses: Envoy's (or the standalone server's), not in the table
    assert dotted(config) == readme_config_keys()


def test_guide_custom_values_become_the_plugin_configuration():
    config = plugin_config(envoy_config(render(*VALUE_SETS["guide-custom"])))
    assert config["threshold"]["k"] == 2.5
    assert config["push_interval"] == "30s"
    assert config["max_expected_nodes"] == 100
    defaults = plugin_config(envoy_config(render()))
    # Every contract key is in values.yaml, so every key reaches the filter.
    assert set(defaults) == {"threshold", "push_interval", "ttl_multiplier", "quorum", "max_expected_nodes",
                             "max_nodes_per_cluster", "max_clusters", "max_body_bytes", "max_id_bytes",
                             "max_points_per_push", "pause_on_headers", "listen"}
    assert defaults["max_nodes_per_cluster"] is None  # the filter's default: max_expected_nodes
    assert set(defaults["threshold"]) == {"k", "ema_alpha"}
    assert set(defaults["quorum"]) == {"statistical_min", "coverage_fraction"}


# === NOTES.txt ===

def render_notes(*values: str) -> str:
    """NOTES.txt rendered with the release's context (helm template skips it; install needs a cluster)."""
    chart = Path(tempfile.mkdtemp(prefix="chart-")) / "ingero-fleet"
    shutil.copytree(CHART, chart)  # follows the links in files/
    shutil.copy(chart / "templates/NOTES.txt", chart / "files/NOTES.txt")
    (chart / "templates/NOTES.txt").unlink()
    (chart / "templates/zz-notes.yaml").write_text(
        'apiVersion: v1\nkind: ConfigMap\nmetadata: {name: notes}\n'
        'data: {notes: {{ tpl (.Files.Get "files/NOTES.txt") . | toJson }}}\n')
    try:
        return find(render(*values, chart=chart), "ConfigMap", "notes")["data"]["notes"]
    finally:
        shutil.rmtree(chart.parent)


def test_notes_print_the_guide_verify_commands():
    notes = render_notes(*VALUE_SETS["guide-ha"])
    for line in ["kubectl get pods -n ingero",
                 "kubectl port-forward -n ingero svc/ingero-fleet 8080:8080",
                 "curl http://localhost:8080/api/v1/threshold?cluster_id=your-cluster",
                 'curl -s "http://localhost:4318/v1/metrics?cluster_id=test-hash"',
                 "http://ingero-fleet-lb.ingero.svc:4318"]:
        assert line in notes, f"{line!r} missing from NOTES:\n{notes}"
    assert "ingero-fleet-lb" not in render_notes()


# === the rendered configuration, run for real ===

def loopback(rendered: dict, concurrency: int = 2) -> tuple[Envoy, Ports]:
    """The chart's Envoy config on free loopback ports with the built .wasm (render_envoy's rewrites only)."""
    return fleet_envoy(plugin_config(rendered), concurrency, template=rendered)


def test_chart_envoy_config_is_the_tested_one():
    """Apart from ports, paths and the plugin configuration, the chart runs envoy/envoy.yaml as is."""
    rendered = envoy_config(render(*VALUE_SETS["guide-custom"]))
    chart, ports = loopback(rendered)
    by_listener = {"otlp_http": ports.push, "api": ports.api, "metrics": ports.metrics}
    assert chart.config == render_envoy(plugin_config(rendered), by_listener, chart.admin_port)


def test_chart_envoy_config_runs_with_the_guide_values():
    """`--set config.threshold.k=2.5 --set config.push_interval=30s --set config.max_expected_nodes=100`."""
    envoy, ports = loopback(envoy_config(render(*VALUE_SETS["guide-custom"])))
    with envoy:
        assert threshold(ports.api, "c").body == b'{"threshold":0,"quorum_met":false}'
        for i in range(100):
            assert push(ports.push, "c", agent_push(f"n{i}", 0.9, cluster="c")).status == 200
        push(ports.push, "c", agent_push("one-too-many", 0.9, cluster="c"))
        dropped = {k: v for k, v in scrape(ports.metrics).items() if k.startswith("ingero_fleet_dropped_total")}
        assert sum(dropped.values()) == 1, f"max_expected_nodes=100 must drop the 101st node: {dropped}"


def test_chart_plugin_configuration_reaches_the_filter():
    """k and the push interval from --set change the published threshold, computed independently;
    max_clusters caps the clusters."""
    values = ["--set", "config.threshold.k=2.5", "--set", "config.push_interval=1s",
              "--set", "config.threshold.ema_alpha=1", "--set", "config.max_clusters=1"]
    envoy, ports = loopback(envoy_config(render(*values)))
    scores = [0.95, 0.93, 0.9, 0.91, 0.6, 0.88, 0.94]
    with envoy:
        for i, score in enumerate(scores):
            assert push(ports.push, "k25", agent_push(f"n{i}", score, cluster="k25")).status == 200
        expected = expected_threshold(scores, k=2.5)
        assert expected != expected_threshold(scores, k=2.0)

        def published():
            body = threshold(ports.api, "k25").json()
            return body if body["quorum_met"] else None
        body = wait_for(published, what="a threshold with the chart's 1s push interval")
        assert abs(body["threshold"] - expected) < 1e-9
        assert push(ports.push, "second", agent_push("n0", 0.9, cluster="second")).status == 429


def test_helm_test_hook_queries_the_threshold_api():
    """The `helm test` pod's command, run here against the chart's Envoy with its host rewritten to loopback."""
    manifests = render(*VALUE_SETS["defaults"])
    hook = find(manifests, "Pod", "ingero-fleet-test-threshold")
    assert hook["metadata"]["annotations"]["helm.sh/hook"] == "test"
    (container,) = hook["spec"]["containers"]
    command = container["command"] + container["args"]
    assert command[:2] == ["sh", "-c"] and "http://ingero-fleet:8080/api/v1/threshold" in command[2]
    envoy, ports = loopback(envoy_config(manifests), concurrency=1)
    with envoy:
        script = command[2].replace("http://ingero-fleet:8080", f"http://127.0.0.1:{ports.api}")
        result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"threshold": 0, "quorum_met": False}
    # With a front load balancer the hook goes through it, as agents do.
    ha = find(render(*VALUE_SETS["guide-ha"]), "Pod", "ingero-fleet-test-threshold")
    assert "http://ingero-fleet-lb:8080/api/v1/threshold" in ha["spec"]["containers"][0]["args"][0]


# === standalone mode: the server instead of Envoy with the filter ===

STANDALONE = ("--set", "standalone.enabled=true", "--set", "replicaCount=2")


def test_standalone_mode_runs_the_server_with_grpc():
    assert helm("lint", "--strict", *STANDALONE).returncode == 0
    manifests = render(*STANDALONE)
    assert validate(manifests) == sorted([
        "ConfigMap/ingero-fleet-config", "ConfigMap/ingero-fleet-lb", "Deployment/ingero-fleet-lb",
        "PodDisruptionBudget/ingero-fleet", "PodDisruptionBudget/ingero-fleet-lb",
        "Pod/ingero-fleet-test-threshold", "Service/ingero-fleet", "Service/ingero-fleet-lb",
        "StatefulSet/ingero-fleet"])
    ports = {p["name"]: p["port"] for p in find(manifests, "Service", "ingero-fleet")["spec"]["ports"]}
    assert ports == {"http-otlp": 4318, "grpc-otlp": 4317, "http-api": 8080, "http-metrics": 8888}
    pod = find(manifests, "StatefulSet", "ingero-fleet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/ingero-io/ingero-fleet:latest"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert [v["name"] for v in pod["volumes"]] == ["config", "tmp"]
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["config"]
    assert container["args"] == ["--config", f"{mount}/config.yaml"]


def test_standalone_config_reaches_the_server():
    """The rendered config.yaml, listen addresses moved to loopback, run by the real server."""
    values = [*STANDALONE, "--set", "config.threshold.k=2.5", "--set", "config.push_interval=1s",
              "--set", "config.threshold.ema_alpha=1"]
    config = yaml.safe_load(find(render(*values), "ConfigMap", "ingero-fleet-config")["data"]["config.yaml"])
    assert config["listen"]["otlp_grpc"] == "0.0.0.0:4317"
    del config["listen"]  # Standalone listens on free loopback ports instead
    scores = [0.95, 0.93, 0.9, 0.91, 0.6, 0.88, 0.94]
    with Standalone(config) as server:
        door = server.door
        for i, score in enumerate(scores):
            assert push(door.push, "k25", agent_push(f"n{i}", score, cluster="k25")).status == 200

        def published():
            body = threshold(door.api, "k25").json()
            return body if body["quorum_met"] else None
        body = wait_for(published, what="a threshold from the chart's standalone config")
        assert abs(body["threshold"] - expected_threshold(scores, k=2.5)) < 1e-9
