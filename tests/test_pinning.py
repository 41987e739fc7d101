"""Multi-replica pinning on loopback: three Fleet replicas (real Envoy + the
filter) behind the guide's front load balancers, envoy/front-lb.yaml (ring
hash on the decoded cluster_id) and nginx/ingero-fleet.conf (ketama hash on
the decoded cluster_id), with only their endpoints and listen addresses
rewritten. docs/deploying-pinning.md states what is and is not pinned."""

from __future__ import annotations

import contextlib
import copy
import re
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml

from fleet import ROOT, Envoy, agent_push, fleet_envoy, free_port, push, request, scrape, threshold, wait_for

FRONT_LB = ROOT / "envoy/front-lb.yaml"
NGINX_CONF = ROOT / "nginx/ingero-fleet.conf"
NGINX = Path("/usr/sbin/nginx")
# Debian's libnginx-mod-http-perl (scripts/setup.d/45-nginx-perl): the conf decodes cluster_id with it.
NGINX_PERL = Path("/usr/lib/nginx/modules/ngx_http_perl_module.so")
EMPTY_PUSH = b'{"resourceMetrics":[]}'
CLUSTERS = [f"cluster-{i:03d}" for i in range(100)]
# A long TTL so the threshold check never races node expiry.
REPLICA_CONFIG = {"push_interval": "1s", "ttl_multiplier": 30}


@pytest.fixture(scope="module")
def replicas():
    """Three independent Fleet replicas (separate Envoy processes, no shared state)."""
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(3):
            envoy, p = fleet_envoy(REPLICA_CONFIG, concurrency=1)
            stack.enter_context(envoy)
            ports.append(p)
        yield ports


# === the two front doors, rendered from the committed files ===

def front_envoy(members) -> tuple[Envoy, int, int]:
    """envoy/front-lb.yaml with endpoint N pointed at members[N] (dropped where None) and loopback listeners."""
    config = yaml.safe_load(FRONT_LB.read_text())
    config["admin"]["address"]["socket_address"]["port_value"] = free_port()
    ports = {"ingero_fleet_listener": free_port(), "ingero_fleet_api": free_port()}
    for listener in config["static_resources"]["listeners"]:
        listener["address"]["socket_address"].update(address="127.0.0.1", port_value=ports[listener["name"]])
    # The push cluster reaches the replicas' push port, the API cluster their API port.
    replica_port = {"ingero_fleet": lambda r: r.push, "ingero_fleet_api": lambda r: r.api}
    clusters = config["static_resources"]["clusters"]
    assert sorted(c["name"] for c in clusters) == sorted(replica_port)
    for cluster in clusters:
        endpoints = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert len(endpoints) == 3, "the guide's config names three replicas"
        kept = []
        for endpoint, replica in zip(endpoints, members):
            if replica is None:
                continue
            endpoint = copy.deepcopy(endpoint)
            endpoint["endpoint"]["address"]["socket_address"].update(
                address="127.0.0.1", port_value=replica_port[cluster["name"]](replica))
            kept.append(endpoint)
        cluster["load_assignment"]["endpoints"][0]["lb_endpoints"] = kept
    return Envoy(config, concurrency=1), ports["ingero_fleet_listener"], ports["ingero_fleet_api"]


def nginx_conf(members, push_port: int, api_port: int) -> str:
    """nginx/ingero-fleet.conf on loopback: replica N is members[N], left out of both rings where None."""
    text = NGINX_CONF.read_text()
    for n, replica in enumerate(members):
        name = f"ingero-fleet-{n}.ingero-fleet"
        assert text.count(f"{name}:4318") == 2, "the push upstream and the API ring name every replica"
        if replica is None:
            text, dropped = re.subn(rf"^\s*(server )?{re.escape(name)}:4318;?\n", "", text, flags=re.M)
            assert dropped == 2
        text = text.replace(f"{name}:4318", f"127.0.0.1:{replica.push}" if replica else "")
        text = text.replace(f"{name}:8080", f"127.0.0.1:{replica.api}" if replica else "127.0.0.1:9")
    assert "ingero-fleet-3" not in text, "the guide's upstream names three replicas"
    text = text.replace("listen 4318;", f"listen 127.0.0.1:{push_port};")
    text = text.replace("listen 8080;", f"listen 127.0.0.1:{api_port};")
    return text


