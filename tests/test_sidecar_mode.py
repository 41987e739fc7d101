"""The filter where the host cannot set `allow_on_headers_stop_iteration`
(Istio's WasmPlugin): with `pause_on_headers: false` it still answers every
push itself, and the pod's app behind it never sees one."""

import json

import pytest

from fleet import Envoy, agent_push, expected_threshold, free_port, push, scrape, threshold, wait_for
from frontdoors import Standalone, render_sidecar

CONFIG = {"push_interval": "1s", "threshold": {"ema_alpha": 1.0}}


def sidecar(plugin_config):
    app = Standalone(CONFIG)
    listen = {name: free_port() for name in app.ports}
    return app, listen, render_sidecar(listen, app.ports, free_port(), plugin_config)


def test_the_filter_answers_and_the_app_behind_it_sees_no_push():
    app, listen, config = sidecar(CONFIG)
    with app, Envoy(config):
        scores = [0.9, 0.85, 0.92, 0.88, 0.5]
        for i, score in enumerate(scores):
            assert push(listen["otlp_http"], "mesh", agent_push(f"n{i}", score, cluster="mesh")).status == 200
        wait_for(lambda: threshold(listen["api"], "mesh").json()["quorum_met"], what="quorum through the sidecar")
        assert threshold(listen["api"], "mesh").json()["threshold"] == pytest.approx(expected_threshold(scores))
        assert scrape(listen["metrics"])["ingero_fleet_total_pushes"] == 5
        # The app got the headers of each push but never its body: it stored nothing.
        assert scrape(app.ports["metrics"])["ingero_fleet_total_pushes"] == 0
        assert threshold(app.ports["api"], "mesh").json() == {"threshold": 0, "quorum_met": False}


def test_pausing_on_headers_without_the_host_setting_is_answered_naming_it():
    """Why `pause_on_headers: false` exists: Envoy then never delivers the body.
    The filter notices and answers the push (500) with the setting to fix."""
    app, listen, config = sidecar(CONFIG)
    plugin = config["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"][
        "http_filters"][0]["typed_config"]["config"]
    plugin["configuration"]["value"] = json.dumps(CONFIG | {"pause_on_headers": True})
    with app, Envoy(config):
        r = push(listen["otlp_http"], "mesh", agent_push("n0", 0.9, cluster="mesh"), timeout=4)
        assert r.status == 500 and b"pause_on_headers" in r.body, (r.status, r.body)
