"""pytest's hooks for the suite (shared helpers: helpers.py)."""

import pointsparse  # noqa: F401  (registers the ops before any test module loads)
