"""Operators' view through Envoy + filter: the listing API and the dashboard
page rendered by a real headless Chromium."""

import re
import shutil
import subprocess
import tempfile
import threading
from html.parser import HTMLParser
from pathlib import Path

import pytest

from fleet import ROOT, agent_push, expected_threshold, fleet_envoy, push, request, threshold, wait_for

SCORES = {"gpu-0": 0.9, "gpu-1": 0.92, "gpu-2": 0.88, "gpu-3": 0.91, "gpu-4": 0.95, "gpu-5": 0.4, "gpu-6": 0.93}


@pytest.fixture(scope="module")
def fleet():
    envoy, ports = fleet_envoy({"push_interval": "1s", "ttl_multiplier": 3, "threshold": {"ema_alpha": 1.0}})
    with envoy:
        # The demo cluster's agents keep pushing, as real ones do, so it outlives the TTL.
        stop = threading.Event()

        def agents():
            while not stop.is_set():
                for node, score in SCORES.items():
                    assert push(ports.push, "demo", agent_push(node, score, cluster="demo", world_size=8)).status == 200
                stop.wait(0.5)

        pusher = threading.Thread(target=agents, daemon=True)
        pusher.start()
        wait_for(lambda: threshold(ports.api, "demo").json()["quorum_met"], what="quorum in demo")
        yield envoy, ports
        stop.set()
        pusher.join()


def get(port, path):
    r = request(port, "GET", path)
    assert r.status == 200, r.body
    return r.json()


def test_listings_match_the_pushes(fleet):
    _, ports = fleet
    expected = expected_threshold(list(SCORES.values()))
    clusters = get(ports.api, "/api/v1/clusters")
    demo = next(c for c in clusters["clusters"] if c["cluster_id"] == "demo")
    assert demo["active_nodes"] == 7 and demo["quorum_met"] and demo["world_size"] == 8
    assert demo["threshold"] == pytest.approx(expected)
    assert demo["stragglers"] == 1 and not demo["coverage_low"]

    nodes = get(ports.api, "/api/v1/nodes?cluster_id=demo")
    assert nodes["total"] == 7
    assert {n["node_id"]: n["score"] for n in nodes["nodes"]} == SCORES
    by_id = {n["node_id"]: n for n in nodes["nodes"]}
    assert [n for n, v in by_id.items() if v["straggler"]] == ["gpu-5"]
    assert by_id["gpu-0"]["gpu_model"] == "H100" and by_id["gpu-0"]["gpu_count"] == 8
    assert by_id["gpu-0"]["gauges"]["ingero.node.throughput_ratio"] == 0.97
    page = get(ports.api, "/api/v1/nodes?cluster_id=demo&limit=3&offset=3")
    assert [n["node_id"] for n in page["nodes"]] == ["gpu-3", "gpu-4", "gpu-5"] and page["next_offset"] == 6


def test_state_changes_and_expiry_show_in_listings(fleet):
    _, ports = fleet
    for node in ("a", "b", "c", "d", "e"):
        push(ports.push, "churn", agent_push(node, 0.8, cluster="churn"))
    wait_for(lambda: get(ports.api, "/api/v1/nodes?cluster_id=churn")["total"] == 5, what="five churn nodes")
    push(ports.push, "churn", agent_push("a", 0.8, cluster="churn", state="calibrating"))
    states = {n["node_id"]: n["state"] for n in get(ports.api, "/api/v1/nodes?cluster_id=churn")["nodes"]}
    assert states["a"] == "calibrating" and states["b"] == "active"
    # Without further pushes every node expires after 3 s and leaves the listings.
    wait_for(lambda: get(ports.api, "/api/v1/nodes?cluster_id=churn")["total"] == 0, timeout=10,
             what="churn nodes to expire")
    # The cluster listing reads the published book, which each worker picks up at its next tick.
    wait_for(lambda: all(c["cluster_id"] != "churn" for c in get(ports.api, "/api/v1/clusters")["clusters"]),
             timeout=5, what="the churn cluster to leave the cluster listing")


class _Dom(HTMLParser):
    """Collects the elements the assertions look at."""

    def __init__(self):
        super().__init__()
        self.bars, self.marks, self.stragglers, self._in_straggler = [], set(), [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "rect" and a.get("class") == "bar":
            self.bars.append(int(a["data-count"]))
        if tag == "line" and a.get("id"):
            self.marks.add(a["id"])
        self._in_straggler = tag == "li" and a.get("class") == "straggler"

    def handle_data(self, data):
        if self._in_straggler:
            self.stragglers.append(data)
            self._in_straggler = False


def chromium(*args):
    profile = tempfile.mkdtemp(prefix="chromium-")
    try:
        return subprocess.run(
            ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", "--virtual-time-budget=4000", *args],
            capture_output=True, text=True, timeout=90, check=True)
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def test_dashboard_renders_histogram_threshold_and_stragglers(fleet, tmp_path):
    _, ports = fleet
    page = request(ports.api, "GET", "/")
    assert page.status == 200 and page.headers["content-type"].startswith("text/html")
    external = re.search(rb"""(src|href)=["']?https?:|url\(\s*["']?https?:|fetch\(["']https?:""", page.body)
    assert not external, "self-contained: no external resources"

    dom = _Dom()
    dom.feed(chromium("--dump-dom", f"http://127.0.0.1:{ports.api}/?cluster_id=demo").stdout)
    assert sum(dom.bars) == 7, dom.bars
    assert {"threshold-mark", "median-mark"} <= dom.marks
    assert [s.split(" ")[0] for s in dom.stragglers] == ["gpu-5"]

    shot = tmp_path / "dashboard.png"
    chromium("--window-size=900,640", f"--screenshot={shot}", f"http://127.0.0.1:{ports.api}/?cluster_id=demo")
    assert shot.stat().st_size > 10_000
    docs = ROOT / "docs/dashboard.png"
    if not docs.exists():  # the README's picture, refreshed by deleting it and re-running this test
        docs.parent.mkdir(exist_ok=True)
        shutil.copy(shot, docs)
