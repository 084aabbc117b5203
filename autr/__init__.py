"""AuTR toolkit: audio-visual segmentation you can deploy.

`import autr` is light: it pulls in neither torch nor timm. The heavy entry points are
loaded on first use:

    >>> import autr
    >>> model = autr.build_model("small")        # imports torch / timm now
    >>> autr.list_presets()
"""
__version__ = "0.1.0"

_LAZY = {
    "build_model": ("autr.model", "build_model"),
    "AuTR": ("autr.model", "AuTR"),
    "get_config": ("autr.presets", "get_config"),
    "list_presets": ("autr.presets", "list_presets"),
    "AutrConfig": ("autr.presets", "AutrConfig"),
    "save_checkpoint": ("autr.checkpoint", "save_checkpoint"),
    "load_checkpoint": ("autr.checkpoint", "load_checkpoint"),
    "load_model": ("autr.checkpoint", "load_model"),
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'autr' has no attribute {name!r}")
