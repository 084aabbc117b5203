"""An Open Inference Protocol server for an export directory: KServe's ModelServer hosting the ONNX Runtime
session(s) of ``autr.runtime``, with the runtime's dynamic batcher in front of them (the CPU stand-in for Triton in
the tests and in ``autr bench serve``; Triton itself is not installable from PyPI).

    python -m autr.benchmarks.oip_server --export DIR|default --name autr --grpc_port 8001 --http_port 8000 \\
        [--instances 1] [--threads N] [--max-delay-ms 2] [--grpc_max_receive_message_length BYTES]

(``--grpc_port``, ``--http_port`` and ``--grpc_max_receive_message_length`` are KServe's own options.) The model's
metadata is the model contract: inputs ``frames`` FP32 [-1, 3, H, W], ``log_mel`` FP32 [-1, 1, 96, 64], outputs
``masks`` FP32 [-1, H, W], ``scores`` FP32 [-1], the first axis being T (the frame axis, 1..T_max of the sidecar).
A request outside the contract is answered INVALID_ARGUMENT with one line. Every response carries the parameter
``autr_server_us``: the microseconds from the request reaching the model to its answer (queue + batch + run), which
the ``remote`` backend subtracts from its round trip to get the network's share.

Run it in a process of its own: kserve and tritonclient register the same protobuf symbols (`inference.*`), so one
process cannot import both.
"""
from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import sys
import time

import numpy as np

__all__ = ["AutrModel", "main"]


def _model_class():
    import kserve
    from kserve.errors import InvalidInput
    from kserve.protocol.infer_type import InferOutput, InferResponse

    from autr.runtime.backends import open_backend, shipped_export
    from autr.runtime.backends.remote import SERVER_TIME_PARAM
    from autr.runtime.errors import BackendError
    from autr.runtime.multi import BatchingBackend

    class AutrModel(kserve.Model):
        """The export's ONNX Runtime session(s) behind the runtime's batcher, as a KServe v2 model."""

        def __init__(self, name: str, export, instances: int = 1, threads=None, max_delay: float = 0.002,
                     precision: str = "fp32", graph: str = "auto"):
            super().__init__(name)
            self.export = str(shipped_export()) if str(export) == "default" else str(export)
            self.options = dict(instances=instances, threads=threads, max_delay=max_delay, precision=precision,
                                graph=graph)
            self.batcher = None
            self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="autr-oip")

        def load(self) -> bool:
            o = self.options
            backends = [open_backend("ort", self.export, threads=o["threads"], precision=o["precision"],
                                     graph=o["graph"], spinning=False) for _ in range(max(1, int(o["instances"])))]
            self.batcher = BatchingBackend(backends, max_delay=o["max_delay"])
            self.h, self.w = self.batcher.input_size
            self.ready = True
            return True

        def get_input_types(self):
            return [{"name": "frames", "datatype": "FP32", "shape": [-1, 3, self.h, self.w]},
                    {"name": "log_mel", "datatype": "FP32", "shape": [-1, 1, 96, 64]}]

        def get_output_types(self):
            return [{"name": "masks", "datatype": "FP32", "shape": [-1, self.h, self.w]},
                    {"name": "scores", "datatype": "FP32", "shape": [-1]}]

        def _arrays(self, payload):
            got = {i.name: i for i in payload.inputs}
            if set(got) != {"frames", "log_mel"}:
                raise InvalidInput(f"inputs must be frames and log_mel; got {sorted(got)}")
            arrays = {}
            for name in ("frames", "log_mel"):
                if got[name].datatype != "FP32":
                    raise InvalidInput(f"{name} must be FP32; got {got[name].datatype}")
                arrays[name] = got[name].as_numpy()
            b = self.batcher
            t = arrays["frames"].shape[0]
            if not b.t_min <= t <= b.max_frames:
                raise InvalidInput(f"T = {t} frames is outside the model's range {b.t_min}..{b.max_frames}")
            return arrays

        async def predict(self, payload, headers=None, response_headers=None):
            t0 = time.perf_counter()
            arrays = self._arrays(payload)
            loop = asyncio.get_running_loop()
            try:
                masks, scores = await loop.run_in_executor(self.pool, self.batcher.infer, arrays["frames"],
                                                           arrays["log_mel"])
            except BackendError as exc:
                raise InvalidInput(str(exc)) from None
            outputs = []
            for name, arr in (("masks", masks), ("scores", scores)):
                out = InferOutput(name=name, shape=list(arr.shape), datatype="FP32")
                out.set_data_from_numpy(np.ascontiguousarray(arr, np.float32), binary_data=True)
                outputs.append(out)
            us = int((time.perf_counter() - t0) * 1e6)
            return InferResponse(response_id=payload.id or "", model_name=self.name, infer_outputs=outputs,
                                 parameters={SERVER_TIME_PARAM: us})

        def stop(self):
            if self.batcher is not None:
                self.batcher.close()
            self.ready = False

    return AutrModel


def __getattr__(name):  # AutrModel, built on first use (kserve is imported only then)
    if name == "AutrModel":
        return _model_class()
    raise AttributeError(name)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m autr.benchmarks.oip_server", description=__doc__.split("\n\n")[0])
    parser.add_argument("--export", default="default", help="export directory, or 'default' (the shipped export)")
    parser.add_argument("--name", default="autr", help="the model's name on the server")
    parser.add_argument("--instances", type=int, default=1, help="ONNX Runtime sessions (an instance group)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads per session")
    parser.add_argument("--max-delay-ms", type=float, default=2.0, help="batcher's queue delay")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "int8"])
    parser.add_argument("--graph", default="auto", choices=["auto", "fused", "portable"])
    args, _ = parser.parse_known_args(argv)  # the rest are KServe's (--grpc_port, --http_port, ...)
    try:
        import kserve
    except ImportError as exc:
        sys.exit(f"autr: the Open Inference Protocol server needs kserve ({exc}); pip install 'autr[serve]'")
    from autr.runtime.errors import StreamError

    model = _model_class()(args.name, args.export, instances=args.instances, threads=args.threads,
                           max_delay=args.max_delay_ms / 1000.0, precision=args.precision, graph=args.graph)
    try:
        model.load()
    except StreamError as exc:
        sys.exit(f"autr: {exc}")
    kserve.ModelServer(workers=1, enable_docs_url=False, enable_latency_logging=False).start([model])


if __name__ == "__main__":
    main()
