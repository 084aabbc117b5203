"""Plots of `autr bench` results (matplotlib, Agg backend: no display needed).

model: a bar chart of throughput per row (frames/s, grouped by T, each bar annotated with its ratio to the
    research-code baseline) above one latency histogram per row that ran (its timed samples).
msda: median time per case and implementation (log scale), annotated with the achieved GB/s.
stream: windows/s of the realtime and fast runs and their end-to-end p50 / p90 / p99 / max.
"""
from __future__ import annotations

import math
from pathlib import Path

__all__ = ["plot", "plot_model", "plot_msda", "plot_stream"]


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def plot_model(result: dict, path) -> Path:
    plt = _plt()
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    if not rows:
        raise ValueError("no row ran: nothing to plot")
    n = len(rows)
    cols = min(4, n)
    hist_rows = math.ceil(n / cols)
    fig = plt.figure(figsize=(max(8, 2.6 * cols), 4 + 2.4 * hist_rows))
    grid = fig.add_gridspec(1 + hist_rows, cols, height_ratios=[1.6] + [1] * hist_rows)
    ax = fig.add_subplot(grid[0, :])
    labels = [f"{r['label']}\nT={r['frames']}" for r in rows]
    values = [r.get("throughput_fps") or 0 for r in rows]
    colors = ["#888888" if r.get("baseline") else "#1f77b4" for r in rows]
    bars = ax.bar(range(n), values, color=colors)
    for bar, r in zip(bars, rows):
        sp = r.get("speedup_vs_baseline")
        if sp is not None:
            ax.annotate(f"{sp:.2f}x", (bar.get_x() + bar.get_width() / 2, bar.get_height()), ha="center",
                        va="bottom", fontsize=8)
    ax.set_xticks(range(n))
    ax.set_xticklabels(labels, fontsize=7, rotation=20, ha="right")
    ax.set_ylabel("frames / s (T / p50)")
    ax.set_title(f"{result['model']['preset']} {result['size']}x{result['size']} on "
                 f"{result.get('device_label', result.get('device_used'))} — ratio to the baseline (grey) on bars",
                 fontsize=9)
    for i, r in enumerate(rows):
        h = fig.add_subplot(grid[1 + i // cols, i % cols])
        samples = r.get("samples_ms") or []
        h.hist(samples, bins=max(5, min(30, len(samples) // 2 or 1)), color=colors[i])
        for q, style in (("p50", "-"), ("p99", "--")):
            h.axvline(r["latency_ms"][q], color="k", linestyle=style, linewidth=0.8)
        h.set_title(f"{r['label']} T={r['frames']}", fontsize=7)
        h.set_xlabel("latency ms (p50 -, p99 --)", fontsize=7)
        h.tick_params(labelsize=6)
    fig.tight_layout()
    return _save(fig, path)


def plot_msda(result: dict, path) -> Path:
    plt = _plt()
    rows = [r for r in result["rows"] if r["status"] == "ok"]
    if not rows:
        raise ValueError("no row ran: nothing to plot")
    fig, ax = plt.subplots(figsize=(max(7, 1.2 * len(rows)), 4.5))
    labels = [f"{r['case']}\n{r['impl']} {r['dtype']}" for r in rows]
    bars = ax.bar(range(len(rows)), [r["latency_ms"]["p50"] for r in rows], color="#2ca02c")
    for bar, r in zip(bars, rows):
        ax.annotate(f"{r['bandwidth_gbs']:.1f} GB/s", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels(labels, fontsize=7, rotation=20, ha="right")
    ax.set_ylabel("median ms (log)")
    ax.set_title(f"MSDA op on {result.get('device_label', result.get('device_used'))}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot_stream(result: dict, path) -> Path:
    plt = _plt()
    runs = result["runs"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 4))
    modes = list(runs)
    a.bar(modes, [runs[m].get("windows_per_s") or 0 for m in modes], color="#9467bd")
    a.set_ylabel("windows / s")
    for i, m in enumerate(modes):
        e = runs[m]["end_to_end_ms"]
        if e.get("count"):
            qs = ["p50", "p90", "p99", "max"]
            b.plot(qs, [e[q] for q in qs], marker="o", label=f"{m} (dropped {runs[m]['dropped']})")
    b.set_ylabel("end-to-end ms")
    b.legend(fontsize=8)
    fig.suptitle(f"runtime on a file, {result['model'].get('backend')} backend, "
                 f"{result.get('device_label', '')}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot(result: dict, path) -> Path:
    fn = {"model": plot_model, "msda": plot_msda, "stream": plot_stream}.get(result.get("kind"))
    if fn is None:
        raise ValueError(f"no plot for result kind {result.get('kind')!r}")
    return fn(result, path)
