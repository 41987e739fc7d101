"""Turns scripts/bench results into docs/bench.md (tables, ratios to the
anchor) and docs/bench.png (latency against offered rate)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench_doors import ROOT  # noqa: E402

DOCS = ROOT / "docs"
MIB = 1024 * 1024


def _ms(x: float) -> str:
    return f"{x:.2f}" if x < 10 else f"{x:.0f}"


def _errors(side: dict) -> str:
    if not side["error_count"] and not side["unsent"]:
        return "0"
    parts = [f"{k} {v}" for k, v in side["errors"].items()]
    if side["unsent"]:
        parts.append(f"unsent {side['unsent']}")
    return ", ".join(parts)


def _row(*cells) -> str:
    return "| " + " | ".join(map(str, cells)) + " |"


def _lat(side: dict) -> str:
    lat = side["latency_ms"]
    return f"{_ms(lat['p50'])} / {_ms(lat['p99'])} / {_ms(lat['p999'])}"


def cpu_us_per_request(run: dict) -> float:
    """The front door's CPU per request answered (pushes and queries) in one load run."""
    rps = run["pushes"]["achieved_rps"] + run["queries"]["achieved_rps"]
    return run["server"]["cpu_pct"] / 100 / rps * 1e6 if rps else 0.0


def summary(results: dict) -> list[str]:
    doors = results["doors"]
    anchor = doors.get("anchor", {}).get("saturation", {}).get("pushes", {}).get("achieved_rps")
    top_rate = next(iter(doors.values()), {}).get("rates", [{}])[-1].get("plan", {}).get("rate") or 0
    lines = ["| front door | saturation pushes/s | ratio to the anchor run just before | p50 / p99 / p99.9 ms | "
             "server CPU % | "
             f"server CPU µs/push | RSS MiB | at {top_rate:,.0f}/s offered: achieved, p99 ms, errors | "
             "query p99 ms | threshold afterwards |",
             "|---|---:|---:|---|---:|---:|---:|---|---:|---|"]
    for key, door in doors.items():
        sat = door["saturation"]
        push = sat["pushes"]
        top = door["rates"][-1]
        verify = door.get("verify")
        check = "n/a (no Fleet)" if verify is None else ("correct" if verify["threshold_ok"] else
                                                         f"WRONG: {verify['why']}")
        paired = door.get("paired_anchor", {}).get("pushes", {}).get("achieved_rps") or anchor
        ratio = f"{push['achieved_rps'] / paired:.0%} (of {paired:,.0f})" if paired else "n/a"
        lines.append(_row(door["title"], f"{push['achieved_rps']:,.0f}", ratio, _lat(push),
                          f"{sat['server']['cpu_pct']:.0f}", f"{cpu_us_per_request(sat):.1f}",
                          f"{sat['server']['rss_bytes'] / MIB:.0f}",
                          f"{top['pushes']['achieved_rps']:,.0f}/s, {_ms(top['pushes']['latency_ms']['p99'])}, "
                          f"{_errors(top['pushes'])}", _ms(top["queries"]["latency_ms"]["p99"]), check))
    return lines


def rates(results: dict) -> list[str]:
    lines = ["| front door | offered pushes/s | achieved pushes/s | push p50 / p99 / p99.9 ms | push errors | "
             "query p50 / p99 / p99.9 ms | server CPU % | loadgen CPU % |",
             "|---|---:|---:|---|---|---|---:|---:|"]
    for door in results["doors"].values():
        for run in door["rates"]:
            push = run["pushes"]
            lines.append(_row(door["title"], f"{run['plan']['rate']:,.0f}", f"{push['achieved_rps']:,.0f}",
                              _lat(push), _errors(push), _lat(run["queries"]), f"{run['server']['cpu_pct']:.0f}",
                              f"{run['loadgen_cpu_pct']:.0f}"))
    return lines


