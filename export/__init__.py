"""autr.export: PyTorch -> ONNX (plugin and portable graphs), parity checks, export benchmarks.

    from autr.export import export_onnx, verify_export
    export_onnx("out/small", preset="small", fp16=True)     # or checkpoint="run/best.safetensors"
    print(verify_export("out/small")["ok"])

Modules: `onnx_export` (the export and its sidecar), `msda` (the AutrMSDeformAttn node: torch custom
op, ONNX translation and schema, numpy implementation), `graph` (simplification, opset conversion,
MSDA decomposition for the portable graph, checks), `fp16` (float16 conversion), `verify` (ONNX
Runtime parity), `bench` (export / CPU latency benchmark), `trt` (TensorRT engine builder and its
cache), `cli` (the `autr export` click group).
Importing this package is light: torch, onnx and onnxruntime load on first use.
"""
from autr.export.errors import ExportError

_LAZY = {
    "export_onnx": ("autr.export.onnx_export", "export_onnx"),
    "verify_export": ("autr.export.verify", "verify_export"),
    "run_bench": ("autr.export.bench", "run_bench"),
    "build_engine": ("autr.export.trt", "build_engine"),
}

__all__ = ["ExportError", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'autr.export' has no attribute {name!r}")
