"""Agent-shaped pushes from a real, independently written OTLP client through
Envoy + filter (terminate mode).

The real Ingero agent (`github.com/ingero-io/ingero/cmd/ingero`) is refused by
the Go module proxy (docs/peers.md has the exact error), so per issue 13 these
pushes come from the nearest served client: the OpenTelemetry Go SDK's
`otlpmetrichttp` exporter (`otel-go-push`, protobuf, optionally gzip), one
process per node, each logging the X-Ingero-* headers it got back. The agent's
own HEALTHY/STRAGGLER classification cannot be observed without the agent;
these tests check that what a real client reads from our headers is the
threshold Fleet serves, and that Fleet flags the low-scoring node."""

import math

import pytest

from fleet import expected_threshold, fleet_envoy, request, threshold, wait_for
from peers import GoPush

SCORES = [0.93, 0.91, 0.9, 0.92, 0.89, 0.94, 0.35]  # the last node is the straggler


def nodes(api_port: int, cluster: str) -> dict:
    return request(api_port, "GET", f"/api/v1/nodes?cluster_id={cluster}").json()


@pytest.mark.parametrize("gzip", [False, True], ids=["protobuf", "protobuf-gzip"])
def test_go_sdk_agents_reach_quorum_and_read_the_threshold(gzip):
    cluster = "go-sdk-" + ("gz" if gzip else "pb")
    # ema_alpha 1: the served threshold is the raw one, so every reader agrees on it.
    envoy, ports = fleet_envoy({"push_interval": "1s", "threshold": {"ema_alpha": 1.0}}, concurrency=2)
    with envoy:
        agents = [GoPush(f"http://127.0.0.1:{ports.push}", cluster, f"node-{i}", s, gzip=gzip).start()
                  for i, s in enumerate(SCORES)]
        try:
            listing = wait_for(lambda: (n := nodes(ports.api, cluster))["total"] == len(SCORES) and n,
                               timeout=30, what="every agent in the node listing")
            assert {n["node_id"] for n in listing["nodes"]} == {f"node-{i}" for i in range(len(SCORES))}
            want = expected_threshold(SCORES)
            api = wait_for(lambda: (t := threshold(ports.api, cluster).json())["quorum_met"] and t,
                           timeout=20, what="quorum")
            assert abs(api["threshold"] - want) < 1e-9

            # Every client, on a push answered after quorum, read that same threshold.
            def all_read_it():
                for agent in agents:
                    seen = [p for p in agent.pushes() if p.get("quorum_met") == "true"]
                    if not seen or not math.isclose(float(seen[-1]["threshold"]), want, abs_tol=1e-9):
                        return False
                return True
            wait_for(all_read_it, timeout=20, what="every client to read the threshold from our headers")
            for agent in agents:
                pushes = agent.pushes()
                assert all(p.get("status") == 200 for p in pushes), pushes
                assert {p["content_type"] for p in pushes} == {"application/x-protobuf"}
                assert {p["content_encoding"] for p in pushes} == {"gzip" if gzip else ""}
                # Before quorum the headers are absent, never 0 (contract §2).
                assert all(p["threshold"] == "" or 0.1 <= float(p["threshold"]) <= 0.99 for p in pushes)

            flagged = {n["node_id"]: n["straggler"] for n in nodes(ports.api, cluster)["nodes"]}
            assert flagged == {f"node-{i}": i == len(SCORES) - 1 for i in range(len(SCORES))}
            # What the low node read puts it below the threshold: the agent's rule
            # (score < threshold → STRAGGLER) would classify it so.
            last = agents[-1].pushes()[-1]
            assert SCORES[-1] < float(last["threshold"]) <= min(SCORES[:-1])
        finally:
            for agent in agents:
                agent.stop()
        assert all(a.process.returncode == 0 for a in agents), [a.stderr() for a in agents]
