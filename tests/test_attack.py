"""Attacks of issue 16 against every front door, each bounded (seconds, loopback,
its own processes) and each a check that failed before the fix:

1. a push past `max_resources_per_push` is refused and counted; a push of
   resources whose ids share a long prefix is stored whole (the cost per
   resource is checked by instruction count in filter/core/tests/push_cost.rs,
   never by a clock);
5. node ids chosen to collide in one registry shard under the old fixed hash
   (Rust's `DefaultHasher`, emulated below) spread out: all tracked, none
   refused as `shard_full`, and the victim's own pushes keep their 200;
6. a cluster whose nodes each name their own cohort keeps at most
   `max_cohorts_per_cluster` cohorts in `/metrics` and the listings (the rest
   counted), listings answer a small page by default, the dashboard asks for
   small pages;
7. a flood of straggler events on many junk clusters leaves every real
   cluster's last events in place, a cluster keeps exactly its newest 16, and
   concurrent pushes of scores with events all get 200;
10. control characters in ids never reach `/metrics` raw; the dashboard's
   median label stays inside the plot when the median is above ~0.92."""

from __future__ import annotations

import json
import re
import shutil
import struct
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser

import pytest

from fleet import agent_push, push, request, scrape, wait_for
from frontdoors import FRONT_DOORS

MAX_EXPECTED_NODES = 1000  # 128 registry shards: the old hash's collisions are found in ~1 s
CONFIG = {
    "push_interval": "1s",
    "ttl_multiplier": 60,
    "quorum": {"statistical_min": 5},
    "max_expected_nodes": MAX_EXPECTED_NODES,
    "max_resources_per_push": 50,
    "max_cohorts_per_cluster": 4,
    "max_clusters": 2000,
}
EVENTS_KEPT = 16


@pytest.fixture(scope="module", params=list(FRONT_DOORS))
def door(request):
    with FRONT_DOORS[request.param](CONFIG) as door:
        yield door


# === bodies ===

def resource(cluster: str, node: str, score: float | None = 0.9, cohort: str = "", events=()) -> dict:
    """One agent-shaped resource: a health score and, optionally, straggler events (id, time)."""
    metrics = []
    if score is not None:
        attrs = [{"key": "ingero.node.state", "value": {"stringValue": "active"}},
                 {"key": "ingero.cgroup_path_hash", "value": {"stringValue": cohort}}]
        metrics.append({"name": "ingero.node.health_score", "gauge": {"dataPoints": [
            {"timeUnixNano": str(time.time_ns()), "asDouble": score, "attributes": attrs}]}})
    if events:
        metrics.append({"name": "ingero.node.straggler_event", "gauge": {"dataPoints": [
            {"timeUnixNano": str(t), "asDouble": 1, "attributes": [
                {"key": "ingero.event.id", "value": {"stringValue": event_id}},
                {"key": "score", "value": {"doubleValue": 0.4}},
                {"key": "threshold", "value": {"doubleValue": 0.8}}]}
            for event_id, t in events]}})
    return {"resource": {"attributes": [{"key": "ingero.cluster.id", "value": {"stringValue": cluster}},
                                        {"key": "ingero.node.id", "value": {"stringValue": node}}]},
            "scopeMetrics": [{"scope": {"name": "ingero.health"}, "metrics": metrics}]}


def body(*resources: dict) -> bytes:
    return json.dumps({"resourceMetrics": list(resources)}).encode()


def send(door, *resources: dict):
    return push(door.push, None, body(*resources), timeout=10)


def dropped(door, reason: str) -> float:
    return scrape(door.metrics).get(f'ingero_fleet_dropped_total{{reason="{reason}"}}', 0)


def listing(door, path: str) -> dict:
    r = request(door.api, "GET", path, headers={"Accept": "application/json"})
    assert r.status == 200, r.body[:300]
    return r.json()


def cluster_view(door, cluster: str) -> dict | None:
    clusters = listing(door, "/api/v1/clusters?limit=1000")["clusters"]
    return next((c for c in clusters if c["cluster_id"] == cluster), None)


# === the old fixed hash: Rust's DefaultHasher, SipHash-1-3 with zero keys ===

MASK = (1 << 64) - 1


