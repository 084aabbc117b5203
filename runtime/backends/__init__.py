"""Backends: ``ort`` (portable ONNX + sidecar), ``torch`` (checkpoint), ``trt`` (engine + plugin), ``remote`` (an Open
Inference Protocol server: ``grpc://HOST:PORT`` + model name + sidecar), ``fake``.

Importing this package imports no backend library: :func:`open_backend` imports the one asked for. The
torch backend (:mod:`.torch_backend`) is the only module of the runtime that imports torch.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import BackendError
from .base import Backend

__all__ = ["Backend", "open_backend", "backend_kind_for", "shipped_export", "SHIPPED_EXPORT"]

SHIPPED_EXPORT = "autr-small-synth-onnx"  # the embedded default's export, in the package (`make default-export`)


def shipped_export() -> Path:
    """The export of the embedded default model that ships inside the package (``--onnx default``): its
    portable and plugin graphs (float16-stored weights, float32 compute) and sidecar. Raises BackendError with
    what to do when this install has none."""
    import autr

    path = Path(autr.__file__).resolve().parent / "assets" / SHIPPED_EXPORT
    if not (path / "model.json").is_file():
        raise BackendError(f"this install has no shipped export ({path} is missing): in a clone, run `make "
                           "default-export`; or export one yourself: autr export onnx --checkpoint default --out DIR")
    return path


def backend_kind_for(artifact) -> str:
    """The backend an artifact needs: ``.engine`` / ``.plan`` -> trt, ``.onnx`` or an export directory ->
    ort, ``.safetensors`` or ``"default"`` -> torch."""
    text = str(artifact)
    if text.startswith("grpc://"):
        return "remote"
    if text == "default":
        return "torch"
    p = Path(text)
    suffix = p.suffix.lower()
    if suffix in (".engine", ".plan", ".trt"):
        return "trt"
    if suffix == ".onnx" or (p.is_dir() and any(p.glob("*.onnx"))):
        return "ort"
    if suffix in (".safetensors", ".pt", ".pth"):
        return "torch"
    if p.is_dir() and any(p.glob("*.engine")):
        return "trt"
    raise BackendError(f"cannot tell which backend runs {artifact}: expected a .engine (TensorRT), a .onnx or an "
                       "export directory (ONNX Runtime), or a .safetensors checkpoint / 'default' (PyTorch)")


def open_backend(kind: str | None = None, artifact=None, **options) -> Backend:
    """Open a backend. ``kind`` None picks it from the artifact (:func:`backend_kind_for`).

    Options: ort -- ``provider`` (cpu | cuda | auto), ``threads``, ``spinning``, ``graph``, ``precision``, ``frames``; torch -- ``device``, ``threads``;
    trt -- ``plugin_library``, ``device`` (index); fake -- ``input_size``, ``delay``, ``t_max``;
    remote (artifact ``grpc://HOST:PORT``) -- ``model``, ``sidecar``, ``version``, ``timeout``, ``reconnect_s``.
    """
    kind = kind or backend_kind_for(artifact)
    if kind == "ort":
        from .ort import OrtBackend

        return OrtBackend(artifact, provider=options.get("provider", "cpu"), threads=options.get("threads"),
                          spinning=options.get("spinning"), graph=options.get("graph", "auto"),
                          precision=options.get("precision", "fp32"), frames=options.get("frames"))
    if kind == "torch":
        from .torch_backend import TorchBackend

        return TorchBackend("default" if artifact is None else artifact, device=options.get("device", "cpu"),
                            threads=options.get("threads"))
    if kind == "trt":
        from .trt import TrtBackend

        if Path(str(artifact)).is_dir():
            engines = sorted(Path(str(artifact)).glob("*.engine"))
            if len(engines) != 1:
                raise BackendError(f"{artifact} holds {len(engines)} .engine files; name one")
            artifact = engines[0]
        dev = options.get("device", 0)
        return TrtBackend(artifact, plugin_library=options.get("plugin_library"),
                          device=int(dev) if str(dev).isdigit() else 0)
    if kind == "fake":
        from .fake import FakeBackend

        return FakeBackend(input_size=options.get("input_size", (224, 224)), delay=options.get("delay", 0.0),
                           t_max=options.get("t_max", 16))
    if kind == "remote":
        from .remote import RemoteBackend

        return RemoteBackend(artifact, options.get("model"), options.get("sidecar"), version=options.get("version", ""),
                             timeout=options.get("timeout", 10.0), reconnect_s=options.get("reconnect_s", 20.0))
    raise BackendError(f"unknown backend {kind!r}; choose ort, torch, trt, remote or fake")
