"""The Helm chart (helm/ingero-fleet): lint, render with the guide's value sets,
validate against Kubernetes schemas, refuse bad values, and run the Envoy
configuration it renders on loopback so the chart cannot drift from what the
end-to-end tests run."""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import http.client
import http.server
import json
import re
import shutil
import socket
import ssl
import subprocess
import tarfile
import tempfile
import threading
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from fleet import (ENVOY, ROOT, WASM, Envoy, Ports, agent_push, expected_threshold, fleet_envoy, free_port, push,
                   render_envoy, request, scrape, start_serving, threshold, wait_for)
from frontdoors import Standalone

HELM = ROOT / ".tools/bin/helm"
CHART = ROOT / "helm/ingero-fleet"
CHART_WASM = CHART / "files/ingero_fleet_wasm.wasm"  # scripts/build copies the built module here
SCHEMAS = ROOT / ".tools/schemas"  # CRD schemas, scripts/setup.d/30-schemas
DIST = ROOT / "dist"
# The chart's kubeVersion floor is 1.24 (the deployment guide's); kubernetes-validate 1.37.0 ships schemas from
# 1.25 on, so the floor is checked at 1.25, and the newest at the newest it ships.
K8S_VERSIONS = ("1.25", "1.37")
APP_VERSION = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]

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
    """Checks every manifest against the Kubernetes schemas (unknown fields are errors) of the chart's floor and
    of the newest version, and custom resources against their CRD schemas; their kind/name."""
    custom = [m for m in manifests if m["apiVersion"].split("/")[0] in CRD_GROUPS]
    for m in manifests:
        if m in custom:
            continue
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(m, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                pytest.fail(f"{m['kind']}/{m['metadata']['name']} (Kubernetes {version}): {e.message} "
                            f"at {list(e.absolute_path)}")
    for result in validate_crds(custom):
        assert result["error"] is None, f"{result['kind']}/{result['name']}: {result['error']}"
    return sorted(f"{m['kind']}/{m['metadata']['name']}" for m in manifests)


CRD_GROUPS = {"monitoring.coreos.com", "gateway.networking.k8s.io", "networking.istio.io", "extensions.istio.io",
              "security.istio.io"}


def validate_crds(objects: list[dict]) -> list[dict]:
    """Custom resources checked by tests/crd_validate.mjs against the CRD schemas of the @kubernetes-models
    npm packages (prometheus-operator, gateway-api, istio); one {kind, name, error} per object."""
    if not objects:
        return []
    assert (SCHEMAS / "node_modules/@kubernetes-models").is_dir(), \
        f"{SCHEMAS} missing: run scripts/setup (scripts/setup.d/30-schemas)"
    result = subprocess.run(["node", str(ROOT / "tests/crd_validate.mjs"), str(SCHEMAS)], input=json.dumps(objects),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()]


BASE = ["ConfigMap/ingero-fleet-envoy", "ConfigMap/ingero-fleet-wasm", "Pod/ingero-fleet-test-threshold",
        "Service/ingero-fleet", "ServiceAccount/ingero-fleet", "StatefulSet/ingero-fleet"]
LB = ["ConfigMap/ingero-fleet-lb", "Deployment/ingero-fleet-lb", "PodDisruptionBudget/ingero-fleet",
      "PodDisruptionBudget/ingero-fleet-lb"]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_rendered_manifests_are_valid_kubernetes(name):
    kinds = validate(render(*VALUE_SETS[name]))
    assert kinds == sorted([*BASE, "Service/ingero-fleet-lb", *(LB if REPLICAS[name] > 1 else [])])


@pytest.mark.parametrize("name", VALUE_SETS)
def test_replicas_have_stable_names_and_a_hardened_pod(name):
    manifests = render(*VALUE_SETS[name])
    sts = find(manifests, "StatefulSet", "ingero-fleet")
    svc = find(manifests, "Service", "ingero-fleet")
    assert sts["spec"]["replicas"] == REPLICAS[name]
    assert sts["spec"]["serviceName"] == "ingero-fleet" and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is False  # why: the comment in templates/service.yaml
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
    assert pod["serviceAccountName"] == "ingero-fleet" and pod["automountServiceAccountToken"] is False
    # Soft spread over nodes by default; the grace period outlasts the server's 20 s drain and Envoy's.
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway" and spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    assert pod["terminationGracePeriodSeconds"] >= 20 + 5
    args = container["args"]
    assert int(args[args.index("--drain-time-s") + 1]) < pod["terminationGracePeriodSeconds"]
    # The mounted files are the rendered Envoy config and the module the chart carries.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert args[args.index("--config-path") + 1] == mounts["config"] + "/envoy.yaml"
    wasm_path = wasm_filters(envoy_config(manifests))[0]["vm_config"]["code"]["local"]["filename"]
    assert wasm_path == mounts["wasm"] + "/ingero_fleet_wasm.wasm"
    binary = find(manifests, "ConfigMap", "ingero-fleet-wasm")["binaryData"]["ingero_fleet_wasm.wasm"]
    assert base64.b64decode(binary) == CHART_WASM.read_bytes()


def test_chart_carries_the_built_module():
    """scripts/build copies the module into the chart as a file (helm package and copies of the chart need it)."""
    assert not CHART_WASM.is_symlink() and CHART_WASM.read_bytes() == WASM.read_bytes()


def test_existing_configmap_replaces_the_embedded_wasm():
    manifests = render("--set", "wasm.existingConfigMap=my-wasm")
    assert not [m for m in manifests if m["metadata"]["name"] == "ingero-fleet-wasm"]
    volumes = find(manifests, "StatefulSet", "ingero-fleet")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "wasm", "configMap": {"name": "my-wasm"}} in volumes


# === a fresh checkout: no build ===

def fresh_checkout(tmp: Path) -> Path:
    """helm/ and envoy/ as a git checkout holds them (files/ links into envoy/), without the built module."""
    shutil.copytree(CHART.parent, tmp / "helm", symlinks=True,
                    ignore=lambda d, names: [n for n in names if n == "ingero_fleet_wasm.wasm"])
    shutil.copytree(ROOT / "envoy", tmp / "envoy")
    chart = tmp / "helm/ingero-fleet"
    assert not (chart / "files/ingero_fleet_wasm.wasm").exists()
    return chart


SHA = hashlib.sha256(b"any").hexdigest()
NO_BUILD = {
    "standalone": ["--set", "standalone.enabled=true"],
    "standalone-ha": ["--set", "standalone.enabled=true", "--set", "replicaCount=3"],
    "existing-configmap": ["--set", "wasm.existingConfigMap=ingero-fleet-wasm"],
    "existing-configmap-ha": ["--set", "wasm.existingConfigMap=ingero-fleet-wasm", *VALUE_SETS["guide-custom"]],
    "url": ["--set", "wasm.url=https://example.com/releases/0.1.0/ingero_fleet_wasm.wasm",
            "--set", f"wasm.sha256={SHA}"],
}


