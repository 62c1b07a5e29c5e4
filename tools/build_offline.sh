#!/usr/bin/env bash
# Builds the extension with no network, with the interpreter's own torch and build tools: what the
# GPU check runs on the GPU machine (preinstalled torch, an older pip, no network).
#
#   tools/build_offline.sh            # editable install: pip install --no-index --no-build-isolation
#                                     #   --no-deps --use-pep517 -e .
#   tools/build_offline.sh --inplace  # no install: setup.py build_ext --inplace; `import pointsparse`
#                                     #   with the checkout on sys.path (models/ and datasets/ map in)
#
# --use-pep517 matters: without it a pip older than 25 falls back to `setup.py develop` for a project
# without pyproject.toml, and setuptools >= 80 runs `develop` as an isolated `pip install -e .`, which
# downloads setuptools (fails offline). Needs setuptools >= 64 and wheel (PEP 660 editable builds).
# PYTHON picks the interpreter (default python3); MAX_JOBS the parallel compile jobs.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if [[ "${1:-}" == --inplace ]]; then
  exec "$PYTHON" setup.py build_ext --inplace
fi
PIP_NO_INDEX=1 exec "$PYTHON" -m pip install --no-index --no-build-isolation --no-deps --use-pep517 -e .
