# Set-up on a fresh machine is part of every target: the virtual environment, its packages and the
# extension (CUDA sources included when nvcc and a CUDA-enabled torch are present).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
MAX_JOBS ?= 2
export MAX_JOBS

.PHONY: test test-quick venv build bench demo clean

# With torch importable from the invoking Python (an active environment), the venv reuses it;
# otherwise pip installs torch (here 2.14.1 from local disk under the machine's cap).
$(VENV)/bin/python:
	if $(PYTHON) -c "import torch" 2>/dev/null; then \
		$(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
		$(PYTHON) -m venv $(VENV); \
	fi

venv: $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PY) -c "import torch" 2>/dev/null || $(PIP) install -q torch
	$(PIP) install -q numpy tqdm pytest hypothesis setuptools wheel ninja

build: venv
	$(PIP) install -q --no-build-isolation -e .

test: build
	$(PY) -m pytest -q

test-quick: build
	$(PY) -m pytest -q -m "not slow"

bench: build
	$(PY) -m pointsparse.bench kmap --scan ../shared/data/semantickitti/sequences/00/velodyne/000000.bin

# Generates the synthetic scans on first use (into ~/.cache/pointsparse, or $POINTSPARSE_CACHE)
# and trains a small MinkUNet18 on the CPU, printing the validation IoU table every epoch.
DEMO_ARGS ?= --cr 0.25 --epochs 25 --batch-size 2 --voxel-size 0.1 --max-voxels 16000 --warmup-iters 10 --out-dir runs/demo
demo: build
	$(PY) -m pointsparse train $(DEMO_ARGS)

clean:
	rm -rf build *.egg-info pointsparse/_C*.so