def siphash13_zero_keys(data: bytes) -> int:
    def rotl(x, b):
        return ((x << b) | (x >> (64 - b))) & MASK
    v = [0x736F6D6570736575, 0x646F72616E646F6D, 0x6C7967656E657261, 0x7465646279746573]

    def rounds(n):
        for _ in range(n):
            v[0] = (v[0] + v[1]) & MASK; v[1] = rotl(v[1], 13) ^ v[0]; v[0] = rotl(v[0], 32)  # noqa: E702
            v[2] = (v[2] + v[3]) & MASK; v[3] = rotl(v[3], 16) ^ v[2]  # noqa: E702
            v[0] = (v[0] + v[3]) & MASK; v[3] = rotl(v[3], 21) ^ v[0]  # noqa: E702
            v[2] = (v[2] + v[1]) & MASK; v[1] = rotl(v[1], 17) ^ v[2]; v[2] = rotl(v[2], 32)  # noqa: E702
    tail = len(data) & 0xFF
    padded = data + bytes((8 - (len(data) + 1) % 8) % 8) + bytes([tail])
    for (m,) in struct.iter_unpack("<Q", padded):
        v[3] ^= m
        rounds(1)
        v[0] ^= m
    v[2] ^= 0xFF
    rounds(3)
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def old_shard(cluster: str, node: str) -> int:
    """The shard the old registry picked: DefaultHasher of (cluster, node), each str
    hashed as its bytes then 0xff."""
    shards = 1 << max(4, (MAX_EXPECTED_NODES // 8 - 1).bit_length())
    return siphash13_zero_keys(cluster.encode() + b"\xff" + node.encode() + b"\xff") % shards


def test_the_old_hash_is_emulated_exactly():
    # DefaultHasher::new() of ("victim", "attacker-1"), from a Rust program of this toolchain.
    assert siphash13_zero_keys(b"victim\xffattacker-1\xff") == 0xDEB09569003D4CEA


# === 1. bounded work per push ===

def test_pushes_past_max_resources_are_refused_and_counted(door):
    before = dropped(door, "max_resources_per_push")
    r = send(door, *(resource("wide", f"n{i}") for i in range(51)))
    assert r.status == 413 and b"max_resources_per_push (50)" in r.body, r.body[:300]
    assert dropped(door, "max_resources_per_push") == before + 1
    assert cluster_view(door, "wide") is None


def test_ids_sharing_a_long_prefix_are_stored_whole(door):
    prefix = "p" * 224
    r = send(door, *(resource("prefixed", f"{prefix}{i}") for i in range(50)))
    assert r.status == 200 and json.loads(r.body).get("partialSuccess", {}).get("rejectedDataPoints") in (None, "0")
    nodes = listing(door, "/api/v1/nodes?cluster_id=prefixed&limit=100")
    assert nodes["total"] == 50


# === 5. keyed hashing ===

def test_ids_aimed_at_one_shard_by_the_old_hash_spread_out(door):
    victim = "victim"
    aimed = [n for n in (f"attacker-{i}" for i in range(200_000)) if old_shard(victim, n) == 0][:240]
    assert len(aimed) == 240 and len({old_shard(victim, n) for n in aimed}) == 1
    # The shard cap exists (counted as shard_full) and yet none of the aimed ids meets it.
    before = scrape(door.metrics)['ingero_fleet_dropped_total{reason="shard_full"}']
    statuses = []
    for i in range(0, len(aimed), 40):
        statuses.append(send(door, *(resource(victim, n) for n in aimed[i:i + 40])).status)
        statuses.append(send(door, resource(victim, "victim-own", 0.95)).status)
    assert statuses == [200] * len(statuses)
    assert dropped(door, "shard_full") == before
    assert listing(door, f"/api/v1/nodes?cluster_id={victim}&limit=1")["total"] == len(aimed) + 1


# === 6. bounded reads and cohorts ===

def test_cohorts_per_cluster_are_capped_and_counted(door):
    send(door, *(resource("cohorts", f"n{i}", 0.9, cohort="") for i in range(5)))
    send(door, *(resource("cohorts", f"own-{i}", 0.5, cohort=f"cg-{i:02}") for i in range(40)))
    view = wait_for(lambda: (v := cluster_view(door, "cohorts")) and v["live_nodes"] >= 5 and v,
                    what="the cohorts cluster in a recompute")
    assert len(view["cohorts"]) == CONFIG["max_cohorts_per_cluster"]
    assert "" in {c["cgroup_path_hash"] for c in view["cohorts"]}, "the default cohort is kept"
    samples = scrape(door.metrics)
    series = [k for k in samples if k.startswith('ingero_fleet_active_nodes{cluster_id="cohorts"')]
    assert len(series) == CONFIG["max_cohorts_per_cluster"], series
    assert samples["ingero_fleet_cohorts_over_cap"] >= 40 + 1 - CONFIG["max_cohorts_per_cluster"]


def test_listings_answer_a_small_page_and_the_dashboard_asks_for_one(door):
    send(door, *(resource(f"page-{c:02}", "n0") for c in range(25)))
    wait_for(lambda: cluster_view(door, "page-24"), what="25 clusters listed")
    page = listing(door, "/api/v1/clusters")
    assert len(page["clusters"]) == 20 and page["total"] > 20 and page["next_offset"] == 20
    nodes = listing(door, "/api/v1/nodes?cluster_id=prefixed")
    assert len(nodes["nodes"]) == 20 and nodes["next_offset"] == 20
    html = request(door.api, "GET", "/").body.decode()
    assert "const PAGE = 20;" in html and "limit=1000" not in html
    assert re.findall(r'getJson\("api/v1/(\w+)\?limit=" \+ PAGE', html) == ["clusters", "nodes"]


# === 7. straggler events ===

def recent(door, cluster: str) -> list[str]:
    view = cluster_view(door, cluster)
    return [e["event_id"] for e in view["recent_straggler_events"]] if view else []


def test_a_flood_of_junk_events_erases_no_real_cluster_history(door):
    t0 = time.time_ns()
    real = [f"real-{c}" for c in range(12)]
    for cluster in real:
        events = [(f"{cluster}-e{i}", t0 + i) for i in range(20)]
        assert send(door, resource(cluster, "n0", 0.9, events=events)).status == 200
    wait_for(lambda: all(len(recent(door, c)) == EVENTS_KEPT for c in real), what="real clusters' events")
    expected = {c: [f"{c}-e{i}" for i in range(20 - EVENTS_KEPT, 20)] for c in real}
    assert {c: recent(door, c) for c in real} == expected, "exactly the newest 16, oldest first"
    # 1 200 junk clusters x 17 events (20 400 events, ~300 per shard before): events only, no scores.
    junk = [resource(f"junk-{c}", "x", None, events=[(f"j{c}-{i}", t0 + 100 + i) for i in range(17)])
            for c in range(1200)]
    with ThreadPoolExecutor(4) as pool:
        statuses = list(pool.map(lambda i: send(door, *junk[i:i + 40]).status, range(0, len(junk), 40)))
    assert statuses == [200] * len(statuses)
    assert {c: recent(door, c) for c in real} == expected


def test_concurrent_pushes_with_events_all_succeed(door):
    t0 = time.time_ns()

    def one(i: int) -> int:
        return send(door, resource("hot", f"n{i % 8}", 0.9, events=[(f"hot-{i}", t0 + i)])).status
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(one, range(160)))
    assert statuses == [200] * 160
    newest = [f"hot-{i}" for i in range(160 - EVENTS_KEPT, 160)]
    wait_for(lambda: recent(door, "hot") == newest, what="the newest 16 events of the hot cluster")


# === 10. label values ===

def test_control_characters_never_reach_metrics_raw(door):
    cluster = "cr\rnul\x00esc\x1b"
    assert send(door, *(resource(cluster, f"n{i}") for i in range(5))).status == 200
    text = wait_for(lambda: (t := request(door.metrics, "GET", "/metrics").body) and b"cr\\\\x0dnul" in t and t,
                    what="the cluster in /metrics")
    assert not re.search(rb"[\x00-\x09\x0b-\x1f\x7f]", text)
    line = next(ln for ln in text.decode().split("\n") if ln.startswith("ingero_fleet_active_nodes{cluster_id=\"cr"))
    assert line == 'ingero_fleet_active_nodes{cluster_id="cr\\\\x0dnul\\\\x00esc\\\\x1b",cgroup_path_hash=""} 5'


class _Labels(HTMLParser):
    """The dashboard's mark labels: {id: (x, text-anchor, text)}."""

    def __init__(self):
        super().__init__()
        self.labels, self._open = {}, None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._open = a["id"] if tag == "text" and a.get("id", "").endswith("-label") else None
        if self._open:
            self.labels[self._open] = [float(a["x"]), a["text-anchor"], ""]

    def handle_data(self, data):
        if self._open:
            self.labels[self._open][2] += data


def test_dashboard_median_label_stays_inside_the_plot():
    """A cohort with median 0.97: its label used to start right of the line and
    leave the 600-unit plot (clipped from a median of ~0.92 up)."""
    with FRONT_DOORS["standalone"](CONFIG) as door:
        assert send(door, *(resource("high", f"n{i}", s) for i, s in enumerate([0.97] * 6 + [0.9]))).status == 200
        wait_for(lambda: (v := cluster_view(door, "high")) and v["quorum_met"], what="quorum")
        profile = tempfile.mkdtemp(prefix="chromium-")
        try:
            dom = subprocess.run(
                ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", f"--user-data-dir={profile}",
                 "--virtual-time-budget=4000", "--dump-dom", f"http://127.0.0.1:{door.api}/?cluster_id=high"],
                capture_output=True, text=True, timeout=90, check=True).stdout
        finally:
            shutil.rmtree(profile, ignore_errors=True)
    parsed = _Labels()
    parsed.feed(dom)
    x, anchor, text = parsed.labels["median-label"]
    assert text == "median 0.970"
    # 11-px text is at most ~7 units a character: the label must end before 600 or start after 0.
    width = 7 * len(text)
    assert (anchor == "start" and x + width <= 600) or (anchor == "end" and x - width >= 0), (x, anchor)
    assert anchor == "end", "right of the line there is no room"
