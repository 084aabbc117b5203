"""The `autr` command line. Every command imports its heavy modules lazily, so `autr --help` is instant."""
from __future__ import annotations

import json
import sys

import click


def _fail(message: str, code: int = 2) -> None:
    """One clear line on stderr, exit status `code` (2: bad input), no traceback."""
    click.secho(f"autr: {message}", fg="red", err=True)
    sys.exit(code)


# What a command may find missing on the lean (runtime-only) install, and the extra that brings it (setup.py).
EXTRAS = {"torch": "train", "torchvision": "train", "timm": "train", "safetensors": "train", "matplotlib": "train",
          "PIL": "train", "onnx": "export", "onnxscript": "export", "tensorrt": "trt", "pycuda": "trt",
          "openvino": "openvino", "tritonclient": "serve", "kserve": "serve"}


def missing_extra_message(command: str, exc: ModuleNotFoundError) -> str | None:
    """The one line for a command that needs a package this install lacks (None: not one of ours)."""
    root = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(root)
    if extra is None:
        return None
    if command == "export" and extra == "train":
        extra = "export"  # torch and onnx: the export extra brings both
    return (f"`autr {command}` needs {root}, which this install does not have (the base install is the streaming "
            f"runtime): pip install 'autr[{extra}]' (from a clone: pip install -e '.[{extra}]')")


