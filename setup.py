"""AuTR toolkit. The top-level rooms are mapped into the `autr` namespace (see DESIGN.md),
so nothing generic like `runtime` or `export` lands at the top of site-packages."""
from pathlib import Path

from setuptools import setup

HERE = Path(__file__).parent
ROOMS = {"autr": "autr", "autr.export": "export", "autr.runtime": "runtime",
         "autr.plugins": "plugins", "autr.benchmarks": "benchmarks"}


def packages():
    """Every package under each room that exists (rooms arrive with the issues that build them)."""
    found, dirs = [], {}
    for name, folder in ROOMS.items():
        root = HERE / folder
        if not (root / "__init__.py").is_file():
            continue
        dirs[name] = folder
        for init in sorted(root.rglob("__init__.py")):
            rel = init.parent.relative_to(root)
            found.append(".".join([name, *rel.parts]) if rel.parts else name)
    return found, dirs


PACKAGES, PACKAGE_DIR = packages()

RUNTIME = ["numpy>=1.24", "click>=8.1", "tqdm>=4.60", "onnxruntime>=1.17", "av>=12", "opencv-python-headless>=4.8",
           "sounddevice>=0.4.6", "threadpoolctl>=3.1"]
# `make install` pins torch==2.14.1 / torchvision==0.29.1 before these resolve
TRAIN = ["torch>=2.4", "torchvision>=0.19", "timm>=1.0", "safetensors>=0.4", "matplotlib>=3.7", "pillow>=9"]
EXPORT = ["onnx>=1.23", "onnxscript>=0.7", "onnxruntime>=1.32"]

setup(
    name="autr",
    version="0.1.0",
    description="AuTR audio-visual segmentation: train, export to ONNX / TensorRT, stream live",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=PACKAGES,
    package_dir=PACKAGE_DIR,
    package_data={"autr": ["assets/*", "assets/*/*"], "autr.plugins": ["csrc/*", "csrc/emulation/*", "trt/*", "ort/*", "CMakeLists.txt",
                                                          "README.md"]},
    # The base install is the streaming runtime and its CLI (`autr stream`, `autr demo` on the shipped export):
    # no torch. Training, evaluation, export and the PyTorch backend come with the extras below; a command that
    # needs one says which in one line (autr.cli.EXTRAS).
    install_requires=RUNTIME,
    extras_require={
        "train": TRAIN,
        "export": TRAIN + EXPORT,
        "dev": TRAIN + EXPORT + ["pytest>=8", "pytest-timeout>=2.3", "ninja>=1.11", "onnxruntime-extensions>=0.15"],
        "runtime": [],  # the base install (kept so that `pip install 'autr[runtime]'` still works)
        "gpu": ["onnxruntime-gpu>=1.18"],
        "trt": ["tensorrt>=10", "pycuda>=2024.1"],
        # OpenVINO peer row of `autr bench model` (autr.benchmarks.openvino_runner); the version it was checked with
        "openvino": ["openvino==2026.4.1"],
        # serving (issue 17): the remote backend's Open Inference Protocol client, and KServe's ModelServer that the
        # tests and `autr bench serve` host the model in (the versions they were checked with; tritonclient pins
        # protobuf < 7 and ml_dtypes <= 0.5.4, which onnx 1.23 accepts)
        "serve": ["tritonclient[grpc]==2.73.0", "kserve==0.21.0"],
    },
    entry_points={"console_scripts": ["autr=autr.cli:main"]},
)