@contextlib.contextmanager
def front_nginx(members):
    """NGINX in the foreground with nginx/ingero-fleet.conf: server N is members[N] (dropped where None)."""
    tmp = Path(tempfile.mkdtemp(prefix="nginx-"))
    push_port, api_port = free_port(), free_port()
    (tmp / "ingero-fleet.conf").write_text(nginx_conf(members, push_port, api_port))
    (tmp / "nginx.conf").write_text(f"""
load_module {NGINX_PERL};
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    client_body_temp_path {tmp}/body;
    proxy_temp_path {tmp}/proxy;
    include {tmp}/ingero-fleet.conf;
}}
""")
    process = subprocess.Popen([str(NGINX), "-p", str(tmp), "-c", str(tmp / "nginx.conf"), "-e", str(tmp / "error.log"),
                                "-g", "daemon off;"], stdout=open(tmp / "access.log", "wb"), stderr=subprocess.STDOUT)
    try:
        def listening():
            if process.poll() is not None:
                raise AssertionError(f"nginx exited: {(tmp / 'error.log').read_text(errors='replace')}")
            return accepts(push_port) and accepts(api_port)
        wait_for(listening, what="nginx to listen")
        yield push_port, api_port
    finally:
        process.terminate()
        process.wait(timeout=10)


