"""scripts/bench: every front door under the same fleet-shaped load, as a
ratio to the anchor measured in the same run; memory per tracked node and
recompute cost by fleet size; the steps of a push. `--smoke` is the CI-sized
version (seconds) that checks the harness end to end."""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Callable

import bench_report
import perf_guard
from bench_doors import (DOORS, DYNAMIC_MODULE, DYNAMIC_VARIANTS, OBSERVE_ARTEFACT, PIPELINES, ROOT, WASM_VARIANTS,
                         Door, Running, anchor, pipeline)
from fleet import agent_push, push, request

LOADGEN = ROOT / "target/release/ingero-bench"
OUT = ROOT / "target/bench"

# The full run: 100 000 agents in 100 clusters pushing every 5 s is 20 000 pushes/s.
FULL = dict(nodes=100_000, clusters=100, connections=64, rates=[2000, 5000, 10000, 15000, 20000],
            warmup=1.0, duration=5.0, saturation_warmup=2.0, saturation=6.0, query_share=0.05,
            sizes=[1000, 10_000, 100_000], idle=3.0, observe_rounds=2,
            # Below what Envoy proxying HTTP/1.1 to an upstream carries here (about 7 000/s).
            observe_rate=4000)
SMOKE = dict(nodes=200, clusters=4, connections=8, rates=[300], warmup=0.5, duration=2.0,
             saturation_warmup=0.0, saturation=0.0, query_share=0.1, observe_rounds=1, observe_rate=300)


# === measuring a process ===

def cpu_seconds(running: Running) -> float:
    """utime + stime of the front door's processes (USER_HZ is 100 on Linux)."""
    total = 0
    for pid in running.pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / 100.0


def thread_cpu(running: Running) -> dict:
    """CPU seconds by thread name (Envoy: `envoy` is the main thread, `wrk:worker_N` the workers)."""
    out: dict = {}
    for pid in running.pids:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                name = (task / "comm").read_text().strip()
                fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:  # the thread ended
                continue
            out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / 100.0
    return out


def rss_bytes(running: Running) -> int:
    """Resident memory of the front door's processes."""
    total = 0
    for pid in running.pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) * 1024
    return total


def loadgen(running: Running, *args, during: Callable[[Running], dict] | None = None) -> dict:
    """One ingero-bench load run against a front door, with the server's CPU and RSS over it;
    `during(running)` runs while the load does and its answer is kept as "during"."""
    cmd = [str(LOADGEN), "load", "--push", f"127.0.0.1:{running.push}", "--api", f"127.0.0.1:{running.api}",
           *map(str, args)]
    cpu0, wall0 = cpu_seconds(running), time.monotonic()
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    side = during(running) if during else None
    stdout, stderr = process.communicate()
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{stderr}")
    result = json.loads(stdout)
    wall = time.monotonic() - wall0
    result["server"] = {"cpu_pct": 100 * (cpu_seconds(running) - cpu0) / wall, "rss_bytes": rss_bytes(running)}
    if side is not None:
        result["during"] = side
    return result


def perf_split(running: Running, after: float = 1.5, seconds: float = 2.5) -> dict:
    """Where the process's CPU goes (kernel, Envoy's own code, JIT-compiled wasm, libc), sampled by
    `perf record -e cpu-clock`; empty when perf cannot sample here."""
    time.sleep(after)
    data = OUT / f"perf-{running.pids[0]}.data"
    recorded = subprocess.run(["perf", "record", "-q", "-e", "cpu-clock", "-F", "999", "-p", str(running.pids[0]),
                               "-o", str(data), "--", "sleep", str(seconds)], capture_output=True)
    if recorded.returncode != 0:
        return {}
    report = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso", "-g", "none",
                             "--stdio"], capture_output=True, text=True).stdout
    data.unlink(missing_ok=True)
    samples = next((line.split()[2] for line in report.splitlines() if line.startswith("# Samples:")), "0")
    if not samples.endswith(("K", "M")) and int(samples) < 500:
        return {}  # too few samples to split (the process was hardly running)
    split: dict = {}
    for line in report.splitlines():
        share, _, dso = line.strip().partition("%")
        if not dso or line.lstrip().startswith("#"):
            continue
        dso = dso.strip()
        group = ("wasm (JIT)" if dso.startswith("[JIT]") else "kernel" if dso.startswith("[kernel") else
                 "envoy" if dso == "envoy" else "libc" if dso.startswith("libc") else
                 "module" if dso.startswith("libingero_fleet") else "other")
        split[group] = split.get(group, 0.0) + float(share)
    return split


