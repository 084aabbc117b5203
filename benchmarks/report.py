"""Markdown tables of `autr bench` results (one function per kind; `markdown(result)` picks it).

Rows that could not run are kept: the same configuration skipped for the same reason at several T (or
sizes) is one line listing them.
"""
from __future__ import annotations

__all__ = ["document", "markdown", "markdown_model", "markdown_msda", "markdown_stream", "markdown_gpu_check", "heading"]


def _f(x, fmt: str = ".1f", empty: str = "") -> str:
    return empty if x is None else format(x, fmt)


def collapse(rows, key, where):
    """Skipped / failed rows grouped by (key(row), reason) -> [(row, [where(row), ...])], first-seen order."""
    groups: dict = {}
    for r in rows:
        k = (key(r), r.get("status"), r.get("reason"))
        groups.setdefault(k, (r, []))[1].append(str(where(r)))
    return list(groups.values())


def heading(result: dict) -> str:
    kind = result.get("kind")
    what = {"model": lambda r: f"{r['model']['preset']} at {r['size']}x{r['size']}",
            "msda": lambda r: "MSDA op",
            "stream": lambda r: f"runtime on a file, {r['model'].get('backend')} backend",
            "gpu_check": lambda r: "GPU check",
            "precision_accuracy": lambda r: "accuracy of the exported precisions"}.get(kind, lambda r: kind)(result)
    name = (f"python -m autr.benchmarks.{kind}" if kind in ("gpu_check", "precision_accuracy")
            else f"autr bench {kind}")
    return f"`{name}` — {what}, {result.get('device_label', '?')}, {str(result.get('date', ''))[:10]}"