def accepts(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def front(kind: str, members):
    """The front load balancer `kind` over `members` (None: out of the balancer): (push port, API port)."""
    if kind == "envoy":
        envoy, push_port, api_port = front_envoy(members)
        with envoy:
            yield push_port, api_port
    else:
        with front_nginx(members) as ports:
            yield ports


# === where a push landed ===

def totals(replicas) -> list[float]:
    return [scrape(r.metrics).get("ingero_fleet_total_pushes", 0.0) for r in replicas]


def owner(push_port: int, replicas, cluster: str, pushes: int = 1) -> int:
    """The one replica whose ingero_fleet_total_pushes moved by `pushes` after `pushes` pushes of `cluster`."""
    before = totals(replicas)
    for _ in range(pushes):
        assert push(push_port, cluster, EMPTY_PUSH).status == 200
    moved = [(i, after - was) for i, (was, after) in enumerate(zip(before, totals(replicas))) if after != was]
    assert len(moved) == 1 and moved[0][1] == pushes, f"{cluster}: pushes spread over replicas {moved}"
    return moved[0][0]


def guide_hash_check(push_port: int, replicas) -> None:
    """The guide's 'Verifying the hash' loop, run by bash with <lb>:4318 pointing at the front door."""
    script = """
for i in $(seq 1 10); do
    curl -s "http://<lb>:4318/v1/metrics?cluster_id=test-hash" \\
        -X POST -H 'Content-Type: application/json' \\
        -d '{"resourceMetrics":[]}' > /dev/null
done
""".replace("<lb>:4318", f"127.0.0.1:{push_port}")
    before = totals(replicas)
    subprocess.run(["bash", "-ec", script], check=True, timeout=60)
    deltas = [after - was for was, after in zip(before, totals(replicas))]
    assert sorted(deltas) == [0, 0, 10], f"exactly one replica must advance by 10: {deltas}"


# === tests ===

@pytest.mark.parametrize("kind", ["envoy", "nginx"])
def test_guide_check_ten_pushes_advance_one_replica_by_ten(kind, replicas):
    with front(kind, replicas) as (push_port, _):
        guide_hash_check(push_port, replicas)


@pytest.mark.parametrize("kind", ["envoy", "nginx"])
def test_threshold_query_reaches_the_replica_holding_the_cluster(kind, replicas):
    cluster = f"pinned-{kind}"
    with front(kind, replicas) as (push_port, api_port):
        for i, score in enumerate([0.9, 0.92, 0.88, 0.91, 0.6]):
            assert push(push_port, cluster, agent_push(f"{cluster}-n{i}", score, cluster=cluster)).status == 200
        home = owner(push_port, replicas, cluster)
        def quorum():
            body = threshold(api_port, cluster).json()
            return body if body["quorum_met"] else None
        body = wait_for(quorum, what=f"quorum for {cluster} through the front API port")
        assert body["active_nodes"] == 5
        others = [r for i, r in enumerate(replicas) if i != home]
        assert all(threshold(r.api, cluster).json() == {"threshold": 0, "quorum_met": False} for r in others)


@pytest.mark.parametrize("kind", ["envoy", "nginx"])
def test_clusters_pin_to_one_replica_and_removal_rekeys_about_a_third(kind, replicas):
    with front(kind, replicas) as (push_port, _):
        before = {c: owner(push_port, replicas, c, pushes=2) for c in CLUSTERS}
    spread = [sum(1 for o in before.values() if o == i) for i in range(3)]
    assert min(spread) >= 10, f"clusters per replica {spread}"

    # One replica leaves the balancer (as DNS drops a pod), still running so that
    # any push reaching it would show. Which one does not matter to the hash; the
    # median-loaded one keeps the 1/3 bound independent of the random loopback
    # ports NGINX hashes on (the Envoy ring hashes on fixed pod names).
    leaving = sorted(range(3), key=lambda i: spread[i])[1]
    members = [None if i == leaving else r for i, r in enumerate(replicas)]
    with front(kind, members) as (push_port, _):
        after = {c: owner(push_port, replicas, c) for c in CLUSTERS}
    assert leaving not in after.values()
    moved = [c for c in CLUSTERS if after[c] != before[c]]
    assert len(moved) <= 45, f"{len(moved)} of 100 clusters re-keyed"
    stayed = [c for c in CLUSTERS if before[c] != leaving]
    assert sum(after[c] == before[c] for c in stayed) >= 0.9 * len(stayed), "survivors' clusters must stay put"


# === the hash key is the cluster id as Fleet decodes it ===

# Each row: spellings of one cluster id in the query (form encoding: `+` is a
# space, `%xx` a byte in either case). Five ids, so a front that hashed the raw
# text would split some row with near certainty.
SPELLINGS = [
    ["gpu+pool+a", "gpu%20pool%20a", "gpu+pool%20a", "%67pu+pool+%61"],  # "gpu pool a"
    ["a%2Bb", "a%2bb", "%61%2B%62", "a%2B%62"],  # "a+b"
    ["team/x+y", "team%2Fx+y", "team%2fx%20y", "team/x%20y"],  # "team/x y"
    ["ü-1", "%c3%bc-1", "%C3%bc%2D1", "%c3%BC-1"],  # "ü-1"
    ["rack.7~z", "rack%2E7%7Ez", "rack%2e7%7ez", "rack.7%7Ez"],  # "rack.7~z"
]


def raw(spelling: str) -> str:
    """A spelling as it goes on the wire: non-ASCII as UTF-8 escapes, all else as written."""
    return "".join(c if c.isascii() else "".join(f"%{b:02X}" for b in c.encode()) for c in spelling)


@pytest.mark.parametrize("kind", ["envoy", "nginx"])
def test_every_spelling_of_a_cluster_id_lands_on_one_replica(kind, replicas):
    with front(kind, replicas) as (push_port, _):
        homes = [{raw(s): owner(push_port, replicas, raw(s)) for s in row} for row in SPELLINGS]
    for row in homes:
        assert len(set(row.values())) == 1, f"spellings of one id on different replicas: {row}"
    assert len({next(iter(row.values())) for row in homes}) > 1, "five ids all on one replica: no spread"


@pytest.mark.parametrize("kind", ["envoy", "nginx"])
def test_a_threshold_query_spelled_differently_reaches_the_pushes_replica(kind, replicas):
    cluster = f"spelled {kind}"
    with front(kind, replicas) as (push_port, api_port):
        for i, score in enumerate([0.9, 0.92, 0.88, 0.91, 0.6]):
            body = agent_push(f"sp-{kind}-{i}", score, cluster=cluster)
            assert push(push_port, cluster.replace(" ", "+"), body).status == 200
        def quorum():
            body = threshold(api_port, cluster.replace(" ", "%20")).json()
            return body if body["quorum_met"] else None
        assert wait_for(quorum, what=f"quorum for {cluster!r} through the front")["active_nodes"] == 5


def test_a_client_cannot_steer_the_envoy_front_with_its_own_hash_header(replicas):
    with front("envoy", replicas) as (push_port, _):
        home = owner(push_port, replicas, "steady")
        before = totals(replicas)
        for i in range(12):
            r = push(push_port, "steady", EMPTY_PUSH, extra_headers={"x-ingero-cluster": f"elsewhere-{i}"})
            assert r.status == 200
        deltas = [after - was for was, after in zip(before, totals(replicas))]
        assert deltas[home] == 12 and sum(deltas) == 12, deltas


# === pushes that name their cluster only in the resource attribute ===

def unnamed_pushes(push_port: int, replicas, count: int) -> list[float]:
    """`count` pushes with no cluster_id parameter (ingero.cluster.id only): how many each replica took."""
    before = totals(replicas)
    for i in range(count):
        body = agent_push(f"attr-{i}", 0.9, cluster=f"attr-only-{i}")
        assert push(push_port, None, body).status == 200, "Fleet accepts the attribute alone"
    return [after - was for was, after in zip(before, totals(replicas))]


@pytest.mark.parametrize("kind", ["envoy", "nginx"])
def test_pushes_without_cluster_id_are_not_pinned(kind, replicas):
    """No hash key: Envoy's ring picks a random replica per request, NGINX's
    hash falls back to round robin; either way such a cluster is not pinned."""
    with front(kind, replicas) as (push_port, _):
        spread = unnamed_pushes(push_port, replicas, 30)
    assert sum(spread) == 30 and sum(1 for n in spread if n) > 1, spread


@pytest.mark.parametrize("kind", ["envoy", "nginx"])
def test_listings_through_the_api_port_follow_the_push_ring(kind, replicas):
    """For many clusters, the node listing through the front's API port comes from the replica holding them."""
    names = [f"ring-{kind}-{i}" for i in range(12)]
    with front(kind, replicas) as (push_port, api_port):
        for name in names:
            assert push(push_port, name, agent_push(f"{name}-n", 0.9, cluster=name)).status == 200
        for name in names:
            r = request(api_port, "GET", f"/api/v1/nodes?cluster_id={name}")
            assert r.status == 200 and [n["node_id"] for n in r.json()["nodes"]] == [f"{name}-n"], (name, r.body)
