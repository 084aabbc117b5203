"""`autr export trt`: the plugin ONNX graph -> a TensorRT engine, with an engine cache.

    DIR/model.engine        the serialized plan (TensorRT 10/11), built with the MSDA plugin library loaded
    DIR/model.engine.json   its sidecar: GPU name and compute capability, TensorRT version, plugin library
                            sha256, precision, shape profile over T, input size, ONNX sha256, build facts;
                            read by the runtime's trt backend (`autr.runtime.backends.trt`)

The cache: an engine is reused only when every key its sidecar records (`cache_key`) equals what this
build would use -- ONNX file sha256, precision, T profile, input size, TensorRT version, GPU name, compute
capability, plugin library sha256, toolkit version -- and the engine file still has the sha256 its sidecar
records. Anything else is stale and rebuilt, never loaded (`stale_reasons` names each difference). Workspace
size and timing cache only steer the build and are not keys (`force=True` rebuilds anyway).

Precision: both TensorRT 10 and 11 get a strongly-typed network (TensorRT 10:
``1 << int(NetworkDefinitionCreationFlag.STRONGLY_TYPED)``; TensorRT 11: every network is strongly typed,
the flag is passed where it still exists and ignored there), so each tensor computes in exactly its ONNX
type: fp32 builds from ``model.plugin.onnx``, ``fp16=True`` from ``model.plugin.fp16.onnx`` (the exporter's
float16 graph, which already holds the precision plan). ``BuilderFlag.FP16`` is never set (it is meaningless
for a strongly-typed network and gone in TensorRT 11).

The pure parts (profile parsing and validation, the cache key, the staleness check, publishing the files)
need no TensorRT and are tested on a CPU; ``tensorrt`` and the GPU query are imported only by
:func:`build_engine`.
"""
from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

from autr.export.errors import ExportError
from autr.export.onnx_export import INPUT_NAMES, LOG_MEL_SHAPE, PLUGIN_FILE, PLUGIN_FP16_FILE, SIDECAR_FILE, read_export

ENGINE_FILE = "model.engine"
ENGINE_SIDECAR_FILE = ENGINE_FILE + ".json"  # the first name autr.runtime's find_sidecar() looks for
LOCK_FILE = ".model.engine.lock"
FORMAT = "autr-trt-engine"
FORMAT_VERSION = 1
DEFAULT_WORKSPACE_GB = 4.0

# cache key -> how a difference is named in the staleness reasons (every key is also a sidecar field)
CACHE_KEYS = {
    "onnx_sha256": "ONNX graph",
    "precision": "precision",
    "profile": "T profile (min, opt, max)",
    "input_size": "input size",
    "tensorrt_version": "TensorRT version",
    "gpu_name": "GPU",
    "compute_capability": "compute capability",
    "plugin_library_hash": "plugin library",
    "toolkit_version": "toolkit version",
}

__all__ = ["CACHE_KEYS", "TrtUnavailable", "build_engine", "cache_key", "engine_paths", "gpu_info", "import_tensorrt",
           "onnx_path", "parse_profile", "read_engine_sidecar", "shape_profile", "stale_reasons",
           "write_engine"]


class TrtUnavailable(ExportError):
    """TensorRT or an NVIDIA GPU is missing here; the message says how to install (one line)."""


# ------------------------------------------------------------------------------------ pure helpers
def _sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def engine_paths(directory) -> tuple:
    """(DIR/model.engine, DIR/model.engine.json)."""
    d = Path(directory)
    return d / ENGINE_FILE, d / ENGINE_SIDECAR_FILE


def onnx_path(directory, fp16: bool) -> Path:
    """The plugin graph a build uses: model.plugin.onnx, or model.plugin.fp16.onnx with `fp16`."""
    path = Path(directory) / (PLUGIN_FP16_FILE if fp16 else PLUGIN_FILE)
    if not path.is_file():
        hint = "re-export with `autr export onnx --fp16`" if fp16 else "re-export with `autr export onnx`"
        raise ExportError(f"{path} not found; {hint}")
    return path


