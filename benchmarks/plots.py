"""Plots of `autr bench` results (matplotlib, Agg backend: no display needed).

model: a bar chart of throughput per row (frames/s, grouped by T, each bar annotated with its ratio to the
    research-code baseline) above one latency histogram per row that ran (its timed samples).
msda: median time per case and implementation (log scale), annotated with the achieved GB/s.
stream: windows/s of the realtime and fast runs and their end-to-end p50 / p90 / p99 / max.
paper tables: test metrics per method and row (seed mean, half range, each seed a dot) beside each run's
    validation mIoU per epoch (mean over seeds): what the tables say, and whether the budget trained them out.
"""
from __future__ import annotations

import math
from pathlib import Path

__all__ = ["plot", "plot_model", "plot_msda", "plot_paper_tables", "plot_stream"]


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


# (label, run, metric) of the paper-tables figure's bar groups
PAPER_GROUPS = (("S4", "s4", "miou"), ("MS3", "ms3", "miou"), ("MS3 from S4", "ms3-from-s4", "miou"),
                ("open set\nseen", "open-set", "miou_seen"), ("open set\nunseen", "open-set", "miou_unseen"),
                ("S4 w/o audio\nqueries", "no-audio-queries", "miou"),
                ("S4 w/o dyn.\nconv", "no-dynamic-conv", "miou"), ("S4\naudio_swap", "s4", "audio_swap"))
PAPER_METHODS = {"autr": ("AuTR", "#1f77b4", "-"), "tpavi": ("TPAVI", "#ff7f0e", "--")}


def plot_paper_tables(result: dict, path) -> Path:
    """A `paper_tables` result: test metrics per row and method (left), validation mIoU per epoch (right)."""
    plt = _plt()
    summary, runs = result["summary"], result["runs"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(13, 4.4), gridspec_kw={"width_ratios": [1.5, 1]})
    width = 0.38
    for k, (method, (label, color, _)) in enumerate(PAPER_METHODS.items()):
        for i, (_, run, metric) in enumerate(PAPER_GROUPS):
            rec = summary.get(f"{method}/{run}", {}).get(metric)
            if not rec:
                continue
            x = i + (k - 0.5) * width
            a.bar(x, rec["mean"], width, yerr=rec["spread"], color=color, capsize=3, label=label)
            label = None  # one legend entry per method
            a.scatter([x] * len(rec["values"]), rec["values"], color="white", edgecolors="k", s=14, zorder=3)
    a.set_xticks(range(len(PAPER_GROUPS)), [g[0] for g in PAPER_GROUPS], fontsize=7.5)
    a.set_ylabel("test mIoU (last group: audio_swap)")
    a.legend(fontsize=8)
    a.set_title("seed mean, ± half range, dots: seeds", fontsize=9)
    curves: dict = {}
    for r in runs.values():
        if r.get("val_miou_curve"):
            curves.setdefault((r["method"], r["run"]), []).append(r["val_miou_curve"])
    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    colors = {run: cycle[i % len(cycle)] for i, run in enumerate(sorted({run for _, run in curves}))}
    for (method, run), cs in sorted(curves.items()):
        n = min(len(c) for c in cs)
        mean = [sum(c[e] for c in cs) / len(cs) for e in range(n)]
        b.plot(range(1, n + 1), mean, PAPER_METHODS[method][2], color=colors[run],
               label=f"{PAPER_METHODS[method][0]} {run}")
    b.set_xlabel("epoch")
    b.set_ylabel("validation mIoU (mean over seeds)")
    b.set_title("training: solid AuTR, dashed TPAVI", fontsize=9)
    if curves:
        b.legend(fontsize=6.5, ncol=2)
    budget = result.get("budget", {})
    fig.suptitle(f"the paper's tables on SynthAVS: {budget.get('train')} clips, {budget.get('epochs')} epochs, "
                 f"{budget.get('size')} px, seeds {budget.get('seeds')}; {result.get('hardware', '')}", fontsize=9)
    fig.tight_layout()
    return _save(fig, path)


def plot(result: dict, path) -> Path:
    fn = {"model": plot_model, "msda": plot_msda, "stream": plot_stream}.get(result.get("kind"))
    if fn is None:
        raise ValueError(f"no plot for result kind {result.get('kind')!r}")
    return fn(result, path)
