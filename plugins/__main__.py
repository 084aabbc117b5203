"""python -m autr.plugins {build,info}

    python -m autr.plugins build [--trt-include DIR] [--out DIR] [--kernel-only] [--arch 80,86,89,90]
                                 [--nvcc PATH] [--torch] [-v]
    python -m autr.plugins info
"""
from __future__ import annotations

import argparse
import sys

from . import build as _build
from .errors import BuildError, PluginLibraryNotFound, PluginUnavailable


def _cmd_build(args: argparse.Namespace) -> int:
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
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m autr.plugins", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="compile the MSDA kernel and (with TensorRT headers) the TensorRT plugin")
    b.add_argument("--trt-include", metavar="DIR", help=f"TensorRT include dir (default: ${_build.TRT_INCLUDE_ENV}, "
                   "$TensorRT_ROOT/include, system paths)")
    b.add_argument("--out", metavar="DIR", help=f"output dir (default: {_build.default_build_dir()})")
    b.add_argument("--kernel-only", action="store_true", help="only the kernel compile check")
    b.add_argument("--arch", metavar="LIST", help="CUDA archs, default " + ",".join(_build.DEFAULT_ARCHS))
    b.add_argument("--nvcc", metavar="PATH", help="nvcc to use")
    b.add_argument("--torch", action="store_true", help="also build the PyTorch extension into its cache")
    b.add_argument("-v", "--verbose", action="store_true", help="print the compiler commands")
    b.set_defaults(func=_cmd_build)

    i = sub.add_parser("info", help="where the tools and the built library are")
    i.set_defaults(func=_cmd_info)

    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
