"""`autr export onnx`: one AuTR model -> the plugin graph, the portable graph and their sidecar.

    DIR/model.plugin.onnx         every MSDA call is one autr::AutrMSDeformAttn node (TensorRT plugin)
    DIR/model.portable.onnx       MSDA as GridSample + standard ops (any ONNX Runtime)
    DIR/model.plugin.fp16.onnx    --fp16: float16 graph for TensorRT's strongly-typed networks
    DIR/model.portable.fp16.onnx  --fp16: the same precision plan on the portable graph
    DIR/model.portable.int8.onnx  --int8: static QDQ int8 around Conv / MatMul / Gemm (ONNX Runtime)
    DIR/model.plugin.int8.onnx    --int8: the same Q/DQ placement and scales on the plugin graph (TensorRT)
    DIR/model.json                sidecar: config, input size, T range, preprocessing, opset,
                                  checkpoint sha256, versions, node counts, parity / fp16 error,
                                  int8 quantization record and error

How (see DESIGN.md, "ONNX contract"):

1. One eager forward at the export size records the MSDA calls (their spatial shapes are static
   per export; their count must be enc_layers + dec_layers for AuTR, 0 for TPAVI: `expected_msda_calls`).
   A model without MSDA (TPAVI, `cfg.arch == "tpavi"`) exports the same way: its plugin graph has no custom
   node and equals its portable graph, so the runtime, `--onnx DIR` and `export verify` take it unchanged.
2. `torch.onnx.export(dynamo=True)` traces the model with T dynamic (1..T_MAX) while every MSDA call
   goes through the `autr_export::ms_deform_attn` custom op, which a custom translation turns into
   one `AutrMSDeformAttn` node with int32 constant index inputs (`autr.export.msda`).
3. onnxscript's optimizer, then `autr.export.graph.simplify` (constant multi-output Splits folded,
   trace metadata dropped, identical constants merged). The trace is at opset 18 (torch's native
   one); other opsets are reached with `graph.convert_opset` (onnx's version converter; 18 -> 17
   with a hand-written Split step).
4. The portable graph is the plugin graph with each MSDA node decomposed (`graph.decompose_msda`),
   so both graphs are the same graph apart from MSDA.
5. Both pass `onnx.checker.check_model(full_check=True)` and strict shape inference (the custom
   node has a registered onnx schema with a shape-inference function), then a parity check against
   PyTorch in ONNX Runtime (plugin graph: MSDA by the PyTorch reference through onnxruntime-extensions).
6. Files are written to a temporary directory next to DIR and swapped in at once.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import datetime
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
import warnings
from pathlib import Path

from autr.export.errors import ExportError

PLUGIN_FILE = "model.plugin.onnx"
PORTABLE_FILE = "model.portable.onnx"
PLUGIN_FP16_FILE = "model.plugin.fp16.onnx"
PORTABLE_FP16_FILE = "model.portable.fp16.onnx"
PLUGIN_INT8_FILE = "model.plugin.int8.onnx"
PORTABLE_INT8_FILE = "model.portable.int8.onnx"
SIDECAR_FILE = "model.json"  # = autr.runtime.backends.sidecar.ONNX_SIDECAR (not imported: it pulls in numpy)
ARTIFACTS = (PLUGIN_FILE, PORTABLE_FILE, PLUGIN_FP16_FILE, PORTABLE_FP16_FILE, PLUGIN_INT8_FILE, PORTABLE_INT8_FILE,
             SIDECAR_FILE)

FORMAT = "autr-onnx-export"
FORMAT_VERSION = 1
# the graphs' own revision: bumped whenever the same weights export to different graphs (2: the deploy form,
# `autr.model.deploy_form`; 3: the portable MSDA weighs and reduces each level on its own, no Concat), so that
# caches of exports (`autr bench`) remake what they hold
GRAPH_REVISION = 3
MIN_OPSET = 17  # GridSample on 4-D maps (16) and LayerNormalization (17)
MAX_OPSET = 23  # newest opset both torch's exporter and the pinned ONNX Runtime handle
DEFAULT_OPSET = 18  # torch's exporter writes 18 natively (17 needs a down-conversion)
TOLERANCE = {"max_abs": 1e-3, "iou": 0.999}  # fp32 parity with PyTorch (mask logits, mask IoU)
INPUT_NAMES = ("frames", "log_mel")
OUTPUT_NAMES = ("masks", "scores")
LOG_MEL_SHAPE = (1, 96, 64)


# ----------------------------------------------------------------------------------- arguments
def validate_opset(opset) -> int:
    try:
        opset = int(opset)
    except (TypeError, ValueError):
        raise ExportError(f"opset must be an integer, got {opset!r}") from None
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} cannot express the portable graph (GridSample on 4-D maps and "
                          f"LayerNormalization need opset >= {MIN_OPSET}); choose {MIN_OPSET}..{MAX_OPSET}")
    if opset > MAX_OPSET:
        raise ExportError(f"opset {opset} is newer than this toolkit exports and checks; "
                          f"choose {MIN_OPSET}..{MAX_OPSET}")
    return opset


def resolve_model(checkpoint=None, preset=None, seed: int = 0):
    """(model in eval mode, source record for the sidecar). Default: the embedded checkpoint."""
    from autr.checkpoint import CheckpointError, file_sha256, load_checkpoint, resolve_checkpoint

    if checkpoint is not None and preset is not None:
        raise ExportError("give a checkpoint or a preset, not both")
    if preset is not None:
        from autr.model import build_model

        try:
            model = build_model(preset, seed=seed)
        except ValueError as exc:
            raise ExportError(str(exc)) from None
        return model.eval(), {"source": "preset", "preset": preset, "seed": seed, "path": None, "sha256": None}
    checkpoint = "default" if checkpoint is None else checkpoint
    try:
        path = resolve_checkpoint(checkpoint)
        model = load_checkpoint(path)
    except CheckpointError as exc:
        raise ExportError(str(exc).replace("\n", " ")) from None
    except RuntimeError as exc:  # load_state_dict disagreements the pre-check did not name
        raise ExportError(f"{checkpoint} does not match its config: {str(exc).splitlines()[0]}") from None
    source = "default" if str(checkpoint) == "default" else "file"
    return model.eval(), {"source": source, "path": str(Path(path).resolve()), "sha256": file_sha256(path)}


def validate_size(size, cfg) -> int:
    size = cfg.image_size if size is None else size
    if not isinstance(size, int) or size <= 0 or size % 32:
        raise ExportError(f"input size must be a positive multiple of 32, got {size!r}")
    return size


def validate_frames(frames, cfg) -> int:
    t_max = cfg.max_frames if frames is None else frames
    if not isinstance(t_max, int) or not 1 <= t_max <= cfg.max_frames:
        raise ExportError(f"T_MAX (--frames) must be between 1 and the model's max_frames={cfg.max_frames} "
                          f"(preset {cfg.name!r}), got {t_max!r}")
    return t_max


def read_export(path) -> tuple:
    """(directory, sidecar dict, (H, W), (t_min, t_max)) of an `autr export onnx` directory (or of a graph in
    one), read and checked as the runtime reads it; ExportError naming what is missing or wrong."""
    from autr.runtime.backends.sidecar import parse_spec
    from autr.runtime.errors import SidecarError

    d = Path(path).expanduser().absolute()
    if d.is_file():
        d = d.parent
    side_path = d / SIDECAR_FILE
    if not side_path.is_file():
        raise ExportError(f"{d} holds no {SIDECAR_FILE}: not an `autr export onnx` directory "
                          "(export with `autr export onnx --out DIR` first)")
    try:
        side = json.loads(side_path.read_text(encoding="utf-8"))
        spec = parse_spec(side, str(side_path)) if isinstance(side, dict) else None
    except (OSError, ValueError) as exc:
        raise ExportError(f"cannot read {side_path}: {exc}") from None
    except SidecarError as exc:
        raise ExportError(str(exc)) from None
    if spec is None:
        raise ExportError(f"{side_path} is not a JSON object; re-export with `autr export onnx`")
    return d, side, spec.input_size, (spec.t_min, spec.t_max)


def weights_digest(model) -> str:
    """sha256 over the state dict (sorted keys, float32 bytes): ties a rebuilt model to the export."""
    import hashlib

    h = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu()
        if t.is_floating_point():
            t = t.float()
        h.update(key.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------- output dir
def prepare_out_dir(out) -> tuple[Path, Path]:
    """Check `out` can be (re)placed and create the temporary sibling directory to write into."""
    out = Path(out).expanduser().absolute()
    if out.exists() and not out.is_dir():
        raise ExportError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / SIDECAR_FILE).is_file():
        raise ExportError(f"refusing to replace {out}: it is not empty and holds no {SIDECAR_FILE} "
                          "(not an autr ONNX export)")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; the published folder is an ordinary directory
    except OSError as exc:
        raise ExportError(f"cannot write the export to {out}: {exc.strerror or exc}") from None
    return out, tmp


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directories (Linux renameat2 RENAME_EXCHANGE); False where unsupported."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def publish(tmp: Path, out: Path) -> None:
    """Replace `out` by the finished `tmp` in one step; files of `out` that are not ours are kept."""
    if out.is_dir():
        for entry in out.iterdir():
            if entry.name in ARTIFACTS or (tmp / entry.name).exists():
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.copytree(entry, tmp / entry.name, symlinks=True)
            else:
                try:
                    os.link(entry, tmp / entry.name, follow_symlinks=False)
                except OSError:
                    shutil.copy2(entry, tmp / entry.name, follow_symlinks=False)
        if not _exchange(tmp, out):
            old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
            os.rename(out, old)
            os.rename(tmp, out)
            tmp = old
        shutil.rmtree(tmp, ignore_errors=True)  # the previous export
    else:
        os.rename(tmp, out)


# ----------------------------------------------------------------------------------- tracing
@contextlib.contextmanager
def _quiet():
    """Silence the exporter's progress lines, warnings and optimizer chatter."""
    loggers = [logging.getLogger(n) for n in ("onnxscript", "torch.onnx", "torch.export", "torch._export",
                                              "torch.fx.experimental.symbolic_shapes", "onnx_ir")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lvl in zip(loggers, levels):
            lg.setLevel(lvl)


def expected_msda_calls(cfg) -> int:
    """How many MSDA calls one forward of the model makes: AuTR's encoder and decoder layers; TPAVI none."""
    return 0 if cfg.arch == "tpavi" else cfg.enc_layers + cfg.dec_layers


def record_msda_calls(model, size: int) -> list:
    import torch

    from autr.export import msda

    g = torch.Generator().manual_seed(0)
    frames = torch.randn(1, 3, size, size, generator=g)
    log_mel = torch.randn(1, *LOG_MEL_SHAPE, generator=g)
    with msda.record_msda() as calls, torch.inference_mode():
        model(frames, log_mel)
    return calls


def _tail_tensors(model_proto) -> set:
    """Output names of the nodes that make the final logits: the mask / score heads (by torch module
    scope) and everything downstream of them. Kept in float32 by the float16 conversion."""
    seeds = set()
    for node in model_proto.graph.node:
        for prop in node.metadata_props:
            if prop.key == "pkg.torch.onnx.name_scopes":
                try:
                    scopes = json.loads(prop.value.replace("'", '"'))
                except ValueError:
                    scopes = []
                if len(scopes) > 1 and scopes[1] in ("mask_head", "score_head"):
                    seeds.update(node.output)
    tail = set(seeds)
    for node in model_proto.graph.node:  # topological order: one pass propagates downstream
        if any(i in tail for i in node.input):
            tail.update(node.output)
    return tail


TRACE_OPSET = 18  # torch's exporter (torchlib) writes opset 18 natively; other opsets are converted


def trace_plugin_graph(model, size: int, t_max: int, shapes) -> tuple:
    """(plugin ModelProto at TRACE_OPSET, simplified; node counts; tail tensor names). Traced in the model's
    deploy form (`autr.model.deploy_form`: exact rewrites to fewer nodes); the parity check compares the graphs
    with the model as trained."""
    import torch

    from autr.export import graph, msda
    from autr.model import deploy_form

    msda.register_onnx_schema()
    msda.torch_op()  # registers torch.ops.autr_export.ms_deform_attn
    example_t = 2 if t_max >= 2 else 1
    g = torch.Generator().manual_seed(1)
    frames = torch.randn(example_t, 3, size, size, generator=g)
    log_mel = torch.randn(example_t, *LOG_MEL_SHAPE, generator=g)
    dynamic = None
    if t_max >= 2:
        t_dim = torch.export.Dim("T", min=1, max=t_max)
        dynamic = ({0: t_dim}, {0: t_dim})
    try:
        with msda.swap_msda(shapes), deploy_form(model), _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model, (frames, log_mel), input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
                dynamic_shapes=dynamic, opset_version=TRACE_OPSET, dynamo=True, optimize=False,
                verbose=False,
                custom_translation_table={torch.ops.autr_export.ms_deform_attn.default: msda.translate_msda})
            exported = len(program.model_proto.graph.node)
            program.optimize()
    except ExportError:
        raise
    except Exception as exc:  # torch.export / translation failures: one line, the rest is for debugging
        raise ExportError(f"torch.onnx.export failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0]}") \
            from exc
    proto = program.model_proto
    optimized = len(proto.graph.node)
    tail = _tail_tensors(proto)
    folded = {}
    graph.simplify(proto, stats=folded)
    return proto, {"exported": exported, "onnxscript_optimized": optimized, "simplified": folded}, tail