@pytest.mark.parametrize("mode", NO_BUILD)
def test_fresh_checkout_lints_and_renders_without_a_build(mode, tmp_path):
    chart = fresh_checkout(tmp_path)
    lint = helm("lint", "--strict", *NO_BUILD[mode], chart=chart)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    manifests = render(*NO_BUILD[mode], chart=chart)
    validate(manifests)
    assert not [m for m in manifests if m["metadata"]["name"] == "ingero-fleet-wasm"]


@pytest.mark.parametrize("values", [[], VALUE_SETS["guide-ha"], ["--set", "wasm.sha256=" + SHA]])
def test_fresh_checkout_needing_the_module_fails_with_one_clear_message(values, tmp_path):
    chart = fresh_checkout(tmp_path)
    for command in ("lint", "template"):
        result = helm(command, *(["--strict"] if command == "lint" else []), *values, chart=chart)
        assert result.returncode != 0
        output = result.stdout + result.stderr
        assert "symlink" not in output
        assert output.count("files/ingero_fleet_wasm.wasm is missing: run scripts/build first") == 1, output


def test_url_mode_needs_its_digest():
    result = helm("template", "--set", "wasm.url=https://example.com/m.wasm")
    assert result.returncode != 0 and "wasm.sha256" in result.stderr, result.stderr


# === the release Helm stores ===