def parse_profile(profile, t_range) -> tuple:
    """(min, opt, max) over T from "min,opt,max" (or a 3-sequence); None -> (1, 1, T_MAX) of the export.

    Refused with one ExportError: not three integers, not min <= opt <= max, or outside the export's
    T range (the ONNX graph accepts only t_range[0]..t_range[1]).
    """
    t_lo, t_hi = int(t_range[0]), int(t_range[1])
    if profile is None:
        return (t_lo, t_lo, t_hi)
    text = profile if isinstance(profile, str) else ",".join(str(x) for x in profile)
    parts = [p.strip() for p in text.replace(" ", ",").split(",") if p.strip()]
    try:
        values = tuple(int(p) for p in parts)
    except ValueError:
        values = ()
    if len(values) != 3:
        raise ExportError(f"--profile must be three integers min,opt,max over T (e.g. {t_lo},{t_lo},{t_hi}), "
                          f"got {text!r}")
    lo, opt, hi = values
    if not lo <= opt <= hi:
        raise ExportError(f"--profile {lo},{opt},{hi} must satisfy min <= opt <= max")
    if lo < t_lo or hi > t_hi:
        raise ExportError(f"--profile {lo},{opt},{hi} is outside the export's T range {t_lo}..{t_hi} "
                          f"(from {SIDECAR_FILE}); re-export with `autr export onnx --frames N` for longer clips")
    return values


def shape_profile(profile, input_size) -> dict:
    """The optimisation profile's shapes per input: {"frames": {"min": [T,3,H,W], "opt": ..., "max": ...}, ...}."""
    h, w = (int(x) for x in input_size)
    per_t = {"frames": lambda t: [t, 3, h, w], "log_mel": lambda t: [t, *LOG_MEL_SHAPE]}
    return {name: {k: shape(int(t)) for k, t in zip(("min", "opt", "max"), profile)} for name, shape in per_t.items()}


def cache_key(*, onnx_sha256: str, precision: str, profile, input_size, tensorrt_version: str, gpu_name: str,
              compute_capability, plugin_library_hash: str, toolkit_version: str) -> dict:
    """Everything an engine plan depends on (see CACHE_KEYS); JSON-plain so that it compares after a round trip."""
    from autr.runtime.backends.trt import cc_text  # the runtime compares compute capabilities the same way

    key = {"onnx_sha256": onnx_sha256, "precision": precision, "profile": [int(x) for x in profile],
           "input_size": [int(x) for x in input_size], "tensorrt_version": str(tensorrt_version),
           "gpu_name": str(gpu_name), "compute_capability": cc_text(compute_capability),
           "plugin_library_hash": plugin_library_hash, "toolkit_version": str(toolkit_version)}
    assert set(key) == set(CACHE_KEYS)
    return json.loads(json.dumps(key))


def _short(value) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text[:12] + "..." if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text


def read_engine_sidecar(directory) -> dict | None:
    """The engine sidecar dict, or None where there is none (or it is unreadable)."""
    path = engine_paths(directory)[1]
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stale_reasons(directory, key: dict) -> list:
    """Why DIR/model.engine cannot be reused for `key`; an empty list means it is up to date.

    Stale: no engine, no (or an unreadable, or a foreign) sidecar, any cache key that differs, or an
    engine file that is not the one the sidecar describes (size / sha256).
    """
    engine, side_path = engine_paths(directory)
    if not engine.is_file():
        return [f"no engine yet ({engine.name})"]
    data = read_engine_sidecar(directory)
    if data is None:
        return [f"no readable engine sidecar ({side_path.name})"]
    if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
        return [f"{side_path.name} was not written by this version of `autr export trt`"]
    old = data.get("cache_key") if isinstance(data.get("cache_key"), dict) else {}
    reasons = [f"{label} changed: {_short(old.get(k))} -> {_short(key.get(k))}"
               for k, label in CACHE_KEYS.items() if old.get(k) != key.get(k)]
    if reasons:
        return reasons
    if engine.stat().st_size != data.get("engine_bytes") or _sha256(engine) != data.get("engine_sha256"):
        return [f"{engine.name} is not the engine its sidecar describes (size / sha256)"]
    return []


def _write_temp(directory: Path, name: str, payload) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{name}.tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    os.chmod(tmp, 0o644)
    return Path(tmp)


