"""python -m autr.plugins {build,info}

    python -m autr.plugins build [--trt-include DIR] [--out DIR] [--kernel-only] [--arch 80,86,89,90]
                                 [--nvcc PATH] [--torch] [-v]
    python -m autr.plugins build --ort [--ort-include DIR] [--cxx PATH] [--no-cuda] [--out DIR]
                                 [--arch 80,86,89,90] [--nvcc PATH] [-v]
    python -m autr.plugins info

`build --ort` builds only the ONNX Runtime custom-op libraries: libautr_ort_ops.so with the C++ compiler
(no nvcc needed), and libautr_ort_ops_cuda.so when nvcc is found (unless --no-cuda).
"""
from __future__ import annotations

import argparse
import sys

from . import build as _build
from .errors import BuildError, PluginLibraryNotFound, PluginUnavailable


def _cmd_build(args: argparse.Namespace) -> int:
    if args.ort:
        return _cmd_build_ort(args)
    try:
        result = _build.build_all(
            out_dir=args.out,
            trt_include=args.trt_include,
            kernel_only=args.kernel_only,
            archs=args.arch,
            nvcc=args.nvcc,
            verbose=args.verbose,
        )
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
    if args.torch:
        from .torch_op import build_extension, extension_build_dir

        try:
            build_extension(verbose=args.verbose)
        except PluginUnavailable as exc:
            print(f"error: PyTorch extension: {exc}", file=sys.stderr)
            return 1
        print(f"torch ext     : {extension_build_dir()}")
    return 0


def _cmd_build_ort(args: argparse.Namespace) -> int:
    if args.kernel_only or args.trt_include or args.torch:
        print("error: --ort builds only the ONNX Runtime libraries; run the TensorRT / PyTorch builds as a "
              "separate `python -m autr.plugins build` call", file=sys.stderr)
        return 2
    try:
        result = _build.build_ort_ops(
            ort_include=args.ort_include,
            out_dir=args.out,
            cxx=args.cxx,
            cuda=False if args.no_cuda else None,
            archs=args.arch,
            nvcc=args.nvcc,
            verbose=args.verbose,
        )
    except BuildError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(result.summary())
    return 0


def _info_ort() -> None:
    from .ort_ops import describe_ort_library

    include = _build.find_ort_include()
    if include:
        print(f"ORT headers   : {include} (C API {_build.ort_api_version(include)})")
    else:
        print(f"ORT headers   : not found (`make ort-headers` unpacks them into {_build.ort_headers_cache_dir()}; "
              f"or set ${_build.ORT_INCLUDE_ENV})")
    try:
        cxx = _build.find_cxx()
        print(f"C++ compiler  : {cxx} ({_build.cxx_version(cxx) or '?'})")
    except BuildError as exc:
        print(f"C++ compiler  : missing ({exc})")
    print(f"ORT library   : {describe_ort_library(cuda=False)}")
    try:
        print(f"sha256        : {_build.ort_library_hash(_build.ort_library_path())}")
    except PluginLibraryNotFound:
        pass
    print(f"ORT CUDA lib  : {describe_ort_library(cuda=True)}")
    try:
        import onnxruntime

        print(f"onnxruntime   : {onnxruntime.__version__} ({', '.join(onnxruntime.get_available_providers())})")
    except ImportError:
        print("onnxruntime   : not installed")


def _cmd_info(_args: argparse.Namespace) -> int:
    try:
        nvcc = _build.find_nvcc()
        print(f"nvcc          : {nvcc} ({_build.nvcc_version(nvcc) or '?'})")
    except BuildError as exc:
        print(f"nvcc          : missing ({exc})")
    include = _build.find_trt_include()
    if include:
        print(f"TRT headers   : {include} (TensorRT {_build.trt_version(include)})")
    else:
        print("TRT headers   : not found")
    print(f"build dir     : {_build.default_build_dir()}")
    try:
        lib = _build.library_path()
        print(f"TRT plugin    : {lib}")
        print(f"sha256        : {_build.library_hash(lib)}")
        print(f"device code   : {', '.join(sorted(_build.fatbin_archs(lib)))}")
    except PluginLibraryNotFound as exc:
        print(f"TRT plugin    : {exc}")
    _info_ort()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autr.plugins", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="compile the MSDA kernel and (with TensorRT headers) the TensorRT plugin; "
                       "with --ort, the ONNX Runtime custom-op libraries instead")
    b.add_argument("--trt-include", metavar="DIR", help=f"TensorRT include dir (default: ${_build.TRT_INCLUDE_ENV}, "
                   "$TensorRT_ROOT/include, system paths)")
    b.add_argument("--out", metavar="DIR", help=f"output dir (default: {_build.default_build_dir()})")
    b.add_argument("--kernel-only", action="store_true", help="only the kernel compile check")
    b.add_argument("--arch", metavar="LIST", help="CUDA archs, default " + ",".join(_build.DEFAULT_ARCHS))
    b.add_argument("--nvcc", metavar="PATH", help="nvcc to use")
    b.add_argument("--torch", action="store_true", help="also build the PyTorch extension into its cache")
    b.add_argument("--ort", action="store_true", help=f"build the ONNX Runtime custom-op libraries "
                   f"({_build.ORT_LIBRARY_NAME}; {_build.ORT_CUDA_LIBRARY_NAME} when nvcc is found)")
    b.add_argument("--ort-include", metavar="DIR", help=f"ONNX Runtime include dir with onnxruntime_c_api.h (default: "
                   f"${_build.ORT_INCLUDE_ENV}, {_build.ort_headers_cache_dir()}, /usr/include/onnxruntime)")
    b.add_argument("--cxx", metavar="PATH", help="C++ compiler for the ONNX Runtime CPU library (default: $CXX, g++)")
    b.add_argument("--no-cuda", action="store_true", help=f"with --ort: skip {_build.ORT_CUDA_LIBRARY_NAME}")
    b.add_argument("-v", "--verbose", action="store_true", help="print the compiler commands")
    b.set_defaults(func=_cmd_build)

    i = sub.add_parser("info", help="where the tools and the built libraries are")
    i.set_defaults(func=_cmd_info)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
