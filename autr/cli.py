"""The `autr` command line. Every command imports its heavy modules lazily, so `autr --help` is instant."""
from __future__ import annotations

import json
import sys

import click


def _fail(message: str) -> None:
    """One clear line on stderr, exit status 2, no traceback."""
    click.secho(f"autr: {message}", fg="red", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="autr")
def main():
    """AuTR: segment the objects that make the sound — train, evaluate, export, stream."""


@main.command()
@click.option("--measure", is_flag=True, help="Also time eager CPU inference at T=1 and T=5.")
@click.option("--preset", "names", multiple=True, help="Only these presets (repeatable).")
@click.option("--size", default=224, show_default=True, help="Input size (H = W) for FLOPs and latency.")
@click.option("--iters", default=5, show_default=True, help="Timed iterations per latency figure.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the table as JSON here.")
def presets(measure, names, size, iters, json_out):
    """List the model presets: parameters, GFLOPs per frame, CPU latency (with --measure)."""
    from autr.presets import list_presets

    names = list(names) or list_presets()
    unknown = [n for n in names if n not in list_presets()]
    if unknown:
        _fail(f"unknown preset(s) {', '.join(unknown)}; choose from {', '.join(list_presets())}")
    from autr.benchmarks.model_cost import environment, preset_cost

    rows = []
    header = f"{'preset':<10} {'backbone':<10} {'d':>4} {'params (M)':>11} {'GFLOPs/frame':>13}"
    if measure:
        header += f" {'CPU ms T=1':>11} {'CPU ms T=5':>11}"
    click.echo(header)
    for name in names:
        row = preset_cost(name, size=size, measure=measure, iters=iters)
        rows.append(row)
        line = (f"{name:<10} {row['backbone']:<10} {row['d_model']:>4} {row['params_m']:>11.2f} "
                f"{row['gflops_per_frame']:>13.2f}")
        if measure:
            lat = row["cpu_latency_ms"]
            line += f" {lat['1']['median']:>11.1f} {lat['5']['median']:>11.1f}"
        click.echo(line)
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"size": size, "environment": environment(), "presets": rows}, f, indent=2)
        click.echo(f"wrote {json_out}")


if __name__ == "__main__":
    main()
