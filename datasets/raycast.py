"""Vectorised ray casting against boxes, vertical cylinders, ellipsoids and the ground plane.

Every function takes ray origins ``o [3]`` (one sensor position), unit directions ``d [R, 3]`` and a
primitive array, and returns the hit distance ``t [R]`` along each ray (``inf`` for a miss) and the
index of the primitive hit (-1 for a miss). Primitives are processed in chunks to bound memory.
"""

from typing import Tuple

import numpy as np

CHUNK = 32


def _closest(t: np.ndarray, offset: int, best_t: np.ndarray, best_i: np.ndarray) -> None:
    """Folds distances t [R, n] of primitives offset .. offset + n into the running nearest hit."""
    j = np.argmin(t, axis=1)
    tj = t[np.arange(t.shape[0]), j]
    closer = tj < best_t
    best_t[closer] = tj[closer]
    best_i[closer] = j[closer] + offset


def cast_boxes(o: np.ndarray, d: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Axis-aligned boxes ``lo, hi [B, 3]`` (slab method)."""
    best_t = np.full(d.shape[0], np.inf)
    best_i = np.full(d.shape[0], -1)
    inv = (1.0 / np.where(np.abs(d) < 1e-12, 1e-12, d)).astype(np.float32)   # [R, 3]
    o, lo, hi = o.astype(np.float32), lo.astype(np.float32), hi.astype(np.float32)
    for start in range(0, lo.shape[0], CHUNK):
        near = far = None
        for axis in range(3):  # per-axis [R, n] slabs: no [R, n, 3] temporaries
            t1 = np.outer(inv[:, axis], lo[start:start + CHUNK, axis] - o[axis])
            t2 = np.outer(inv[:, axis], hi[start:start + CHUNK, axis] - o[axis])
            lower, upper = np.minimum(t1, t2), np.maximum(t1, t2)
            near = lower if near is None else np.maximum(near, lower)
            far = upper if far is None else np.minimum(far, upper)
        t = np.where((far >= near) & (near > 0), near, np.inf)
        _closest(t, start, best_t, best_i)
    return best_t, best_i


def cast_cylinders(o: np.ndarray, d: np.ndarray, centre: np.ndarray, radius: np.ndarray,
                   z_range: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Vertical cylinders: ``centre [C, 2]`` (x, y), ``radius [C]``, ``z_range [C, 2]``; side surface only."""
    best_t = np.full(d.shape[0], np.inf)
    best_i = np.full(d.shape[0], -1)
    a = (d[:, :2] ** 2).sum(1)[:, None]                                        # [R, 1]
    for start in range(0, centre.shape[0], CHUNK):
        rel = o[None, :2] - centre[start:start + CHUNK]                        # [n, 2]
        b = 2 * d[:, :2] @ rel.T                                               # [R, n]
        c = (rel ** 2).sum(1) - radius[start:start + CHUNK] ** 2               # [n]
        disc = b * b - 4 * a * c
        t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * np.maximum(a, 1e-12))
        z = o[2] + t * d[:, 2:3]
        zr = z_range[start:start + CHUNK]
        ok = (disc >= 0) & (t > 0) & (z >= zr[:, 0]) & (z <= zr[:, 1])
        _closest(np.where(ok, t, np.inf), start, best_t, best_i)
    return best_t, best_i


def cast_ellipsoids(o: np.ndarray, d: np.ndarray, centre: np.ndarray,
                    radii: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Axis-aligned ellipsoids ``centre [E, 3]``, ``radii [E, 3]``."""
    best_t = np.full(d.shape[0], np.inf)
    best_i = np.full(d.shape[0], -1)
    for start in range(0, centre.shape[0], CHUNK):
        inv_r = 1.0 / radii[start:start + CHUNK]                               # [n, 3]
        oc = (o - centre[start:start + CHUNK]) * inv_r                         # [n, 3]
        # |(o + t d - c) / r|^2 = 1 as a t^2 + b t + c = 0, each term a matrix product.
        a = (d * d) @ (inv_r * inv_r).T                                        # [R, n]
        b = 2 * d @ (oc * inv_r).T                                             # [R, n]
        c = (oc * oc).sum(1) - 1                                               # [n]
        disc = b * b - 4 * a * c
        t = (-b - np.sqrt(np.maximum(disc, 0))) / (2 * a)
        _closest(np.where((disc >= 0) & (t > 0), t, np.inf), start, best_t, best_i)
    return best_t, best_i


def cast_ground(o: np.ndarray, d: np.ndarray, height: float = 0.0) -> np.ndarray:
    """Distance to the plane z = height (inf where the ray does not go down to it)."""
    with np.errstate(divide="ignore"):
        t = (height - o[2]) / d[:, 2]
    return np.where(t > 0, t, np.inf)
