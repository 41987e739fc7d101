"""Soak: node and cluster churn far past the caps, at a steady rate, against
Envoy running the Fleet filter on loopback; samples Envoy's RSS and Fleet's
own view while it runs. scripts/soak runs it for minutes, tests/test_soak.py
for seconds. It checks correctness, never speed: the rate is only there to
make the churn steady."""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from fleet import agent_push, expected_threshold, fleet_envoy, scrape, threshold

# Small caps so churn passes them within seconds; alpha 1 makes the control
# threshold exactly the raw one at every recompute.
CONFIG = {
    "push_interval": "1s",
    "ttl_multiplier": 3,
    "threshold": {"k": 2.0, "ema_alpha": 1.0},
    "quorum": {"statistical_min": 5},
    "max_expected_nodes": 120,
    "max_nodes_per_cluster": 30,
    "max_clusters": 12,
}
TTL_S = 3
CONTROL = "soak-control"
CONTROL_SCORES = {f"ctl-{i}": s for i, s in enumerate([0.91, 0.87, 0.93, 0.89, 0.9, 0.86, 0.92, 0.55])}
CHURN_CLUSTERS = 16  # past max_clusters; one of them (churn-0) is noisy and hits max_nodes_per_cluster


@dataclass
class Sample:
    t: float
    rss_kb: int
    tracked_nodes: int
    clusters: int
    control: dict


@dataclass
class Report:
    seconds: float
    pushes: Counter = field(default_factory=Counter)
    samples: list[Sample] = field(default_factory=list)
    drops: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warmup_rss_kb: int = 0
    peak_rss_after_warmup_kb: int = 0
    tracked_after_expiry: int = -1
    # The longest time between two answered pushes of one control node: past
    # the TTL, the load generator (not Fleet) let that node expire.
    control_gap_s: float = 0.0
    # The slowest single control push, request to answer: near the gap, Envoy
    # (or the loopback path) held the answer; far below it, the client stalled.
    control_slowest_push_s: float = 0.0
    # Samples not judged because the load generator itself stalled a control
    # node near its TTL (a busy machine can pause the client for seconds).
    unjudged_samples: int = 0

    @property
    def rss_growth_kb(self) -> int:
        return self.peak_rss_after_warmup_kb - self.warmup_rss_kb

    def summary(self) -> str:
        return "\n".join([
            f"soak: {self.seconds:.0f} s, pushes by answer: {dict(sorted(self.pushes.items()))}",
            f"soak: drops {self.drops}",
            f"soak: Envoy RSS {self.warmup_rss_kb} kB after warm-up, peak {self.peak_rss_after_warmup_kb} kB "
            f"(+{self.rss_growth_kb} kB); tracked nodes after expiry {self.tracked_after_expiry}; "
            f"longest gap between pushes of a control node {self.control_gap_s:.1f} s (TTL {TTL_S} s), "
            f"slowest control push {self.control_slowest_push_s:.2f} s; "
            f"{self.unjudged_samples} of {len(self.samples)} samples not judged (client stalled)",
            "soak: " + ("OK" if not self.problems else "PROBLEMS:\n  " + "\n  ".join(self.problems)),
        ])


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Pusher(threading.Thread):
    """One keep-alive connection pushing at a steady rate; `make_push` gives (cluster, node, score)."""

    def __init__(self, port: int, rate: float, make_push, stop: threading.Event, tally: Counter, lock,
                 label: str = ""):
        super().__init__(daemon=True)
        self.port, self.period, self.make_push = port, 1.0 / rate, make_push
        self.stop, self.tally, self.lock, self.label = stop, tally, lock, label
        self.last_answer: dict[str, float] = {}
        self.longest_gap = 0.0
        self.slowest_push = 0.0
        self.stalls: list[float] = []  # when a node's gap reached half the TTL (ends of those gaps)

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        due = time.monotonic()
        while not self.stop.is_set():
            cluster, node, score = self.make_push()
            sent = time.monotonic()
            outcome = self.push(conn, cluster, node, score)
            self.slowest_push = max(self.slowest_push, time.monotonic() - sent)
            if outcome == "connection error":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            now = time.monotonic()
            if outcome != "connection error":
                gap = now - self.last_answer.get(node, now)
                self.longest_gap = max(self.longest_gap, gap)
                if gap > TTL_S / 2:
                    self.stalls.append(now)
                self.last_answer[node] = now
            with self.lock:
                self.tally[self.label + outcome] += 1
            # Steady, not bursty: after a stall, skip the missed slots.
            due = max(due + self.period, time.monotonic())
            self.stop.wait(max(0.0, due - time.monotonic()))
        conn.close()

    def stalled_since(self, since: float) -> bool:
        """Whether some node went half a TTL unpushed after `since`, or is unpushed that long now."""
        now = time.monotonic()
        return any(t >= since for t in self.stalls) or any(now - t > TTL_S / 2 for t in self.last_answer.values())

    @staticmethod
    def push(conn, cluster: str, node: str, score: float) -> str:
        try:
            conn.request("POST", f"/v1/metrics?cluster_id={cluster}", agent_push(node, score, cluster=cluster),
                         {"Content-Type": "application/json"})
            r = conn.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException):
            return "connection error"
        if r.status != 200:
            return str(r.status)
        return "200 partial" if b"partialSuccess" in body else "200"


