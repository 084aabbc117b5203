# One-command set-up on a fresh Debian/Ubuntu machine: `make test`, `make demo`.
PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
# Pinned: an unpinned torch would make pip resolve gigabytes of wheels.
TORCH    := torch==2.14.1 torchvision==0.29.1
APT_PKGS := ffmpeg libportaudio2 pulseaudio
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST   := $(BIN)/python -m pytest

# The ONNX Runtime custom-op library (plugins/ort) is built where `python -m autr.plugins` builds
# (default_build_dir(): $AUTR_PLUGIN_DIR, else $XDG_CACHE_HOME or ~/.cache, /autr/plugins), against the
# ONNX Runtime C API headers of Debian trixie's libonnxruntime-dev, unpacked (never installed) into
# $(ORT_HEADERS) by `make ort-headers`.
PLUGIN_DIR  := $(or $(AUTR_PLUGIN_DIR),$(or $(XDG_CACHE_HOME),$(HOME)/.cache)/autr/plugins)
ORT_HEADERS := $(PLUGIN_DIR)/ort-include
ORT_DEB_MIRROR ?= http://deb.debian.org/debian
ORT_DEB_SUITE  ?= trixie
ORT_OPS_LIB := $(PLUGIN_DIR)/libautr_ort_ops.so
ORT_OPS_SRC := plugins/csrc/ms_deform_attn_problem.h plugins/csrc/ms_deform_attn_cpu.h plugins/csrc/ms_deform_attn_cpu.cpp plugins/ort/autr_ort_ops.cpp plugins/ort/exports.map \
               plugins/csrc/ms_deform_attn.h plugins/csrc/ms_deform_attn.cuh plugins/csrc/ms_deform_attn.cu plugins/build.py

.PHONY: install system test test-slow demo default-export presets plugins ort-headers ort-ops bench serve gpu-wheels gpu-check clean

install: system $(VENV)/.installed $(ORT_OPS_LIB)

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
	$(BIN)/pip install -q -e ".[dev,export,runtime,serve]"
	touch $(VENV)/.runtime $@

# The lean set for `make demo`: the runtime and its CLI, no torch (setup.py's base install); the full install
# above satisfies it too.
$(VENV)/.runtime:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

# ONNX Runtime C API headers, skipped when $AUTR_ORT_INCLUDE, $(ORT_HEADERS) or /usr/include/onnxruntime has
# them: `apt-get download` of libonnxruntime-dev from $(ORT_DEB_SUITE) with private apt state (the system's
# sources and package lists are left alone), then `dpkg -x` of its include/onnxruntime into $(ORT_HEADERS).
ort-headers:
	@for d in "$(AUTR_ORT_INCLUDE)" "$(ORT_HEADERS)" /usr/include/onnxruntime; do \
	  if [ -n "$$d" ] && [ -f "$$d/onnxruntime_c_api.h" ]; then echo "ONNX Runtime headers: $$d"; exit 0; fi; \
	done; \
	command -v apt-get >/dev/null && command -v dpkg >/dev/null || { \
	  echo "make ort-headers: no apt-get/dpkg here; set AUTR_ORT_INCLUDE to a directory with onnxruntime_c_api.h"; exit 1; }; \
	keyring=/usr/share/keyrings/debian-archive-keyring.gpg; \
	[ -f $$keyring ] || $(SUDO) apt-get install -y -qq --no-install-recommends debian-archive-keyring; \
	work=$$(mktemp -d) && trap 'rm -rf "$$work"' EXIT && \
	mkdir -p "$$work/lists/partial" "$$work/cache/archives/partial" "$$work/deb" && \
	echo "deb [signed-by=$$keyring] $(ORT_DEB_MIRROR) $(ORT_DEB_SUITE) main" > "$$work/sources.list" && \
	opts="-o Dir::Etc::SourceList=$$work/sources.list -o Dir::Etc::SourceParts=/dev/null \
	      -o Dir::State::Lists=$$work/lists -o Dir::Cache=$$work/cache -o APT::Sandbox::User=root" && \
	echo "fetching libonnxruntime-dev ($(ORT_DEB_SUITE)) for the ONNX Runtime C API headers" && \
	apt-get $$opts -qq update && \
	(cd "$$work/deb" && apt-get $$opts -qq download libonnxruntime-dev) && \
	dpkg -x "$$work"/deb/libonnxruntime-dev_*.deb "$$work/root" && \
	test -f "$$work/root/usr/include/onnxruntime/onnxruntime_c_api.h" && \
	rm -rf "$(ORT_HEADERS).tmp" && mkdir -p "$(ORT_HEADERS).tmp" && \
	cp -R "$$work/root/usr/include/onnxruntime/." "$(ORT_HEADERS).tmp/" && \
	basename "$$work"/deb/libonnxruntime-dev_*.deb > "$(ORT_HEADERS).tmp/SOURCE" && \
	rm -rf "$(ORT_HEADERS)" && mv "$(ORT_HEADERS).tmp" "$(ORT_HEADERS)" && \
	echo "ONNX Runtime headers: $(ORT_HEADERS) ($$(cat "$(ORT_HEADERS)/SOURCE"))"