def _finish(proto, kind: str, meta: dict):
    from autr.export import graph

    proto = graph.refresh_value_info(proto)
    proto.graph.name = f"autr_{kind}"
    arch = json.loads(meta.get("autr.config", "{}")).get("arch", "autr")
    score = "sounding-score logits" if arch == "autr" else "logits (the largest mask logit per frame)"
    proto.graph.doc_string = (
        f"{'TPAVI' if arch == 'tpavi' else 'AuTR'} audio-visual segmentation. Inputs frames [T,3,H,W] (RGB, "
        "ImageNet-normalised) and log_mel [T,1,96,64] (VGGish); outputs masks [T,H,W] logits and scores [T] "
        f"{score}. Graph: {kind}. Sidecar: model.json.")
    del proto.metadata_props[:]
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    return proto


def _graph_record(proto, path: Path, counts: dict, msda_count: int) -> dict:
    from autr.checkpoint import file_sha256
    from autr.export import graph

    return {"file": path.name, "bytes": path.stat().st_size, "sha256": file_sha256(path),
            "nodes": {**counts, "final": len(proto.graph.node)}, "msda_nodes": msda_count,
            "op_counts": graph.op_counts(proto)}


# ----------------------------------------------------------------------------------- main entry
def export_onnx(out, checkpoint=None, preset: str | None = None, *, model=None, size: int | None = None,
                frames: int | None = None, opset: int = DEFAULT_OPSET, fp16: bool = False, int8: bool = False,
                int8_clips: int | None = None, int8_method: str | None = None, int8_exclude=(), seed: int = 0,
                check: bool = True, weights_fp16: bool = False, log=None) -> dict:
    """Export the plugin and portable graphs (and float16 variants with `fp16`, static int8 QDQ variants
    with `int8`) into `out`. `weights_fp16` stores the float32 graphs' weights as float16 (half the size,
    float32 compute: `graph.store_weights_float16`); the parity check then measures what that costs.

    Model source: `checkpoint` (a file or "default"), `preset` (untrained, `seed`), or an in-memory
    `model` (AuTR). int8: `int8_clips` SynthAVS calibration clips of 5 frames (default
    `int8.DEFAULT_CLIPS`), `int8_method` "minmax" (default), "entropy" or "percentile", `int8_exclude`
    choices of `int8.EXCLUDE_CHOICES` left in float32 (see `autr.export.int8`). Returns the sidecar dict
    (also written to `out/model.json`). Raises ExportError.
    """
    started = time.perf_counter()
    say = log or (lambda msg: None)
    opset = validate_opset(opset)
    int8_opts = None
    if int8 or int8_clips is not None or int8_method is not None or int8_exclude:
        if not int8:
            raise ExportError("--int8-clips, --int8-method and --int8-exclude need --int8")
        from autr.export import int8 as int8_mod

        int8_opts = int8_mod.validate_options(int8_mod.DEFAULT_CLIPS if int8_clips is None else int8_clips,
                                              int8_mod.DEFAULT_METHOD if int8_method is None else int8_method,
                                              int8_exclude)
    if model is not None:
        if checkpoint is not None or preset is not None:
            raise ExportError("give a model, a checkpoint or a preset, not several")
        if any(p.device.type != "cpu" for p in model.parameters()):
            raise ExportError("export a model on the CPU (call model.cpu() first)")
        model.eval()
        source = {"source": "module", "path": None, "sha256": None}
    else:
        model, source = resolve_model(checkpoint, preset, seed)
    cfg = model.cfg
    size = validate_size(size, cfg)
    t_max = validate_frames(frames, cfg)
    out, tmp = prepare_out_dir(out)
    try:
        sidecar = _export_into(tmp, model, cfg, source, size, t_max, opset, fp16, check, say, int8_opts,
                               weights_fp16)
        sidecar["export_seconds"] = round(time.perf_counter() - started, 2)
        (tmp / SIDECAR_FILE).write_text(json.dumps(sidecar, indent=2) + "\n")
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    say(f"wrote {out}")
    return sidecar