def packaged_chart(tmp: Path) -> Path:
    """The packaged chart: dist/ingero-fleet-<version>.tgz from scripts/release when it is there, else the same
    packaging (a copy of the chart with the built module, `helm package`) done here; both are cheap to read."""
    built = sorted(DIST.glob("ingero-fleet-*.tgz"))
    if built:
        return built[-1]
    copy = tmp / "src/ingero-fleet"
    shutil.copytree(CHART, copy)  # follows the links into envoy/; files/ holds the module scripts/build copied
    result = subprocess.run([str(HELM), "package", str(copy), "-d", str(tmp / "pkg")], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    (tgz,) = (tmp / "pkg").glob("*.tgz")
    return tgz


def stored_release_bytes(tgz: Path, manifest: str) -> int:
    """What Helm writes into the release Secret's `release` key: the release as JSON (the chart's templates and
    files as base64, as Go encodes []byte; values; the rendered manifest, hooks included), gzipped at Helm's
    BestCompression, then base64. Rebuilt here from the packaged chart and `helm template`'s output, which
    are what `helm install` reads and renders; the Secret's other fields are a few hundred bytes."""
    with tarfile.open(tgz) as tar:
        files = {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    chart = {
        "metadata": yaml.safe_load(files.pop("Chart.yaml")),
        "templates": [{"name": k, "data": b64(v)} for k, v in sorted(files.items()) if k.startswith("templates/")],
        "values": yaml.safe_load(files.pop("values.yaml")),
        "schema": b64(files.pop("values.schema.json", b"")),
        "files": [{"name": k, "data": b64(v)} for k, v in sorted(files.items()) if not k.startswith("templates/")],
    }
    release = json.dumps({"name": "ingero-fleet", "chart": chart, "manifest": manifest}).encode()
    return len(base64.b64encode(gzip.compress(release, compresslevel=9)))


# Share of the Secret's 1 MiB the guide's releases may take: under 60 %. The
# default mode keeps the module twice (the chart's files and the rendered
# ConfigMap: Helm stores both): 58.0 % with the 331 088-byte module
# (2026-11-30); with wasm.url or wasm.existingConfigMap the module is stored
# once (31.5 %), which is what docs/helm.md recommends for large fleets.
RELEASE_SHARE = 0.6


def test_guide_release_fits_well_inside_a_kubernetes_secret(tmp_path):
    """The guide's releases (Option B and Custom Values) stay well inside the Secret's 1 MiB."""
    tgz = packaged_chart(tmp_path)
    module_once = ("--set", "wasm.url=https://example.com/ingero_fleet_wasm.wasm", "--set", f"wasm.sha256={'0' * 64}")
    for values in [VALUE_SETS["guide-ha"], VALUE_SETS["guide-custom"], (*VALUE_SETS["guide-ha"], *module_once)]:
        manifest = template(tuple(values), chart=tgz)
        stored = stored_release_bytes(tgz, manifest)
        module = len(CHART_WASM.read_bytes())
        print(f"{values}: release {stored} bytes = {stored / 2**20:.1%} of 1 MiB (module {module} bytes)")
        assert stored < RELEASE_SHARE * 2**20, f"release takes {stored} bytes = {stored / 2**20:.1%} of 1 MiB"


def test_packaged_chart_installs_alone(tmp_path):
    """`helm template` from the .tgz alone in an empty folder: valid manifests, and the Envoy config with the
    module taken from its rendered ConfigMap passes `envoy --mode validate` and serves a push and a threshold."""
    tgz = packaged_chart(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    alone = empty / tgz.name
    shutil.copy(tgz, alone)
    result = subprocess.run([str(HELM), "template", "ingero-fleet", alone.name, "-n", "ingero",
                             *VALUE_SETS["guide-ha"]], capture_output=True, text=True, timeout=60, cwd=empty)
    assert result.returncode == 0, result.stderr
    manifests = [d for d in yaml.safe_load_all(result.stdout) if d]
    validate(manifests)
    module = base64.b64decode(find(manifests, "ConfigMap", "ingero-fleet-wasm")["binaryData"]["ingero_fleet_wasm.wasm"])
    assert module[:4] == b"\0asm"
    (empty / "ingero_fleet_wasm.wasm").write_bytes(module)
    config = envoy_config(manifests)
    for f in wasm_filters(config):
        f["vm_config"]["code"]["local"]["filename"] = str(empty / "ingero_fleet_wasm.wasm")
    envoy_validate(config, empty)
    serve_push_and_threshold(config, module_path=empty / "ingero_fleet_wasm.wasm")


def envoy_validate(config: dict, tmp: Path) -> None:
    path = tmp / "validate.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([str(ENVOY), "--mode", "validate", "-c", str(path), "-l", "error"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "OK" in result.stdout + result.stderr, result.stdout + result.stderr


def serve_push_and_threshold(rendered: dict, module_path: Path | None = None) -> None:
    """The config on loopback: pushes of seven nodes answered 200, then the cluster's threshold published."""
    envoy, ports = loopback(rendered, concurrency=1)
    if module_path:
        for listener in envoy.config["static_resources"]["listeners"]:
            for chain in listener["filter_chains"]:
                for f in chain["filters"]:
                    for hf in f["typed_config"].get("http_filters", []):
                        if hf["name"] == "envoy.filters.http.wasm":
                            hf["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] = str(module_path)
    with envoy:
        for i, score in enumerate([0.95, 0.93, 0.9, 0.91, 0.6, 0.88, 0.94]):
            assert push(ports.push, "c", agent_push(f"n{i}", score, cluster="c")).status == 200
        assert threshold(ports.api, "c").status == 200


@pytest.mark.parametrize("name", ["guide-ha", "three-replicas"])
def test_more_than_one_replica_gets_the_ring_hash_front(name):
    manifests = render(*VALUE_SETS[name])
    lb = envoy_config(manifests, "ingero-fleet-lb")
    ports = {"ingero_fleet": 4318, "ingero_fleet_api": 8080}  # each ring's replica port
    assert {c["name"] for c in lb["static_resources"]["clusters"]} == set(ports)
    for cluster in lb["static_resources"]["clusters"]:
        assert cluster["lb_policy"] == "RING_HASH" and cluster["ring_hash_lb_config"]["minimum_ring_size"] == 1024
        endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert [e["endpoint"]["address"]["socket_address"] for e in endpoints] == \
            [{"address": f"ingero-fleet-{i}.ingero-fleet.ingero.svc.cluster.local",
              "port_value": ports[cluster["name"]]} for i in range(REPLICAS[name])]
        assert [e["metadata"]["filter_metadata"]["envoy.lb"]["hash_key"] for e in endpoints] == \
            [f"ingero-fleet-{i}" for i in range(REPLICAS[name])]
    # Everything but the endpoints and the chart's Envoy settings is envoy/front-lb.yaml as committed (and
    # tested in test_pinning.py).
    reference = yaml.safe_load((ROOT / "envoy/front-lb.yaml").read_text())
    for config in (lb, reference):
        for cluster in config["static_resources"]["clusters"]:
            del cluster["load_assignment"]["endpoints"]
    assert without_chart_settings(lb) == without_chart_settings(reference)
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


def core_ranges() -> dict[str, tuple]:
    """The ranges filter/core/src/config.rs checks: {"quorum.statistical_min": ("int", 1, 1000000), ...}."""
    source = (ROOT / "filter/core/src/config.rs").read_text()
    consts = {name: eval(value.replace("_", "")) for name, value in  # noqa: S307 (integer literals)
              re.findall(r"const ([A-Z_]+): \w+ = ([0-9_ <]+);", source)}

    def number(text: str):
        text = text.strip()
        return consts[text] if text in consts else eval(text.replace("_", ""))  # noqa: S307
    ranges = {}
    for kind, path, low, high in re.findall(r'check\.(int|float)\(\w+, "([a-z_.]+)", [^,]+, ([^,]+), ([^,)]+)', source):
        ranges[path] = (kind, number(low), number(high))
    return ranges


def test_schema_ranges_are_the_core_ranges():
    """Every range values.schema.json gives a `config` key is the one the core enforces (config.rs)."""
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["config"]["properties"]
    ranges = core_ranges()
    assert len(ranges) >= 11, ranges
    for path, (kind, low, high) in ranges.items():
        node = schema
        for part in path.split("."):
            node = node[part] if part in node else node["properties"][part]
        numeric = next(option for option in node.get("oneOf", [node]) if option.get("type") in ("integer", "number"))
        assert numeric["type"] == ("integer" if kind == "int" else "number"), path
        assert numeric.get("minimum", numeric.get("exclusiveMinimum")) == low, path
        assert numeric["maximum"] == high, path


# The chart's config keys against the validator's key table: tests/test_config_table.py.


def test_guide_custom_values_become_the_plugin_configuration():
    config = plugin_config(envoy_config(render(*VALUE_SETS["guide-custom"])))
    assert config["threshold"]["k"] == 2.5
    assert config["push_interval"] == "30s"
    assert config["max_expected_nodes"] == 100
    defaults = plugin_config(envoy_config(render()))
    # Every contract key is in values.yaml, so every key reaches the filter.
    assert set(defaults) == {"threshold", "push_interval", "ttl_multiplier", "quorum", "max_expected_nodes",
                             "max_nodes_per_cluster", "max_clusters", "max_body_bytes", "max_id_bytes",
                             "max_points_per_push", "max_resources_per_push", "max_cohorts_per_cluster",
                             "pause_on_headers", "listen"}
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
                 # verification through the hash front, never around it
                 "kubectl port-forward -n ingero svc/ingero-fleet-lb 4318:4318",
                 'curl -s "http://localhost:4318/v1/metrics?cluster_id=test-hash"',
                 "endpoint: http://ingero-fleet-lb.ingero.svc:4318"]:
        assert line in notes, f"{line!r} missing from NOTES:\n{notes}"
    assert "port-forward -n ingero svc/ingero-fleet 4318" not in notes
    tls = render_notes("--set", "tls.enabled=true", "--set", "tls.secretName=fleet-tls",
                       "--set", "tls.clientCA.secretName=agents-ca")
    assert "endpoint: https://ingero-fleet-lb.ingero.svc:4318" in tls and "--cert agent.crt" in tls
    assert "there is no entry Service" in render_notes("--set", "replicaCount=2", "--set", "lb.enabled=false")


# === the rendered configuration, run for real ===

def loopback(rendered: dict, concurrency: int = 2) -> tuple[Envoy, Ports]:
    """The chart's Envoy config on free loopback ports with the built .wasm (render_envoy's rewrites only)."""
    return fleet_envoy(plugin_config(rendered), concurrency, template=rendered)


def without_chart_settings(config: dict) -> dict:
    """A copy without the node identity the chart adds (hardenEnvoy in _helpers.tpl); its `envoy.*` defaults
    are the files' own numbers, so nothing else differs."""
    config = json.loads(json.dumps(config))
    config.pop("node", None)
    return config


def test_chart_envoy_config_is_the_tested_one():
    """Apart from ports, paths, the plugin configuration and a node identity, the chart runs envoy/envoy.yaml as
    is: the chart's `envoy.*` defaults are the file's numbers (a change to either shows here)."""
    rendered = envoy_config(render(*VALUE_SETS["guide-custom"]))
    chart, ports = loopback(rendered)
    by_listener = {"otlp_http": ports.push, "api": ports.api, "metrics": ports.metrics}
    assert without_chart_settings(chart.config) == \
        without_chart_settings(render_envoy(plugin_config(rendered), by_listener, chart.admin_port))


def test_chart_envoy_settings_bound_memory_and_time():
    """Overload manager (heap and downstream connections), HTTP/2 stream cap, timeouts sized to the agent's 5 s,
    access log, on the replicas and on the hash front; the result passes `envoy --mode validate`."""
    manifests = render(*VALUE_SETS["guide-ha"], "--set", "envoy.maxHeapBytes=300000000")
    for name, heap in (("ingero-fleet-envoy", 300000000), ("ingero-fleet-lb", 201326592)):
        config = envoy_config(manifests, name)
        monitors = {m["name"]: m["typed_config"] for m in config["overload_manager"]["resource_monitors"]}
        assert monitors["envoy.resource_monitors.fixed_heap"]["max_heap_size_bytes"] == heap
        assert monitors["envoy.resource_monitors.global_downstream_max_connections"][
            "max_active_downstream_connections"] == 10000
        actions = {a["name"] for a in config["overload_manager"]["actions"]}
        assert {"envoy.overload_actions.reset_high_memory_stream",
                "envoy.overload_actions.stop_accepting_requests"} <= actions
        for listener in config["static_resources"]["listeners"]:
            hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
            assert hcm["request_headers_timeout"] == "5s" and hcm["stream_idle_timeout"] == "5s"
            assert hcm["request_timeout"] == "10s"
            assert hcm["http2_protocol_options"]["max_concurrent_streams"] == 16
            assert hcm["access_log"][0]["name"] == "envoy.access_loggers.stdout"
    quiet = envoy_config(render("--set", "envoy.accessLog=false"))
    assert not [x for x in quiet["static_resources"]["listeners"]
                if "access_log" in x["filter_chains"][0]["filters"][0]["typed_config"]]
    tmp = Path(tempfile.mkdtemp(prefix="chart-validate-"))
    try:
        config = envoy_config(manifests)
        for f in wasm_filters(config):
            f["vm_config"]["code"]["local"]["filename"] = str(WASM)
        envoy_validate(config, tmp)
        envoy_validate(envoy_config(manifests, "ingero-fleet-lb"), tmp)
    finally:
        shutil.rmtree(tmp)


def test_chart_envoy_writes_an_access_log_line_per_request():
    envoy, ports = loopback(envoy_config(render()), concurrency=1)
    envoy.log_level = "info"
    with envoy:
        assert push(ports.push, "c", agent_push("n0", 0.9, cluster="c")).status == 200
        wait_for(lambda: '"POST /v1/metrics?cluster_id=c HTTP/1.1" 200' in envoy.log(), what="an access log line")


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
    assert command[:2] == ["sh", "-c"] and "http://ingero-fleet-lb:8080/api/v1/threshold" in command[2]
    envoy, ports = loopback(envoy_config(manifests), concurrency=1)
    with envoy:
        script = command[2].replace("http://ingero-fleet-lb:8080", f"http://127.0.0.1:{ports.api}")
        result = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == {"threshold": 0, "quorum_met": False}
    # With a front load balancer the hook goes through it too, as agents do.
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
        "ServiceAccount/ingero-fleet", "StatefulSet/ingero-fleet"])
    ports = {p["name"]: p["port"] for p in find(manifests, "Service", "ingero-fleet")["spec"]["ports"]}
    assert ports == {"http-otlp": 4318, "grpc-otlp": 4317, "http-api": 8080, "http-metrics": 8888}
    pod = find(manifests, "StatefulSet", "ingero-fleet")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == f"ghcr.io/ingero-fleet-envoy/ingero-fleet-server:{APP_VERSION}"
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


# === the entry: one way in, whatever the route ===

def test_entry_service_types_and_annotations():
    for kind in ("ClusterIP", "NodePort", "LoadBalancer"):
        values = ["--set", "replicaCount=3", "--set", f"lb.service.type={kind}",
                  "--set", "lb.service.annotations.example\\.com/scheme=internet-facing"]
        if kind != "ClusterIP":
            values += ["--set", "lb.service.nodePorts.otlp_http=30318",
                       "--set", "lb.service.externalTrafficPolicy=Local"]
        if kind == "LoadBalancer":
            values += ["--set", "lb.service.loadBalancerSourceRanges[0]=10.0.0.0/8"]
        manifests = render(*values)
        validate(manifests)
        entry = find(manifests, "Service", "ingero-fleet-lb")
        assert entry["spec"]["type"] == kind
        assert entry["metadata"]["annotations"] == {"example.com/scheme": "internet-facing"}
        # The entry selects the hash front's pods, never the replicas.
        assert entry["spec"]["selector"]["app.kubernetes.io/component"] == "lb"
        ports = {p["name"]: p for p in entry["spec"]["ports"]}
        assert set(ports) == {"http-otlp", "http-api"}
        if kind != "ClusterIP":
            assert ports["http-otlp"]["nodePort"] == 30318 and entry["spec"]["externalTrafficPolicy"] == "Local"
        if kind == "LoadBalancer":
            assert entry["spec"]["loadBalancerSourceRanges"] == ["10.0.0.0/8"]


def test_one_replica_entry_goes_straight_to_it():
    for values, grpc in (([], False), (["--set", "standalone.enabled=true"], True)):
        entry = find(render(*values), "Service", "ingero-fleet-lb")
        assert entry["spec"]["selector"]["app.kubernetes.io/component"] == "fleet"
        assert ("grpc-otlp" in {p["name"] for p in entry["spec"]["ports"]}) == grpc


EXPOSED = ["--set", "ingress.enabled=true", "--set", "ingress.className=nginx",
           "--set", "ingress.hosts[0].host=fleet.example.com", "--set", "ingress.tls[0].secretName=fleet-tls",
           "--set", "ingress.tls[0].hosts[0]=fleet.example.com",
           "--set", "httpRoute.enabled=true", "--set", "httpRoute.parentRefs[0].name=public",
           "--set", "httpRoute.parentRefs[0].namespace=gateway-system",
           "--set", "httpRoute.hostnames[0]=fleet.example.com"]


@pytest.mark.parametrize("mode", [[], ["--set", "standalone.enabled=true"]], ids=["filter", "standalone"])
def test_ingress_and_httproute_reach_the_hash_front(mode):
    manifests = render(*mode, "--set", "replicaCount=3", *EXPOSED)
    validate(manifests)  # the HTTPRoute against the Gateway API CRD schema
    ingress = find(manifests, "Ingress", "ingero-fleet")
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "fleet.example.com"
    assert [p["backend"]["service"] for p in rule["http"]["paths"]] == [{"name": "ingero-fleet-lb",
                                                                         "port": {"name": "http-otlp"}}]
    route = find(manifests, "HTTPRoute", "ingero-fleet")
    assert route["spec"]["parentRefs"] == [{"name": "public", "namespace": "gateway-system"}]
    assert [b for r in route["spec"]["rules"] for b in r["backendRefs"]] == [{"name": "ingero-fleet-lb", "port": 4318}]
    # The Service they name selects the front's pods.
    assert find(manifests, "Service", "ingero-fleet-lb")["spec"]["selector"]["app.kubernetes.io/component"] == "lb"


def test_every_option_at_once_lints_and_validates():
    everything = ["--set", "replicaCount=3", *EXPOSED, *TLS_VALUES, "--set", "lb.service.type=LoadBalancer",
                  "--set", "metrics.serviceMonitor.enabled=true", "--set", "metrics.podMonitor.enabled=true",
                  "--set", "metrics.podAnnotations=true", "--set", "networkPolicy.enabled=true",
                  "--set", "observe.upstream=otel-collector.observability:4318"]
    result = helm("lint", "--strict", *everything)
    assert result.returncode == 0, result.stdout + result.stderr
    kinds = validate(render(*everything))
    assert {k.split("/")[0] for k in kinds} >= {"Ingress", "HTTPRoute", "ServiceMonitor", "PodMonitor",
                                                 "NetworkPolicy", "ServiceAccount", "Deployment", "StatefulSet"}


def test_no_route_around_the_front():
    for route in (EXPOSED[:6], EXPOSED[10:]):
        result = helm("template", "--set", "replicaCount=3", "--set", "lb.enabled=false", *route)
        assert result.returncode != 0 and "needs the hash front" in result.stderr, result.stderr


# === monitoring, identity, placement, network ===

def test_prometheus_options():
    manifests = render("--set", "replicaCount=2", "--set", "metrics.serviceMonitor.enabled=true",
                       "--set", "metrics.podMonitor.enabled=true", "--set", "metrics.podAnnotations=true",
                       "--set", "metrics.serviceMonitor.labels.release=prom")
    validate(manifests)  # ServiceMonitor and PodMonitor against the Prometheus Operator CRD schemas
    sts = find(manifests, "StatefulSet", "ingero-fleet")
    pod = sts["spec"]["template"]
    headless = find(manifests, "Service", "ingero-fleet")
    service_monitor = find(manifests, "ServiceMonitor", "ingero-fleet")
    assert service_monitor["metadata"]["labels"]["release"] == "prom"
    # It selects the headless Service (one target per replica), not the entry, by the port name it has.
    labels = headless["metadata"]["labels"]
    assert all(labels[k] == v for k, v in service_monitor["spec"]["selector"]["matchLabels"].items())
    assert find(manifests, "Service", "ingero-fleet-lb")["metadata"]["labels"]["app.kubernetes.io/component"] != \
        service_monitor["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"]
    assert service_monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in headless["spec"]["ports"]}
    pod_monitor = find(manifests, "PodMonitor", "ingero-fleet")
    assert pod_monitor["spec"]["selector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    (container,) = pod["spec"]["containers"]
    assert pod_monitor["spec"]["podMetricsEndpoints"][0]["port"] in {p["name"] for p in container["ports"]}
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["metadata"]["annotations"]["prometheus.io/port"] == "8888"
    # Off by default.
    defaults = render()
    assert not [m for m in defaults if m["kind"] in ("ServiceMonitor", "PodMonitor")]
    assert "prometheus.io/scrape" not in find(defaults, "StatefulSet", "ingero-fleet")["spec"]["template"][
        "metadata"]["annotations"]


def test_monitors_fail_their_crd_schema_when_broken():
    """The CRD check can fail: a ServiceMonitor with a non-integer port number is refused."""
    manifests = render("--set", "metrics.serviceMonitor.enabled=true")
    broken = find(manifests, "ServiceMonitor", "ingero-fleet")
    broken["spec"]["endpoints"][0]["targetPort"] = {"not": "a port"}
    (result,) = validate_crds([broken])
    assert result["error"] and "targetPort" in result["error"]


def test_service_account_options():
    manifests = render("--set", "serviceAccount.name=fleet", "--set", "serviceAccount.annotations.a=b",
                       "--set", "replicaCount=2")
    validate(manifests)
    assert find(manifests, "ServiceAccount", "fleet")["metadata"]["annotations"] == {"a": "b"}
    for kind, name in (("StatefulSet", "ingero-fleet"), ("Deployment", "ingero-fleet-lb")):
        assert find(manifests, kind, name)["spec"]["template"]["spec"]["serviceAccountName"] == "fleet"
    external = render("--set", "serviceAccount.create=false", "--set", "serviceAccount.name=existing")
    assert not [m for m in external if m["kind"] == "ServiceAccount"]
    assert find(external, "StatefulSet", "ingero-fleet")["spec"]["template"]["spec"]["serviceAccountName"] == \
        "existing"


def test_front_pods_spread_and_drain_too():
    manifests = render("--set", "replicaCount=3")
    pod = find(manifests, "Deployment", "ingero-fleet-lb")["spec"]["template"]["spec"]
    (spread,) = pod["topologySpreadConstraints"]
    assert spread["whenUnsatisfiable"] == "ScheduleAnyway"
    assert spread["labelSelector"]["matchLabels"]["app.kubernetes.io/component"] == "lb"
    assert "drain_listeners?graceful" in pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][2]
    assert "/dev/tcp/127.0.0.1/9902" in pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][2]
    assert not [c for c in render("--set", "topologySpread.enabled=false")
                if c["kind"] == "StatefulSet" and "topologySpreadConstraints" in c["spec"]["template"]["spec"]]


