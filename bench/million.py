"""One million tracked nodes in one proxy (issue #15): for each Envoy front
door, a fresh Envoy with `max_expected_nodes: 1000000` is filled with 1 000 000
agents in 1 000 clusters (each pushes once), then measured: Envoy heap and RSS
per node, the CPU of one recompute (extra CPU under a trickle of empty pushes,
push_interval 5 s), and push latency at 10 000 pushes/s offered beside the
same rate on a fresh Envoy tracking 100 000 nodes. Natively, `Fleet::tick`
over 1 000 000 nodes. About 13 minutes on 2 cores.

The measurement is `bench_run.million`; `scripts/bench --million` runs it
as a stage of the whole benchmark, into docs/bench.md; alone it prints its
Markdown table:

    .venv/bin/python bench/million.py [--doors wasm,dynamic]

scripts/bench's builds are used (run `scripts/bench --smoke` or `scripts/build`
first)."""

from __future__ import annotations

import argparse

import bench_report
import bench_run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--doors", default="wasm,dynamic")
    args = parser.parse_args()
    print("\n".join(bench_report.million({"million": bench_run.million(args.doors.split(","))})))


if __name__ == "__main__":
    main()