def _export_into(tmp: Path, model, cfg, source, size, t_max, opset, fp16, check, say, int8_opts=None,
                 weights_fp16: bool = False) -> dict:
    import onnx
    import onnxruntime
    import onnxscript
    import torch

    from autr import __version__, preprocess
    from autr.export import fp16 as fp16_mod
    from autr.export import graph, msda

    say(f"recording MSDA calls of {cfg.name} at {size}x{size}")
    calls = record_msda_calls(model, size)
    expected = expected_msda_calls(cfg)
    if len(calls) != expected:
        raise ExportError(f"the model made {len(calls)} MSDA calls, expected "
                          f"{'enc_layers + dec_layers = ' if cfg.arch == 'autr' else ''}{expected}")
    shapes = calls[0]["spatial_shapes"] if calls else []
    if any(c["spatial_shapes"] != shapes for c in calls):
        raise ExportError("MSDA calls disagree on spatial shapes; cannot export them as constants")

    say(f"tracing (opset {opset}, T 1..{t_max})")
    t0 = time.perf_counter()
    plugin, counts, tail = trace_plugin_graph(model, size, t_max, shapes)
    plugin = graph.convert_opset(plugin, opset)
    meta = {"autr.version": __version__, "autr.config": cfg.to_json(), "autr.sidecar": SIDECAR_FILE}
    plugin = _finish(plugin, "plugin", {**meta, "autr.graph": "plugin"})
    graph.check(plugin, "plugin")
    n_msda = len(graph.msda_nodes(plugin))
    if n_msda != expected:
        raise ExportError(f"the plugin graph has {n_msda} {msda.OP_TYPE} nodes, expected {expected}")
    portable = _finish(graph.decompose_msda(plugin), "portable", {**meta, "autr.graph": "portable"})
    graph.check(portable, "portable")
    if any(o.domain not in ("", "ai.onnx") for o in portable.opset_import):
        raise ExportError("the portable graph still imports a custom domain")
    trace_seconds = time.perf_counter() - t0

    graphs = {"plugin": (plugin, PLUGIN_FILE, counts), "portable": (portable, PORTABLE_FILE, counts)}
    if fp16:
        say("converting to float16")
        if not tail:
            raise ExportError("cannot find the mask / score heads in the traced graph (no torch module scopes); "
                              "the float16 graph would compute the final logits in float16")
        for kind, src, name in (("plugin_fp16", plugin, PLUGIN_FP16_FILE),
                                ("portable_fp16", portable, PORTABLE_FP16_FILE)):
            try:
                half = fp16_mod.convert_float16(src, tail)
            except ValueError as exc:
                raise ExportError(str(exc)) from None
            half = _finish(half, kind.replace("_", "-"), {**meta, "autr.graph": kind})
            graph.check(half, kind.replace("_", " "))
            graphs[kind] = (half, name, counts)

    quantization = None
    if int8_opts is not None:
        from autr.export import int8 as int8_mod

        clips, method, exclude = int8_opts
        plugin_q, portable_q, quantization = int8_mod.quantize_graphs(
            plugin, portable, size, t_max, clips=clips, method=method, exclude=exclude, tail=tail, log=say)
        for kind, proto, name in (("plugin_int8", plugin_q, PLUGIN_INT8_FILE),
                                  ("portable_int8", portable_q, PORTABLE_INT8_FILE)):
            proto = _finish(proto, kind.replace("_", "-"), {**meta, "autr.graph": kind})
            graph.check(proto, kind.replace("_", " "))
            graphs[kind] = (proto, name, counts)

    records = {}
    for kind, (proto, name, cnt) in graphs.items():
        stored16 = graph.store_weights_float16(proto) if weights_fp16 and kind in ("plugin", "portable") else 0
        path = tmp / name
        onnx.save(proto, str(path))
        records[kind] = _graph_record(proto, path, cnt, len(graph.msda_nodes(proto)))
        if stored16:
            records[kind]["weights"] = {"storage": "float16", "compute": "float32", "initializers": stored16}
        if kind.endswith("fp16"):
            records[kind]["precision"] = {
                "float_tensors": fp16_mod.float_types(proto),
                "float32_ops": sorted(fp16_mod.FP32_OPS & set(records[kind]["op_counts"])),
                "float32_region": "mask head, score head and everything after them (query selection, upsampling)",
                "io": "float32 (cast at the entry and exit)"}

    if quantization is not None:
        say("measuring the int8 graphs against the float32 graphs in ONNX Runtime")
        for kind, ref in (("portable_int8", PORTABLE_FILE), ("plugin_int8", PLUGIN_FILE)):
            records[kind]["quantization"] = dict(quantization)
            try:
                records[kind]["error_vs_fp32_graph"] = int8_mod.error_vs_fp32(
                    tmp / ref, tmp / records[kind]["file"], size, t_max, plugin=kind.startswith("plugin"))
            except ExportError as exc:  # the plugin graph needs onnxruntime-extensions to run here
                records[kind]["error_vs_fp32_graph"] = f"skipped: {exc}"

    t_axis = "T" if t_max >= 2 else 1  # T_MAX = 1: a static graph (torch.export has no 1..1 range)
    sidecar = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "toolkit_version": __version__,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
        "checkpoint": source,
        "weights_sha256": weights_digest(model),
        "input_size": [size, size],
        "frames": {"min": 1, "max": t_max, "dynamic": t_max >= 2, "axis_name": "T" if t_max >= 2 else None},
        "inputs": {"frames": {"shape": [t_axis, 3, size, size], "dtype": "float32"},
                   "log_mel": {"shape": [t_axis, *LOG_MEL_SHAPE], "dtype": "float32"}},
        "outputs": {"masks": {"shape": [t_axis, size, size], "dtype": "float32", "meaning": "mask logits"},
                    "scores": {"shape": [t_axis], "dtype": "float32",
                               "meaning": "sounding-score logits" if cfg.arch == "autr"
                               else "the largest mask logit of each frame (TPAVI has no sounding score)"}},
        # AuTR computes each frame on its own; TPAVI's frames see each other (its block attends over the clip),
        # so its T axis is one clip: windows of several streams must not share a call along it
        "architecture": {"arch": cfg.arch, "frames_independent": bool(getattr(model, "frames_independent", True))},
        "preprocessing": preprocess.parameters(),
        "opset": opset,
        "msda": {"op_type": msda.OP_TYPE, "domain": msda.DOMAIN, "plugin_version": msda.PLUGIN_VERSION,
                 "count": n_msda, "inputs": list(msda.INPUT_NAMES), "index_dtype": "int32",
                 "spatial_shapes": [list(s) for s in shapes],
                 "level_start_index": msda.level_start_index(shapes),
                 "onnx_schema": "registered in onnx.defs by autr.export.msda.register_onnx_schema "
                                "(types + shape inference) for the checker"},
        "graphs": records,
        "exporter": {"method": "torch.onnx.export(dynamo=True) + custom translation of autr_export::ms_deform_attn",
                     "graph_revision": GRAPH_REVISION,
                     "simplifier": "onnxscript.optimizer + autr.export.graph.simplify",
                     "torch": torch.__version__, "onnx": onnx.__version__, "onnxscript": onnxscript.__version__,
                     "onnxruntime": onnxruntime.__version__},
        "trace_seconds": round(trace_seconds, 2),
    }
    if check or fp16:
        from autr.export import verify

        say("checking parity with PyTorch in ONNX Runtime")
        # int8 graphs are measured against the float32 graphs on SynthAVS clips (above), not on random inputs,
        # which lie outside their calibrated ranges
        paths = {k: tmp / v[1] for k, v in graphs.items() if (check or k.endswith("fp16")) and not k.endswith("int8")}
        parity = verify.export_parity(model, paths, size, t_max)
        sidecar["parity"] = parity
        for kind in ("plugin_fp16", "portable_fp16"):
            rows = parity.get(kind)
            if isinstance(rows, dict):
                records[kind]["error_vs_torch_fp32"] = {
                    "max_abs": max(r["max_abs"] for r in rows.values()),
                    "mean_abs": max(r["mean_abs"] for r in rows.values()),
                    "iou_min": min(r["iou_min"] for r in rows.values()),
                    "score_max_abs": max(r["score_max_abs"] for r in rows.values()),
                    "measured_with": "ONNX Runtime CPU (float16 tensors between ops; MSDA by the PyTorch reference), "
                                     "random clips " + ", ".join(rows)}
            elif rows is not None:
                records[kind]["error_vs_torch_fp32"] = rows
        for kind in ("plugin", "portable") if check else ():
            for case, row in (parity.get(kind) or {}).items() if isinstance(parity.get(kind), dict) else ():
                if not verify.within_tolerance(row):
                    raise ExportError(
                        f"the {kind} graph disagrees with PyTorch on {case}: max abs error "
                        f"{row['max_abs']:.3g} (limit {TOLERANCE['max_abs']}), mask IoU {row['iou_min']:.4f} "
                        f"(limit {TOLERANCE['iou']})")
    return sidecar
