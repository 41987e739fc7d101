"""The real OpenTelemetry Collector as a Fleet client: its `otlphttp` exporter
(Option A's `endpoint: http://…:4318`) pushing into the filter's terminate mode,
and what it does with our 400 / 413 / 429 answers (docs/peers.md records it)."""

import json
import time

from fleet import agent_push, expected_threshold, fleet_envoy, push, request, threshold, wait_for
from peers import Collector, GoPush, prometheus_value

RQ_TOTAL = "http.ingero_fleet_otlp.downstream_rq_total"
# Fast retries so a retry that the exporter would make shows up within the test.
RETRY = {"enabled": True, "initial_interval": "100ms", "max_interval": "500ms", "max_elapsed_time": "8s"}


def otlphttp(port: int, **extra) -> dict:
    """The exporter as a user writes it: Fleet's push port as `endpoint` (the
    exporter appends /v1/metrics), compression and queue left at their defaults."""
    return {"otlphttp": {"endpoint": f"http://127.0.0.1:{port}", "retry_on_failure": RETRY} | extra}


def nodes(api_port: int, cluster: str) -> dict:
    return request(api_port, "GET", f"/api/v1/nodes?cluster_id={cluster}").json()


def export_log(collector: Collector) -> list[dict]:
    """The exporter's failure and retry log records."""
    return [r for r in collector.log_records() if str(r.get("msg", "")).startswith("Exporting failed")]


def test_otlphttp_exporter_pushes_agents_into_fleet():
    """Six agent-shaped Go SDK clients push to the collector; its otlphttp
    exporter forwards them (protobuf, gzip) to Fleet, which tracks every node and
    reaches quorum with the threshold the scores give."""
    scores = [0.92, 0.9, 0.88, 0.91, 0.89, 0.4]
    envoy, ports = fleet_envoy({"push_interval": "1s", "threshold": {"ema_alpha": 1.0}})
    with envoy, Collector(otlphttp(ports.push)) as collector:
        clients = [GoPush(f"http://127.0.0.1:{collector.otlp_port}", "via-collector", f"gpu-{i}", s).start()
                   for i, s in enumerate(scores)]
        try:
            listing = wait_for(lambda: (n := nodes(ports.api, "via-collector"))["total"] == 6 and n,
                               timeout=30, what="six nodes through the collector")
            assert {n["node_id"] for n in listing["nodes"]} == {f"gpu-{i}" for i in range(6)}
            want = expected_threshold(scores)
            answer = wait_for(lambda: (t := threshold(ports.api, "via-collector").json())["quorum_met"] and t,
                              timeout=20, what="quorum")
            assert abs(answer["threshold"] - want) < 1e-9
            straggler = next(n for n in nodes(ports.api, "via-collector")["nodes"] if n["node_id"] == "gpu-5")
            assert straggler["straggler"] is True
        finally:
            for c in clients:
                c.stop()
        # The collector's own telemetry counts the points it sent and none failed.
        telemetry = request(collector.telemetry_port, "GET", "/metrics").body.decode()
        assert prometheus_value(telemetry, "otelcol_exporter_sent_metric_points", exporter="otlphttp") > 0
        assert prometheus_value(telemetry, "otelcol_exporter_send_failed_metric_points",
                                exporter="otlphttp") == 0, collector.log()
        assert envoy.stat("http.ingero_fleet_otlp.downstream_rq_2xx") >= 6


def test_metrics_endpoint_keeps_the_cluster_id_query_parameter():
    """`metrics_endpoint` with `?cluster_id=` reaches Fleet with the query kept:
    a push with no ingero.cluster.id attribute lands in that cluster."""
    envoy, ports = fleet_envoy({"push_interval": "1s"})
    exporter = {"otlphttp": {"metrics_endpoint": f"http://127.0.0.1:{ports.push}/v1/metrics?cluster_id=by-query",
                             "retry_on_failure": RETRY}}
    with envoy, Collector(exporter) as collector:
        assert push(collector.otlp_port, None, agent_push("q-node", 0.9)).status == 200
        listing = wait_for(lambda: (n := nodes(ports.api, "by-query"))["total"] == 1 and n,
                           timeout=20, what="the node in the query's cluster")
        assert listing["nodes"][0]["node_id"] == "q-node"