def fleet_args(p: dict, nodes: int | None = None) -> list:
    return ["--nodes", nodes or p["nodes"], "--clusters", p["clusters"], "--connections", p["connections"]]


# === what a front door must answer ===

def threshold_matches(running: Running, expected: dict) -> tuple[bool, str]:
    """Whether every cluster's threshold equals the loadgen's independent computation."""
    wrong = []
    for cluster, value in expected.items():
        r = request(running.api, "GET", f"/api/v1/threshold?cluster_id={cluster}",
                    headers={"Accept": "application/json"})
        answer = json.loads(r.body)
        if r.status != 200 or not answer.get("quorum_met") or abs(answer.get("threshold", 0) - value) > 1e-9:
            wrong.append(f"{cluster}: got {answer}, expected {value:.6f}")
    return not wrong and bool(expected), "; ".join(wrong[:3]) or "no cluster had quorum"


def verify(running: Running, p: dict, interval_s: float) -> dict:
    """Pushes every node once more, then waits for a recompute to publish the expected thresholds."""
    final = loadgen(running, "--rate", 0, "--warmup", 0, "--duration", 120, "--max-pushes", p["nodes"],
                    *fleet_args(p))
    deadline = time.monotonic() + 3 * interval_s + 5
    ok, why = False, ""
    while time.monotonic() < deadline:
        ok, why = threshold_matches(running, final["expected_thresholds"])
        if ok:
            break
        time.sleep(0.25)
    return {"threshold_ok": ok, "why": "" if ok else why, "clusters_checked": len(final["expected_thresholds"]),
            "final_pass_errors": final["pushes"]["error_count"]}


# === the scenarios ===

def plugin_config(interval: str, nodes: int, **extra) -> dict:
    return {"push_interval": interval, "max_expected_nodes": nodes, "threshold": {"ema_alpha": 1.0}, **extra}


def load_runs(door: Door, p: dict, concurrency: int) -> dict:
    """Saturation (closed loop), then rising offered rates (open loop), then the threshold check."""
    interval = "1s" if p is SMOKE else "5s"
    out: dict = {"title": door.title}
    if p["saturation"] and door.fleet:
        # The anchor again, just before: other load on the machine drifts, so each ratio has its own anchor.
        out["paired_anchor"] = saturation(DOORS[0], p, concurrency)
    with door.start(plugin_config(interval, max(p["nodes"], 1000)), concurrency) as running:
        out["idle_rss_bytes"] = rss_bytes(running)
        if p["saturation"]:
            out["saturation"] = saturation_run(running, p)
        out["rates"] = [loadgen(running, "--rate", rate, "--warmup", p["warmup"], "--duration", p["duration"],
                                "--query-share", p["query_share"], *fleet_args(p)) for rate in p["rates"]]
        if door.fleet:
            out["verify"] = verify(running, p, 1.0 if p is SMOKE else 5.0)
    return out


def saturation_run(running: Running, p: dict) -> dict:
    return loadgen(running, "--rate", 0, "--warmup", p["saturation_warmup"], "--duration", p["saturation"],
                   *fleet_args(p))


def saturation(door: Door, p: dict, concurrency: int) -> dict:
    """A closed-loop run on a fresh process of `door`."""
    with door.start(plugin_config("5s", p["nodes"]), concurrency) as running:
        return saturation_run(running, p)


