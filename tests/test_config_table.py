"""One key table, no drift: the configuration keys as the validator reads them
(`filter/core/src/config.rs` `key_table()`, printed by its `config_keys`
example) against README.md's table, docs/configuration.md's table, the Helm
chart's values.yaml and values.schema.json, and the Istio WasmPlugin example.
A key added to the core without its rows here, or a range changed on one side
only, fails."""

from __future__ import annotations

import json
import re
import subprocess
from itertools import dropwhile, takewhile

import pytest
import yaml

from fleet import ROOT

CHART = ROOT / "helm/ingero-fleet"
# Keys that are not chart values or WasmPlugin settings, and why.
NOT_DEPLOYMENT_VALUES = {
    "mode": "the chart sets it from observe.upstream; the WasmPlugin example terminates (the default)",
    "routes": "per listener, in the Envoy config each deployment renders; one WasmPlugin serves every route",
    "recompute": "set per instance in the Envoy config (the filters and the singleton service differ)",
    "push_identities": "holds bearer secrets, which belong in a Secret rather than chart values or a WasmPlugin; "
                       "set it in the plugin or server configuration (docs/security.md)",
}


@pytest.fixture(scope="module")
def keys() -> dict[str, dict]:
    out = subprocess.run(["cargo", "run", "-q", "-p", "ingero-fleet-core", "--example", "config_keys"], cwd=ROOT,
                         capture_output=True, text=True, check=True, timeout=600).stdout
    table = {k["path"]: k for k in json.loads(out)}
    assert "threshold.k" in table and "listen.api" in table
    return table


# === reading the documents ===

def markdown_table(path, heading: str) -> dict[str, dict]:
    """The rows of the first table under `heading`, keyed by the `key` column, as {column: cell}."""
    section = path.read_text().split(f"\n{heading}\n", 1)[1].split("\n## ", 1)[0]
    rest = list(dropwhile(lambda line: not line.startswith("|"), section.splitlines()))
    lines = list(takewhile(lambda line: line.startswith("|"), rest))
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]
        row = dict(zip(header, cells))
        rows[row["key"].strip("`")] = row
    return rows


def amount(text: str) -> float:
    """`1 000 000`, `4.0`, `1 KiB`, `64 MiB`."""
    text = text.strip().replace(" ", "").replace("\u202f", "")
    for unit, factor in (("KiB", 1024), ("MiB", 1 << 20)):
        if text.endswith(unit):
            return float(text.removesuffix(unit)) * factor
    return float(text)


def seconds(text: str) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)\s*(ms|s|m|h)?", text.strip()).groups()
    return float(number) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[unit]


def documented_bounds(cell: str, kind: str) -> tuple[float, float, bool]:
    """`[a, b]`, `(a, b]`, `a–b` or `a–b (…)` as (min, max, min excluded)."""
    cell = cell.replace("`", "").strip()
    if cell[:1] in "([":
        lo, hi = cell[1:].split("]")[0].split(",")
        return amount(lo), amount(hi), cell[0] == "("
    lo, hi = cell.split(" (")[0].split("–")
    read = seconds if kind == "duration" else amount
    return read(lo), read(hi), False


def documented_default(cell: str):
    return yaml.safe_load(cell.split(" (")[0].replace("`", "").strip())


def check_row(key: dict, row: dict) -> list[str]:
    """What a table row says wrongly about `key` (default, valid range or choices, type)."""
    path, wrong = key["path"], []
    default = documented_default(row["default"])
    expected = key["default_follows"] or key["default"]
    if default != expected:
        wrong.append(f"{path}: default {row['default']!r}, the validator's is {expected!r}")
    valid = row["valid"]
    if key["min"] is not None:
        bounds = documented_bounds(valid, key["kind"])
        if bounds != (key["min"], key["max"], key["min_exclusive"]):
            wrong.append(f"{path}: valid {valid!r}, the validator's is {key['valid']!r}")
    for choice in key["choices"]:
        if json.dumps(choice) not in valid:
            wrong.append(f"{path}: valid {valid!r} does not name {json.dumps(choice)}")
    if "type" in row and row["type"] != key["kind"]:
        wrong.append(f"{path}: type {row['type']!r}, the validator's is {key['kind']!r}")
    return wrong


def dotted(config: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in config.items():
        out |= dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
    return out


def schema_leaves(node: dict, prefix: str = "") -> dict[str, dict]:
    out = {}
    for name, sub in node.get("properties", {}).items():
        if sub.get("type") == "object" and "properties" in sub:
            out |= schema_leaves(sub, f"{prefix}{name}.")
        else:
            out[f"{prefix}{name}"] = sub
    return out


# === the checks ===

def test_readme_table_is_the_key_table(keys):
    rows = markdown_table(ROOT / "README.md", "## Configuration")
    # The listen addresses are the standalone server's only: docs/configuration.md has them.
    assert set(rows) == {p for p in keys if not p.startswith("listen.")}, "README's key column"
    assert [w for path, row in rows.items() for w in check_row(keys[path], row)] == []


def test_configuration_page_is_the_key_table(keys):
    rows = markdown_table(ROOT / "docs/configuration.md", "## Every key")
    assert set(rows) == set(keys), "docs/configuration.md's key column"
    assert [w for path, row in rows.items() for w in check_row(keys[path], row)] == []


def test_chart_values_carry_every_key_with_the_validators_range(keys):
    expected = {p for p in keys if p not in NOT_DEPLOYMENT_VALUES}
    values = yaml.safe_load((CHART / "values.yaml").read_text())["config"]
    assert set(dotted(values)) == expected, "values.yaml config"
    schema = json.loads((CHART / "values.schema.json").read_text())["properties"]["config"]
    leaves = schema_leaves(schema)
    assert set(leaves) == expected, "values.schema.json config"
    wrong = []
    for path, node in leaves.items():
        key = keys[path]
        branches = node.get("oneOf", [node])
        types = {b.get("type") for b in branches}
        if key["kind"] == "boolean":
            assert types == {"boolean"}, path
        if key["choices"] and key["kind"] == "string":
            assert any(b.get("enum") == key["choices"] for b in branches), path
        if key["min"] is None:
            continue
        (numeric,) = [b for b in branches if b.get("type") in ("number", "integer")]
        if key["kind"] == "integer":
            assert numeric["type"] == "integer", path
        low = numeric.get("exclusiveMinimum", numeric.get("minimum"))
        schema_bounds = (low, numeric.get("maximum"), "exclusiveMinimum" in numeric)
        if schema_bounds != (key["min"], key["max"], key["min_exclusive"]):
            wrong.append(f"{path}: schema {schema_bounds}, the validator's {key['valid']!r}")
    assert wrong == []


def test_wasmplugin_example_sets_every_key_in_range(keys):
    (plugin,) = [d for d in yaml.safe_load_all((ROOT / "istio/wasmplugin.yaml").read_text())
                 if d and d["kind"] == "WasmPlugin"]
    config = dotted(plugin["spec"]["pluginConfig"])
    # The WasmPlugin configures the filter: no standalone listen addresses.
    assert set(config) == {p for p in keys if p not in NOT_DEPLOYMENT_VALUES
                           and not p.startswith("listen.")}, "pluginConfig keys"
    for path, value in config.items():
        key = keys[path]
        if key["kind"] == "boolean":
            assert isinstance(value, bool), path
        elif key["min"] is not None:
            number = seconds(str(value)) if key["kind"] == "duration" else float(value)
            above_min = number > key["min"] if key["min_exclusive"] else number >= key["min"]
            assert above_min and number <= key["max"], f"{path}: {value} outside {key['valid']}"
