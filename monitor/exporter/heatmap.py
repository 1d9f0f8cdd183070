"""A class-stiffness matrix as a small RGB picture, drawn with numpy alone.

TensorBoard shows images, not matrices, and the daemon should not need matplotlib (a demo
extra) to draw one. Stiffness lies in [-1, 1], so the colours are diverging around zero, as
the report's heatmaps are: +1 red, 0 white, -1 blue; an undefined entry (a class with fewer
than two usable examples) is grey. Rows are the class of x1, columns the class of x2, in the
result's class order. Small matrices are enlarged to about ``TARGET`` pixels a side so a cell
is visible; large ones are averaged in square blocks down to at most ``TARGET`` cells a side,
so a thousand classes cost a few hundred kilobytes per evaluation, not megabytes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

TARGET = 256  # pixels (small matrices) or cells (large ones) a side
POSITIVE = np.array([178.0, 24.0, 43.0])  # red at +1
NEGATIVE = np.array([33.0, 102.0, 172.0])  # blue at -1
WHITE = np.array([255.0, 255.0, 255.0])
UNDEFINED = np.array([160.0, 160.0, 160.0])  # grey: no value


def _as_array(matrix: Sequence[Sequence[float | None]]) -> NDArray[np.float64]:
    """NaN where the matrix holds None (numpy's own conversion: fast for a thousand classes)."""
    try:
        values = np.array(matrix, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"expected a square matrix of numbers or nulls ({error})") from None
    if values.size == 0:
        raise ValueError("expected a matrix of at least one class, got an empty one")
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"expected a square matrix, got shape {values.shape}")
    return values


def _pooled(values: NDArray[np.float64], block: int) -> NDArray[np.float64]:
    """Means over ``block`` x ``block`` squares (NaN ignored; all-NaN squares stay NaN)."""
    size = values.shape[0]
    cells = math.ceil(size / block)
    padded = np.full((cells * block, cells * block), np.nan)
    padded[:size, :size] = values
    blocks = padded.reshape(cells, block, cells, block)
    defined = ~np.isnan(blocks)
    counts = defined.sum(axis=(1, 3))
    sums = np.where(defined, blocks, 0.0).sum(axis=(1, 3))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def colours(values: NDArray[np.float64]) -> NDArray[np.uint8]:
    """(H, W) values in [-1, 1] (clipped) to (H, W, 3) RGB; NaN becomes grey."""
    clipped = np.clip(np.nan_to_num(values, nan=0.0), -1.0, 1.0)[..., None]
    towards = np.where(clipped >= 0, POSITIVE, NEGATIVE)
    rgb = WHITE + np.abs(clipped) * (towards - WHITE)
    rgb = np.where(np.isnan(values)[..., None], UNDEFINED, rgb)
    return np.rint(rgb).astype(np.uint8)


def matrix_image(matrix: Sequence[Sequence[float | None]]) -> NDArray[np.uint8]:
    """The (H, W, 3) uint8 picture of a square stiffness matrix (see the module docstring)."""
    values = _as_array(matrix)
    size = values.shape[0]
    if size > TARGET:
        values = _pooled(values, math.ceil(size / TARGET))
    cell = max(1, TARGET // values.shape[0])
    enlarged = np.repeat(np.repeat(values, cell, axis=0), cell, axis=1)
    return colours(enlarged)
