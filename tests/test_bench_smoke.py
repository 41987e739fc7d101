"""The benchmark harness, CI-sized, so it cannot rot: `scripts/bench --smoke`
drives every front door that is built with a small fleet at a low open-loop
rate, threshold queries mixed in, then checks each Fleet's thresholds against
the load generator's own computation. Asserts completion and correctness,
never a speed."""

import json
import subprocess
import sys

from fleet import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from bench_doors import DOORS  # noqa: E402


def test_smoke_run_has_no_errors_and_correct_thresholds(tmp_path):
    out = tmp_path / "smoke.json"
    subprocess.run([str(ROOT / "scripts/bench"), "--smoke", "--json", str(out)], cwd=ROOT, check=True, timeout=600)
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
