"""Envoy running Fleet as a dynamic module: envoy/envoy-dynamic.yaml with test
ports, a filter configuration, and the module built by scripts/build."""

from __future__ import annotations

import copy
import json
import os

from fleet import ROOT, Envoy, Ports, free_port, render_envoy

MODULE_DIR = ROOT / "target/release"
MODULE = MODULE_DIR / "libingero_fleet.so"
TEMPLATE = ROOT / "envoy/envoy-dynamic.yaml"
FILTER = "envoy.filters.http.dynamic_modules"

# Envoy resolves module `ingero_fleet` to libingero_fleet.so in this directory;
# every Envoy the tests start inherits the environment.
os.environ["ENVOY_DYNAMIC_MODULES_SEARCH_PATH"] = str(MODULE_DIR)


def filter_configs(config: dict):
    """Every Fleet filter entry of a rendered configuration (one per listener)."""
    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for f in chain["filters"]:
                for hf in f["typed_config"].get("http_filters", []):
                    if hf["name"] == FILTER:
                        yield hf["typed_config"]


def dynamic_envoy(filter_config: dict | None = None, concurrency: int = 2,
                  log_level: str = "warn") -> tuple[Envoy, Ports]:
    """An Envoy running the dynamic module, and its push, API and metrics ports."""
    assert MODULE.exists(), f"{MODULE} is missing: run scripts/build"
    ports = Ports(free_port(), free_port(), free_port())
    by_listener = {"otlp_http": ports.push, "api": ports.api, "metrics": ports.metrics}
    config = render_envoy({}, by_listener, free_port(), template=TEMPLATE)
    for typed in filter_configs(config):
        typed["filter_config"]["value"] = json.dumps(copy.deepcopy(filter_config or {}))
    return Envoy(config, concurrency=concurrency, log_level=log_level), ports

