"""A stand-in for TensorRT's plugin registry that keeps the real contract (for tests without TensorRT).

TensorRT (NvInferRuntimeCommon.h, IPluginRegistry; Python bindings python/src/infer/pyPlugin.cpp):
- ``load_library(path)`` dlopens the library, calls its ``getCreators`` and registers every creator; it
  returns the library handle, or null (Python: None) when the library cannot be loaded or when *any* of its
  plugins is already registered -- so loading one library twice in one process fails the second time;
- ``get_creator(type, version, plugin_namespace="")`` returns the registered creator or None;
- ``deregister_library(handle)`` removes the library's creators again.
One registry per process (``trt.get_plugin_registry()``), shared by builders and runtimes.
A fake library here is any existing file; like ours it holds one creator, AutrMSDeformAttn v1, namespace "".
"""
from __future__ import annotations

import os

CREATORS = (("AutrMSDeformAttn", "1", ""),)


class FakeCreator:
    def __init__(self, name, version, namespace, library):
        self.name, self.plugin_version, self.plugin_namespace, self.library = name, version, namespace, library


class FakePluginRegistry:
    def __init__(self, calls: list | None = None):
        self.calls = calls if calls is not None else []
        self.creators: dict = {}  # (name, version, namespace) -> FakeCreator
        self.libraries: dict = {}  # handle -> path

    def load_library(self, plugin_path):
        self.calls.append(("load_library", plugin_path))
        if not os.path.isfile(plugin_path):
            return None
        if any(key in self.creators for key in CREATORS):
            return None  # "The call will fail and return nullptr if any of the plugins are already registered."
        handle = object()
        self.libraries[handle] = plugin_path
        for key in CREATORS:
            self.creators[key] = FakeCreator(*key, plugin_path)
        return handle

    def get_creator(self, type, version, plugin_namespace=""):  # noqa: A002 - TensorRT's argument name
        self.calls.append(("get_creator", type, version, plugin_namespace))
        return self.creators.get((type, version, plugin_namespace))

    def deregister_library(self, handle):
        path = self.libraries.pop(handle)
        for key in [k for k, c in self.creators.items() if c.library == path]:
            del self.creators[key]
