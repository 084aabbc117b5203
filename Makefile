# One-command set-up on a fresh Debian/Ubuntu machine: `make test`, `make demo`.
PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
# Pinned: an unpinned torch would make pip resolve gigabytes of wheels.
TORCH    := torch==2.14.1 torchvision==0.29.1
APT_PKGS := ffmpeg libportaudio2 pulseaudio
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST   := $(BIN)/python -m pytest

.PHONY: install system test test-slow demo presets plugins bench gpu-check clean

install: system $(VENV)/.installed

# System packages the toolkit needs (video/audio I/O, a virtual microphone for the tests).
system:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.installed: setup.py $(wildcard */__init__.py)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev,export,runtime]"
	touch $@

# The CPU suite (what CI runs). pytest's exit code 5 ("no tests ran") is an error here: the suite is never empty.
test: install
	$(PYTEST) -m "not slow" -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 1; fi; exit $$rc

test-slow: install
	$(PYTEST) -m slow -q; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

# The main job on the embedded default: a live synthetic scene through ONNX Runtime (autr-demo/).
demo: install
	$(BIN)/autr demo

presets: install
	$(BIN)/autr presets --measure

# The MSDA kernel for sm_80/86/89/90, plus the TensorRT plugin when TRT_INCLUDE names TensorRT's include/.
# The committed CPU results and the README's performance section (run it on a quiet machine).
bench: install
	$(BIN)/autr bench model --backend torch,ort,trt --precision fp32,fp16 --frames 1,5 --warmup 3 --iters 30 \
	  --json benchmarks/results/bench_model_cpu.json --plot benchmarks/results/bench_model_cpu.png
	$(BIN)/autr bench msda --preset small,paper-r50 --warmup 3 --iters 20 \
	  --json benchmarks/results/bench_msda_cpu.json --plot benchmarks/results/bench_msda_cpu.png
	$(BIN)/autr bench stream --seconds 10 --fps 15 \
	  --json benchmarks/results/bench_stream_cpu.json --plot benchmarks/results/bench_stream_cpu.png
	$(BIN)/python -m autr.benchmarks.readme

# On a GPU machine: the kernel, the extension and the whole model, in one call (writes benchmarks/results/gpu_*.json).
gpu-check: install
	$(BIN)/python -m autr.benchmarks.gpu_check

plugins: install
	$(BIN)/python -m autr.plugins build $(if $(TRT_INCLUDE),--trt-include $(TRT_INCLUDE),--kernel-only)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