def run(seconds: float, rate: float = 150.0, warmup_fraction: float = 0.3, sample_every: float = 1.0,
        log=print) -> Report:
    """Churns for `seconds` at `rate` new-node pushes per second, then lets every churned node expire."""
    report = Report(seconds)
    envoy, ports = fleet_envoy(CONFIG, concurrency=2)
    counter = iter(range(10**12))
    counter_lock = threading.Lock()

    def churn():
        with counter_lock:
            n = next(counter)
        # Every push a node never seen before, in more clusters than allowed, half in one noisy cluster.
        cluster = 0 if n % 2 else (n // 2) % CHURN_CLUSTERS
        return f"churn-{cluster}", f"node-{n}", 0.5 + (n % 50) / 100

    control_nodes = list(CONTROL_SCORES.items())
    control_cycle = iter(range(10**12))

    def control():
        node, score = control_nodes[next(control_cycle) % len(control_nodes)]
        return CONTROL, node, score

    expected = expected_threshold(list(CONTROL_SCORES.values()))
    stop_churn, stop_control, lock = threading.Event(), threading.Event(), threading.Lock()
    with envoy:
        pid = envoy.process.pid
        # The control cluster first: every node pushes six times per TTL, so only a
        # stall of most of a TTL could let one expire (control_gap_s tells).
        controls = [Pusher(ports.push, len(control_nodes) * 6 / TTL_S, control, stop_control, report.pushes, lock,
                           label="control ")]
        controls[0].start()
        wait_until(lambda: threshold(ports.api, CONTROL).json().get("active_nodes") == len(control_nodes), 15,
                   "every control node to count")
        churners = [Pusher(ports.push, rate / 4, churn, stop_churn, report.pushes, lock) for _ in range(4)]
        for p in churners:
            p.start()
        start = time.monotonic()
        try:
            while (elapsed := time.monotonic() - start) < seconds:
                judge(take_sample(ports, pid, elapsed), controls[0], expected, report)
                time.sleep(sample_every)
        finally:
            stop_churn.set()
            for p in churners:
                p.join()
        # Churn over: every churned node expires within TTL plus two recomputes.
        wait_until(lambda: scrape(ports.metrics)["ingero_fleet_tracked_nodes"] == len(control_nodes),
                   TTL_S + 10, "churned nodes to expire", report)
        report.tracked_after_expiry = int(scrape(ports.metrics)["ingero_fleet_tracked_nodes"])
        judge(take_sample(ports, pid, time.monotonic() - start), controls[0], expected, report)
        report.drops = {k.split('"')[1]: int(v) for k, v in scrape(ports.metrics).items()
                        if k.startswith("ingero_fleet_dropped_total") and v}
        stop_control.set()
        controls[0].join()
        report.control_gap_s = controls[0].longest_gap
        report.control_slowest_push_s = controls[0].slowest_push
    check_run(report, warmup_fraction)
    log(report.summary())
    return report


def take_sample(ports, pid: int, elapsed: float) -> Sample:
    metrics = scrape(ports.metrics)
    clusters = json.loads(request_body(ports.api, "/api/v1/clusters?limit=1000"))["total"]
    return Sample(elapsed, rss_kb(pid), int(metrics["ingero_fleet_tracked_nodes"]), clusters,
                  threshold(ports.api, CONTROL).json())


def request_body(port: int, path: str) -> bytes:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().read()
    finally:
        conn.close()


def judge(sample: Sample, control: Pusher, expected: float, report: Report) -> None:
    """Records a sample; judges the control cluster only if its nodes really pushed within the
    last TTL and the recomputes since (what Fleet was given, not what the client meant to give)."""
    report.samples.append(sample)
    if control.stalled_since(time.monotonic() - TTL_S - 2.5):
        report.unjudged_samples += 1
        check_caps(sample, report)
    else:
        check_sample(sample, expected, report)


def check_sample(s: Sample, expected: float, report: Report) -> None:
    check_caps(s, report)
    if not s.control.get("quorum_met") or abs(s.control["threshold"] - expected) > 1e-9 \
            or s.control.get("active_nodes") != len(CONTROL_SCORES):
        report.problems.append(f"t={s.t:.0f}s: control cluster {s.control}, expected threshold {expected}")


def check_caps(s: Sample, report: Report) -> None:
    if s.tracked_nodes > CONFIG["max_expected_nodes"]:
        report.problems.append(f"t={s.t:.0f}s: {s.tracked_nodes} tracked nodes > max_expected_nodes")
    if s.clusters > CONFIG["max_clusters"]:
        report.problems.append(f"t={s.t:.0f}s: {s.clusters} clusters > max_clusters")


def check_run(report: Report, warmup_fraction: float) -> None:
    bad = {k: v for k, v in report.pushes.items() if k not in ("200", "200 partial", "429", "control 200")}
    if bad:
        report.problems.append(f"unexpected answers: {bad}")
    if report.unjudged_samples == len(report.samples):
        report.problems.append("no sample judged: the machine stalled the load generator throughout")
    for reason in ("max_expected_nodes", "max_nodes_per_cluster", "max_clusters"):
        if not report.drops.get(reason):
            report.problems.append(f"no drops counted for {reason}: the churn never passed the cap")
    if report.tracked_after_expiry != len(CONTROL_SCORES):
        report.problems.append(f"{report.tracked_after_expiry} nodes tracked after expiry, "
                               f"expected the {len(CONTROL_SCORES)} control nodes")
    after = [s for s in report.samples if s.t >= report.seconds * warmup_fraction]
    if after:
        report.warmup_rss_kb = after[0].rss_kb
        report.peak_rss_after_warmup_kb = max(s.rss_kb for s in after)


def wait_until(predicate, timeout: float, what: str, report: Report | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (OSError, KeyError, ValueError):
            pass
        time.sleep(0.2)
    if report is None:
        raise AssertionError(f"timed out waiting for {what}")
    report.problems.append(f"timed out waiting for {what}")