def markdown_model(result: dict) -> str:
    gpu = any("gpu" in r for r in result["rows"])
    head = ["backend", "precision", "variant", "T", "p50 ms", "p90 ms", "p99 ms", "max ms", "frames/s",
            "vs baseline", "vs floor", "peak mem MB"] + (["GPU compute ms", "copies ms"] if gpu else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    floor = result.get("floor")
    if floor:
        lines = [f"Compute floor: {floor['gflops_per_frame']} GFLOP per frame / {floor['gemm']['gflops']:.0f} GFLOP/s "
                 f"(numpy float32 GEMM on {floor['gemm']['threads']} thread(s), this run) = "
                 f"**{floor['ms_per_frame']:.1f} ms per frame**; `vs floor` = p50 / (T × floor).", ""] + lines
    ok = [r for r in result["rows"] if r["status"] == "ok"]
    for r in ok:
        lat = r["latency_ms"]
        mem = (r.get("gpu_memory") or {}).get("peak_allocated_mb") or (r.get("gpu_memory") or {}).get("used_delta_mb")
        if mem is None:
            mem = (r.get("memory") or {}).get("peak_rss_delta_mb")
        cells = [r["backend"] + (" (baseline)" if r.get("baseline") else ""), r["precision"], r["variant"],
                 str(r["frames"]), _f(lat["p50"]), _f(lat["p90"]), _f(lat["p99"]), _f(lat["max"]),
                 _f(r.get("throughput_fps"), ".2f"), _f(r.get("speedup_vs_baseline"), ".2f") + "x",
                 _f(r.get("vs_floor"), ".2f", "–") + ("x" if r.get("vs_floor") else ""), _f(mem, ".0f")]
        if gpu:
            g = r.get("gpu") or {}
            cells += [_f((g.get("compute_ms") or {}).get("p50"), ".2f"), _f((g.get("copy_ms") or {}).get("p50"), ".2f")]
        lines.append("| " + " | ".join(cells) + " |")
    bad = [r for r in result["rows"] if r["status"] != "ok"]
    for r, ts in collapse(bad, lambda r: (r["backend"], r["precision"], r["variant"]), lambda r: r["frames"]):
        cells = [r["backend"], r["precision"], r["variant"], ",".join(ts),
                 f"{r['status']}: {r['reason']}".replace("|", "/")] + [""] * (len(head) - 5)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_msda(result: dict) -> str:
    head = ["case", "impl", "dtype", "p50 ms", "GB/s (model)", "MB moved", "vs reference", "rel. error vs fp64"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["rows"]:
        if r["status"] != "ok":
            continue
        lines.append("| " + " | ".join([r["case"], r["impl"], r["dtype"], _f(r["latency_ms"]["p50"], ".3f"),
                                         _f(r.get("bandwidth_gbs"), ".2f"), _f(r["bytes"] / 1e6, ".2f"),
                                         _f(r.get("speedup_vs_reference"), ".2f", "–") +
                                         ("x" if r.get("speedup_vs_reference") else ""),
                                         _f(r.get("rel_error_vs_fp64"), ".1e")]) + " |")
    bad = [r for r in result["rows"] if r["status"] != "ok"]
    for r, cases in collapse(bad, lambda r: (r["impl"], r["dtype"]), lambda r: r["case"]):
        where = "all cases" if len(cases) == len(result.get("cases", [])) else ", ".join(cases)
        lines.append("| " + " | ".join([where, r["impl"], r["dtype"], f"{r['status']}: {r['reason']}".replace("|", "/")]
                                        + [""] * 4) + " |")
    return "\n".join(lines)


def markdown_stream(result: dict) -> str:
    head = ["run", "windows/s", "e2e p50 ms", "p90 ms", "p99 ms", "max ms", "inference p50 ms", "alone p50 ms",
            "in pipeline / alone", "alone at the run's pace p50 ms", "in pipeline / paced", "frames out", "dropped"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for mode, r in result["runs"].items():
        e, inf = r["end_to_end_ms"], r["inference_ms"]
        alone = (r.get("inference_isolated_ms") or {}).get("p50")
        paced = (r.get("inference_isolated_paced_ms") or {}).get("p50")
        ratio = r.get("inference_in_pipeline_vs_isolated")
        paced_ratio = r.get("inference_in_pipeline_vs_isolated_paced")
        lines.append("| " + " | ".join([mode, _f(r.get("windows_per_s"), ".2f"), _f(e.get("p50")), _f(e.get("p90")),
                                         _f(e.get("p99")), _f(e.get("max")), _f(inf.get("p50")), _f(alone, ".1f", "–"),
                                         _f(ratio, ".2f", "–") + ("x" if ratio else ""), _f(paced, ".1f", "–"),
                                         _f(paced_ratio, ".2f", "–") + ("x" if paced_ratio else ""), str(r["output"]),
                                         f"{r['dropped']} of {r.get('captured', '?')}"]) + " |")
    return "\n".join(lines)


def markdown_gpu_check(result: dict) -> str:
    lines = ["| target | measured | threshold | result |", "|---|---|---|---|"]
    for t in result.get("targets", []):
        value = "n/a" if t.get("value") is None else f"{t['value']:.3g}"
        lines.append(f"| {t['name']} | {value} | {t['op']} {t['threshold']} | "
                     f"{'PASS' if t['passed'] else 'FAIL'} |")
    return "\n".join(lines)


def markdown_precision_accuracy(result: dict) -> str:
    from .precision_accuracy import format_table

    return format_table(result)


def markdown(result: dict) -> str:
    kind = result.get("kind")
    fn = {"model": markdown_model, "msda": markdown_msda, "stream": markdown_stream,
          "gpu_check": markdown_gpu_check, "precision_accuracy": markdown_precision_accuracy}.get(kind)
    if fn is None:
        raise ValueError(f"no markdown for result kind {kind!r}")
    return fn(result)


def document(result: dict) -> str:
    """A small markdown file: heading, date and device, the command, the table."""
    return "\n".join([f"### {heading(result)}", "", f"Measured {result.get('date')} on {result.get('device_label')}.",
                      "", "```bash", result.get("command", ""), "```", "", markdown(result), ""])
