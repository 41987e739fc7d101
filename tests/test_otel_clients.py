"""Real OpenTelemetry SDK exporters pushing through Envoy + filter."""

import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
from opentelemetry.metrics import Observation
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource

from fleet import expected_threshold, fleet_envoy, threshold, wait_for


@pytest.fixture(scope="module")
def fleet():
    envoy, ports = fleet_envoy({"push_interval": "1s", "threshold": {"ema_alpha": 1.0}})
    with envoy:
        yield envoy, ports.push, ports.api


def export_score(endpoint: str, node: str, cluster: str, score: float, **exporter_args) -> bool:
    """One SDK 'node': a MeterProvider whose resource names the node, exporting one gauge."""
    exporter = OTLPMetricExporter(endpoint=endpoint, **exporter_args)
    reader = PeriodicExportingMetricReader(exporter, export_interval_millis=3_600_000)
    resource = Resource.create({"ingero.node.id": node, "ingero.cluster.id": cluster, "ingero.world_size": 5})
    provider = MeterProvider(resource=resource, metric_readers=[reader])
    meter = provider.get_meter("ingero.health")
    meter.create_observable_gauge(
        "ingero.node.health_score",
        callbacks=[lambda _options: [Observation(score, {"ingero.node.state": "active"})]],
    )
    try:
        return provider.force_flush(timeout_millis=5000)
    finally:
        provider.shutdown()


def test_sdk_protobuf_pushes_are_counted(fleet):
    envoy, push_port, api_port = fleet
    scores = [0.91, 0.87, 0.95, 0.89, 0.6]
    for i, score in enumerate(scores):
        # Half name the cluster in the query (as the agent does), half only in the resource.
        query = "?cluster_id=otel" if i % 2 else ""
        compression = Compression.Gzip if i % 2 else Compression.NoCompression
        endpoint = f"http://127.0.0.1:{push_port}/v1/metrics{query}"
        assert export_score(endpoint, f"sdk-{i}", "otel", score, compression=compression)

    def ok():
        body = threshold(api_port, "otel").json()
        return body if body["quorum_met"] and body["active_nodes"] == 5 else None
    body = wait_for(ok, what="the SDK's five nodes to reach quorum")
    assert abs(body["threshold"] - expected_threshold(scores)) < 1e-9
    assert envoy.stat("wasmcustom.ingero_fleet_total_pushes") >= 5
