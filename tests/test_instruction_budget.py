"""The deterministic performance guard: instructions per JSON agent push, per
protobuf push and per threshold query in the core, counted by callgrind
(bench/perf_guard.py), each within its budget in bench/budgets.toml plus 10 %.
Counts, not times: the same on a busy machine as on an idle one."""

import shutil
import sys

from fleet import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from perf_guard import BINARY, load_budgets, measure, over_budget, table  # noqa: E402


def test_instructions_per_call_are_within_budget():
    assert shutil.which("valgrind"), "valgrind is missing: scripts/setup.d/50-valgrind installs it"
    assert BINARY.exists(), f"{BINARY} is missing: scripts/build builds it"
    budgets = load_budgets()
    measured = measure(BINARY, budgets["nodes"], budgets["iterations"])
    print(table(measured, budgets))
    assert not over_budget(measured, budgets), table(measured, budgets)