def write_engine(directory, plan, sidecar: dict) -> tuple:
    """Publish DIR/model.engine and DIR/model.engine.json so that a reader never pairs them wrongly.

    Both are written to temporary files first. Then the old sidecar is removed, the engine renamed into
    place, and the new sidecar renamed last: a reader sees the old pair, an engine without its own
    sidecar (the runtime then falls back to model.json, which describes the same export), or the new
    pair -- never a new engine next to an old sidecar, or the reverse. A crash in between leaves an
    engine without a sidecar, which the cache treats as stale. ``sidecar`` gets ``engine_bytes`` and
    ``engine_sha256`` filled in.
    """
    directory = Path(directory)
    engine, side_path = engine_paths(directory)
    view = memoryview(plan)
    sidecar = dict(sidecar, engine_file=engine.name, engine_bytes=view.nbytes,
                   engine_sha256=hashlib.sha256(view).hexdigest())
    tmp_engine = _write_temp(directory, engine.name, view)
    try:
        tmp_side = _write_temp(directory, side_path.name, (json.dumps(sidecar, indent=2) + "\n").encode())
    except BaseException:
        tmp_engine.unlink(missing_ok=True)
        raise
    try:
        side_path.unlink(missing_ok=True)
        os.replace(tmp_engine, engine)
        os.replace(tmp_side, side_path)
    except BaseException:
        tmp_engine.unlink(missing_ok=True)
        tmp_side.unlink(missing_ok=True)
        raise
    try:  # make the renames durable
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass
    return engine, side_path, sidecar


# ------------------------------------------------------------------------------- TensorRT and the GPU
def import_tensorrt():
    """(tensorrt 10+, pycuda.driver) -- the same modules the runtime's trt backend runs the engine with -- or
    TrtUnavailable: one line saying how to install them."""
    from autr.runtime.backends.trt import import_tensorrt as load

    return load("`autr export trt`", TrtUnavailable)


def gpu_info(cuda, device: int = 0) -> dict:
    """{"gpu_name", "compute_capability" ("8.6")} of CUDA device `device` (the one TensorRT builds on), asked of
    pycuda exactly as the runtime's trt backend asks when it checks the engine; TrtUnavailable (one line) when
    there is no such GPU."""
    from autr.runtime.backends.trt import INSTALL_HINT, cuda_device
    from autr.runtime.errors import one_line

    try:
        _, name, (major, minor) = cuda_device(cuda, device)
    except Exception as exc:  # pycuda raises its own LogicError / RuntimeError types
        raise TrtUnavailable(f"`autr export trt` needs an NVIDIA GPU with its driver, and CUDA device {device} is "
                             f"not usable ({one_line(exc)}); {INSTALL_HINT}") from None
    return {"gpu_name": name, "compute_capability": f"{major}.{minor}"}


def _plugin_library(explicit=None) -> tuple:
    """(path, sha256) of the MSDA TensorRT plugin library (`autr.plugins.library_path()` by default)."""
    import autr.plugins as plugins

    if explicit is not None:
        path = Path(explicit).expanduser()
        if not path.is_file():
            raise ExportError(f"plugin library {path} not found; {plugins.build.BUILD_HINT}")
    else:
        try:
            path = plugins.library_path()
        except plugins.PluginLibraryNotFound as exc:
            raise ExportError(f"the MSDA TensorRT plugin is not built: {exc}") from None
    return path.resolve(), plugins.library_hash(path)


def _make_logger(trt, say):
    """A TensorRT logger that keeps the errors (for the one-line failure) and passes warnings to `say`."""
    sev = trt.ILogger.Severity
    errors_sev = {getattr(sev, n) for n in ("INTERNAL_ERROR", "ERROR") if hasattr(sev, n)}
    warn_sev = getattr(sev, "WARNING", None)

    class _Logger(trt.ILogger):
        def __init__(self):
            trt.ILogger.__init__(self)
            self.errors = []

        def log(self, severity, msg):
            if severity in errors_sev:
                self.errors.append(" ".join(str(msg).split()))
            elif severity == warn_sev:
                say(f"TensorRT warning: {' '.join(str(msg).split())}")

    return _Logger()


