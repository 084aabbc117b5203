"""`autr export triton`: a Triton Inference Server model repository from an export directory.

    REPO/
      README.md                        how to start tritonserver on it (and the TensorRT plugin's status)
      autr_onnx/config.pbtxt           ONNX Runtime (platform onnxruntime_onnx), the portable graph
      autr_onnx/model.json             the export's sidecar (the runtime's `--sidecar REPO/autr_onnx`)
      autr_onnx/1/model.onnx
      autr_onnx_fp16/..., autr_onnx_int8/...   where the export has the fp16 / int8 portable graphs
      autr_trt/config.pbtxt            TensorRT (platform tensorrt_plan), where DIR has an engine (or --engine)
      autr_trt/model.json, autr_trt/model.plan.json (the engine's sidecar), autr_trt/1/model.plan

**Batching over the frame axis.** The model's first axis is T, the frame axis; with the ``"frame"`` query rule
(the default export's) every frame is computed on its own, so Triton's batch dimension *is* T:
``max_batch_size`` = T_MAX (the sidecar's, or the engine profile's), ``dims`` without it, and the dynamic batcher
stacks the frames of concurrent requests (many streams) into one call, up to T_MAX, preferring the sizes given, after
at most the queue delay. A model with the ``"clip"`` rule picks one query for all frames of a call, so stacking
would mix streams: it gets ``max_batch_size: 0``, T as an explicit ``-1`` dimension and no dynamic batcher.

Every ``config.pbtxt`` is parsed with Triton's own schema (tritonclient's ``model_config_pb2``) before the repository
is written, where tritonclient is installed (``autr[serve]``).
"""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from .errors import ExportError

__all__ = ["export_triton", "model_config", "parse_config", "ONNX_PRECISIONS"]

ONNX_PRECISIONS = {"fp32": "model.portable.onnx", "fp16": "model.portable.fp16.onnx",
                   "int8": "model.portable.int8.onnx"}
_PLUGIN_GRAPH = {"fp32": "model.plugin.onnx", "fp16": "model.plugin.fp16.onnx"}
_TYPES = {1: "TYPE_FP32", 10: "TYPE_FP16"}  # ONNX TensorProto elem types -> Triton data types
PLUGIN_LIBRARY = "libautr_trt_plugin.so"


def _io_types(graph: Path) -> dict:
    """Triton data type of each graph input / output (read from the ONNX file's own declarations)."""
    import onnx

    model = onnx.load(str(graph), load_external_data=False)
    types = {}
    for v in list(model.graph.input) + list(model.graph.output):
        elem = v.type.tensor_type.elem_type
        if elem not in _TYPES:
            raise ExportError(f"{graph.name}: {v.name} has ONNX element type {elem}; Triton configs here know float32 "
                              "and float16")
        types[v.name] = _TYPES[elem]
    missing = {"frames", "log_mel", "masks", "scores"} - set(types)
    if missing:
        raise ExportError(f"{graph}: not the model contract (missing {sorted(missing)})")
    return types


def model_config(name: str, platform: str, size, max_batch: int, types: dict, preferred=(), delay_us: int = 2000,
                 instances: int = 1, kind: str = "KIND_CPU", filename: str = "model.onnx", sidecar: str = "model.json",
                 batching: bool = True, t_max: int | None = None) -> str:
    """The text of one config.pbtxt. ``batching`` False: T is an explicit dimension (-1), no dynamic batcher."""
    h, w = size
    t = [] if batching else [-1]

    def tensor(n, dims, reshape=None):
        text = f'  {{ name: "{n}" data_type: {types[n]} dims: [ {", ".join(str(d) for d in t + dims)} ]'
        if reshape is not None:
            text += f" reshape: {{ shape: [ {', '.join(str(d) for d in reshape)} ] }}"
        return text + " }"

    # scores is [T]: with T as Triton's batch axis its per-frame shape is a scalar, written dims [1] + reshape []
    scores = tensor("scores", [1], reshape=[]) if batching else tensor("scores", [])
    lines = [f'name: "{name}"', f'platform: "{platform}"', f"max_batch_size: {max_batch if batching else 0}",
             f'default_model_filename: "{filename}"',
             "input [", tensor("frames", [3, h, w]) + ",", tensor("log_mel", [1, 96, 64]), "]",
             "output [", tensor("masks", [h, w]) + ",", scores, "]"]
    if batching:
        pref = ", ".join(str(p) for p in preferred)
        lines += ["dynamic_batching {", f"  preferred_batch_size: [ {pref} ]" if pref else "",
                  f"  max_queue_delay_microseconds: {int(delay_us)}", "}"]
    group = f"  {{ count: {int(instances)} kind: {kind}" + (" gpus: [ 0 ]" if kind == "KIND_GPU" else "") + " }"
    lines += ["instance_group [", group, "]"]
    params = {"autr_sidecar": sidecar, "autr_frame_axis": "T (Triton's batch axis)" if batching else
              f"T (explicit, 1..{t_max}; not batched: the clip query rule)"}
    for key, value in params.items():
        lines.append(f'parameters {{ key: "{key}" value: {{ string_value: "{value}" }} }}')
    return "\n".join(line for line in lines if line) + "\n"


