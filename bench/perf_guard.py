"""Instruction budgets of the core, the deterministic CI guard (docs/perf-guard.md).

`valgrind --tool=callgrind` counts the instructions of `ingero-bench steps --only
<step>` and of a run with no step; their difference over the iterations is the
cost of one call, whatever else the machine is doing. Three steps are guarded: a
JSON agent push, a protobuf push and a threshold query, each against its budget
in bench/budgets.toml; more than `tolerance` (10 %) over a budget fails.

    .venv/bin/python bench/perf_guard.py            # measure and check (exit 1 if over)
    .venv/bin/python bench/perf_guard.py --update   # write the measured counts as the budgets
    .venv/bin/python bench/perf_guard.py --binary PATH   # another build of ingero-bench

tests/test_instruction_budget.py runs the check in CI. scripts/bench reuses
`instructions` for the profile in docs/bench.md.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGETS = ROOT / "bench/budgets.toml"
BINARY = ROOT / "target/release/ingero-bench"
OUT = ROOT / "target/perf-guard"

# Budget key -> the `ingero-bench steps` step it counts.
STEPS = {
    "json_push": "whole push: JSON agent body",
    "protobuf_push": "whole push: protobuf agent body",
    "threshold_query": "threshold query: decide",
}


def instructions(binary: Path, only: str, nodes: int, iterations: int, data: Path, *extra: str) -> int:
    """Instructions callgrind counts in `binary steps --only <only>` (the whole process)."""
    data.parent.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={data}", *extra, str(binary),
                          "steps", "--nodes", str(nodes), "--iterations", str(iterations), "--only", only],
                         capture_output=True, text=True, check=True)
    refs = [line for line in run.stderr.splitlines() if "refs:" in line]
    return int(refs[-1].split()[-1].replace(",", ""))


def load_budgets(path: Path = BUDGETS) -> dict:
    return tomllib.loads(path.read_text())


def measure(binary: Path, nodes: int, iterations: int) -> dict:
    """Instructions per call of each guarded step (the run with no step subtracted)."""
    data = OUT / "callgrind.out"
    base = instructions(binary, "(none)", nodes, iterations, data)
    measured = {key: round((instructions(binary, step, nodes, iterations, data) - base) / iterations)
                for key, step in STEPS.items()}
    # A renamed step runs nothing: its count is noise around zero, never a pass.
    empty = [f"{key} ({STEPS[key]!r})" for key, count in measured.items() if count <= 0]
    if empty:
        raise SystemExit(f"perf-guard: no such step in {binary.name} steps, or it did nothing: {', '.join(empty)}")
    return measured


def over_budget(measured: dict, budgets: dict) -> list:
    """The steps whose count exceeds budget × (1 + tolerance), as messages."""
    tolerance = budgets["tolerance"]
    out = []
    for key, count in measured.items():
        budget = budgets["budgets"][key]
        if count > budget * (1 + tolerance):
            out.append(f"{key}: {count} instructions per call, budget {budget} (+{tolerance:.0%} allowed)")
    return out


def table(measured: dict, budgets: dict) -> str:
    lines = [f"{'step':<17} {'measured':>10} {'budget':>10} {'change':>8}"]
    for key, count in measured.items():
        budget = budgets["budgets"][key]
        change = f"{count / budget - 1:>+8.1%}" if budget else f"{'new':>8}"
        lines.append(f"{key:<17} {count:>10} {budget:>10} {change}")
    return "\n".join(lines)


def write_budgets(measured: dict, budgets: dict, path: Path = BUDGETS) -> None:
    lines = [line for line in path.read_text().splitlines() if not line.startswith(tuple(STEPS))]
    text = "\n".join(lines).rstrip() + "\n" + "".join(f"{key} = {measured[key]}\n" for key in STEPS)
    path.write_text(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", type=Path, default=BINARY, help="the ingero-bench to measure")
    parser.add_argument("--update", action="store_true", help="write the measured counts as the new budgets")
    args = parser.parse_args()
    budgets = load_budgets()
    measured = measure(args.binary, budgets["nodes"], budgets["iterations"])
    print(table(measured, budgets))
    if args.update:
        write_budgets(measured, budgets)
        print(f"perf-guard: budgets written to {BUDGETS.relative_to(ROOT)}")
        return 0
    failures = over_budget(measured, budgets)
    for failure in failures:
        print(f"perf-guard: OVER BUDGET: {failure}", file=sys.stderr)
    if not failures:
        print("perf-guard: every step within its budget")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