def _errors(logger, parser=None) -> str:
    msgs = []
    if parser is not None:
        msgs += [" ".join(str(parser.get_error(i)).split()) for i in range(parser.num_errors)]
    msgs += logger.errors
    return " | ".join(dict.fromkeys(msgs)) or "no error message from TensorRT"


def _network_flags(trt) -> tuple:
    """create_network flags: strongly typed wherever the flag exists (TensorRT 10; accepted and ignored by 11,
    whose networks are always strongly typed; 0 where it has been removed)."""
    flag = getattr(getattr(trt, "NetworkDefinitionCreationFlag", None), "STRONGLY_TYPED", None)
    return (1 << int(flag), "strongly typed") if flag is not None else (0, "strongly typed (TensorRT 11: always)")


def _build_plan(trt, onnx_file: Path, profile, input_size, workspace: int, timing_cache, plugin: Path, say):
    """Run the TensorRT builder; returns (serialized plan, facts for the sidecar)."""
    logger = _make_logger(trt, say)
    init_plugins = getattr(trt, "init_libnvinfer_plugins", None)  # TensorRT's own plugins (not needed by AuTR)
    if init_plugins is not None:
        init_plugins(logger, "")
    builder = trt.Builder(logger)
    if builder is None:
        raise ExportError(f"TensorRT could not create a builder: {_errors(logger)}")
    from autr.plugins import PluginError
    from autr.plugins.trt_loader import load_plugin_library

    try:  # once per process: TensorRT refuses to register the library a second time
        load_plugin_library(trt, plugin, errors=lambda: logger.errors)
    except PluginError as exc:
        raise ExportError(str(exc)) from None
    flags, typing = _network_flags(trt)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    say(f"parsing {onnx_file.name}")
    if not parser.parse_from_file(str(onnx_file)):
        raise ExportError(f"TensorRT could not parse {onnx_file.name}: {_errors(logger, parser)}")
    names = [network.get_input(i).name for i in range(network.num_inputs)]
    if sorted(names) != sorted(INPUT_NAMES):
        raise ExportError(f"{onnx_file.name} has inputs {names}; the model contract is {list(INPUT_NAMES)}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace))
    cache_note = None
    if timing_cache is not None:
        tc_path = Path(timing_cache).expanduser()
        data = tc_path.read_bytes() if tc_path.is_file() else b""
        cache = config.create_timing_cache(data)
        if cache is None or not config.set_timing_cache(cache, False):
            say(f"timing cache {tc_path} does not fit this GPU / TensorRT; starting a fresh one")
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, False)
            cache_note = "replaced (did not fit)"
        else:
            cache_note = "read" if data else "created"
    opt = builder.create_optimization_profile()
    shapes = shape_profile(profile, input_size)
    for name, s in shapes.items():
        opt.set_shape(name, tuple(s["min"]), tuple(s["opt"]), tuple(s["max"]))
    config.add_optimization_profile(opt)
    say(f"building the engine (T {profile[0]}/{profile[1]}/{profile[2]}, workspace {workspace / 2 ** 30:.2f} GiB)")
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise ExportError(f"TensorRT could not build an engine from {onnx_file.name}: {_errors(logger, parser)}")
    if timing_cache is not None:
        tc_path = Path(timing_cache).expanduser()
        tc_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _write_temp(tc_path.parent, tc_path.name, memoryview(config.get_timing_cache().serialize()))
        os.replace(tmp, tc_path)
    return plan, {"network": typing, "network_flags": flags, "timing_cache": None if timing_cache is None else {
        "file": str(Path(timing_cache).expanduser().absolute()), "state": cache_note}}


