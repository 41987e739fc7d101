# The standalone Fleet server (`ingero-fleet`, crate server/) in a small
# non-root image. Build from the repository root (the name and tag the Helm
# chart's standalone.image and istio/workload.yaml use; tag = the release):
#   docker build -t ghcr.io/ingero-fleet-envoy/ingero-fleet-server:0.1.0 .
# Run as in the deployment guide (docs/deploying.md, "Standalone server"):
#   docker run -d --name ingero-fleet -p 4317:4317 -p 4318:4318 -p 8080:8080 \
#     ghcr.io/ingero-fleet-envoy/ingero-fleet-server:0.1.0
# Without a file at /etc/ingero-fleet/config.yaml the embedded defaults apply;
# mount one with -v $(pwd)/fleet-config.yaml:/etc/ingero-fleet/config.yaml.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p ingero-fleet-server

FROM debian:bookworm-slim
COPY --from=build /src/target/release/ingero-fleet /usr/local/bin/ingero-fleet
RUN mkdir -p /etc/ingero-fleet
# OTLP/gRPC, OTLP/HTTP, threshold API (+ /healthz, /readyz), Prometheus /metrics.
EXPOSE 4317 4318 8080 8888
USER 65532:65532
ENV RUST_LOG=info
ENTRYPOINT ["/usr/local/bin/ingero-fleet"]
