# Set-up on a fresh machine is part of every target: the virtual environment, its packages and the
# extension (CUDA sources included when nvcc and a CUDA-enabled torch are present).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MAX_JOBS ?= 2
export MAX_JOBS

.PHONY: test test-quick venv build bench demo gpu-check gpu-prep clean

# The extension is rebuilt only when a source changed (or the built module is gone): `make demo`
# after `make test` starts training at once. Python files need no rebuild (editable install).
EXT_SOURCES := setup.py \
	$(shell find csrc -name '*.cpp' -o -name '*.cu' -o -name '*.h' -o -name '*.cuh' -o -name '*.inc')
PACKAGES_STAMP := $(VENV)/.packages-installed
BUILD_STAMP := $(VENV)/.extension-built

# With torch importable from the invoking Python (an active environment), the venv reuses it;
# otherwise pip installs torch (here 2.14.1 from local disk under the machine's cap).
$(VENV)/bin/python:
	if $(PYTHON) -c "import torch" 2>/dev/null; then \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi

$(PACKAGES_STAMP): $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch
	$(PIP) install -q numpy tqdm matplotlib pytest hypothesis setuptools wheel ninja
	touch $@

venv: $(PACKAGES_STAMP)

# The stamp takes the time the build started, so a source edited during the build is newer.
$(BUILD_STAMP): $(PACKAGES_STAMP) $(EXT_SOURCES)
	touch $@.started
	$(PIP) install -q --no-build-isolation -e .
	mv $@.started $@

build:
	@ls pointsparse/_C*.so >/dev/null 2>&1 || rm -f $(BUILD_STAMP)
	@$(MAKE) --no-print-directory $(BUILD_STAMP)

# Optional packages the tests use for real where they install (skipped otherwise): open3d (point-cloud
# files; on Debian it also needs libusb-1.0-0) and spconv's CPU package (the compatibility layer is
# checked against it).
EXTRAS_STAMP := $(VENV)/.extras-installed
$(EXTRAS_STAMP): $(PACKAGES_STAMP)
	-$(PIP) install -q open3d
	-$(PIP) install -q spconv
	touch $@

test: build $(EXTRAS_STAMP)
	$(PY) -m pytest -q -p no:dash

test-quick: build
	$(PY) -m pytest -q -p no:dash -m "not slow"

bench: build
	$(PY) -m pointsparse.bench kmap --scan ../shared/data/semantickitti/sequences/00/velodyne/000000.bin

# Generates the synthetic scans on first use (into ~/.cache/pointsparse, or $POINTSPARSE_CACHE)
# and trains a small MinkUNet18 on the CPU, printing the validation IoU table every epoch.
DEMO_ARGS ?= --cr 0.25 --epochs 25 --batch-size 2 --voxel-size 0.1 --max-voxels 16000 --warmup-iters 10 --out-dir runs/demo
demo: build
	$(PY) -m pointsparse train $(DEMO_ARGS)

# On a GPU machine (preinstalled CUDA torch, no network): build there, CUDA tests, CPU-vs-CUDA
# cross-check, CUDA benchmarks, MinkUNet18 steps; log and JSON into GPU_OUT. Uses python3, not .venv.
GPU_OUT ?= bench_results/gpu/latest
gpu-check:
	tools/gpu_check.sh $(GPU_OUT)

# Before lending the checkout to a GPU machine (run here, with the network): what must travel with
# it into shared/ (git-ignored; carry it): the real scans, and wheels of the build tools (setuptools,
# wheel, ninja) for Python 3.12, which the check installs there only where the machine lacks them.
gpu-prep: venv
	mkdir -p shared/wheels
	cp -r ../shared/data shared/
	$(PIP) download -q --only-binary=:all: --python-version 3.12 --platform manylinux_2_17_x86_64 \
		--platform any -d shared/wheels ninja "setuptools<82" wheel

clean:
	rm -rf build *.egg-info pointsparse/_C*.so $(BUILD_STAMP)
