"""One million tracked nodes in one proxy (issue #15): for each Envoy front
door, a fresh Envoy with `max_expected_nodes: 1000000` is filled with 1 000 000
agents in 1 000 clusters (each pushes once), then measured: Envoy heap and RSS
per node, the CPU of one recompute (extra CPU under a trickle of empty pushes,
push_interval 5 s), and push latency at 10 000 pushes/s offered beside the
same rate on a fresh Envoy tracking 100 000 nodes. Natively, `Fleet::tick`
over 1 000 000 nodes. Prints a Markdown table; about 10 minutes on 2 cores.

    .venv/bin/python bench/million.py [--doors wasm,dynamic]

scripts/bench's builds are used (run `scripts/bench --smoke` or `scripts/build`
first); the figures go to docs/performance.md by hand, with the date."""

from __future__ import annotations

import argparse
import json
import subprocess
import time

import bench_run as br
from bench_doors import DOORS

MILLION, CLUSTERS, RATE = 1_000_000, 1_000, 10_000


def config(nodes: int) -> dict:
    # Nodes outlive the fill (minutes at the wasm filter's rate): a TTL of 1 000 intervals.
    return br.plugin_config("5s", nodes, ttl_multiplier=1000, max_nodes_per_cluster=nodes // CLUSTERS)


def fleet(nodes: int) -> list:
    return ["--nodes", nodes, "--clusters", CLUSTERS, "--connections", 64]


def at_rate(running: br.Running, nodes: int) -> dict:
    run = br.loadgen(running, "--rate", RATE, "--warmup", 1, "--duration", 5, *fleet(nodes))
    return {"achieved": run["pushes"]["achieved_rps"], "latency_ms": run["pushes"]["latency_ms"],
            "errors": run["pushes"]["error_count"]}


def door_point(door, nodes: int) -> dict:
    with door.start(config(nodes), 2) as running:
        br.loadgen(running, "--rate", 0, "--warmup", 0, "--duration", 1, "--body", "empty", *fleet(nodes))
        idle_cpu, _ = br.trickle_cpu(running, 10)
        rss0, heap0 = br.rss_bytes(running), br.envoy_heap(running)
        started = time.monotonic()
        fill = br.loadgen(running, "--rate", 0, "--warmup", 0, "--duration", 600, "--max-pushes", nodes,
                          *fleet(nodes))
        fill_s = time.monotonic() - started
        rss1, heap1 = br.rss_bytes(running), br.envoy_heap(running)
        tracked = br.metric(running, "ingero_fleet_tracked_nodes")
        busy_cpu, threads = br.trickle_cpu(running, 10)
        return {"nodes": nodes, "tracked": tracked, "fill_s": fill_s, "fill_errors": fill["pushes"]["error_count"],
                "rss_per_node": (rss1 - rss0) / nodes,
                "heap_per_node": None if heap0 is None else (heap1 - heap0) / nodes,
                # Two recomputes in the 10 s trickle (push_interval 5 s): half the extra CPU is one.
                "recompute_cpu_ms": max(0.0, (busy_cpu - idle_cpu) * 10 * 1000 / 2),
                "rate": at_rate(running, nodes)}


def native() -> dict:
    out = subprocess.run([str(br.LOADGEN), "recompute", "--nodes", str(MILLION), "--clusters", str(CLUSTERS),
                          "--repeats", "2"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--doors", default="wasm,dynamic")
    args = parser.parse_args()
    wanted = args.doors.split(",")
    rows = []
    for door in [d for d in DOORS if d.key in wanted]:
        for nodes in (100_000, MILLION):
            point = door_point(door, nodes)
            print(json.dumps({"door": door.key, **point}), flush=True)
            rows.append((door.title, point))
    n = native()
    print(json.dumps({"native": n}), flush=True)
    print(f"\n{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {CLUSTERS} clusters, push_interval 5 s\n")
    print("| front door | nodes tracked | fill, s | Envoy heap B/node | RSS B/node | one recompute, CPU ms | "
          f"at {RATE:,}/s offered: achieved, p50 / p99 / p99.9 ms, errors |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for title, p in rows:
        lat = p["rate"]["latency_ms"]
        heap = "–" if p["heap_per_node"] is None else f"{p['heap_per_node']:.0f}"
        print(f"| {title} | {p['tracked']:,.0f} | {p['fill_s']:.0f} | {heap} | {p['rss_per_node']:.0f} | "
              f"{p['recompute_cpu_ms']:.0f} | {p['rate']['achieved']:,.0f}/s, {lat['p50']:.2f} / {lat['p99']:.2f} / "
              f"{lat['p999']:.2f}, {p['rate']['errors']} |")
    print(f"\nNative `Fleet::tick`, {MILLION:,} nodes in {CLUSTERS} clusters ({n['shards']} shards): "
          f"{n['tick_ms']:.0f} ms (sweep {n['sweep_ms']:.0f}, statistics {n['statistics_ms']:.0f})")


if __name__ == "__main__":
    main()
