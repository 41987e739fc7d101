"""The benchmark harness, CI-sized, so it cannot rot: `scripts/bench --smoke`
drives every front door that is built with a small fleet at a low open-loop
rate, threshold queries mixed in, then checks each Fleet's thresholds against
the load generator's own computation; the same for the observe-mode pair
(Envoy proxying to an upstream without and with the filter). Asserts
completion and correctness, never a speed."""

import json
import subprocess
import sys

from fleet import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from bench_doors import DOORS  # noqa: E402


def test_smoke_run_has_no_errors_and_correct_thresholds(tmp_path):
    out = tmp_path / "smoke.json"
    # The front doors only: the observe-mode pair has its own case below.
    doors = ",".join(door.key for door in DOORS)
    subprocess.run([str(ROOT / "scripts/bench"), "--smoke", "--doors", doors, "--json", str(out)], cwd=ROOT,
                   check=True, timeout=600)
    results = json.loads(out.read_text())

    built = {door.key for door in DOORS if door.available()}
    assert set(results["doors"]) == built, (results["skipped"], results["failed"])
    assert {"anchor", "wasm"} <= built
    for key, door in results["doors"].items():
        for run in door["rates"]:
            for kind in ("pushes", "queries"):
                side = run[kind]
                assert side["completed"] > 0, (key, kind)
                assert side["error_count"] == 0 and side["unsent"] == 0, (key, kind, side["errors"], side["status"])
        if key != "anchor":
            verify = door["verify"]
            assert verify["final_pass_errors"] == 0, key
            assert verify["clusters_checked"] == results["meta"]["params"]["clusters"], key
            assert verify["threshold_ok"], (key, verify["why"])


def test_a_failed_stage_keeps_the_results_before_it(tmp_path):
    """The standalone server's stage fails for real (its binary is missing); the anchor's results, taken
    before it, are on disk, the failure is named, and the exit status says so."""
    script = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(ROOT / "bench")!r})
import bench_doors, bench_run
bench_doors.SERVER = Path({str(tmp_path / "no-such-ingero-fleet")!r})
bench_run.OUT = Path({str(tmp_path / "fresh/target/bench")!r})
sys.argv = ["bench_run.py", "--smoke", "--doors", "anchor,server"]
sys.exit(bench_run.main())
"""
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1, run.stderr
    results = json.loads((tmp_path / "fresh/target/bench/smoke.json").read_text())
    assert list(results["doors"]) == ["anchor"]
    assert results["doors"]["anchor"]["rates"][0]["pushes"]["completed"] > 0
    assert "FileNotFoundError" in results["failed"]["server load"]


def test_observe_pair_forwards_every_push_and_scores_it(tmp_path):
    """The observe-mode row: Envoy proxying to an upstream without and with the filter in observe mode.
    Both sides answer every push; every push each front Envoy received reached the upstream (none answered
    by the filter itself); the observe side's thresholds are the loadgen's, and a push's answer is the
    upstream's with the threshold header added."""
    out = tmp_path / "smoke.json"
    subprocess.run([str(ROOT / "scripts/bench"), "--smoke", "--doors", "observe", "--json", str(out)], cwd=ROOT,
                   check=True, timeout=300)
    results = json.loads(out.read_text())
    pair = results["observe"]
    assert [set(sides) for sides in pair["rounds"]] == [{"proxy", "observe"}], pair["rounds"]
    for key, side in pair["rounds"][0].items():
        pushes = side["rate"]["pushes"]
        assert pushes["completed"] > 0, key
        assert pushes["error_count"] == 0 and pushes["unsent"] == 0, (key, pushes["errors"], pushes["status"])
        requests = side["requests"]
        assert requests["received"] >= pushes["completed"] and requests["upstream"] == requests["received"], \
            (key, requests)
    assert pair["verify"]["final_pass_errors"] == 0
    assert pair["verify"]["clusters_checked"] == results["meta"]["params"]["clusters"]
    assert pair["verify"]["threshold_ok"], pair["verify"]["why"]
    assert pair["forwarded"]["ok"], pair["forwarded"]
