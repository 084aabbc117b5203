"""The runtime's thread plan: how the pipeline's threads and the inference engine's share the cores.

A live run has these busy threads (see :mod:`autr.runtime.pipeline`)::

    capture      camera grabber / microphone callback / decoder / synthetic scene
    assembler    audio window + VGGish log-mel + frame resize (autr.preprocess)
    inference    backend.infer(); ONNX Runtime adds ``intra_op - 1`` worker threads of its own
    output       overlay + sinks (the mp4 encoder may add threads of its own)

On a machine with few cores these fight: ONNX Runtime's workers spin (busy-wait) between operators by
default, so on two cores they take the core the assembler and the encoder need, and numpy's OpenBLAS and
x264 each start a thread per core. The plan (measured on the 2-core CI machine, numbers in
runtime/README.md "Thread plan"):

* **ONNX Runtime**: ``intra_op`` = the cores this process may use; **spinning off** whenever the pipeline
  runs (a worker that has nothing to do sleeps and gives its core to the pipeline); spinning on only where
  the engine runs alone (``autr bench model``), where it saves the wake-up latency. One inter-op thread.
* **numpy's BLAS** (and the OpenBLAS that OpenCV carries): 1 thread. Preprocessing's matrix products are
  small; more threads only spin. **OpenCV's** own pool (mask resize, overlay): 1 thread.
* **video encoder** (x264): 1 thread; a 15-25 fps overlay at ``veryfast`` costs a few ms a frame.

``--threads N`` overrides the inference engine's count; the plan in force is recorded in every report
(``report["threads"]``).
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import asdict, dataclass

__all__ = ["ThreadPlan", "plan_threads", "plan_instances", "available_cores", "limit_blas", "limit_opencv"]


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, so `taskset` and container limits count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class ThreadPlan:
    """Thread counts for one run. ``intra_op`` counts the calling (inference) thread."""

    cores: int
    intra_op: int
    spinning: bool
    blas: int | None = 1  # None: numpy's BLAS keeps its own count (one per core)
    opencv: int | None = 1  # None: OpenCV keeps its own pool (one thread per core)
    encoder: int = 1  # 0: the encoder's own choice (x264: about 1.5 per core)
    chosen_by: str = "plan"

    def describe(self) -> dict:
        return asdict(self)


def plan_threads(pipeline: bool = True, threads: int | None = None, cores: int | None = None) -> ThreadPlan:
    """The plan for a run. ``pipeline``: the streaming pipeline shares the cores with the engine; False: the
    engine runs alone (a model benchmark). ``threads``: the user's inference thread count (``--threads``),
    None for the plan's. Raises ValueError for a count below 1."""
    cores = available_cores() if cores is None else max(1, int(cores))
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"--threads must be >= 1; got {threads}")
        return ThreadPlan(cores=cores, intra_op=int(threads), spinning=not pipeline, chosen_by="--threads")
    return ThreadPlan(cores=cores, intra_op=cores, spinning=not pipeline)


def plan_instances(streams: int, cores: int | None = None, threads: int | None = None) -> tuple:
    """``(instances, intra_op)`` for `streams` streams sharing one model (runtime.multi's batcher): one session
    per core, each on one thread, as soon as there are streams to keep them busy -- small operators scale badly
    over threads (one call of the default model on two threads is only ~1.5x faster than on one), while
    sessions running side by side scale with the cores; one stream keeps one session on every core.
    ``threads`` (``--threads``) fixes the threads per session and leaves ``cores // threads`` sessions."""
    cores = available_cores() if cores is None else max(1, int(cores))
    streams = max(1, int(streams))
    if threads is not None:
        if int(threads) < 1:
            raise ValueError(f"--threads must be >= 1; got {threads}")
        return max(1, min(streams, cores // int(threads))), int(threads)
    instances = min(streams, cores)
    return instances, max(1, cores // instances)


@contextlib.contextmanager
def limit_opencv(n: int | None):
    """Set OpenCV's thread pool to ``n`` threads inside the block (restored after); yields the count in force,
    or None when ``n`` is None or OpenCV is not installed. Importing OpenCV here also loads the OpenBLAS its
    wheel carries, so that :func:`limit_blas` entered afterwards limits that one too."""
    if n is None:
        yield None
        return
    try:
        import cv2
    except ImportError:
        yield None
        return
    before = cv2.getNumThreads()
    cv2.setNumThreads(int(n))
    try:
        yield cv2.getNumThreads()
    finally:
        cv2.setNumThreads(before)


@contextlib.contextmanager
def limit_blas(n: int | None):
    """Limit numpy's BLAS to ``n`` threads inside the block (threadpoolctl). Yields the BLAS libraries that
    were limited, e.g. ``["openblas"]``; an empty list when ``n`` is None or threadpoolctl is not installed."""
    if n is None:
        yield []
        return
    try:
        from threadpoolctl import threadpool_info, threadpool_limits
    except ImportError:
        yield []
        return
    with threadpool_limits(limits=int(n), user_api="blas"):
        yield sorted({lib["internal_api"] for lib in threadpool_info() if lib.get("user_api") == "blas"})