@pytest.mark.parametrize("mode", [[], ["--set", "standalone.enabled=true"]], ids=["filter", "standalone"])
def test_network_policy_lets_each_peer_reach_its_ports_only(mode):
    agents = [{"ipBlock": {"cidr": "10.0.0.0/8"}}]
    manifests = render(*mode, "--set", "replicaCount=3", "--set", "networkPolicy.enabled=true",
                       "--set-json", f"networkPolicy.agents={json.dumps(agents)}")
    validate(manifests)
    replicas = find(manifests, "NetworkPolicy", "ingero-fleet")["spec"]
    rules = {tuple(sorted(p["port"] for p in r["ports"])): r.get("from") for r in replicas["ingress"]}
    agent_ports = (4317, 4318) if mode else (4318,)
    assert rules[agent_ports] == agents
    assert rules[(8080, 8888)] == [{"podSelector": {}}]  # operators: the release's namespace by default
    assert rules[(4318, 8080)][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "lb"
    assert set(rules) == {agent_ports, (8080, 8888), (4318, 8080)}
    front = find(manifests, "NetworkPolicy", "ingero-fleet-lb")["spec"]
    rules = {tuple(p["port"] for p in r["ports"]): r.get("from") for r in front["ingress"]}
    assert rules == {(4318,): agents, (8080,): [{"podSelector": {}}]}
    assert not [m for m in render(*mode) if m["kind"] == "NetworkPolicy"]


@pytest.mark.parametrize("values, complaint", [
    (["--set", "lb.service.type=ExternalName"], "lb.service.type"),
    (["--set", "lb.service.nodePorts.otlp_http=70000"], "otlp_http"),
    (["--set", "terminationGracePeriodSeconds=15"], "terminationGracePeriodSeconds"),
    (["--set", "tls.enabled=true"], "tls.secretName"),
    (["--set", "wasm.url=ftp://example.com/m.wasm", "--set", f"wasm.sha256={SHA}"], "wasm.url"),
    (["--set", "wasm.url=https://example.com/m.wasm", "--set", "wasm.sha256=abc"], "wasm.sha256"),
    (["--set", "observe.upstream=collector"], "observe.upstream"),
    (["--set", "envoy.requestTimeout=10"], "envoy.requestTimeout"),
    (["--set", "envoy.maxHeapBytes=1000"], "envoy.maxHeapBytes"),
    (["--set", "httpRoute.enabled=true"], "httpRoute.parentRefs"),
    (["--set", "metrics.serviceMonitor.interval=often"], "metrics.serviceMonitor.interval"),
    (["--set", "serviceAccount.craete=true"], "craete"),
])
def test_invalid_new_values_are_rejected(values, complaint):
    result = helm("template", *values)
    assert result.returncode != 0
    assert "don't meet the specifications of the schema" in result.stderr and complaint in result.stderr, \
        result.stderr


# === TLS on the entry ===

TLS_VALUES = ["--set", "tls.enabled=true", "--set", "tls.secretName=fleet-tls",
              "--set", "tls.clientCA.secretName=agents-ca"]


def test_tls_lands_on_the_entry_in_every_mode():
    # Several replicas: the hash front terminates TLS on its push listener, mounting the two Secrets.
    ha = render("--set", "replicaCount=3", *TLS_VALUES)
    validate(ha)
    lb = envoy_config(ha, "ingero-fleet-lb")
    (push_listener,) = [x for x in lb["static_resources"]["listeners"] if x["name"] == "ingero_fleet_listener"]
    tls = push_listener["filter_chains"][0]["transport_socket"]["typed_config"]
    assert tls["require_client_certificate"] is True
    assert "transport_socket" not in envoy_config(ha)["static_resources"]["listeners"][0]["filter_chains"][0]
    front = find(ha, "Deployment", "ingero-fleet-lb")["spec"]["template"]["spec"]
    assert {v["name"]: v.get("secret", {}).get("secretName") for v in front["volumes"]}["tls"] == "fleet-tls"
    assert {"tls-certificate.yaml", "client-ca.yaml"} <= set(find(ha, "ConfigMap", "ingero-fleet-lb")["data"])
    assert find(ha, "Service", "ingero-fleet-lb")["spec"]["ports"][0]["appProtocol"] == "https"
    # One replica: its own push listener.
    one = render(*TLS_VALUES)
    validate(one)
    listener = envoy_config(one)["static_resources"]["listeners"][0]
    assert listener["name"] == "otlp_http" and listener["filter_chains"][0]["transport_socket"]
    # One standalone replica: the server's tls keys.
    server = render("--set", "standalone.enabled=true", *TLS_VALUES)
    validate(server)
    config = yaml.safe_load(find(server, "ConfigMap", "ingero-fleet-config")["data"]["config.yaml"])
    assert config["tls"] == {"cert_file": "/etc/ingero-fleet/tls/tls.crt", "key_file": "/etc/ingero-fleet/tls/tls.key",
                             "client_ca_file": "/etc/ingero-fleet/client-ca/ca.crt"}
    mounts = {m["name"]: m["mountPath"] for m in
              find(server, "StatefulSet", "ingero-fleet")["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["tls"] == "/etc/ingero-fleet/tls" and mounts["client-ca"] == "/etc/ingero-fleet/client-ca"
    # Without mTLS: no client CA anywhere.
    plain = render("--set", "tls.enabled=true", "--set", "tls.secretName=fleet-tls")
    socket_config = envoy_config(plain)["static_resources"]["listeners"][0]["filter_chains"][0]["transport_socket"]
    assert socket_config["typed_config"]["require_client_certificate"] is False
    assert "client-ca.yaml" not in find(plain, "ConfigMap", "ingero-fleet-envoy")["data"]


def openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=30)


def make_ca(tmp: Path, name: str) -> None:
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", f"/CN={name}", "-keyout", f"{name}.key", "-out", f"{name}.crt", cwd=tmp)


def make_cert(tmp: Path, ca: str, name: str, san: str) -> None:
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", f"/CN={name}",
            "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=tmp)
    (tmp / f"{name}.ext").write_text(f"subjectAltName={san}\n")
    openssl("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.crt", "-CAkey", f"{ca}.key", "-CAcreateserial",
            "-days", "2", "-extfile", f"{name}.ext", "-out", f"{name}.crt", cwd=tmp)


def tls_push(port: int, tmp: Path, client: str | None, cluster: str = "c", node: str = "n0") -> int:
    context = ssl.create_default_context(cafile=str(tmp / "ca.crt"))
    if client:
        context.load_cert_chain(str(tmp / f"{client}.crt"), str(tmp / f"{client}.key"))
    conn = http.client.HTTPSConnection("localhost", port, context=context, timeout=10)
    try:
        conn.request("POST", f"/v1/metrics?cluster_id={cluster}", body=agent_push(node, 0.9, cluster=cluster),
                     headers={"Content-Type": "application/json"})
        return conn.getresponse().status
    finally:
        conn.close()


def test_tls_entry_serves_agents_with_certificates_in_real_envoy(tmp_path):
    """The chart's one-replica Envoy config with tls + clientCA, its Secret mounts played by files made with
    openssl: an agent certificate from the CA is served, no certificate or another CA's is refused."""
    manifests = render(*TLS_VALUES)
    data = find(manifests, "ConfigMap", "ingero-fleet-envoy")["data"]
    mounted = mount_tls_secrets(tmp_path, data, "/etc/ingero-fleet/config")
    rendered = yaml.safe_load(mounted(data["envoy.yaml"]))
    envoy, ports = loopback(rendered, concurrency=1)
    with envoy:
        assert tls_push(ports.push, tmp_path, "agent") == 200
        for client in (None, "stranger"):
            with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
                tls_push(ports.push, tmp_path, client)
        # Plain HTTP on the TLS port gets no answer.
        with pytest.raises((http.client.HTTPException, ConnectionResetError, OSError)):
            request(ports.push, "POST", "/v1/metrics?cluster_id=c", agent_push("n1", 0.9, cluster="c"), timeout=5)
        # The API port stays plain, for operators and probes.
        assert threshold(ports.api, "c").status == 200
        # Rotation as the kubelet does it (a new ..data directory swapped in): served without a restart.
        before = served_certificate(ports.push, tmp_path)
        make_cert(tmp_path, "ca", "server-rotated", "DNS:localhost")
        kubelet_secret(tmp_path / "tls", {"tls.crt": tmp_path / "server-rotated.crt",
                                          "tls.key": tmp_path / "server-rotated.key"})
        wait_for(lambda: served_certificate(ports.push, tmp_path) != before, what="the rotated certificate")
        assert served_certificate(ports.push, tmp_path) == (tmp_path / "server-rotated.crt").read_text().strip()
        assert tls_push(ports.push, tmp_path, "agent") == 200
        assert envoy.process.poll() is None


def test_tls_hash_front_pins_and_serves_through_tls_in_real_envoy(tmp_path):
    """The chart's front with tls + clientCA, in real Envoy: its replica endpoints moved to two real filter
    Envoys on loopback (keeping their hash keys), its Secrets played by openssl files. Pushes over mTLS reach
    one replica per cluster and the threshold API answers through the front."""
    manifests = render("--set", "replicaCount=2", *TLS_VALUES)
    data = find(manifests, "ConfigMap", "ingero-fleet-lb")["data"]
    mounted = mount_tls_secrets(tmp_path, data, "/etc/ingero-fleet/envoy")
    front = yaml.safe_load(mounted(data["envoy.yaml"]))
    replicas = [loopback(envoy_config(manifests), concurrency=1) for _ in range(2)]
    by_port = {4318: [p.push for _, p in replicas], 8080: [p.api for _, p in replicas]}
    for cluster in front["static_resources"]["clusters"]:
        for i, endpoint in enumerate(cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]):
            address = endpoint["endpoint"]["address"]["socket_address"]
            address.update(address="127.0.0.1", port_value=by_port[address["port_value"]][i])
        cluster["type"] = "STATIC"
    front_push, front_api = free_port(), free_port()
    front["admin"]["address"]["socket_address"]["port_value"] = free_port()
    for listener in front["static_resources"]["listeners"]:
        port = front_push if listener["name"] == "ingero_fleet_listener" else front_api
        listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": port}
    (first, _), (second, _) = replicas
    with first, second, Envoy(front, concurrency=1):
        for i in range(7):
            assert tls_push(front_push, tmp_path, "agent", cluster="pinned", node=f"n{i}") == 200
        pushes = [scrape(p.metrics).get("ingero_fleet_total_pushes", 0) for _, p in replicas]
        assert sorted(pushes) == [0, 7], pushes
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            tls_push(front_push, tmp_path, None)
        # The threshold read through the front comes from the replica holding the cluster's seven nodes.
        wait_for(lambda: threshold(front_api, "pinned").json()["quorum_met"], what="quorum through the front")


def kubelet_secret(directory: Path, files: dict[str, Path]) -> None:
    """A Secret volume as the kubelet writes it: files in a timestamped directory, `..data` pointing at it
    (replaced by an atomic rename on update), and each key a link through `..data`."""
    stamp = directory / f"..{time.time_ns()}"
    stamp.mkdir()
    for name, source in files.items():
        shutil.copy(source, stamp / name)
    (directory / "..data_tmp").symlink_to(stamp.name)
    (directory / "..data_tmp").rename(directory / "..data")
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(f"..data/{name}")


def served_certificate(port: int, tmp: Path) -> str:
    """The PEM certificate the TLS listener presents (with the agent's client certificate)."""
    context = ssl.create_default_context(cafile=str(tmp / "ca.crt"))
    context.load_cert_chain(str(tmp / "agent.crt"), str(tmp / "agent.key"))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            return ssl.DER_cert_to_PEM_cert(tls.getpeercert(binary_form=True)).strip()


SERVER_TLS = any("client_ca_file" in f.read_text() for f in (ROOT / "server/src").rglob("*.rs"))


def tls_files(tmp: Path) -> None:
    """A CA, a server certificate for localhost, an agent certificate from the CA and one from another CA."""
    make_ca(tmp, "ca")
    make_ca(tmp, "other-ca")
    make_cert(tmp, "ca", "server", "DNS:localhost")
    make_cert(tmp, "ca", "agent", "DNS:agent-1")
    make_cert(tmp, "other-ca", "stranger", "DNS:agent-2")


@pytest.mark.skipif(not SERVER_TLS, reason="the standalone server has no tls keys (cert_file, key_file, "
                    "client_ca_file) yet")
def mount_tls_secrets(tmp_path: Path, data: dict, config_mount: str):
    """The chart's TLS Secrets and SDS files (ConfigMap `data`, mounted at `config_mount`) played by openssl
    files under `tmp_path`; returns the function mapping the chart's mount paths to those folders."""
    tls_files(tmp_path)
    mounts = {"/etc/ingero-fleet/tls": tmp_path / "tls", "/etc/ingero-fleet/client-ca": tmp_path / "client-ca",
              config_mount: tmp_path / "config"}
    for directory in mounts.values():
        directory.mkdir()
    kubelet_secret(tmp_path / "tls", {"tls.crt": tmp_path / "server.crt", "tls.key": tmp_path / "server.key"})
    kubelet_secret(tmp_path / "client-ca", {"ca.crt": tmp_path / "ca.crt"})

    def mounted(text: str) -> str:
        for path, local in mounts.items():
            text = text.replace(path, str(local))
        return text
    for name in ("tls-certificate.yaml", "client-ca.yaml"):
        (tmp_path / "config" / name).write_text(mounted(data[name]))
    return mounted


def test_standalone_tls_config_serves_agents_with_certificates(tmp_path):
    """The chart's one-replica standalone config.yaml with tls + clientCA, run by the real server with the
    Secret files made by openssl: an agent certificate is served, none or another CA's is refused."""
    config = yaml.safe_load(find(render("--set", "standalone.enabled=true", *TLS_VALUES), "ConfigMap",
                                 "ingero-fleet-config")["data"]["config.yaml"])
    tls_files(tmp_path)
    config["tls"] = {"cert_file": str(tmp_path / "server.crt"), "key_file": str(tmp_path / "server.key"),
                     "client_ca_file": str(tmp_path / "ca.crt")}
    del config["listen"]
    with Standalone(config) as server:
        assert tls_push(server.door.push, tmp_path, "agent") == 200
        for client in (None, "stranger"):
            with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
                tls_push(server.door.push, tmp_path, client)


# === drain on termination ===

def test_prestop_hook_drains_envoy_before_sigterm(tmp_path):
    """The replicas' container as rendered (args, preStop command) on loopback: during the hook a kept-alive
    connection is told to close, the hook waits envoy.drainSeconds, and then the listener is closed, so pushes
    in flight finished before the kubelet's SIGTERM."""
    manifests = render("--set", "envoy.drainSeconds=2")
    (container,) = find(manifests, "StatefulSet", "ingero-fleet")["spec"]["template"]["spec"]["containers"]
    envoy, ports = loopback(envoy_config(manifests), concurrency=1)
    config = tmp_path / "envoy.yaml"
    config.write_text(yaml.safe_dump(envoy.config))
    args = container["args"]
    args[args.index("--config-path") + 1] = str(config)
    hook = container["lifecycle"]["preStop"]["exec"]["command"]
    assert hook[:2] == ["/bin/bash", "-c"] and "/dev/tcp/127.0.0.1/9901" in hook[2]
    log = open(tmp_path / "envoy.log", "wb")
    process = subprocess.Popen([str(ENVOY), *args, "--base-id", str(envoy.base_id)], stdout=log,
                               stderr=subprocess.STDOUT, cwd=ROOT)
    envoy.process = process
    try:
        start_serving(envoy, "Envoy", envoy.admin_port, "/ready", timeout=30)
        conn = http.client.HTTPConnection("127.0.0.1", ports.push, timeout=10)
        conn.request("POST", "/v1/metrics?cluster_id=c", body=agent_push("n0", 0.9, cluster="c"),
                     headers={"Content-Type": "application/json"})
        first = conn.getresponse()
        first.read()
        assert first.status == 200 and first.getheader("connection") != "close"
        started = time.monotonic()
        hook_run = subprocess.Popen(["/bin/bash", "-c", hook[2].replace("/9901", f"/{envoy.admin_port}")])
        time.sleep(0.5)
        conn.request("POST", "/v1/metrics?cluster_id=c", body=agent_push("n1", 0.9, cluster="c"),
                     headers={"Content-Type": "application/json"})
        second = conn.getresponse()
        second.read()
        assert second.status == 200 and second.getheader("connection") == "close"
        assert hook_run.wait(timeout=30) == 0
        assert time.monotonic() - started >= 2
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", ports.push), timeout=2).close()
        assert process.poll() is None  # still up: the kubelet's SIGTERM stops it
    finally:
        envoy.__exit__(None, None, None)


# === the module from a URL ===

def test_wasm_url_mode_fetches_and_checks_the_module_in_real_envoy(tmp_path):
    """wasm.url + wasm.sha256: Envoy downloads the module (here from a loopback HTTP server) and serves with it;
    a wrong digest is refused. Nothing of the module is in the rendered manifests."""
    shutil.copy(WASM, tmp_path / "ingero_fleet_wasm.wasm")
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/ingero_fleet_wasm.wasm"
    digest = hashlib.sha256(WASM.read_bytes()).hexdigest()
    try:
        manifests = render("--set", f"wasm.url={url}", "--set", f"wasm.sha256={digest}")
        assert not [m for m in manifests if m["metadata"]["name"] == "ingero-fleet-wasm"]
        pod = find(manifests, "StatefulSet", "ingero-fleet")["spec"]["template"]["spec"]
        assert "wasm" not in {v["name"] for v in pod["volumes"]}
        config = envoy_config(manifests)
        remote = wasm_filters(config)[0]["vm_config"]["code"]["remote"]
        assert remote["sha256"] == digest and remote["http_uri"]["uri"] == url
        envoy, ports = on_loopback(config)
        with envoy:
            for i, score in enumerate([0.95, 0.93, 0.9, 0.91, 0.6, 0.88, 0.94]):
                assert push(ports.push, "c", agent_push(f"n{i}", score, cluster="c")).status == 200
            assert threshold(ports.api, "c").status == 200
        wrong = envoy_config(render("--set", f"wasm.url={url}", "--set", f"wasm.sha256={'0' * 64}"))
        envoy, ports = on_loopback(wrong)
        with pytest.raises(AssertionError):
            with envoy:
                assert push(ports.push, "c", agent_push("n0", 0.9, cluster="c")).status == 200
    finally:
        server.shutdown()


def on_loopback(config: dict) -> tuple[Envoy, Ports]:
    """A rendered config whose module is remote: listeners and admin moved to free loopback ports."""
    config = json.loads(json.dumps(config))
    ports = Ports(free_port(), free_port(), free_port())
    by_listener = {"otlp_http": ports.push, "api": ports.api, "metrics": ports.metrics}
    config["admin"]["address"]["socket_address"]["port_value"] = free_port()
    for listener in config["static_resources"]["listeners"]:
        listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": by_listener[listener["name"]]}
    return Envoy(config, concurrency=1), ports


# === observe mode ===

OBSERVE_KEY = '"observe"' in (ROOT / "filter/core/src/config.rs").read_text() and any(
    "observe" in f.read_text().lower() for f in (ROOT / "filter/wasm/src").rglob("*.rs"))


def test_observe_mode_renders_envoy_observe_yaml():
    """observe.upstream: the chart runs envoy/envoy-observe.yaml (pushes routed to the collector, FAIL_OPEN),
    apart from ports, paths, the plugin configuration (with "mode": "observe") and the collector's address."""
    manifests = render("--set", "observe.upstream=otel-collector.observability:4318")
    validate(manifests)
    rendered = envoy_config(manifests)
    assert plugin_config(rendered)["mode"] == "observe"
    (cluster,) = [c for c in rendered["static_resources"]["clusters"] if c["name"] == "otel_collector"]
    assert cluster["type"] == "STRICT_DNS"
    assert cluster["load_assignment"]["endpoints"] == [{"lb_endpoints": [{"endpoint": {"address": {
        "socket_address": {"address": "otel-collector.observability", "port_value": 4318}}}}]}]
    chart, ports = loopback(rendered)
    by_listener = {"otlp_http": ports.push, "api": ports.api, "metrics": ports.metrics}
    reference = render_envoy(plugin_config(rendered), by_listener, chart.admin_port,
                             ROOT / "envoy/envoy-observe.yaml")
    for config in (chart.config, reference):
        for c in config["static_resources"]["clusters"]:
            if c["name"] == "otel_collector":
                c.pop("type", None)
                c["load_assignment"].pop("endpoints")
    assert without_chart_settings(chart.config) == without_chart_settings(reference)
    assert "mode" not in plugin_config(envoy_config(render()))
    result = helm("template", "--set", "observe.upstream=otel:4318", "--set", "standalone.enabled=true")
    assert result.returncode != 0 and "observe.upstream needs the filter" in result.stderr


@pytest.mark.skipif(not OBSERVE_KEY, reason='observe mode ("mode": "observe") is not in filter/core and '
                    'filter/wasm yet')
def test_observe_mode_forwards_to_a_real_collector_and_scores():
    from peers import file_collector, output
    collector = file_collector()
    manifests = render("--set", f"observe.upstream=localhost:{collector.otlp_port}")
    config = envoy_config(manifests)
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] == "otel_collector":
            cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
                "socket_address"]["address"] = "127.0.0.1"
    envoy, ports = loopback(config, concurrency=1)
    with collector, envoy:
        scores = [0.95, 0.93, 0.9, 0.91, 0.6, 0.88, 0.94]
        for i, score in enumerate(scores):
            assert push(ports.push, "c", agent_push(f"n{i}", score, cluster="c")).status == 200
        wait_for(lambda: len(output(collector)) >= len(scores), what="the collector to write every push")
        # The threshold is published at the next recompute (one push interval).
        wait_for(lambda: threshold(ports.api, "c").json()["quorum_met"], timeout=25, what="quorum")


# === istio/ ===

def test_istio_manifests_match_istio_crd_schemas():
    """Every manifest in istio/: Istio resources against Istio's CRD schemas (@kubernetes-models/istio), the
    rest against Kubernetes' (strict); the workload runs this project's server image."""
    docs = [d for path in sorted((ROOT / "istio").glob("*.yaml")) for d in yaml.safe_load_all(path.read_text()) if d]
    istio = [d for d in docs if d["apiVersion"].split("/")[0] in CRD_GROUPS]
    assert {d["kind"] for d in istio} >= {"EnvoyFilter", "WasmPlugin", "DestinationRule"}
    validate(docs)
    images = [c["image"] for d in docs if d["kind"] == "Deployment"
              for c in d["spec"]["template"]["spec"]["containers"]]
    assert images and all(i.startswith("ghcr.io/ingero-fleet-envoy/ingero-fleet-server:") for i in images), images
    broken = json.loads(json.dumps(next(d for d in istio if d["kind"] == "WasmPlugin")))
    broken["spec"]["failStrategy"] = "FAIL_SOMETIMES"
    (result,) = validate_crds([broken])
    assert result["error"] and "failStrategy" in result["error"]