def test_permanent_400_is_not_retried():
    """A push Fleet refuses with 400 (no cluster id anywhere) reaches Envoy once:
    the exporter treats 400 as permanent and drops the data."""
    envoy, ports = fleet_envoy({"push_interval": "1s"})
    with envoy, Collector(otlphttp(ports.push)) as collector:
        assert push(collector.otlp_port, None, agent_push("no-cluster", 0.9)).status == 200
        wait_for(lambda: envoy.stat("http.ingero_fleet_otlp.downstream_rq_4xx") == 1, timeout=20,
                 what="Fleet's 400")
        wait_for(lambda: export_log(collector), timeout=10, what="the exporter's failure log")
        time.sleep(2)  # twenty retry intervals: a retry would have arrived by now
        assert envoy.stat(RQ_TOTAL) == 1
        failures = export_log(collector)
        assert [r["msg"] for r in failures] == ["Exporting failed. Dropping data."], failures
        assert "400" in failures[0]["error"] and "Permanent error" in failures[0]["error"], failures


def test_413_is_not_retried():
    """A push over max_body_bytes gets 413 once; the exporter does not retry it."""
    envoy, ports = fleet_envoy({"push_interval": "1s", "max_body_bytes": 1024})
    big = json.loads(agent_push("big-node", 0.9, cluster="big"))
    # Padding that survives the collector's re-encoding to protobuf.
    big["resourceMetrics"][0]["resource"]["attributes"].append({"key": "padding", "value": {"stringValue": "x" * 4096}})
    big = json.dumps(big).encode()
    with envoy, Collector(otlphttp(ports.push, compression="none")) as collector:
        assert push(collector.otlp_port, None, big).status == 200
        wait_for(lambda: export_log(collector), timeout=20, what="the exporter's failure log")
        time.sleep(2)
        assert envoy.stat(RQ_TOTAL) == 1
        assert envoy.stat("http.ingero_fleet_otlp.downstream_rq_4xx") == 1
        failures = export_log(collector)
        assert [r["msg"] for r in failures] == ["Exporting failed. Dropping data."], failures
        assert "413" in failures[0]["error"], failures


def test_429_is_retried_after_retry_after_and_lands():
    """A new cluster past max_clusters gets 429 with Retry-After (= push_interval,
    1 s); the exporter retries no sooner than that and the push lands once the
    other cluster's node has expired and freed the slot."""
    config = {"push_interval": "1s", "ttl_multiplier": 2, "max_clusters": 1}
    envoy, ports = fleet_envoy(config)
    with envoy, Collector(otlphttp(ports.push)) as collector:
        holder_pushes = 0

        def hold() -> bool:
            """Keeps the holder's node alive until the late push has been refused once."""
            nonlocal holder_pushes
            if envoy.stat("http.ingero_fleet_otlp.downstream_rq_4xx"):
                return True
            assert push(ports.push, "holder", agent_push("holder-node", 0.9)).status == 200
            holder_pushes += 1
            return False
        hold()
        assert push(collector.otlp_port, None, agent_push("late-node", 0.9, cluster="late")).status == 200
        wait_for(hold, timeout=20, interval=0.2, what="the first 429")
        listing = wait_for(lambda: (n := nodes(ports.api, "late"))["total"] == 1 and n, timeout=30,
                           what="the throttled push to land after retries")
        assert listing["nodes"][0]["node_id"] == "late-node"
        retries = [r for r in export_log(collector) if "Will retry" in r["msg"]]
        assert retries, collector.log()
        assert all("429" in r["error"] for r in retries), retries
        # Retry-After: 1 wins over the 100 ms backoff: every wait is at least a second.
        assert all(r["interval"].endswith("s") and not r["interval"].endswith("ms") for r in retries), retries
        assert envoy.stat("http.ingero_fleet_otlp.downstream_rq_4xx") == len(retries)
        # The holder's pushes, the 429s, the push that landed.
        assert envoy.stat(RQ_TOTAL) == holder_pushes + len(retries) + 1
