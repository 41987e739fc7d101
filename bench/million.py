"""One million tracked nodes in one proxy (issue #15): for each Envoy front
door, a fresh Envoy with `max_expected_nodes: 1000000` is filled with 1 000 000
agents in 1 000 clusters (each pushes once), then measured: Envoy heap and RSS
per node, the CPU of one recompute (extra CPU under a trickle of empty pushes,
push_interval 5 s), and push latency at 10 000 pushes/s offered beside the
same rate on a fresh Envoy tracking 100 000 nodes. Natively, `Fleet::tick`
over 1 000 000 nodes. Prints a Markdown table; about 13 minutes on 2 cores.

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


def at_rate(running: br.Running, nodes: int) -> dict:
    run = br.loadgen(running, "--rate", RATE, "--warmup", 1, "--duration", 5, "--nodes", nodes, "--clusters",
                     CLUSTERS, "--connections", 64)
    return {"achieved": run["pushes"]["achieved_rps"], "latency_ms": run["pushes"]["latency_ms"],
            "errors": run["pushes"]["error_count"]}


def door_point(door, nodes: int) -> dict:
    # bench_run's size point with 1 000 clusters, a 5 s interval and a 30 s trickle (six recomputes:
    # two left the 100 000-node rows inside the noise), then the offered rate.
    return br.size_point(door, nodes, dict(br.FULL, idle=30), 2, clusters=CLUSTERS, interval_s=5,
                         then=lambda running: at_rate(running, nodes))


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
        lat = p["then"]["latency_ms"]
        heap = "–" if p["heap_bytes_per_node"] is None else f"{p['heap_bytes_per_node']:.0f}"
        print(f"| {title} | {p['tracked']:,.0f} | {p['fill_s']:.0f} | {heap} | {p['bytes_per_node']:.0f} | "
              f"{p['recompute_cpu_ms']:.0f} | {p['then']['achieved']:,.0f}/s, {lat['p50']:.2f} / {lat['p99']:.2f} / "
              f"{lat['p999']:.2f}, {p['then']['errors']} |")
    print(f"\nNative `Fleet::tick`, {MILLION:,} nodes in {CLUSTERS} clusters ({n['shards']} shards): "
          f"{n['tick_ms']:.0f} ms (sweep {n['sweep_ms']:.0f}, statistics {n['statistics_ms']:.0f})")


if __name__ == "__main__":
    main()