# ------------------------------------------------------------------------------------------ main entry
@contextlib.contextmanager
def _build_lock(directory: Path):
    """One `autr export trt` per directory at a time (so that two builds cannot interleave their engine and
    sidecar renames, and "up to date" is decided on a settled pair). No-op where fcntl is missing."""
    try:
        import fcntl
    except ImportError:
        yield
        return
    try:
        fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise ExportError(f"cannot write into {directory}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def build_engine(directory, fp16: bool = False, workspace_gb: float = DEFAULT_WORKSPACE_GB, timing_cache=None,
                 profile=None, force: bool = False, log=None, plugin_library=None) -> dict:
    """Build (or reuse) DIR/model.engine from DIR/model.plugin[.fp16].onnx with the MSDA plugin loaded.

    Args:
        directory: an `autr export onnx` directory (its model.json gives the input size and T range).
        fp16: build from the float16 graph (strongly typed: the graph's types are the precision plan).
        workspace_gb: the builder's workspace memory pool limit, GiB.
        timing_cache: a TensorRT timing cache file, read when present and written back after a build.
        profile: "min,opt,max" over T (default 1,1,T_MAX), within the export's T range.
        force: rebuild even when the cached engine is up to date.
        plugin_library: the plugin .so (default `autr.plugins.library_path()`).

    Returns the engine sidecar dict plus ``status`` ("built" | "up to date"), ``reasons`` (why it was
    rebuilt), ``engine_path`` and ``sidecar_path``. Raises ExportError (TrtUnavailable where TensorRT or a
    GPU is missing), one line each.
    """
    say = log or (lambda msg: None)
    directory, onnx_side, size, t_range = read_export(directory)
    source = onnx_path(directory, fp16)
    prof = parse_profile(profile, t_range)
    try:
        workspace = int(float(workspace_gb) * 2 ** 30)
    except (TypeError, ValueError):
        workspace = 0
    if workspace <= 0:
        raise ExportError(f"--workspace must be a positive number of GiB, got {workspace_gb!r}")
    trt, cuda = import_tensorrt()
    gpu = gpu_info(cuda, 0)
    plugin, plugin_hash = _plugin_library(plugin_library)
    precision = "fp16" if fp16 else "fp32"
    with _build_lock(directory):
        return _build_locked(trt, directory, onnx_side, size, source, prof, workspace, timing_cache, gpu, plugin,
                             plugin_hash, precision, force, say)


def _build_locked(trt, directory, onnx_side, size, source, prof, workspace, timing_cache, gpu, plugin, plugin_hash,
                  precision, force, say) -> dict:
    from autr import __version__

    key = cache_key(onnx_sha256=_sha256(source), precision=precision, profile=prof, input_size=size,
                    tensorrt_version=trt.__version__, gpu_name=gpu["gpu_name"],
                    compute_capability=gpu["compute_capability"], plugin_library_hash=plugin_hash,
                    toolkit_version=__version__)
    engine, side_path = engine_paths(directory)
    reasons = ["--force"] if force else stale_reasons(directory, key)
    if not reasons:
        say(f"{engine} is up to date")
        return {**read_engine_sidecar(directory), "status": "up to date", "reasons": [],
                "engine_path": str(engine), "sidecar_path": str(side_path)}
    say(f"building {engine.name}: {'; '.join(reasons)}")
    started = time.perf_counter()
    plan, facts = _build_plan(trt, source, prof, size, workspace, timing_cache, plugin, say)
    seconds = round(time.perf_counter() - started, 2)
    sidecar = {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "toolkit_version": __version__,
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": seconds,
        "tensorrt_version": key["tensorrt_version"],
        "gpu_name": key["gpu_name"],
        "compute_capability": key["compute_capability"],
        "plugin_library_hash": plugin_hash,
        "plugin_library": str(plugin),
        "precision": precision,
        "network": facts["network"],
        "network_flags": facts["network_flags"],
        "t_profile": {"min": prof[0], "opt": prof[1], "max": prof[2]},
        "shape_profile": shape_profile(prof, size),
        "input_size": list(size),
        "frames": {"min": prof[0], "max": prof[2]},
        "onnx_file": source.name,
        "onnx_sha256": key["onnx_sha256"],
        "onnx_sidecar": SIDECAR_FILE,
        "workspace_bytes": workspace,
        "timing_cache": facts["timing_cache"],
        "preprocessing": onnx_side.get("preprocessing"),
        "weights_sha256": onnx_side.get("weights_sha256"),
        "checkpoint": onnx_side.get("checkpoint"),
        "cache_key": key,
    }
    engine, side_path, sidecar = write_engine(directory, plan, sidecar)
    say(f"wrote {engine} ({sidecar['engine_bytes'] / 2 ** 20:.1f} MiB, {seconds:.1f} s) and {side_path.name}")
    return {**sidecar, "status": "built", "reasons": reasons, "engine_path": str(engine),
            "sidecar_path": str(side_path)}