def sizes(results: dict) -> list[str]:
    native = {r["nodes"]: r for r in results.get("native", {}).get("recompute", [])}
    lines = ["| front door | nodes pushed (tracked) | RSS before → after fill, MiB | RSS bytes per node | "
             "Envoy heap bytes per node | recompute CPU in the process, ms | on threads (extra ms/s) | "
             "native recompute (`Fleet::tick`, MemoryStore, one cluster), ms |",
             "|---|---:|---|---:|---:|---:|---|---:|"]
    for key, points in results["sizes"].items():
        title = results["doors"][key]["title"]
        for p in points:
            n = native.get(p["nodes"], {})
            threads = ", ".join(f"`{t}` {ms:.0f}" for t, ms in p.get("recompute_threads_ms", {}).items())
            native_ms = (f"{n.get('tick_ms', float('nan')):.1f} (sweep {n.get('sweep_ms', float('nan')):.1f}, "
                         f"statistics {n.get('statistics_ms', float('nan')):.1f})")
            heap = p.get("heap_bytes_per_node")
            lines.append(_row(title, f"{p['nodes']:,} ({p.get('tracked') or 0:,.0f})",
                              f"{p['rss_before'] / MIB:.0f} → {p['rss_after'] / MIB:.0f}",
                              f"{p['bytes_per_node']:,.0f}", "–" if heap is None else f"{heap:,.0f}",
                              f"{p['recompute_cpu_ms']:.0f}", threads or "–", native_ms))
    return lines


