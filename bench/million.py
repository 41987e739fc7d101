"""One million tracked nodes in one proxy (issue #15): for each Envoy front
door, a fresh Envoy with `max_expected_nodes: 1000000` is filled with 1 000 000
agents in 1 000 clusters (each pushes once), then measured: Envoy heap and RSS
per node, the CPU of one recompute (extra CPU under a trickle of empty pushes,
push_interval 5 s), and push latency at 10 000 pushes/s offered beside the
same rate on a fresh Envoy tracking 100 000 nodes. Natively, `Fleet::tick`
over 1 000 000 nodes. About 13 minutes on 2 cores.

`scripts/bench --million` runs it as a stage of the whole benchmark, into
docs/bench.md; alone it prints its Markdown table:

    .venv/bin/python bench/million.py [--doors wasm,dynamic]

scripts/bench's builds are used (run `scripts/bench --smoke` or `scripts/build`
first)."""

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


def run(wanted: list) -> dict:
    """Every wanted Envoy door at 100 000 and 1 000 000 nodes, and `Fleet::tick` natively."""
    rows = []
    for door in [d for d in DOORS if d.key in wanted]:
        for nodes in (100_000, MILLION):
            point = door_point(door, nodes)
            print(json.dumps({"door": door.key, **point}), flush=True)
            rows.append({"door": door.key, "title": door.title, "nodes": nodes, **point})
    return {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "clusters": CLUSTERS, "rate": RATE,
            "rows": rows, "native": native()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--doors", default="wasm,dynamic")
    args = parser.parse_args()
    import bench_report
    print("\n".join(bench_report.million({"million": run(args.doors.split(","))})))


if __name__ == "__main__":
    main()
