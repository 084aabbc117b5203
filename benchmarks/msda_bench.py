"""`autr bench msda`: the multi-scale deformable attention op alone.

Implementations: `reference` (autr.ops.ms_deform_attn_reference, grid_sample; every device), `ort` (the
ONNX Runtime custom-op library of autr.plugins on a one-node AutrMSDeformAttn graph, CPU execution provider,
as many intra-op threads as torch uses; CPU only, needs `python -m autr.plugins build --ort`), `cuda` (the
PyTorch CUDA extension of autr.plugins; CUDA only), `trt` (the TensorRT plugin AutrMSDeformAttn in a
one-layer engine; needs TensorRT, the built plugin library and CUDA). What cannot run here is a row with
its reason. The `ort` time is a whole `InferenceSession.run` (feeds, output allocation and the kernel), what
the runtime pays per call.

Sizes ("cases"):
    <preset>@<size> encoder -- the model's own encoder call: N = T frames, Lq = S = every position of the
        levels at strides 8 / 16 / 32 (autr.model.N_LEVELS levels), M = n_heads, D = d_model / n_heads,
        P = n_points.
    <preset>@<size> decoder -- the decoder's cross-attention: the same value, Lq = n_queries.
    deformable-detr -- Deformable-DETR's encoder at an 800x1200-ish input: levels (100,150) (50,75) (25,38)
        (13,19), Lq = S = 19 947 queries, 8 heads, 32 channels, 4 points, batch 1.

Bytes moved (a simple model of the gather traffic, counted as if no read hit a cache):
    per sample (n, q, m, l, p): 4 bilinear corners x D channels of `value`  = 4*D*b
                                + its (x, y) location                      = 2*b
                                + its attention weight                     = 1*b
    per output (n, q, m):       D channels written                         = D*b
    bytes = N*Lq*M*L*P*(4*D + 3)*b + N*Lq*M*D*b,   b = bytes per element (4 fp32, 2 fp16, 8 fp64)
The achieved bandwidth is bytes / median time. Neighbouring samples share corners, so caches serve part of
the reads and the figure can exceed the DRAM bandwidth; `compulsory_bytes` (value, locations and weights
read once, output written once) is the lower bound of the traffic.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from .core import BenchError, check_common, parse_list

__all__ = ["MsdaCase", "IMPLS", "DTYPES", "model_cases", "detr_case", "bytes_moved", "random_inputs",
           "rel_error", "rel_l2_error", "msda_onnx_model", "OrtMsda", "run_msda_bench", "format_msda"]

IMPLS = ("reference", "ort", "cuda", "trt")
DTYPES = {"fp32": 4, "fp16": 2, "fp64": 8}
DETR_SHAPES = ((100, 150), (50, 75), (25, 38), (13, 19))
STRIDES = (8, 16, 32, 64)


@dataclass
class MsdaCase:
    name: str
    n: int  # batch N
    lq: int  # queries
    m: int  # heads
    d: int  # channels per head
    p: int  # points per head and level
    shapes: list = field(default_factory=list)  # (H, W) per level

    @property
    def levels(self) -> int:
        return len(self.shapes)

    @property
    def s(self) -> int:
        return sum(h * w for h, w in self.shapes)

    def describe(self) -> dict:
        d = asdict(self)
        d["shapes"] = [list(x) for x in self.shapes]
        d.update(levels=self.levels, s=self.s, samples=self.n * self.lq * self.m * self.levels * self.p)
        return d


def model_cases(preset: str, size: int = 224, frames: int = 5) -> list:
    """The model's two MSDA calls (encoder, decoder) at input size x size and T = frames."""
    from autr.model import N_LEVELS
    from autr.presets import get_config

    try:
        cfg = get_config(preset)
    except ValueError as exc:
        raise BenchError(str(exc)) from None
    check_common(size, frames=(frames,))
    shapes = [(size // s, size // s) for s in STRIDES[:N_LEVELS]]
    d = cfg.d_model // cfg.n_heads
    s = sum(h * w for h, w in shapes)
    base = f"{cfg.name}@{size}"
    return [MsdaCase(f"{base} encoder", frames, s, cfg.n_heads, d, cfg.n_points, shapes),
            MsdaCase(f"{base} decoder", frames, cfg.n_queries, cfg.n_heads, d, cfg.n_points, shapes)]


def detr_case() -> MsdaCase:
    s = sum(h * w for h, w in DETR_SHAPES)
    return MsdaCase("deformable-detr", 1, s, 8, 32, 4, list(DETR_SHAPES))


def bytes_moved(case: MsdaCase, dtype: str = "fp32") -> dict:
    """The traffic model of the module docstring, in bytes."""
    b = DTYPES[dtype]
    samples = case.n * case.lq * case.m * case.levels * case.p
    outputs = case.n * case.lq * case.m * case.d
    gather = samples * (4 * case.d + 3) * b + outputs * b
    compulsory = (case.n * case.s * case.m * case.d + samples * 3 + outputs) * b
    return {"bytes": gather, "compulsory_bytes": compulsory, "value_reads": samples * 4 * case.d * b,
            "location_weight_reads": samples * 3 * b, "output_writes": outputs * b}


def random_inputs(case: MsdaCase, dtype: str = "fp32", device: str = "cpu", seed: int = 0):
    """(value, spatial_shapes, level_start_index, sampling_locations, attention_weights), fresh and random:
    locations uniform in [-0.05, 1.05] (some corners outside the map), weights softmax-normalised."""
    import torch

    g = torch.Generator().manual_seed(seed)
    dt = {"fp32": torch.float32, "fp16": torch.float16, "fp64": torch.float64}[dtype]
    n, lq, m, d, lv, p = case.n, case.lq, case.m, case.d, case.levels, case.p
    value = torch.randn(n, case.s, m, d, generator=g)
    loc = torch.rand(n, lq, m, lv, p, 2, generator=g) * 1.1 - 0.05
    weights = torch.randn(n, lq, m, lv * p, generator=g).softmax(-1).view(n, lq, m, lv, p)
    shapes = torch.as_tensor(case.shapes, dtype=torch.long)
    starts = torch.cat([shapes.new_zeros(1), (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    return (value.to(device, dt), shapes.to(device), starts.to(device), loc.to(device, dt),
            weights.to(device, dt))


def rel_error(out, ref) -> float:
    """max |out - ref| / max |ref| (compared in float64)."""
    out, ref = out.double(), ref.double()
    scale = float(ref.abs().max())
    return float((out - ref).abs().max()) / (scale if scale > 0 else 1.0)


def rel_l2_error(out, ref) -> float:
    """||out - ref||_2 / ||ref||_2 (compared in float64)."""
    out, ref = out.double(), ref.double()
    scale = float(ref.norm())
    return float((out - ref).norm()) / (scale if scale > 0 else 1.0)


# ----------------------------------------------------------------------------------------------- implementations
def _reference():
    from autr.ops import ms_deform_attn_reference

    return ms_deform_attn_reference


def cuda_op(device: str):
    """The CUDA extension's forward, or raise RuntimeError with the reason it cannot run here."""
    if not str(device).startswith("cuda"):
        raise RuntimeError("the CUDA extension runs on CUDA tensors only (this run is on the CPU)")
    from autr.plugins.torch_op import PluginUnavailable, load_extension

    try:
        load_extension()
        from autr.plugins.torch_op import ms_deform_attn_cuda
    except PluginUnavailable as exc:
        raise RuntimeError(str(exc)) from None
    return ms_deform_attn_cuda


class TrtMsda:
    """The TensorRT plugin in a one-layer engine with static shapes; inputs and output are torch CUDA
    tensors (their pointers bound to the engine), run on torch's current stream."""

    def __init__(self, case: MsdaCase, dtype: str, plugin_library=None):
        import torch

        try:
            import tensorrt as trt
        except ImportError as exc:
            raise RuntimeError(f"TensorRT is not installed here ({exc}); pip install 'tensorrt>=10'") from None
        if not torch.cuda.is_available():
            raise RuntimeError("the TensorRT plugin needs a CUDA GPU")
        if dtype not in ("fp32", "fp16"):
            raise RuntimeError(f"the TensorRT plugin runs float32 / float16, not {dtype}")
        import numpy as np

        import autr.plugins as plugins

        try:
            lib = plugin_library or plugins.library_path()
        except Exception as exc:
            raise RuntimeError(f"the plugin library is not built ({exc}); "
                               "`python -m autr.plugins build --trt-include DIR`") from None
        self.trt, self.torch, self.case = trt, torch, case
        logger = trt.Logger(trt.Logger.WARNING)
        registry = trt.get_plugin_registry()
        self._handle = registry.load_library(str(lib))
        creator = registry.get_creator(plugins.PLUGIN_NAME, plugins.PLUGIN_VERSION, plugins.PLUGIN_NAMESPACE)
        if creator is None:
            raise RuntimeError(f"{lib} does not register {plugins.PLUGIN_NAME} v{plugins.PLUGIN_VERSION}")
        plugin = creator.create_plugin("msda", trt.PluginFieldCollection([]), trt.TensorRTPhase.BUILD)
        flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
        builder = trt.Builder(logger)
        network = builder.create_network(0 if flag is None else 1 << int(flag))
        tdt = trt.float16 if dtype == "fp16" else trt.float32
        n, lq, m, d, lv, p = case.n, case.lq, case.m, case.d, case.levels, case.p
        value = network.add_input("value", tdt, (n, case.s, m, d))
        loc = network.add_input("sampling_locations", tdt, (n, lq, m, lv, p, 2))
        weights = network.add_input("attention_weights", tdt, (n, lq, m, lv, p))
        self._consts = [np.asarray(case.shapes, np.int32),
                        np.asarray([0] + list(np.cumsum([h * w for h, w in case.shapes])[:-1]), np.int32)]
        shapes = network.add_constant((lv, 2), trt.Weights(self._consts[0])).get_output(0)
        starts = network.add_constant((lv,), trt.Weights(self._consts[1])).get_output(0)
        layer = network.add_plugin_v3([value, shapes, starts, loc, weights], [], plugin)
        out = layer.get_output(0)
        out.name = "output"
        network.mark_output(out)
        config = builder.create_builder_config()
        if flag is None and dtype == "fp16":
            config.set_flag(trt.BuilderFlag.FP16)
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError("TensorRT could not build the one-layer MSDA engine")
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        self.context = self.engine.create_execution_context()
        self.out = None

    def __call__(self, value, spatial_shapes, level_start_index, loc, weights):
        torch = self.torch
        if self.out is None:
            self.out = torch.empty(self.case.n, self.case.lq, self.case.m * self.case.d, dtype=value.dtype,
                                   device=value.device)
        for name, t in (("value", value), ("sampling_locations", loc), ("attention_weights", weights),
                        ("output", self.out)):
            self.context.set_tensor_address(name, t.contiguous().data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream().cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return self.out


def msda_onnx_model(case: MsdaCase, dtype: str = "fp32"):
    """A one-node ONNX model: autr::AutrMSDeformAttn (plugin_version "1") with the case's static shapes, inputs
    value / sampling_locations / attention_weights, the two index tensors as int32 initializers, output
    `output` -- the node of the plugin graph, alone."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    if dtype not in ("fp32", "fp16"):
        raise RuntimeError(f"the AutrMSDeformAttn node is float32 / float16, not {dtype}")
    elem = TensorProto.FLOAT16 if dtype == "fp16" else TensorProto.FLOAT
    n, lq, m, d, lv, p = case.n, case.lq, case.m, case.d, case.levels, case.p
    sizes = [h * w for h, w in case.shapes]
    shapes = numpy_helper.from_array(np.asarray(case.shapes, np.int32).reshape(lv, 2), "spatial_shapes")
    starts = numpy_helper.from_array(np.asarray([0] + list(np.cumsum(sizes)[:-1]), np.int32), "level_start_index")
    node = helper.make_node("AutrMSDeformAttn", ["value", "spatial_shapes", "level_start_index", "sampling_locations",
                                                 "attention_weights"], ["output"], domain="autr", plugin_version="1")
    graph = helper.make_graph(
        [node], "msda",
        [helper.make_tensor_value_info("value", elem, [n, case.s, m, d]),
         helper.make_tensor_value_info("sampling_locations", elem, [n, lq, m, lv, p, 2]),
         helper.make_tensor_value_info("attention_weights", elem, [n, lq, m, lv, p])],
        [helper.make_tensor_value_info("output", elem, [n, lq, m * d])],
        initializer=[shapes, starts])
    # IR version 9 (onnx 1.15): readable by every ONNX Runtime the library supports (>= 1.21)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("autr", 1)],
                             ir_version=9)


class OrtMsda:
    """The ONNX Runtime custom-op library (autr.plugins.register_msda) running `msda_onnx_model(case)` on the
    CPU execution provider with `threads` intra-op threads; takes and returns torch CPU tensors."""

    def __init__(self, case: MsdaCase, dtype: str, threads: int | None = None, library=None):
        import torch

        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise RuntimeError(f"onnxruntime is not installed here ({exc}); pip install onnxruntime") from None
        from autr.plugins import register_msda

        model = msda_onnx_model(case, dtype)
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        reason = register_msda(options, library=library)
        if reason:
            raise RuntimeError(reason)
        self.torch = torch
        self.session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    def __call__(self, value, spatial_shapes, level_start_index, loc, weights):
        feeds = {"value": value.contiguous().numpy(), "sampling_locations": loc.contiguous().numpy(),
                 "attention_weights": weights.contiguous().numpy()}
        return self.torch.from_numpy(self.session.run(None, feeds)[0])


def _impl(name: str, case: MsdaCase, dtype: str, device: str, plugin_library=None):
    if name == "reference":
        if not str(device).startswith("cuda") and dtype == "fp16":
            raise RuntimeError("grid_sample has no float16 CPU kernel; fp16 runs on CUDA")
        return _reference()
    if name == "ort":
        if str(device).startswith("cuda"):
            raise RuntimeError("the ort row times ONNX Runtime's CPU execution provider; run with --device cpu")
        return OrtMsda(case, dtype)
    if name == "cuda":
        if dtype == "fp64":
            raise RuntimeError("timed in fp32 / fp16 only (fp64 is the gradcheck's dtype)")
        return cuda_op(device)
    if name == "trt":
        return TrtMsda(case, dtype, plugin_library)
    raise RuntimeError(f"unknown implementation {name}")


def bench_case(case: MsdaCase, impls, dtypes, device: str = "cpu", warmup: int = 3, iters: int = 20,
               seed: int = 0, plugin_library=None, log=None) -> list:
    """Rows for one case: every (impl, dtype), timed, with bytes, GB/s, the error against a float64
    reference on the same inputs and the speed-up over the reference at the same dtype."""
    import torch

    from .core import summarize, time_fn

    say = log or (lambda msg: None)
    rows = []
    ref_ms = {}
    for dtype in dtypes:
        inputs = random_inputs(case, dtype, device, seed)
        with torch.no_grad():
            ref64 = _reference()(*(x.double() if x.is_floating_point() else x for x in inputs))
        for name in impls:
            row = {"case": case.name, "impl": name, "dtype": dtype, "device": device}
            try:
                fn = _impl(name, case, dtype, device, plugin_library)
            except Exception as exc:  # any reason an implementation cannot run here becomes the row's reason
                rows.append({**row, "status": "skipped", "reason": " ".join(str(exc).split())})
                continue
            say(f"msda {case.name}: {name} {dtype}")
            try:
                with torch.no_grad():
                    out = fn(*inputs)
                    err, err_l2 = rel_error(out, ref64), rel_l2_error(out, ref64)
                    samples = time_fn(lambda: fn(*inputs), device, warmup, iters)
            except Exception as exc:
                rows.append({**row, "status": "failed", "reason": " ".join(str(exc).split())})
                continue
            lat = summarize(samples)
            traffic = bytes_moved(case, dtype)
            med = lat["p50"]
            row.update(status="ok", latency_ms=lat, min_ms=round(min(samples), 4), **traffic,
                       bandwidth_gbs=round(traffic["bytes"] / (med * 1e-3) / 1e9, 3) if med > 0 else None,
                       rel_error_vs_fp64=err, rel_l2_error_vs_fp64=err_l2)
            if name == "reference":
                ref_ms[dtype] = med
            if dtype in ref_ms and med > 0:
                row["speedup_vs_reference"] = round(ref_ms[dtype] / med, 3)
            rows.append(row)
        del inputs
        if str(device).startswith("cuda"):
            torch.cuda.empty_cache()
    return rows


def validate_msda_args(presets, size: int, frames: int, cases, impls, dtypes, warmup: int, iters: int,
                       threads=None) -> tuple:
    """Everything that can be refused before torch is imported (BenchError, one line). Returns the
    (presets, cases, impls, dtypes) lists, parsed from "a,b" text or checked as given."""
    from autr.presets import get_config, list_presets

    cases = parse_list(cases, ("model", "detr"), "case")
    with_msda = [p for p in list_presets() if get_config(p).arch == "autr"]  # TPAVI has no MSDA layer
    presets = parse_list(presets, with_msda if "model" in cases else None, "preset")
    impls = parse_list(impls, IMPLS, "implementation")
    dtypes = parse_list(dtypes, tuple(DTYPES), "dtype")
    check_common(size, warmup, iters, threads, (frames,))
    return presets, cases, impls, dtypes


def resolve_device(device: str = "auto") -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise BenchError(f"--device {device}: this PyTorch sees no CUDA device")
    return device


def run_msda_bench(presets=("small",), size: int = 224, frames: int = 5, cases=("model", "detr"),
                   impls=IMPLS, dtypes=("fp32", "fp16"), device: str = "auto", warmup: int = 3, iters: int = 20,
                   threads: int | None = None, plugin_library=None, seed: int = 0, log=None) -> dict:
    """Every case x implementation x dtype; returns {"cases": [...], "rows": [...], "bytes_model": ...}."""
    presets, cases, impls, dtypes = validate_msda_args(presets, size, frames, cases, impls, dtypes, warmup, iters,
                                                       threads)
    import torch

    if threads:
        torch.set_num_threads(int(threads))
    device = resolve_device(device)
    todo = []
    if "model" in cases:
        for preset in presets:
            todo += model_cases(preset, size, frames)
    if "detr" in cases:
        todo.append(detr_case())
    rows = []
    for case in todo:
        rows += bench_case(case, impls, dtypes, device, warmup, iters, seed, plugin_library, log)
    return {"device_used": device, "cases": [c.describe() for c in todo], "rows": rows,
            "bytes_model": "N*Lq*M*L*P*(4*D + 3)*b + N*Lq*M*D*b (4 corners x D value reads + 2 location + 1 "
                           "weight reads per sample, D output writes per query and head; b bytes per element; "
                           "no cache reuse assumed)",
            "method": ("CUDA events around each call on the current stream, median of iters after warm-up"
                       if device.startswith("cuda") else
                       "time.perf_counter around each call, median of iters after warm-up") +
                      "; rel_error_vs_fp64 = max|out - ref| / max|ref| and rel_l2_error_vs_fp64 = "
                      "||out - ref||_2 / ||ref||_2 against the reference in float64 on the same inputs"}


def format_msda(result: dict) -> str:
    lines = [f"{'case':<26} {'impl':<10} {'dtype':<5} {'p50 ms':>9} {'GB/s':>8} {'MB moved':>9} "
             f"{'vs ref':>7} {'rel err':>9}"]
    from .report import collapse

    for r in result["rows"]:
        if r["status"] != "ok":
            continue
        sp = r.get("speedup_vs_reference")
        lines.append(f"{r['case']:<26} {r['impl']:<10} {r['dtype']:<5} {r['latency_ms']['p50']:>9.3f} "
                     f"{r['bandwidth_gbs'] or 0:>8.2f} {r['bytes'] / 1e6:>9.2f} "
                     f"{'' if sp is None else f'{sp:.2f}x':>7} {r['rel_error_vs_fp64']:>9.2e}")
    bad = [r for r in result["rows"] if r["status"] != "ok"]
    for r, cases in collapse(bad, lambda r: (r["impl"], r["dtype"]), lambda r: r["case"]):
        where = "all cases" if len(cases) == len(result.get("cases", [])) else ", ".join(cases)
        lines.append(f"{r['impl']} {r['dtype']} ({where}): {r['status']}: {r['reason']}")
    return "\n".join(lines)