def parse_config(text: str):
    """Parse config.pbtxt text with Triton's schema (tritonclient's model_config_pb2); ExportError when it does not
    fit, ImportError when tritonclient is not installed."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    try:
        return text_format.Parse(text, model_config_pb2.ModelConfig())
    except text_format.ParseError as exc:
        raise ExportError(f"config.pbtxt does not fit Triton's ModelConfig schema: {exc}") from None


def _read(path: Path) -> dict:
    from autr.runtime.backends.sidecar import read_json_object
    from autr.runtime.errors import SidecarError

    try:
        return read_json_object(path)
    except SidecarError as exc:
        raise ExportError(str(exc)) from None


def _spec(directory: Path) -> tuple:
    """(sidecar dict, ModelSpec) of an export directory; ExportError with what to do."""
    from autr.runtime.backends.sidecar import parse_spec
    from autr.runtime.errors import SidecarError

    side = directory / "model.json"
    if not side.is_file():
        raise ExportError(f"{directory} holds no model.json: give an `autr export onnx` directory")
    data = _read(side)
    try:
        spec = parse_spec(data, where=f"sidecar {side}")
    except SidecarError as exc:
        raise ExportError(str(exc)) from None
    return data, spec


def check_options(directory, out, max_batch=None, preferred=None, delay_us: int = 2000, instances: int = 1,
                  kind: str = "cpu", engine=None, name: str = "autr") -> dict:
    """Every option checked before anything is written; returns the resolved settings (ExportError: one line)."""
    d = Path(directory)
    if not d.is_dir():
        raise ExportError(f"export directory not found: {d}")
    data, spec = _spec(d)
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise ExportError(f"--name must be letters, digits, '_' or '-'; got {name!r}")
    from autr.runtime.backends.sidecar import frames_may_share_a_call

    batching = frames_may_share_a_call(data.get("config") or {})  # else the batcher would mix requests' frames
    t_max = spec.t_max
    mb = t_max if max_batch is None else int(max_batch)
    if not 1 <= mb <= t_max:
        raise ExportError(f"--max-batch must be in 1..{t_max} (the export's T range; re-export with --frames for more); "
                          f"got {max_batch}")
    pref = sorted({p for p in (2, 4) if p <= mb} | {mb}) if preferred is None else sorted(set(int(p) for p in preferred))
    if any(not 1 <= p <= mb for p in pref):
        raise ExportError(f"--preferred sizes must be in 1..{mb} (the max batch); got {list(preferred)}")
    if not 0 <= int(delay_us) <= 10_000_000:
        raise ExportError(f"--delay-us must be in 0..10000000 microseconds; got {delay_us}")
    if int(instances) < 1:
        raise ExportError(f"--instances must be >= 1; got {instances}")
    if kind not in ("cpu", "gpu"):
        raise ExportError(f"--kind must be cpu or gpu; got {kind!r}")
    onnx = {p: d / f for p, f in ONNX_PRECISIONS.items() if (d / f).is_file()}
    if "fp32" not in onnx:
        raise ExportError(f"{d} holds no model.portable.onnx; export with `autr export onnx`")
    eng = Path(engine) if engine else (d / "model.engine" if (d / "model.engine").is_file() else None)
    eng_side = None
    if eng is not None:
        if not eng.is_file():
            raise ExportError(f"engine not found: {eng}")
        eng_side = eng.with_name(eng.name + ".json")
        if not eng_side.is_file():
            raise ExportError(f"{eng} has no sidecar {eng_side.name}; build it with `autr export trt`")
    o = Path(out)
    if o.resolve() == d.resolve() or d.resolve() in o.resolve().parents:
        raise ExportError(f"--out {o} must not be inside the export directory {d}")
    if o.exists() and (not o.is_dir() or (any(o.iterdir()) and not (o / "README.md").is_file())):
        raise ExportError(f"--out {o} exists and is not a model repository written by `autr export triton`; "
                          "choose a new directory")
    return {"dir": d, "out": o, "sidecar": data, "spec": spec, "batching": batching, "max_batch": mb,
            "preferred": pref, "delay_us": int(delay_us), "instances": int(instances), "kind": kind, "onnx": onnx,
            "engine": eng, "engine_sidecar": eng_side, "name": name}


def _write_model(repo: Path, name: str, config: str, files: dict, sidecars: dict) -> None:
    try:
        parse_config(config)
    except ImportError:
        pass  # tritonclient absent: the tests check every config against the schema
    m = repo / name
    (m / "1").mkdir(parents=True)
    (m / "config.pbtxt").write_text(config, encoding="utf-8")
    for dst, src in files.items():
        shutil.copyfile(src, m / "1" / dst)
        data = Path(str(src) + ".data")  # external weights travel with the graph
        if data.is_file():
            shutil.copyfile(data, m / "1" / data.name)
    for dst, src in sidecars.items():
        shutil.copyfile(src, m / dst)


def export_triton(directory, out, **options) -> dict:
    """Write the model repository (atomically: a temporary directory renamed into place). Returns a summary."""
    s = check_options(directory, out, **options)
    d, spec, name = s["dir"], s["spec"], s["name"]
    size = spec.input_size
    kind = "KIND_GPU" if s["kind"] == "gpu" else "KIND_CPU"
    common = dict(max_batch=s["max_batch"], preferred=s["preferred"], delay_us=s["delay_us"], batching=s["batching"],
                  t_max=spec.t_max)
    out = s["out"]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".triton-", dir=out.parent))
    models = []
    try:
        for precision, graph in s["onnx"].items():
            model = f"{name}_onnx" + ("" if precision == "fp32" else f"_{precision}")
            cfg = model_config(model, "onnxruntime_onnx", size, types=_io_types(graph), instances=s["instances"],
                               kind=kind, filename="model.onnx", **common)
            _write_model(tmp, model, cfg, {"model.onnx": graph}, {"model.json": d / "model.json"})
            models.append({"name": model, "platform": "onnxruntime_onnx", "precision": precision, "graph": graph.name})
        if s["engine"] is not None:
            eng_data = _read(s["engine_sidecar"])
            prof = eng_data.get("t_profile") or {}
            mb = min(s["max_batch"], int(prof.get("max", s["max_batch"])))
            if int(prof.get("min", 1)) != 1:
                raise ExportError(f"{s['engine']}: its T profile starts at {prof.get('min')}; Triton's batching needs 1")
            precision = eng_data.get("precision", "fp32")
            plugin_graph = d / _PLUGIN_GRAPH.get(precision, "model.plugin.onnx")
            types = _io_types(plugin_graph) if plugin_graph.is_file() else \
                {k: "TYPE_FP32" for k in ("frames", "log_mel", "masks", "scores")}
            model = f"{name}_trt"
            cfg = model_config(model, "tensorrt_plan", size, types=types, instances=1, kind="KIND_GPU",
                               filename="model.plan", **{**common, "max_batch": mb,
                                                         "preferred": [p for p in s["preferred"] if p <= mb]})
            _write_model(tmp, model, cfg, {"model.plan": s["engine"]},
                         {"model.json": d / "model.json", "model.plan.json": s["engine_sidecar"]})
            models.append({"name": model, "platform": "tensorrt_plan", "precision": precision, "graph": "model.plan",
                           "plugin_library_hash": eng_data.get("plugin_library_hash")})
        (tmp / "README.md").write_text(_readme(s, models), encoding="utf-8")
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"repository": str(out), "models": models, "max_batch_size": s["max_batch"] if s["batching"] else 0,
            "preferred_batch_size": s["preferred"], "max_queue_delay_microseconds": s["delay_us"],
            "instances": s["instances"], "batching": s["batching"], "engine": str(s["engine"]) if s["engine"] else None}


def _readme(s: dict, models: list) -> str:
    names = ", ".join(f"`{m['name']}` ({m['platform']}, {m['precision']})" for m in models)
    spec = s["spec"]
    h, w = spec.input_size
    batching = (f"Dynamic batching over the frame axis: T is Triton's batch axis (`max_batch_size: {s['max_batch']}`), "
                f"preferred sizes {s['preferred']}, queue delay {s['delay_us']} us; {s['instances']} instance(s) per "
                "ONNX Runtime model." if s["batching"] else
                "No dynamic batching: this model looks at all frames of a call together (AuTR's `query_select: "
                "clip` picks one query per clip; TPAVI's temporal block mixes the frames), so frames of "
                "different streams must not share a call; T is an explicit dimension (-1).")
    trt = [m for m in models if m["platform"] == "tensorrt_plan"]
    trt_text = (
        "No TensorRT model: the export directory had no engine. Build one on the serving GPU and run this command "
        "again:\n\n```bash\nautr export trt DIR            # writes DIR/model.engine + DIR/model.engine.json\n"
        f"autr export triton DIR --out {s['out']}\n```\n" if not trt else
        f"`{trt[0]['name']}/1/model.plan` is the engine of `autr export trt` (its sidecar: "
        f"`{trt[0]['name']}/model.plan.json`; it runs only on the GPU model and TensorRT version recorded there). "
        f"The engine holds `AutrMSDeformAttn` plugin layers: the plugin library `{PLUGIN_LIBRARY}` (`python -m "
        "autr.plugins build`, path: `python -c 'import autr.plugins as p; print(p.library_path())'`; the engine was "
        f"built against sha256 `{trt[0]['plugin_library_hash']}`) must be loaded by the server:\n\n"
        "```bash\nAUTR_TRT_REGISTER=1 tritonserver --model-repository=$PWD/REPO \\\n"
        f"    --backend-config=tensorrt,plugins=/path/to/{PLUGIN_LIBRARY}\n```\n\n"
        "Triton's TensorRT backend `dlopen`s that library after loading TensorRT and does not call TensorRT's "
        "plugin-library entry point `getCreators` (which `IPluginRegistry::loadLibrary` and `trtexec "
        "--dynamicPlugins` use). With `AUTR_TRT_REGISTER=1` in the server's environment the library registers its "
        "creator itself while it loads, with the TensorRT runtime the backend already loaded (it never loads one of "
        "its own; checked against a stand-in runtime in tests/test_plugins.py, not yet on a real server). Without "
        "the variable the TensorRT model fails to load with \"getPluginCreator could not find plugin "
        "AutrMSDeformAttn\". Leave it unset for every other program: `loadLibrary` registers the creator itself "
        "and refuses a library whose creator is already registered. To serve the ONNX Runtime models alone: "
        "`--model-control-mode=explicit --load-model=" + next(m['name'] for m in models) + "`.\n")
    return f"""# Triton model repository (autr export triton)

Made from `{s['dir']}` (input {h}x{w}, T {spec.t_min}..{spec.t_max}). Models: {names}.
Every model folder holds the export's sidecar `model.json`: the runtime reads input size, T range and
preprocessing from it (`autr stream --server grpc://HOST:8001 --model NAME --sidecar REPO/NAME`).

{batching}

## Start the server

```bash
tritonserver --model-repository=$PWD/REPO          # gRPC on 8001, HTTP on 8000, metrics on 8002
# (container: docker run --gpus all -p 8001:8001 -v $PWD/REPO:/models nvcr.io/nvidia/tritonserver:<yy.mm>-py3 \\
#             tritonserver --model-repository=/models)
```

Then, from any machine with the runtime (`pip install 'autr[serve]'`):

```bash
autr stream --server grpc://HOST:8001 --model {models[0]['name']} --sidecar REPO/{models[0]['name']} --synthetic
```

## TensorRT

{trt_text}"""
