"""Grain label maps from boundary images: the grains a simulation reads, and a table of them.

A generated image marks grain boundaries; a crystal-plasticity or phase-field code wants every
pixel to belong to a numbered grain. ``label_map`` makes one by a stated rule:

1. A grain is a 4-connected region of non-boundary pixels (joined across the image's edges when
   the image is periodic), as in ``metrics.grain_count``.
2. Regions smaller than ``metrics.MIN_GRAIN_PX`` are slivers, not grains: they count as boundary.
3. Every boundary pixel goes to the nearest grain (Euclidean distance; scikit-image's
   ``expand_labels``), so a boundary is split down its middle. A boundary that ends in the open (a dangling end) does
   not close a grain: the grain on both sides is one grain, and the stray boundary's pixels join it.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from skimage.segmentation import expand_labels

from .data import grain_neighbours, periodic_components
from .metrics import MIN_GRAIN_PX

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)


def _grain_regions(mask: np.ndarray, periodic: bool) -> np.ndarray:
    """Non-boundary regions numbered 1..n (0 on the boundary), in row-major order of first pixel."""
    if periodic:
        regions = periodic_components(mask.astype(np.int8)) + 1
        regions[mask] = 0
        return _renumber(regions)
    regions, _ = ndimage.label(~mask, structure=_FOUR_CONNECTED)
    return regions


def _renumber(labels: np.ndarray) -> np.ndarray:
    """Positive labels renumbered 1..n in order of first appearance (row-major); 0 stays 0."""
    values, first = np.unique(labels.ravel(), return_index=True)
    keep = values > 0
    order = np.zeros(int(values.max()) + 1 if len(values) else 1, dtype=np.int64)
    order[values[keep][np.argsort(first[keep])]] = np.arange(1, keep.sum() + 1)
    return order[labels]


def label_map(mask: np.ndarray, periodic: bool = True, min_px: int = MIN_GRAIN_PX) -> np.ndarray:
    """Grain labels 0..n-1 (int32) for a boundary ``mask`` (True on boundaries), by the module's rule.

    ``periodic`` treats the image as a torus (our generator's images and a periodic network's
    samples): a grain cut by an edge is one grain, and boundary pixels may go to a grain across
    the edge. Grains are numbered in row-major order of their first pixel.
    """
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"a boundary mask must be one 2-D image, got shape {mask.shape}")
    regions = _grain_regions(mask, periodic)
    areas = np.bincount(regions.ravel())
    regions[areas[regions] < min_px] = 0  # slivers (and the boundary, label 0, already 0)
    if not regions.any():
        raise ValueError(f"no grain of at least {min_px} px: the image is all boundary")
    regions = _renumber(regions)
    # the farthest a boundary pixel lies from its grain: a wrap-around margin this wide (plus one)
    # lets the nearest grain across an edge be found in the padded image
    reach = int(np.ceil(ndimage.distance_transform_edt(regions == 0).max())) + 1
    if not periodic:
        return (expand_labels(regions, distance=reach) - 1).astype(np.int32)
    padded = np.pad(regions, reach, mode="wrap")
    filled = expand_labels(padded, distance=reach)[reach:-reach, reach:-reach]
    return (filled - 1).astype(np.int32)


@dataclass(frozen=True)
class Grain:
    """One row of ``grain_table``: sizes in pixels, the centroid as (row, column)."""

    grain: int
    area: int
    equivalent_diameter: float
    neighbours: tuple[int, ...]
    centroid_row: float
    centroid_col: float


def _centroid(coordinates: np.ndarray, weights: np.ndarray, size: int, periodic: bool) -> np.ndarray:
    """Per-grain mean of pixel coordinates; with ``periodic``, on a circle of ``size`` (a grain
    across the edge has its centroid near the edge, not in the middle of the image). A grain that
    runs all the way round (its pixels' mean direction has length ~0) has no such centre: the
    plain mean."""
    counts = np.maximum(np.bincount(weights), 1)
    plain = np.bincount(weights, coordinates) / counts
    if not periodic:
        return plain
    angles = 2 * np.pi * coordinates / size
    cos = np.bincount(weights, np.cos(angles))
    sin = np.bincount(weights, np.sin(angles))
    circular = (np.arctan2(sin, cos) % (2 * np.pi)) * size / (2 * np.pi)
    return np.where(np.hypot(cos, sin) < 1e-6 * counts, plain, circular)


def grain_table(labels: np.ndarray, periodic: bool = True) -> list[Grain]:
    """Each grain of a label map: area, equivalent circle diameter 2 sqrt(area / pi), the grains
    it touches (4-neighbours; across the edges when ``periodic``) and its centroid."""
    labels = np.asarray(labels)
    flat = labels.ravel().astype(np.int64)
    n = int(flat.max()) + 1
    areas = np.bincount(flat, minlength=n)
    rows, cols = np.indices(labels.shape).reshape(2, -1) + 0.5  # pixel centres
    centroid_rows = _centroid(rows, flat, labels.shape[0], periodic)
    centroid_cols = _centroid(cols, flat, labels.shape[1], periodic)
    touching = grain_neighbours(labels, periodic)
    return [Grain(g, int(areas[g]), float(2 * np.sqrt(areas[g] / np.pi)), tuple(sorted(touching[g])),
                  float(centroid_rows[g]), float(centroid_cols[g])) for g in range(n)]


TABLE_COLUMNS = ("grain", "area_px", "equivalent_diameter_px", "neighbour_count", "neighbours",
                 "centroid_row_px", "centroid_col_px")


def write_grain_table(grains: list[Grain], path: Path) -> Path:
    """The table as CSV (neighbours as space-separated grain numbers)."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TABLE_COLUMNS)
        for g in grains:
            writer.writerow([g.grain, g.area, f"{g.equivalent_diameter:.4f}", len(g.neighbours),
                             " ".join(map(str, g.neighbours)), f"{g.centroid_row:.3f}", f"{g.centroid_col:.3f}"])
    return Path(path)
