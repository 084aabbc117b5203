# One-command set-up on a fresh Debian/Ubuntu machine: `make test`, `make demo`.
PYTHON   ?= python3
VENV     ?= .venv
BIN      := $(VENV)/bin
# Pinned: an unpinned torch would make pip resolve gigabytes of wheels.
TORCH    := torch==2.14.1 torchvision==0.29.1
APT_PKGS := ffmpeg libportaudio2 pulseaudio
SUDO     := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
PYTEST   := $(BIN)/python -m pytest

.PHONY: install system test test-slow demo presets plugins clean

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

# The embedded default model arrives with the training issue; until then the demo runs untrained weights.
demo: install
	$(BIN)/autr demo $(if $(wildcard autr/assets/*.safetensors),,--checkpoint untrained)

presets: install
	$(BIN)/autr presets --measure

# The MSDA kernel for sm_80/86/89/90, plus the TensorRT plugin when TRT_INCLUDE names TensorRT's include/.
plugins: install
	$(BIN)/python -m autr.plugins build $(if $(TRT_INCLUDE),--trt-include $(TRT_INCLUDE),--kernel-only)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