def _p999(runs: list) -> float:
    """The median p99.9 of push latency over `runs`."""
    values = sorted(r["pushes"]["latency_ms"]["p999"] for r in runs)
    return values[len(values) // 2]


def stalls(results: dict) -> list[str]:
    lines = ["| front door | offered pushes/s | push_interval 5s: p99.9 ms by round (median) | "
             "no recompute in the window (push_interval 1h): p99.9 ms by round (median) | ratio of the medians |",
             "|---|---:|---|---|---:|"]
    for key, sides in results["stalls"].items():
        if "with" not in sides:
            continue  # a report of an older run's results
        cells = [f"{', '.join(_ms(r['pushes']['latency_ms']['p999']) for r in sides[s])} ({_ms(_p999(sides[s]))})"
                 for s in ("with", "without")]
        lines.append(_row(results["doors"][key]["title"], f"{sides['with'][0]['plan']['rate']:,.0f}", *cells,
                          f"{_p999(sides['with']) / _p999(sides['without']):.2f} ×"))
    return lines


def observe(results: dict) -> list[str]:
    """The observe-mode pair: each side per round, and the ratio of with to without the filter."""
    pair = results.get("observe")
    if not pair:
        return []
    titles = pair["titles"]
    rate = pair["rounds"][0]["proxy"]["rate"]["plan"]["rate"]
    lines = ["| round | pipeline | saturation pushes/s | ratio to without the filter | p50 / p99 / p99.9 ms | "
             f"front Envoy CPU µs/push | upstream CPU % | idle RSS MiB | at {rate:,.0f}/s offered: achieved, "
             "p50 / p99 ms, front Envoy CPU %, errors | pushes received → reached the upstream |",
             "|---:|---|---:|---:|---|---:|---:|---:|---|---|"]
    for n, sides in enumerate(pair["rounds"], 1):
        base = sides["proxy"].get("saturation", {}).get("pushes", {}).get("achieved_rps")
        for key, side in sides.items():
            sat, run = side.get("saturation"), side["rate"]
            push = run["pushes"]
            cells = ("–",) * 5
            if sat:
                rps = sat["pushes"]["achieved_rps"]
                cells = (f"{rps:,.0f}", f"{rps / base:.0%}" if base else "n/a", _lat(sat["pushes"]),
                         f"{cpu_us_per_request(sat):.1f}", f"{sat['upstream_cpu_pct']:.0f}")
            lines.append(_row(n, titles[key], *cells, f"{side['idle_rss_bytes'] / MIB:.0f}",
                              f"{push['achieved_rps']:,.0f}/s, {_ms(push['latency_ms']['p50'])} / "
                              f"{_ms(push['latency_ms']['p99'])}, {run['server']['cpu_pct']:.0f}, {_errors(push)}",
                              _forwarded(side.get("requests"))))
    return lines


def _forwarded(requests: dict | None) -> str:
    if not requests:
        return "–"
    all_of = "all" if requests["upstream"] == requests["received"] else "**NOT all**"
    return f"{requests['received']:,} → {requests['upstream']:,} ({all_of})"


def observe_summary(results: dict) -> str:
    """One sentence: the mean ratio over the rounds and what was checked afterwards."""
    pair = results.get("observe")
    if not pair:
        return ""
    ratios = [sides["observe"]["saturation"]["pushes"]["achieved_rps"] /
              sides["proxy"]["saturation"]["pushes"]["achieved_rps"]
              for sides in pair["rounds"] if "saturation" in sides["proxy"] and "saturation" in sides["observe"]]
    extra = [cpu_us_per_request(sides["observe"]["saturation"]) - cpu_us_per_request(sides["proxy"]["saturation"])
             for sides in pair["rounds"] if "saturation" in sides["proxy"] and "saturation" in sides["observe"]]
    verify, forwarded = pair.get("verify", {}), pair.get("forwarded", {})
    text = ""
    if ratios:
        text += (f"With the filter in observe mode the pipeline carries {sum(ratios) / len(ratios):.0%} of what it "
                 f"carries without it (mean of {len(ratios)} round{'s' * (len(ratios) > 1)}: "
                 f"{', '.join(f'{r:.0%}' for r in ratios)}), at {sum(extra) / len(extra):+.1f} µs of front Envoy "
                 "CPU per push. ")
    every = all(side.get("requests") and side["requests"]["upstream"] == side["requests"]["received"]
                for sides in pair["rounds"] for side in sides.values())
    text += ("Every push reached the upstream. " if every else
             "**Some pushes did not reach the upstream** (answered by the front Envoy itself). ")
    text += ("Thresholds afterwards: " + ("correct" if verify.get("threshold_ok") else
                                          f"WRONG: {verify.get('why', 'not checked')}") + "; ")
    text += ("a push came back 200 `{}` with `X-Ingero-Threshold` added." if forwarded.get("ok")
             else f"a push did NOT come back as expected: {forwarded}.")
    return text


def _recompute_by_thread(point: dict, interval_s: int) -> dict:
    """A size point's extra CPU by thread, per recompute (extra ms/s × the push interval)."""
    return {t: ms * interval_s for t, ms in point.get("recompute_threads_ms", {}).items()}


def million(results: dict) -> list[str]:
    """bench/million.py's rows: a fresh Envoy per door and size, filled, then a trickle, then the rate."""
    m = results.get("million")
    if not m:
        return []
    lines = [f"{m['date']}, {m['clusters']:,} clusters, push_interval {m['interval_s']} s:", "",
             "| front door | nodes tracked | fill, s | Envoy heap B/node | RSS B/node | one recompute: extra CPU of "
             "the process, ms | on threads (extra ms/s × 5 s) | "
             f"at {m['rate']:,}/s offered: achieved, p50 / p99 / p99.9 ms, errors |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    for p in m["rows"]:
        lat, heap = p["then"]["latency_ms"], p["heap_bytes_per_node"]
        threads = ", ".join(f"`{t}` {ms:.0f}" for t, ms in _recompute_by_thread(p, m["interval_s"]).items())
        lines.append(_row(p["title"], f"{p['tracked'] or 0:,.0f}", f"{p['fill_s']:.0f}",
                          "–" if heap is None else f"{heap:.0f}", f"{p['bytes_per_node']:.0f}",
                          f"{p['recompute_cpu_ms']:.0f}", threads or "–",
                          f"{p['then']['achieved']:,.0f}/s, {_ms(lat['p50'])} / {_ms(lat['p99'])} / "
                          f"{_ms(lat['p999'])}, {p['then']['errors']}"))
    n = m["native"]
    lines += ["", f"Natively `Fleet::tick` over {n['nodes']:,} nodes in {m['clusters']:,} clusters ({n['shards']:,} "
              f"shards): {n['tick_ms']:.0f} ms (sweep {n['sweep_ms']:.0f}, statistics {n['statistics_ms']:.0f})."]
    return lines


# The thread a door's recompute runs on: the dynamic module's ticker; the wasm filter's root context on
# Envoy's main thread (with `recompute: any` a worker may win an interval, then it shows there too).
RECOMPUTE_THREAD = {"dynamic": "ingero-fleet-ti", "wasm": "envoy"}


def _stall_cause(results: dict, key: str) -> str:
    """Why requests may wait for a recompute here: its CPU burst on the same 2 cores, unless the difference is
    within the spread of the rounds without one."""
    nodes = results["meta"]["params"]["nodes"]
    point = next((p for p in results.get("sizes", {}).get(key, []) if p["nodes"] == nodes), None)
    burst = f" ({point['recompute_cpu_ms']:.0f} ms of CPU at this size)" if point else ""
    sides = results["stalls"][key]
    quiet = [r["pushes"]["latency_ms"]["p999"] for r in sides["without"]]
    if _p999(sides["with"]) <= max(quiet):
        return (f"within the spread of the rounds without a recompute ({_ms(min(quiet))}–{_ms(max(quiet))} ms): "
                "not separable from this machine's noise")
    return f"the recompute{burst} runs beside the workers and the load generator on the same 2 cores"


def _million_targets(m: dict) -> list[str]:
    rows, by = [], {(p["door"], p["nodes"]): p for p in m["rows"]}
    for (door, nodes), p in by.items():
        if nodes != 1_000_000:
            continue
        heap, cpu = p["heap_bytes_per_node"], p["recompute_cpu_ms"]
        if heap is not None:
            rows.append(_row(f"{p['title']}, 1 000 000 nodes: ≤ 200 B of Envoy heap per node", f"{heap:.0f} B",
                             _met(heap <= 200), ""))
        by_thread = _recompute_by_thread(p, m["interval_s"])
        name = RECOMPUTE_THREAD.get(door, "")
        ms = by_thread.get(name, cpu)
        threads = ", ".join(f"`{t}` {v:.0f} ms" for t, v in by_thread.items())
        rows.append(_row(f"{p['title']}, 1 000 000 nodes: recompute ≤ 100 ms, off the request path",
                         f"{ms:.0f} ms on `{name or 'the process'}` (the process {cpu:.0f} ms; by thread: "
                         f"{threads or '–'})", _met(ms <= 100), "" if ms <= 100 else
                         ("the wasm host copies every shard into the VM, a host call each" if door == "wasm" else
                          "the sweep reads every shard") + " (docs/performance.md)"))
        small = by.get((door, 100_000))
        if small:
            big_p99, small_p99 = p["then"]["latency_ms"]["p99"], small["then"]["latency_ms"]["p99"]
            ok = big_p99 <= 1.2 * small_p99
            rows.append(_row(f"{p['title']}: p99 at {m['rate']:,}/s with 1 000 000 nodes unchanged from 100 000",
                             f"{_ms(big_p99)} against {_ms(small_p99)} ms", _met(ok), "" if ok else
                             "one run of each; the recompute's burst of CPU shares the 2 cores with the workers "
                             "and the load generator (docs/performance.md)"))
    return rows


def _saturation_ratio(results: dict, key: str) -> float | None:
    door = results["doors"].get(key)
    paired = (door or {}).get("paired_anchor", {}).get("pushes", {}).get("achieved_rps")
    return door["saturation"]["pushes"]["achieved_rps"] / paired if door and paired else None


def _extra(us: float) -> str:
    """A cost over another row; one below zero is this machine's noise, not a saving."""
    return f"{us:+.1f} µs" if us > 0 else "nothing measurable (noise: see the rounds' ranges)"


def _over(runs: list, row: int, base: int = 0) -> tuple[float, dict]:
    """Envoy CPU µs per request of `runs[row]` over `runs[base]`, and that row's CPU by where perf found it."""
    us = cpu_us_per_request(runs[row])
    split = {g: us * share / 100 for g, share in (runs[row].get("during") or {}).items()}
    return us - cpu_us_per_request(runs[base]), split


def _met(ok: bool | None) -> str:
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def targets(results: dict) -> list[str]:
    """Issue #15's targets against this run: measured, met or not, and for a miss where the cost goes
    (the tables below have the details)."""
    doors, rows = results["doors"], []

    def ratio_row(target: str, key: str, goal: float, cost: str) -> None:
        ratio = _saturation_ratio(results, key)
        if ratio is not None:
            rows.append(_row(target, f"{ratio:.0%} of the anchor", _met(ratio >= goal), cost if ratio < goal else ""))

    wasm, dynamic = results.get("variants", []), results.get("dynamic_variants", [])
    if len(wasm) == 5:
        over, split = _over(wasm, 4)
        cost = (f"{over:.1f} µs of Envoy CPU per push over the anchor: the filter's own JIT code "
                f"{split.get('wasm (JIT)', 0):.1f} µs of a push's {cpu_us_per_request(wasm[4]):.1f}, Envoy's code "
                f"(wasm host, filter chain) {split.get('envoy', 0):.1f} against the anchor's "
                f"{_over(wasm, 0)[1].get('envoy', 0):.1f}; an empty push costs {_extra(_over(wasm, 2)[0])} "
                "over the anchor (the host's calls and copies)")
        ratio_row("wasm filter ≥ 70 % of the anchor (JSON agent push)", "wasm", 0.70, cost)
        proto = wasm[3]["pushes"]["achieved_rps"] / wasm[0]["pushes"]["achieved_rps"]
        rows.append(_row("wasm filter ≥ 80 % (protobuf push, closed-loop split below)", f"{proto:.0%} of the anchor",
                         _met(proto >= 0.80), "as the JSON push" if proto < 0.80 else ""))
    cost = "no split measured in this run"
    if len(dynamic) == 4:
        abi, core = _over(dynamic, 1)[0], _over(dynamic, 3, 1)[0]
        native = results.get("native", {}).get("steps", {}).get("us_per_call", {}).get("whole push: JSON agent body")
        cost = (f"an empty push (Envoy's filter chain and the module ABI, almost no core work) {_extra(abi)} of "
                f"Envoy CPU over the anchor; the core's decode, validation and store of an agent push "
                f"{_extra(core)} more" + (f" (the same push natively in this run: {native:.1f} µs)" if native else ""))
    ratio_row("dynamic module ≥ 90 %", "dynamic", 0.90, cost)
    if "server" in doors and "anchor" in doors:
        server, anchor = (cpu_us_per_request(doors[k]["saturation"]) for k in ("server", "anchor"))
        ratio_row("standalone server ≥ 100 %", "server", 1.00,
                  f"{server:.1f} µs of CPU per push against the anchor's {anchor:.1f} (the core's push and its "
                  "HTTP server, the same cores as the load generator)")
    top = {k: d["rates"][-1] for k, d in doors.items() if d.get("rates")}
    if top:
        rate = next(iter(top.values()))["plan"]["rate"]
        anchor_q = top["anchor"]["queries"]["latency_ms"]["p99"] if "anchor" in top else None
        for key, run in top.items():
            if key == "anchor":
                continue
            q = run["queries"]["latency_ms"]["p99"]
            why = (f"pushes achieved {run['pushes']['achieved_rps']:,.0f}/s; the anchor (a constant answer) has "
                   f"query p99 {_ms(anchor_q)} ms at this rate on this machine" if anchor_q is not None else "")
            rows.append(_row(f"{doors[key]['title']}: query p99 < 1 ms at {rate:,.0f} pushes/s offered",
                             f"{_ms(q)} ms", _met(q < 1), why if q >= 1 else ""))
        if "upstream" in top:
            push = top["upstream"]["pushes"]
            ok = push["latency_ms"]["p99"] < 5 and not push["error_count"] and not push["unsent"]
            sat = doors["upstream"]["saturation"]
            rows.append(_row(f"upstream fallback: p99 < 5 ms, no errors at {rate:,.0f}/s",
                             f"{_ms(push['latency_ms']['p99'])} ms, errors {_errors(push)}", _met(ok),
                             "" if ok else f"saturates at {sat['pushes']['achieved_rps']:,.0f}/s: "
                             f"{cpu_us_per_request(sat):.1f} µs of CPU per push (Envoy and the server together) "
                             "on the 2 cores the load generator shares"))
    for r in results.get("native", {}).get("recompute", []):
        if r.get("nodes") == 100_000:
            rows.append(_row("recompute of 100 000 nodes < 10 ms (native `Fleet::tick`)", f"{r['tick_ms']:.1f} ms",
                             _met(r["tick_ms"] < 10), ""))
    for key, sides in results.get("stalls", {}).items():
        if "with" not in sides:
            continue
        with_, without = _p999(sides["with"]), _p999(sides["without"])
        ok = with_ <= 1.2 * without
        rows.append(_row(f"{doors[key]['title']}: push p99.9 at {sides['with'][0]['plan']['rate']:,.0f}/s with "
                         "recomputes ≤ 1.2 × without", f"{_ms(with_)} against {_ms(without)} ms "
                         f"({with_ / without:.2f} ×, medians of {len(sides['with'])} rounds)", _met(ok),
                         "" if ok else _stall_cause(results, key)))
    if results.get("million"):
        rows += _million_targets(results["million"])
    if not rows:
        return []
    return ["| target (issue #15) | this run | | where the cost goes, for a target missed |",
            "|---|---|---|---|", *rows]


def one_worker(results: dict) -> list[str]:
    two = {door["title"]: door["saturation"] for door in results["doors"].values()}
    lines = ["| front door (closed loop) | --concurrency 1: pushes/s, p99 ms, Envoy CPU % | "
             f"--concurrency {results['meta']['concurrency']} (above): pushes/s, p99 ms, Envoy CPU % |",
             "|---|---|---|"]
    for run in results.get("one_worker", []):
        other = two.get(run["title"])
        cells = [f"{r['pushes']['achieved_rps']:,.0f}, {_ms(r['pushes']['latency_ms']['p99'])}, "
                 f"{r['server']['cpu_pct']:.0f}" if r else "n/a" for r in (run, other)]
        lines.append(f"| {run['title']} | {cells[0]} | {cells[1]} |")
    return lines


def variants(results: dict, key: str = "variants", code: str = "wasm (JIT)") -> list[str]:
    """The closed-loop steps of `key`, each row's CPU split by where perf found it; `code` names the
    Fleet code's own column (the wasm filter's JIT code, or the dynamic module)."""
    runs = results.get(key, [])
    if not runs:
        return []
    base = runs[0]
    base_us = cpu_us_per_request(base)
    groups = ("kernel", "envoy", code, "libc")
    lines = ["| Envoy configuration (closed loop) | requests/s | ratio to anchor | p99 ms | "
             "Envoy CPU µs/request | its rounds' range | over the anchor, µs | " +
             " | ".join(f"{g} µs" for g in groups) + " |",
             "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(groups)]
    for run in runs:
        rps = run["pushes"]["achieved_rps"]
        us = cpu_us_per_request(run)
        split = run.get("during") or {}
        shares = " | ".join(f"{us * split[g] / 100:.1f}" if g in split else "–" for g in groups)
        # perf found the process hardly running while requests were answered: something else served them.
        suspect = "" if split or "during" not in run else " **(suspect: measured Envoy mostly idle)**"
        spread = "–".join(f"{x:.1f}" for x in (min(run["rounds_us"]), max(run["rounds_us"]))) \
            if run.get("rounds_us") else "–"
        lines.append(f"| {run['title']} ({run['plan']['body_bytes']} B body){suspect} | {rps:,.0f} | "
                     f"{rps / base['pushes']['achieved_rps']:.0%} | {_ms(run['pushes']['latency_ms']['p99'])} | "
                     f"{us:.1f} | {spread} | {us - base_us:+.1f} | {shares} |")
    return lines


def steps(results: dict) -> list[str]:
    native = results.get("native", {}).get("steps")
    if not native:
        return []
    lines = [f"| step (native, {native['json_body_bytes']} B JSON / {native['protobuf_body_bytes']} B protobuf "
             f"agent body, {native['nodes']:,} nodes) | µs per call |", "|---|---:|"]
    lines += [f"| {name} | {us:.2f} |" for name, us in native["us_per_call"].items()]
    return lines


def instructions(results: dict) -> list[str]:
    profile = results.get("native", {}).get("callgrind")
    if not profile:
        return []
    us = results["native"]["steps"]["us_per_call"]
    lines = ["| step (native) | instructions per call | µs per call |", "|---|---:|---:|"]
    lines += [f"| {name} | {ir:,.0f} | {us[name]:.2f} |" for name, ir in profile["steps"].items()]
    lines += ["", "| function (own instructions, one JSON agent push) | instructions per push |", "|---|---:|"]
    lines += [f"| `{name[:110]}` | {ir:,.0f} |" for name, ir in profile["top"]]
    return lines


def plot(results: dict, path) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for door in results["doors"].values():
        xs = [r["plan"]["rate"] for r in door["rates"]]
        line, = ax.plot(xs, [r["pushes"]["latency_ms"]["p99"] for r in door["rates"]], marker="o",
                        label=f"{door['title']} p99")
        ax.plot(xs, [r["pushes"]["latency_ms"]["p50"] for r in door["rates"]], linestyle="--",
                color=line.get_color(), alpha=0.6, label=f"{door['title']} p50")
    ax.set_yscale("log")
    ax.set_xlabel("offered pushes per second (open loop; threshold queries on top)")
    ax.set_ylabel("push latency, ms (log)")
    m = results["meta"]
    ax.set_title(f"Push latency against offered rate ({m['cores']} cores shared with the load generator)")
    ax.axhline(5, color="grey", linewidth=0.8, linestyle=":", label="p99 target, 5 ms")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def markdown(results: dict) -> str:
    m = results["meta"]
    p = m["params"]
    skipped = "".join(f"\n- not measured: `{k}` ({why})" for k, why in results["skipped"].items())
    skipped += "".join(f"\n- **failed, so missing below**: {stage} ({why})"
                       for stage, why in results.get("failed", {}).items())
    sections = [
        "# Benchmark results",
        "",
        f"Generated by `scripts/bench` on {m['date']}: {m['cores']} cores shared by the front door under test and "
        f"the load generator (`ingero-bench`, also on those cores); 1-minute load average {m['load_average'][0]:.2f} "
        f"at the start, {m.get('load_average_end', [float('nan')])[0]:.2f} at the end; Envoy {m['envoy_version']}, "
        f"`--concurrency {m['concurrency']}`; whole run {m['elapsed_s'] / 60:.1f} min. Absolute numbers drift "
        f"between runs here (other work shares the machine): compare the ratios to the anchor, which is measured "
        f"again right before each front door's saturation run.",
        "",
        f"Load: {p['nodes']:,} agents in {p['clusters']} clusters, each push a {_body_bytes(results)} B agent OTLP "
        f"JSON body with every gauge the agent sends, a different node per request; {p['connections']} keep-alive "
        f"push connections. Saturation is closed loop ({p['saturation']:.0f} s after {p['saturation_warmup']:.0f} s "
        f"warm-up, pushes only). Offered rates are open loop ({p['duration']:.0f} s each) with latency counted from "
        f"each request's scheduled send time (coordinated omission corrected), plus one `GET /api/v1/threshold` on "
        f"the API port per {1 / p['query_share']:.0f} pushes on their own connections. Threshold afterwards: "
        f"every node pushed once more, then each cluster's threshold must equal an independent median/MAD "
        f"computation (`threshold.ema_alpha` 1)."
        + skipped,
        "",
        "## Front doors",
        "",
        *summary(results),
        "",
        "Issue #15's targets against this run (the one-million-node rows when the run had `--million`):",
        "",
        *targets(results),
        "",
        "![push latency against offered rate](bench.png)",
        "",
        "## Latency by offered rate",
        "",
        *rates(results),
        "",
        "## Memory per tracked node and recompute cost",
        "",
        "Each size starts a fresh process with `max_expected_nodes` = the size and `push_interval` 1s, warms it up "
        "with empty pushes, then pushes every node (all in one cluster) once. Bytes per node = growth / nodes, of "
        "the RSS and, for Envoy, of the heap its allocator has handed out (admin `/memory` `allocated`; RSS "
        "growth hides memory the allocator already held). "
        "Recompute CPU in the process = CPU per second under a trickle of 100 empty pushes/s (they add no nodes "
        "but keep every worker ticking) after the fill minus before it: one recompute per second; /proc "
        "resolution 10 ms. The native column times `Fleet::tick` over the core's `MemoryStore` (wall clock, "
        "median of 3), all nodes in one cluster.",
        "",
        *sizes(results),
        "",
        *(["## One million nodes", "",
            "`scripts/bench --million` (`bench/million.py`): for each Envoy front door a fresh Envoy with "
            "`max_expected_nodes` 1 000 000, filled by every agent pushing once, then 30 s of 100 empty pushes/s "
            "(six recomputes) for one recompute's extra CPU, then 10 000 pushes/s offered for 5 s; beside it the "
            "same on 100 000 nodes.", "", *million(results), ""] if results.get("million") else []),
        "## Recompute stalls",
        "",
        "A recompute runs on whichever thread first acts in a new push interval (the table above names the "
        "threads that gained CPU once the nodes were there: `envoy` is Envoy's main thread, `wrk:worker_N` its "
        "workers). Where it blocks a worker, or holds what a worker needs, requests wait. The same offered rate "
        "on a fresh process whose push interval does not end inside the window shows the latency without it. "
        "Each side is a fresh process that first takes one push from every node, then the offered rate for "
        "twice the rate runs' time; the sides alternate over three rounds (one run's p99.9 here moves by half "
        "with the machine's other work).",
        "",
        *stalls(results),
        "",
        "## Fleet on an existing pipeline (observe mode)",
        "",
        "An Envoy that already proxies pushes to an upstream (`envoy/envoy-observe.yaml` with the wasm filter "
        "taken off the push listener) against the same Envoy with the filter in observe mode (`\"mode\": "
        "\"observe\"`: the push goes on unchanged, the filter scores it on the way and adds the threshold "
        "headers to the upstream's answer). The upstream is one anchor Envoy (buffer + `direct_response` 200 "
        "`{}`) shared by both sides, so the difference is the filter's. Each side is a fresh front Envoy; the "
        "rounds alternate them. Pushes only, the same agents and connections as above; CPU µs/push is the front "
        "Envoy's alone, the upstream's CPU is shown beside it.",
        "",
        *observe(results),
        "",
        observe_summary(results),
        "",
        "## One Envoy worker or two",
        "",
        *one_worker(results),
        "",
        "## Where a wasm-filter push spends its time",
        "",
        "Envoy CPU per request under closed-loop saturation, by configuration: each row adds one piece of work "
        "to the one above it. Each row is the median of three rounds (the rows' order shuffled in each round) "
        "by CPU per request, with the range of the three beside it. The last four columns split that CPU by where `perf record -e cpu-clock` (999 Hz, "
        "2.5 s per row) found it: the kernel (TCP, scheduling), Envoy's own code (HTTP codec, filter chain, "
        "the wasm host: ABI calls, buffer copies, shared data, stats; its symbols are stripped), the filter's "
        "JIT-compiled wasm, and libc (memcpy, locks). Sampling costs these rows a few per cent of throughput.",
        "",
        *variants(results),
        "",
        "## Where a dynamic-module push spends its time",
        "",
        "As above, for the dynamic module. An empty push is Envoy's filter chain and the module ABI (headers "
        "read, body read, the reply sent) with almost no work of the core; an agent push adds the core's "
        "decode, validation and store. The module allocates through Envoy's allocator (tcmalloc, in the "
        "`envoy` binary), so the core's allocations count in the `envoy` column, not the `module` one.",
        "",
        *variants(results, "dynamic_variants", "module"),
        "",
        "The core's steps natively (one thread, no proxy; `ingero-bench steps`), in time and in instructions "
        "(`valgrind --tool=callgrind` over `ingero-bench steps --only <step>` minus a run with no step; then the "
        "functions with the most instructions of their own inside one JSON push):",
        "",
        *(instructions(results) or steps(results)),
        "",
    ]
    return "\n".join(sections)


def _body_bytes(results: dict) -> str:
    for door in results["doors"].values():
        return f"{door['rates'][0]['plan']['body_bytes']:,}"
    return "?"


def write(results: dict, into=None) -> str:
    """Writes bench.md and bench.png into `into` (docs/ by default); returns the Markdown."""
    into = into or DOCS
    text = markdown(results)
    (into / "bench.md").write_text(text)
    plot(results, into / "bench.png")
    return text