def size_point(door: Door, size: int, p: dict, concurrency: int, clusters: int = 1, interval_s: int = 1,
               then: Callable[[Running], dict] | None = None) -> dict:
    """RSS and Envoy heap per tracked node and one recompute's CPU at one fleet size (`size` agents
    in `clusters` clusters, each pushing once), recomputing every `interval_s`; `then(running)` runs on
    the filled door and its answer is kept as "then"."""
    config = plugin_config(f"{interval_s}s", size, ttl_multiplier=1000)
    with door.start(config, concurrency) as running:
        fleet = ["--nodes", size, "--clusters", clusters, "--connections", p["connections"]]
        loadgen(running, "--rate", 0, "--warmup", 0, "--duration", 1, "--body", "empty", *fleet)
        before, threads_before = trickle_cpu(running, p["idle"])
        rss0, heap0 = rss_bytes(running), envoy_heap(running)
        started = time.monotonic()
        # At the slowest door's ~7 000 pushes/s, with room.
        fill = loadgen(running, "--rate", 0, "--warmup", 0, "--duration", max(120, size // 2000), "--max-pushes",
                       size, *fleet)
        fill_s = time.monotonic() - started
        rss1, heap1 = rss_bytes(running), envoy_heap(running)
        tracked = metric(running, "ingero_fleet_tracked_nodes")
        after, threads_after = trickle_cpu(running, p["idle"])
        extra = {name: 1000 * (cpu - threads_before.get(name, 0.0)) for name, cpu in threads_after.items()}
        return {"nodes": size, "tracked": tracked, "rss_before": rss0, "rss_after": rss1, "fill_s": fill_s,
                "bytes_per_node": (rss1 - rss0) / size,
                "heap_bytes_per_node": (heap1 - heap0) / size if heap0 is not None and heap1 is not None else None,
                "fill_errors": fill["pushes"]["error_count"],
                # One recompute per interval: the extra CPU per second times the interval is one recompute's cost.
                "recompute_cpu_ms": max(0.0, (after - before) * 1000 * interval_s),
                "recompute_threads_ms": {k: v for k, v in sorted(extra.items(), key=lambda kv: -kv[1]) if v >= 5},
                **({"then": then(running)} if then else {})}


def envoy_heap(running: Running) -> int | None:
    """Bytes Envoy's allocator has handed out (admin /memory `allocated`): unlike RSS, not hidden by
    memory the allocator had already taken from the system and freed."""
    if running.admin is None:
        return None
    return int(json.loads(request(running.admin, "GET", "/memory").body)["allocated"])


def metric(running: Running, name: str) -> float | None:
    """One unlabelled sample of the front door's /metrics."""
    for line in request(running.metrics, "GET", "/metrics").body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def trickle_cpu(running: Running, seconds: float) -> tuple[float, dict]:
    """CPU seconds per second under 100 empty pushes/s (which add no nodes but keep every worker ticking),
    in all and by thread name."""
    threads0 = thread_cpu(running)
    run = loadgen(running, "--rate", 100, "--warmup", 0, "--duration", seconds, "--body", "empty",
                  "--connections", 4)
    threads1 = thread_cpu(running)
    wall = run["plan"]["duration_s"]
    return run["server"]["cpu_pct"] / 100, {k: (v - threads0.get(k, 0.0)) / wall for k, v in threads1.items()}


def stalls(door: Door, p: dict, concurrency: int, rounds: int = 3) -> dict:
    """The middle offered rate on a door tracking every node, with recomputes in the window (push_interval
    5s) and without (1h): `rounds` fresh processes of each, alternating, since one run's tail is noise here."""
    rate = p["rates"][len(p["rates"]) // 2]
    out: dict = {"with": [], "without": []}
    for _ in range(rounds):
        for side, interval in random.sample([("with", "5s"), ("without", "1h")], 2):
            with door.start(plugin_config(interval, p["nodes"]), concurrency) as running:
                # Every node once first, so each recompute covers them all.
                loadgen(running, "--rate", 0, "--warmup", 0, "--duration", 120, "--max-pushes", p["nodes"],
                        *fleet_args(p))
                out[side].append(loadgen(running, "--rate", rate, "--warmup", p["warmup"], "--duration",
                                         2 * p["duration"], "--query-share", p["query_share"], *fleet_args(p)))
    return out


# === one million nodes ===

# One million nodes (issue #15), bench/million.py's measurement: fleet size, clusters, offered rate, push interval.
MILLION, CLUSTERS, RATE, INTERVAL_S = 1_000_000, 1_000, 10_000, 5


def _million_rate(running: Running, nodes: int) -> dict:
    run = loadgen(running, "--rate", RATE, "--warmup", 1, "--duration", 5, "--nodes", nodes, "--clusters",
                  CLUSTERS, "--connections", 64)
    return {"achieved": run["pushes"]["achieved_rps"], "latency_ms": run["pushes"]["latency_ms"],
            "errors": run["pushes"]["error_count"]}


def _million_point(door, nodes: int) -> dict:
    # bench_run's size point with 1 000 clusters, a 5 s interval and a 30 s trickle (six recomputes:
    # two left the 100 000-node rows inside the noise), then the offered rate.
    return size_point(door, nodes, dict(FULL, idle=30), 2, clusters=CLUSTERS, interval_s=INTERVAL_S,
                      then=lambda running: _million_rate(running, nodes))


def _million_native() -> dict:
    out = subprocess.run([str(LOADGEN), "recompute", "--nodes", str(MILLION), "--clusters", str(CLUSTERS),
                          "--repeats", "2"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def million(wanted: list) -> dict:
    """Every wanted Envoy door at 100 000 and 1 000 000 nodes, and `Fleet::tick` natively."""
    rows = []
    for door in [d for d in DOORS if d.key in wanted]:
        for nodes in (100_000, MILLION):
            point = _million_point(door, nodes)
            print(json.dumps({"door": door.key, **point}), file=sys.stderr, flush=True)
            rows.append({"door": door.key, "title": door.title, "nodes": nodes, **point})
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "clusters": CLUSTERS, "rate": RATE,
            "interval_s": INTERVAL_S,
            "rows": rows, "native": _million_native()}


def one_worker(p: dict) -> list:
    """Saturation of the anchor and the wasm filter with Envoy --concurrency 1."""
    out = []
    for door in DOORS[:2]:
        with door.start(plugin_config("5s", p["nodes"]), 1) as running:
            out.append({"title": door.title, **loadgen(running, "--rate", 0, "--warmup", 1, "--duration", 4,
                                                          *fleet_args(p))})
    return out


def native(sizes: list) -> dict:
    def run(*args) -> dict:
        return json.loads(subprocess.run([str(LOADGEN), *map(str, args)], capture_output=True, text=True,
                                         check=True).stdout)
    return {"recompute": [run("recompute", "--nodes", n, "--clusters", 1) for n in sizes],
            "steps": run("steps", "--nodes", 10_000, "--clusters", 10, "--iterations", 50_000)}


PROFILED = ROOT / "target/prof/release/ingero-bench"


def callgrind(step_names: list, nodes: int = 500, iterations: int = 3000) -> dict:
    """Instructions per call of each native step (`ingero-bench steps --only <step>` under callgrind, minus
    a run with no step: robust to inlining), and the functions with the most instructions of their own in a
    JSON push. Empty unless scripts/bench built target/prof (it does when valgrind exists)."""
    if not PROFILED.exists():
        return {}
    data = OUT / "callgrind.out"  # perf_guard.instructions creates its folder (a fresh clone has none)

    def instructions(only: str, *extra: str) -> int:
        return perf_guard.instructions(PROFILED, only, nodes, iterations, data, *extra)

    base = instructions("(none)")
    steps = {name: (instructions(name) - base) / iterations for name in step_names}
    # One JSON push's own instructions by function, collecting only inside the push.
    pushes = nodes + iterations  # the fill pushes each node once, then the step's iterations
    instructions("whole push: JSON agent body", "--toggle-collect=*push_bytes*")
    text = subprocess.run(["callgrind_annotate", str(data)], capture_output=True, text=True).stdout
    lines = text.splitlines()
    own: dict = {}  # a function inlined from several source files appears once per file: add them up
    for line in lines[next(i for i, x in enumerate(lines) if "file:function" in x) + 2:][:40]:
        count, _, rest = line.strip().partition(" ")
        if not count[:1].isdigit():
            break
        function = rest.split(")", 1)[-1].strip().split(":", 1)[-1].split(" [")[0]
        own[function] = own.get(function, 0) + int(count.replace(",", "")) / pushes
    top = sorted(own.items(), key=lambda kv: -kv[1])[:12]
    return {"steps": steps, "top": top}


def variants(p: dict, concurrency: int, steps: list = WASM_VARIANTS, rounds: int = 3) -> list:
    """Each (title, start, loadgen arguments) of `steps` under closed-loop load, its CPU split by perf:
    `rounds` rounds, each in a shuffled order, and per step the round with the median CPU per request (one
    run here drifts by a fifth with the machine's other work)."""
    runs: list = [[] for _ in steps]
    for _ in range(rounds):
        for i in random.sample(range(len(steps)), len(steps)):
            title, start, args = steps[i]
            with start(plugin_config("5s", p["nodes"]), concurrency) as running:
                runs[i].append({"title": title, **loadgen(running, "--rate", 0, "--warmup", 1, "--duration", 4,
                                                          *fleet_args(p), *args, during=perf_split)})

    out = []
    for step in runs:
        ordered = sorted(step, key=bench_report.cpu_us_per_request)
        out.append({**ordered[len(ordered) // 2], "rounds_us": [bench_report.cpu_us_per_request(r) for r in step]})
    return out


def observe_pair(p: dict, concurrency: int) -> dict:
    """The cost of Fleet on an existing pipeline: an Envoy proxying pushes to an upstream (an anchor Envoy
    answering 200 `{}`), without the filter and with it in observe mode, each a fresh process in front of the
    same upstream, alternating `observe_rounds` times: closed-loop saturation, then one open-loop rate
    (pushes only). The front Envoy's CPU is the door's; the upstream's is kept beside it. Afterwards, the
    observe side's thresholds must equal the loadgen's computation, and a push must come back with the
    upstream's answer and the threshold header added."""
    interval = 1.0 if p is SMOKE else 5.0
    # Room for the fleet and the one probe node of forwarded_with_header; nodes do not expire while the
    # verification pass (100 000 pushes at proxy speed, tens of seconds) is still pushing the rest.
    config = plugin_config(f"{interval:.0f}s", max(p["nodes"], 1000) + 1, ttl_multiplier=1000)
    out: dict = {"titles": {key: title for key, title, _ in PIPELINES}, "rounds": []}
    with anchor({}, concurrency) as upstream:
        for last in [False] * (p["observe_rounds"] - 1) + [True]:
            sides: dict = {}
            for key, _, filtered in PIPELINES:
                with pipeline(filtered, config, upstream.push, concurrency) as running:
                    upstream0 = push_requests(upstream, "bench_anchor_otlp")
                    side: dict = {"idle_rss_bytes": rss_bytes(running)}
                    if p["saturation"]:
                        side["saturation"] = beside(upstream, lambda: saturation_run(running, p))
                    side["rate"] = beside(upstream, lambda: loadgen(
                        running, "--rate", p["observe_rate"], "--warmup", p["warmup"], "--duration", p["duration"],
                        *fleet_args(p)))
                    if filtered and last:
                        out["verify"] = verify(running, p, interval)
                        out["forwarded"] = forwarded_with_header(running)
                    # Every push the front door received reached the upstream (none answered locally).
                    side["requests"] = {"received": push_requests(running, "ingero_fleet_otlp"),
                                        "upstream": push_requests(upstream, "bench_anchor_otlp") - upstream0}
                sides[key] = side
            out["rounds"].append(sides)
    return out


def beside(upstream: Running, run: Callable[[], dict]) -> dict:
    """`run()`'s result with the upstream's CPU % over it."""
    cpu0, wall0 = cpu_seconds(upstream), time.monotonic()
    result = run()
    result["upstream_cpu_pct"] = 100 * (cpu_seconds(upstream) - cpu0) / (time.monotonic() - wall0)
    return result


def push_requests(running: Running, stat_prefix: str) -> int:
    """Requests an Envoy's push listener received (its HTTP connection manager's `stat_prefix`)."""
    name = f"http.{stat_prefix}.downstream_rq_total"
    text = request(running.admin, "GET", f"/stats?filter=^{name.replace('.', '[.]')}$").body.decode()
    return int(text.split(":")[1]) if text.startswith(name + ":") else 0


def forwarded_with_header(running: Running) -> dict:
    """One more agent push into a cluster with quorum: in observe mode the answer is the upstream's
    (200, body `{}`) with X-Ingero-Threshold added, equal to the threshold API's (that the push reached
    the upstream is checked by counting, in observe_pair)."""
    cluster = "bench-cluster-000"
    r = push(running.push, cluster, agent_push("bench-observe-probe", 0.9, cluster))
    api = json.loads(request(running.api, "GET", f"/api/v1/threshold?cluster_id={cluster}",
                             headers={"Accept": "application/json"}).body)
    header = r.headers.get("x-ingero-threshold")
    ok = (r.status == 200 and r.body == b"{}" and header is not None
          and abs(float(header) - api.get("threshold", -1)) <= 1e-6)
    return {"ok": ok, "status": r.status, "body": r.body[:200].decode(errors="replace"), "header": header,
            "api_threshold": api.get("threshold")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="CI-sized run: seconds, small N, low rate")
    parser.add_argument("--concurrency", type=int, default=2, help="Envoy worker threads (default 2)")
    parser.add_argument("--doors", default="", help="comma-separated subset of: " +
                        ", ".join([d.key for d in DOORS] + ["observe", "profile"]) +
                        " (observe: Envoy proxying to an upstream without vs with the filter in observe mode; "
                        "profile: the wasm and dynamic-module variants, one worker, native steps); a subset's report goes to "
                        "target/bench/bench.md, not docs/")
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--million", action="store_true",
                        help="also one million nodes in each Envoy door (bench/million.py, about 13 minutes more)")
    args = parser.parse_args()
    p = SMOKE if args.smoke else FULL
    wanted = set(filter(None, args.doors.split(",")))
    results: dict = {"meta": meta(args.concurrency, p), "doors": {}, "skipped": {}, "sizes": {}, "stalls": {},
                     "failed": {}}
    started = time.monotonic()
    # Every stage's results reach the disk as soon as it ends, and a failed stage is recorded and the run
    # goes on: a late failure (e.g. the profiler) must not lose a long run's measurements.
    OUT.mkdir(parents=True, exist_ok=True)
    paths = [OUT / ("smoke.json" if args.smoke else "bench.json"), *([args.json] if args.json else [])]

    def save() -> None:
        results["meta"]["elapsed_s"] = time.monotonic() - started
        results["meta"]["load_average_end"] = os.getloadavg()
        raw = json.dumps(results, indent=1)
        for path in paths:
            path.write_text(raw)

    def stage(name: str, run: Callable[[], object], into: dict, key: str) -> None:
        try:
            into[key] = run()
        except Exception as e:  # noqa: BLE001 (recorded, reported, and the exit status says so)
            results["failed"][name] = f"{type(e).__name__}: {e}"
            print(f"bench: {name} failed, going on:", file=sys.stderr)
            traceback.print_exc()
        save()

    for door in DOORS:
        if wanted and door.key not in wanted:
            continue
        if not door.available():
            results["skipped"][door.key] = f"{door.artefact.relative_to(ROOT)} not built"
            print(f"bench: skipping {door.title}: {results['skipped'][door.key]}", file=sys.stderr)
            continue
        print(f"bench: {door.title} ...", file=sys.stderr)
        stage(f"{door.key} load", lambda: load_runs(door, p, args.concurrency), results["doors"], door.key)
        if door.fleet and door.detail and not args.smoke and door.key in results["doors"]:
            stage(f"{door.key} sizes", lambda: [size_point(door, n, p, args.concurrency) for n in p["sizes"]],
                  results["sizes"], door.key)
            stage(f"{door.key} stalls", lambda: stalls(door, p, args.concurrency), results["stalls"], door.key)
    if not wanted or "observe" in wanted:
        if OBSERVE_ARTEFACT.exists():
            print("bench: observe mode on an existing pipeline ...", file=sys.stderr)
            stage("observe", lambda: observe_pair(p, args.concurrency), results, "observe")
        else:
            results["skipped"]["observe"] = f"{OBSERVE_ARTEFACT.relative_to(ROOT)} not built"
    if args.million and not args.smoke:
        print("bench: one million nodes ...", file=sys.stderr)
        stage("million", lambda: million(["wasm", "dynamic"]), results, "million")
    if not args.smoke and (not wanted or "profile" in wanted):
        print("bench: wasm filter and dynamic module variants, native core ...", file=sys.stderr)
        stage("variants", lambda: variants(p, args.concurrency), results, "variants")
        if DYNAMIC_MODULE.exists():
            stage("dynamic variants", lambda: variants(p, args.concurrency, DYNAMIC_VARIANTS), results,
                  "dynamic_variants")
        stage("one_worker", lambda: one_worker(p), results, "one_worker")
        stage("native", lambda: native(p["sizes"]), results, "native")
        if "native" in results:
            stage("callgrind", lambda: callgrind(list(results["native"]["steps"]["us_per_call"])),
                  results["native"], "callgrind")
    save()
    if results["failed"]:
        print(f"bench: failed stages: {results['failed']}", file=sys.stderr)
    if not args.smoke:
        # A subset of the run does not replace the full report in docs/.
        print(bench_report.write(results, None if not wanted else OUT))
    return 1 if results["failed"] else 0


def meta(concurrency: int, p: dict) -> dict:
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "cores": os.cpu_count(),
            "load_average": os.getloadavg(), "concurrency": concurrency, "params": p,
            "envoy_version": subprocess.run([str(ROOT / ".venv/bin/envoy"), "--version"], capture_output=True,
                                            text=True).stdout.strip().split("version: ")[-1]}


if __name__ == "__main__":
    sys.exit(main())