class _Commands(click.Group):
    """A group whose commands from the other rooms (`export`, `stream`, `bench`) are imported only when used.

    A command that needs an optional package this install lacks (torch on the runtime-only install, say) ends
    with one line naming the extra that brings it, not a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ModuleNotFoundError as exc:
            message = missing_extra_message(ctx.invoked_subcommand or "", exc)
            if message is None:
                raise
            _fail(message)

    ROOMS = {"export": ("autr.export.cli", "export"), "stream": ("autr.runtime.cli", "stream"),
             "bench": ("autr.benchmarks.cli", "bench")}

    def list_commands(self, ctx):
        return sorted({*super().list_commands(ctx), *self.ROOMS})

    def get_command(self, ctx, name):
        if name in self.ROOMS and name not in self.commands:
            import importlib

            module, attr = self.ROOMS[name]
            self.add_command(getattr(importlib.import_module(module), attr), name)
        return super().get_command(ctx, name)


@click.group(cls=_Commands, context_settings={"help_option_names": ["-h", "--help"]})
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
    """List the model presets (AuTR and the TPAVI baseline): parameters, GFLOPs per frame, CPU latency (--measure)."""
    from autr.presets import get_config, list_presets

    names = list(names) or list_presets()
    unknown = [n for n in names if n not in list_presets()]
    if unknown:
        _fail(f"unknown preset(s) {', '.join(unknown)}; choose from {', '.join(list_presets())}")
    from autr.benchmarks.model_cost import environment, preset_cost

    rows = []
    header = f"{'preset':<12} {'arch':<6} {'backbone':<10} {'d':>4} {'params (M)':>11} {'GFLOPs/frame':>13}"
    if measure:
        header += f" {'CPU ms T=1':>11} {'CPU ms T=5':>11}"
    click.echo(header)
    for name in names:
        row = preset_cost(name, size=size, measure=measure, iters=iters)
        rows.append(row)
        line = (f"{name:<12} {get_config(name).arch:<6} {row['backbone']:<10} {row['d_model']:>4} "
                f"{row['params_m']:>11.2f} {row['gflops_per_frame']:>13.2f}")
        if measure:
            lat = row["cpu_latency_ms"]
            line += f" {lat['1']['median']:>11.1f} {lat['5']['median']:>11.1f}"
        click.echo(line)
    if json_out:
        with open(json_out, "w") as f:
            json.dump({"size": size, "environment": environment(), "presets": rows}, f, indent=2)
        click.echo(f"wrote {json_out}")


@main.group()
def data():
    """Datasets: generate SynthAVS."""


@data.command("synth")
@click.argument("root", type=click.Path(file_okay=False))
@click.option("--mode", type=click.Choice(["s4", "ms3"]), default="s4", show_default=True)
@click.option("--train", "n_train", default=1000, show_default=True, help="Training clips.")
@click.option("--val", "n_val", default=100, show_default=True, help="Validation clips.")
@click.option("--test", "n_test", default=200, show_default=True, help="Test clips.")
@click.option("--seed", default=0, show_default=True, help="Dataset seed (clips are deterministic given it).")
@click.option("--size", default=224, show_default=True, help="Frame size (H = W).")
@click.option("--open-set", is_flag=True, help="Hold out categories from train/val (paper Table III).")
@click.option("--design", default="distinct", show_default=True,
              help="Category design: 'distinct' (each category its own shape, colour and sound) or 'factored' "
                   "(categories combine shared sound and visual factors; with --open-set the held-out categories "
                   "are new combinations of factors seen in training).")
@click.option("--workers", type=int, default=None, help="Processes (default: every core).")
def data_synth(root, mode, n_train, n_val, n_test, seed, size, open_set, design, workers):
    """Write a SynthAVS dataset in the AVSBench layout under ROOT."""
    from autr.synth import check_design, generate

    try:
        check_design(design)
    except ValueError as exc:
        _fail(f"--design: {exc}")
    info = generate(root, mode=mode, n_train=n_train, n_val=n_val, n_test=n_test, seed=seed, size=size,
                    open_set=open_set, workers=workers, design=design)
    click.echo(f"wrote {n_train}/{n_val}/{n_test} {mode} clips ({design} categories) to {root}" +
               (f" (held out: {', '.join(info.get('held_out_categories', []))})" if open_set else ""))


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True, file_okay=False), help="AVSBench / SynthAVS root.")
@click.option("--mode", type=click.Choice(["s4", "ms3"]), default="s4", show_default=True)
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Run directory.")
@click.option("--preset", default="small", show_default=True,
              help="Model preset (`autr presets`): AuTR, or the TPAVI baseline with a tpavi-* preset.")
@click.option("--epochs", default=50, show_default=True)
@click.option("--batch-size", default=8, show_default=True, help="Clips per batch (per process).")
@click.option("--lr", default=1e-4, show_default=True)
@click.option("--weight-decay", default=5e-4, show_default=True)
@click.option("--workers", default=2, show_default=True, help="Data-loading processes.")
@click.option("--size", type=int, default=None, help="Input size (default: the preset's).")
@click.option("--seed", default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:N.")
@click.option("--no-amp", is_flag=True, help="Disable mixed precision on GPU.")
@click.option("--full-gt", is_flag=True, help="SynthAVS S4: supervise all 5 frames, not only the first.")
@click.option("--max-train-clips", type=int, default=None)
@click.option("--max-val-clips", type=int, default=None)
@click.option("--resume", is_flag=True, help="Continue the run in --out from last.safetensors.")
@click.option("--init", type=click.Path(exists=True, dir_okay=False), help="Fine-tune from this checkpoint.")
@click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False),
              help="Local timm/torchvision backbone state dict (frozen once loaded).")
@click.option("--vggish-weights", type=click.Path(exists=True, dir_okay=False),
              help="Local PyTorch VGGish state dict (full-width presets).")
@click.option("--freeze-visual/--train-visual", default=None,
              help="Freeze the visual backbone or train it (default: frozen when loaded from --backbone-weights "
                   "or frozen in the --init checkpoint).")
@click.option("--freeze-audio/--train-audio", default=None,
              help="Freeze the audio encoder or train it (default: frozen when loaded from --vggish-weights "
                   "or frozen in the --init checkpoint).")
@click.option("--no-audio-queries", is_flag=True, help="Ablation: plain learnable queries.")
@click.option("--no-dynamic-conv", is_flag=True, help="Ablation: dot-product mask head.")
@click.option("--query-select", type=click.Choice(["clip", "frame"]), default=None,
              help="Inference query rule stored in the checkpoint (default: clip, the query of highest clip-mean "
                   "sounding probability).")
@click.option("--pixel-pool", is_flag=True, help="Option: global-pooling context in the pixel decoder.")
@click.option("--dynamic-reference", is_flag=True, help="Option: decoder reference points refined per layer.")
@click.option("--aux-loss", is_flag=True, help="Option: losses on every decoder layer's output.")
@click.option("--lr-schedule", type=click.Choice(["constant", "step", "cosine"]), default="constant",
              show_default=True, help="step: x0.1 after --lr-drop epochs; cosine: to 0 at the end.")
@click.option("--warmup-epochs", default=0.0, show_default=True, help="Linear learning-rate warm-up (epochs).")
@click.option("--lr-drop", type=int, default=None, help="Step schedule: epochs before the drop (default 4/5).")
@click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def train(quiet, no_amp, no_audio_queries, no_dynamic_conv, freeze_visual, freeze_audio, query_select,
          pixel_pool, dynamic_reference, aux_loss, **kw):
    """Train AuTR, or TPAVI with a tpavi-* preset (AdamW 1e-4, wd 5e-4, batch 8, 50 epochs). torchrun for DDP."""
    from autr.presets import list_presets

    if kw["preset"] not in list_presets():
        _fail(f"unknown preset {kw['preset']!r}; choose from {', '.join(list_presets())}")
    freeze = {k: v for k, v in (("freeze_visual", freeze_visual), ("freeze_audio", freeze_audio)) if v is not None}
    overrides = {}
    if no_audio_queries:
        overrides["audio_queries"] = False
    if no_dynamic_conv:
        overrides["dynamic_conv"] = False
    if query_select:
        overrides["query_select"] = query_select
    for name, on in (("pixel_pool", pixel_pool), ("dynamic_reference", dynamic_reference), ("aux_loss", aux_loss)):
        if on:
            overrides[name] = True
    _check_train_args(kw)
    if kw["resume"] and (freeze or overrides):
        flags = [f"--freeze-{k[7:]}/--train-{k[7:]}" for k in freeze]
        flags += ["--query-select" if k == "query_select" else f"--{'no-' if v is False else ''}{k.replace('_', '-')}"
                  for k, v in overrides.items()]
        _fail(f"--resume continues with the run's own model config (freezing and options included); drop "
              f"{', '.join(flags)}")
    _check_split(kw["data"], kw["mode"], "train", "to train on")
    _check_split(kw["data"], kw["mode"], "val", "to choose the best epoch with")
    from autr.training import TrainConfig, train as run

    cfg = TrainConfig(**kw, overrides=overrides, freeze=freeze, amp=not no_amp, progress=not quiet)
    try:
        result = run(cfg)
    except (ValueError, FileNotFoundError, OSError) as exc:
        _fail(str(exc))
    if result["rank"] == 0:
        click.echo(f"best validation mIoU {result['best_miou']:.4f}; checkpoints in {cfg.out}")


def _check_train_args(kw: dict) -> None:
    """Refuse numbers that would make a run do nothing or nonsense, before anything is loaded."""
    if kw["epochs"] < 1:
        _fail(f"--epochs must be >= 1 (a run of {kw['epochs']} epochs trains nothing and writes no checkpoint)")
    if kw["batch_size"] < 1:
        _fail(f"--batch-size must be >= 1; got {kw['batch_size']}")
    if not kw["lr"] > 0:
        _fail(f"--lr must be positive; got {kw['lr']}")
    if kw["weight_decay"] < 0:
        _fail(f"--weight-decay must be >= 0; got {kw['weight_decay']}")
    if kw["workers"] < 0:
        _fail(f"--workers must be >= 0; got {kw['workers']}")
    if kw["size"] is not None and kw["size"] < 32:
        _fail(f"--size must be >= 32 pixels; got {kw['size']}")
    for key in ("max_train_clips", "max_val_clips", "lr_drop", "threads"):
        if kw.get(key) is not None and kw[key] < 1:
            _fail(f"--{key.replace('_', '-')} must be >= 1; got {kw[key]}")
    if kw.get("warmup_epochs", 0) < 0:
        _fail(f"--warmup-epochs must be >= 0; got {kw['warmup_epochs']}")


def _check_split(root, mode: str, split: str, purpose: str) -> None:
    """A dataset split that exists and holds clips, checked before a model is built or loaded."""
    from autr.datasets import AVSBenchDataset

    try:
        n = len(AVSBenchDataset(root, mode, split))
    except (OSError, ValueError) as exc:
        _fail(str(exc))
    if n == 0:
        _fail(f"{root} has no {mode} clips in its {split!r} split {purpose} (its meta csv lists none); choose "
              f"another split, or generate one (autr data synth {root} --mode {mode} --{split} N)")


def _print_metrics(result: dict) -> None:
    click.echo(f"{'metric':<18} value")
    for key, value in result.items():
        shown = "n/a" if value is None else (f"{value:.4f}" if isinstance(value, float) else str(value))
        click.echo(f"{key:<18} {shown}")


@main.command("eval")
@click.option("--checkpoint", default="default", show_default=True, help="Checkpoint file, or 'default'.")
@click.option("--data", type=click.Path(exists=True, file_okay=False), help="AVSBench / SynthAVS root.")
@click.option("--split", default="test", show_default=True, type=click.Choice(["train", "val", "test"]))
@click.option("--synthetic", is_flag=True, help="Generate the SynthAVS test split in memory instead of --data.")
@click.option("--mode", type=click.Choice(["s4", "ms3"]), default="s4", show_default=True)
@click.option("--seed", default=1000, show_default=True, help="SynthAVS seed (--synthetic).")
@click.option("--clips", default=100, show_default=True, help="Clips to generate (--synthetic).")
@click.option("--open-set", is_flag=True, help="SynthAVS open-set split: report seen / unseen categories.")
@click.option("--design", default="distinct", show_default=True,
              help="SynthAVS category design (--synthetic): 'distinct' or 'factored' (as `autr data synth`).")
@click.option("--size", type=int, default=None, help="Input size (default: the model's).")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "json_out", type=click.Path(dir_okay=False), help="Write the metrics here.")
@click.option("--overlays", type=click.Path(file_okay=False), help="Write frame | GT | prediction PNGs here.")
@click.option("--query-select", type=click.Choice(["clip", "frame"]), default=None,
              help="Query rule to evaluate with (default: the checkpoint's).")
@click.option("--threads", type=int, default=None, help="CPU threads for torch (default: torch's choice).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def eval_cmd(checkpoint, data, split, synthetic, mode, seed, clips, open_set, design, size, device, json_out,
             overlays, query_select, threads, quiet):
    """Evaluate a checkpoint: mIoU, F-score (AVSBench), dataset mIoU, audio_swap (SynthAVS)."""
    if bool(data) == synthetic:
        _fail("give exactly one of --data DIR or --synthetic")
    if synthetic and clips < 1:
        _fail(f"--clips must be >= 1; got {clips}")
    from autr.synth import check_design

    try:
        check_design(design)
    except ValueError as exc:
        _fail(f"--design: {exc}")
    if design != "distinct" and not synthetic:
        _fail("--design applies to --synthetic only (a --data directory's design is in its synth_info.json)")
    if size is not None and size < 32:
        _fail(f"--size must be >= 32 pixels; got {size}")
    if threads is not None and threads < 1:
        _fail(f"--threads must be >= 1; got {threads}")
    if data:
        _check_split(data, mode, split, "to evaluate")
    import torch

    from autr.checkpoint import CheckpointError, load_model

    if threads:
        torch.set_num_threads(threads)
    try:
        model = load_model(checkpoint, device)
    except (CheckpointError, RuntimeError) as exc:
        _fail(str(exc))
    if query_select and model.cfg.arch != "autr":
        _fail(f"--query-select is AuTR's query rule; {checkpoint} is a {model.cfg.arch} model (one mask per frame)")
    if query_select:
        model.cfg = model.cfg.replace(query_select=query_select)
    from autr import evaluation

    size = size or model.cfg.image_size
    if synthetic:
        result = evaluation.evaluate_synthetic(model, mode, seed, clips, size, device, open_set, overlays,
                                               progress=not quiet, design=design)
    else:
        try:
            result = evaluation.evaluate_dataset(model, data, mode, split, size, device, overlays,
                                                 progress=not quiet)
        except (OSError, ValueError) as exc:
            _fail(str(exc))
    _print_metrics(result)
    if json_out:
        record = {"checkpoint": str(checkpoint), "arch": model.cfg.arch, "mode": mode, "size": size,
                  "query_select": model.cfg.query_select if model.cfg.arch == "autr" else None,
                  "source": {"synthetic": {"seed": seed, "clips": clips, "open_set": open_set, "design": design}}
                  if synthetic
                  else {"data": data, "split": split}, **result}
        with open(json_out, "w") as f:
            json.dump(record, f, indent=2)
        click.echo(f"wrote {json_out}")


@main.command()
@click.option("--checkpoint", default="default", show_default=True,
              help="Checkpoint file, 'default', or 'untrained' (a freshly initialised small model).")
@click.option("--seconds", default=10.0, show_default=True, help="Length of the live scene.")
@click.option("--fps", default=15.0, show_default=True, help="Frame rate of the scene.")
@click.option("--seed", default=7, show_default=True, help="Which synthetic scene to play.")
@click.option("--threads", type=int, help="ONNX Runtime threads (default: the runtime's thread plan, one per core).")
@click.option("--out", default="autr-demo", show_default=True, type=click.Path(file_okay=False))
def demo(checkpoint, seconds, fps, seed, threads, out):
    """Stream a synthetic scene (a sounding object, silent distractors) through ONNX Runtime, live.

    The default model runs from the export shipped with the package (no PyTorch needed); another checkpoint
    is exported to OUT/model/ on first use. Writes OUT/demo.mp4 (overlay + audio) and OUT/report.json
    (latency per stage, FPS, drops, IoU with the sounding object).
    """
    from autr.demo import DemoError, run_demo, summarize
    from autr.runtime.errors import StreamError

    if seconds <= 0 or fps <= 0:
        _fail(f"--seconds and --fps must be positive; got {seconds} and {fps}")
    if threads is not None and threads < 1:
        _fail(f"--threads must be >= 1; got {threads}")
    if checkpoint == "untrained":
        click.secho("note: untrained weights — the masks show the pipeline, not a trained model", fg="yellow")
    try:
        report = run_demo(checkpoint, out=out, seconds=seconds, fps=fps, seed=seed, threads=threads,
                          log=lambda m: click.echo(m, err=True))
    except (DemoError, StreamError) as exc:
        _fail(str(exc))
    click.echo(summarize(report))
    if report.get("error"):
        _fail(report["error"], code=1)


if __name__ == "__main__":
    main()