# libautr_ort_ops.so (+ libautr_ort_ops_cuda.so where nvcc is present), rebuilt when its sources change.
$(ORT_OPS_LIB): $(ORT_OPS_SRC) | $(VENV)/.installed ort-headers
	$(BIN)/python -m autr.plugins build --ort

ort-ops: $(VENV)/.installed ort-headers
	$(BIN)/python -m autr.plugins build --ort

# The CPU suite (what CI runs). pytest's exit code 5 ("no tests ran") is an error here: the suite is never empty.
test: install
	$(PYTEST) -m "not slow" -q; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; exit 1; fi; exit $$rc

test-slow: install
	$(PYTEST) -m slow -q; rc=$$?; [ $$rc -eq 5 ] && exit 0; exit $$rc

# The main job on the embedded default: a live synthetic scene through ONNX Runtime (autr-demo/), from the
# export shipped in the package; only the lean runtime set is installed (PyAV brings its own FFmpeg).
demo: $(VENV)/.runtime
	$(BIN)/autr demo

# The shipped export of the embedded default (autr/assets/autr-small-synth-onnx), made from the shipped
# checkpoint; tests/test_shipped_export.py fails when the two no longer match.
default-export: $(VENV)/.installed
	$(BIN)/autr export onnx --checkpoint default --fp16-weights --out autr/assets/autr-small-synth-onnx

presets: install
	$(BIN)/autr presets --measure

# The committed CPU results and the README's performance section (run it on a quiet machine).
bench: install
	$(BIN)/pip install -q -e ".[openvino]"  # the OpenVINO peer rows (an optional extra, not in the CI install)
	$(BIN)/autr bench model --backend torch,ort,openvino,trt --precision fp32,fp16,bf16,int8 --frames 1,5 --warmup 3 \
	  --iters 20 --rounds 5 \
	  --json benchmarks/results/bench_model_cpu.json --plot benchmarks/results/bench_model_cpu.png
	$(BIN)/autr bench msda --preset small,paper-r50 --impl reference,ort,cuda,trt --warmup 3 --iters 20 \
	  --json benchmarks/results/bench_msda_cpu.json --plot benchmarks/results/bench_msda_cpu.png
	$(BIN)/autr bench stream --seconds 10 --fps 25 --video-size 640x480 \
	  --json benchmarks/results/bench_stream_cpu.json --plot benchmarks/results/bench_stream_cpu.png
	$(BIN)/python -m autr.benchmarks.readme

# Many streams on one model: in-process batching and an Open Inference Protocol server (KServe's ModelServer on
# loopback), N = 1, 2, 4, 8 closed-loop streams (the committed CPU result; run it on a quiet machine).
serve: install
	$(BIN)/autr bench serve --streams 1,2,4,8 --seconds 10 \
	  --json benchmarks/results/bench_serve_cpu.json --plot benchmarks/results/bench_serve_cpu.png

# On a GPU machine, in one call (< 8 min on an H100 / H200): the extension build, the kernel against the reference
# and the Deformable-DETR-style baseline (fp32 / fp16 / bf16), the whole model at T = 1 and 5 (eager and CUDA graph);
# writes benchmarks/results/gpu_<device>_<date>.json and the README's GPU section. GPU machines may have no network:
# without $(VENV) it makes one on the machine's own python (its torch, timm, ... via --system-site-packages) and
# installs autr into it with no download: setuptools and wheel (to build autr) and ninja (torch's extension builder
# needs it) come from $(GPU_WHEELS) (`make gpu-wheels` on a machine with network, then copy that folder along).
# MAX_JOBS: ninja's parallelism.
GPU_CHECK_TIMEOUT ?= 470
GPU_WHEELS ?= .gpu-wheels
gpu-wheels:
	$(PYTHON) -m pip download --quiet --only-binary :all: --dest $(GPU_WHEELS) ninja setuptools wheel

gpu-check:
	@test -x $(BIN)/python || { $(PYTHON) -m venv --system-site-packages $(VENV) \
	  && $(BIN)/python -m pip install --quiet --no-deps --no-index --find-links $(GPU_WHEELS) -e . ; } \
	  || { rm -rf $(VENV); echo "make gpu-check: could not make $(VENV) on $(PYTHON) offline (it needs python3-venv, and $(GPU_WHEELS)/ from \`make gpu-wheels\`); or run \`make install\`"; exit 2; }
	@PATH="$(abspath $(BIN)):$$PATH" ninja --version >/dev/null 2>&1 \
	  || $(BIN)/python -m pip install --quiet --no-index --find-links $(GPU_WHEELS) ninja 2>/dev/null \
	  || { echo "make gpu-check: ninja is missing and $(GPU_WHEELS)/ has no ninja wheel; run \`make gpu-wheels\` on a machine with network and copy $(GPU_WHEELS)/ here"; exit 2; }
	PATH="$(abspath $(BIN)):$$PATH" MAX_JOBS=$${MAX_JOBS:-$$(nproc)} timeout $(GPU_CHECK_TIMEOUT) $(BIN)/python -m autr.benchmarks.gpu_check

# The MSDA kernel for sm_80/86/89/90/100/120, plus the TensorRT plugin when TRT_INCLUDE names TensorRT's include/.
plugins: install
	$(BIN)/python -m autr.plugins build $(if $(TRT_INCLUDE),--trt-include $(TRT_INCLUDE),--kernel-only)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
