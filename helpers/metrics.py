"""Microstructure statistics of boundary images (DESIGN.md section 5).

Everything here works on boolean boundary masks (True = grain boundary). ``boundary_masks``
makes them from model outputs in [-1, 1] (threshold 0) or from 8-bit images (threshold 128,
the same cut). Per-image descriptors are plain functions; ``describe_set`` gathers them for a
whole set, which is what set-against-set comparisons (Wasserstein distances, the real-vs-real
noise floor) consume.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

MIN_GRAIN_PX = 4  # grains smaller than this are counted as noise, not grains
BORDER_MARGIN = 1  # skeleton ends this close to the image edge are cut-off boundaries, not defects
SKELETON_PAD = 4  # edge pixels repeated around a mask before thinning (see ``skeleton``)
DESCRIPTORS = ("boundary_fraction", "grains", "lineal_intercept", "junctions", "dangling_ends")

_FOUR_CONNECTED = ndimage.generate_binary_structure(2, 1)
_EIGHT_CONNECTED = ndimage.generate_binary_structure(2, 2)


def boundary_masks(images) -> np.ndarray:
    """Boolean boundary masks from images: uint8 cut at 128, anything else (in [-1, 1]) cut at 0.

    Accepts (H, W), (N, H, W) or (N, 1, H, W), numpy or torch. Returns bool (H, W) or (N, H, W).
    """
    if hasattr(images, "detach"):
        images = images.detach().cpu().numpy()
    images = np.asarray(images)
    if images.ndim == 4:
        if images.shape[1] != 1:
            raise ValueError(f"expected one channel, got shape {images.shape}")
        images = images[:, 0]
    if images.ndim not in (2, 3):
        raise ValueError(f"expected (H, W), (N, H, W) or (N, 1, H, W) images, got shape {images.shape}")
    if images.dtype == np.uint8:
        return images >= 128
    return images > 0


def boundary_fraction(mask: np.ndarray) -> float:
    """Area fraction of boundary pixels."""
    return float(np.mean(mask))


def grain_areas(mask: np.ndarray, min_px: int = MIN_GRAIN_PX) -> np.ndarray:
    """Pixel areas of grains: 4-connected regions of non-boundary pixels (no wrap-around).

    Regions smaller than ``min_px`` are dropped (``min_px=1`` keeps every region). Grains cut
    by the image edge count as separate grains, as a metallographer counting a micrograph would.
    """
    labels, n = ndimage.label(~mask, structure=_FOUR_CONNECTED)
    areas = np.bincount(labels.ravel(), minlength=n + 1)[1:]
    return areas[areas >= min_px]


def grain_count(mask: np.ndarray, min_px: int = MIN_GRAIN_PX) -> int:
    """Number of grains of at least ``min_px`` pixels."""
    return int(grain_areas(mask, min_px).size)


def grain_diameters(mask: np.ndarray, min_px: int = MIN_GRAIN_PX) -> np.ndarray:
    """Equivalent-circle diameters (px) of the grains: d = 2 sqrt(area / pi)."""
    return 2.0 * np.sqrt(grain_areas(mask, min_px) / np.pi)


def _runs(lines: np.ndarray) -> int:
    """Number of runs of True along the last axis of a boolean array."""
    starts = lines[..., 1:] & ~lines[..., :-1]
    return int(starts.sum() + lines[..., 0].sum())


def mean_lineal_intercept(mask: np.ndarray) -> float:
    """Mean lineal intercept (px): test-line length per boundary intercept, rows plus columns.

    Every row and column of the image is a test line (the ASTM E112 intercept method on a pixel
    grid). Each run of boundary pixels along a line is one intercept; a run touching an end of
    the line counts one half per end it touches, as ASTM counts a line that ends on a boundary.
    That makes the estimate fair for images that do not tile as well as for those that do.
    Returns total line length / intercepts, or the line length when no boundary is met.
    """
    intercepts = 0.0
    for lines in (mask, mask.T):
        intercepts += _runs(lines) - 0.5 * (lines[:, 0].sum() + lines[:, -1].sum())
    length = 2 * mask.shape[0] * mask.shape[1]
    return float(length / intercepts) if intercepts > 0 else float(length)


def skeleton(mask: np.ndarray, pad: int = SKELETON_PAD) -> np.ndarray:
    """One-pixel-wide skeleton of the boundary network.

    The mask is first extended past its edges by repeating the edge pixels, so boundaries that
    leave the image keep running outward; unpadded, thinning pulls their skeleton back a few
    pixels from the edge and leaves false open ends there.
    """
    from skimage.morphology import skeletonize

    padded = np.pad(mask, pad, mode="edge")
    return skeletonize(padded)[pad:-pad, pad:-pad] if pad else skeletonize(padded)


def skeleton_neighbours(skel: np.ndarray) -> np.ndarray:
    """For each skeleton pixel, how many of its 8 neighbours are skeleton pixels (0 elsewhere)."""
    counts = ndimage.convolve(skel.astype(np.int32), np.ones((3, 3), np.int32), mode="constant")
    return np.where(skel, counts - 1, 0)


@dataclass
class SkeletonFeatures:
    """Topology of a boundary network, read off its skeleton."""

    junctions: int  # clusters of skeleton pixels with >= 3 neighbours (triple points and higher)
    dangling_ends: int  # skeleton pixels with exactly 1 neighbour, away from the image border
    ends: np.ndarray = field(repr=False)  # (K, 2) row, col of the dangling ends


def skeleton_features(mask: np.ndarray, margin: int = BORDER_MARGIN) -> SkeletonFeatures:
    """Junctions and dangling ends of the boundary skeleton.

    A closed grain-boundary network has no ends: every boundary runs from junction to junction.
    An end is an open boundary, the typical defect of a generated microstructure. Ends within
    ``margin`` px of the border are skipped: there the image edge cuts boundaries off.
    """
    skel = skeleton(mask)
    counts = skeleton_neighbours(skel)
    _, n_junctions = ndimage.label(counts >= 3, structure=_EIGHT_CONNECTED)
    ends = counts == 1
    if margin > 0:
        ends[:margin, :] = ends[-margin:, :] = False
        ends[:, :margin] = ends[:, -margin:] = False
    positions = np.argwhere(ends)
    return SkeletonFeatures(junctions=int(n_junctions), dangling_ends=len(positions), ends=positions)


def two_point_correlation(mask: np.ndarray, r_max: int | None = None) -> np.ndarray:
    """Two-point correlation S2(r) of the boundary phase, radially averaged, r = 0..r_max px.

    S2(r) is the probability that two points a distance r apart both lie on a boundary: S2(0)
    is the boundary fraction and S2 tends to its square at long range. Computed by FFT with zero
    padding, each displacement divided by its number of overlapping pixel pairs, so it is exact
    for any image, periodic or not. ``r_max`` defaults to half the image size.
    """
    height, width = mask.shape
    r_max = min(height, width) // 2 if r_max is None else r_max
    padded = np.zeros((2 * height, 2 * width))
    padded[:height, :width] = mask
    spectrum = np.fft.rfft2(padded)
    pairs = np.fft.irfft2(spectrum * np.conj(spectrum), s=padded.shape)
    ones = np.zeros_like(padded)
    ones[:height, :width] = 1.0
    ones_spectrum = np.fft.rfft2(ones)
    overlaps = np.fft.irfft2(ones_spectrum * np.conj(ones_spectrum), s=padded.shape)
    dr = np.fft.fftfreq(2 * height, 1.0 / (2 * height))[:, None]
    dc = np.fft.fftfreq(2 * width, 1.0 / (2 * width))[None, :]
    radius = np.rint(np.hypot(dr, dc)).astype(np.int64)
    keep = (radius <= r_max) & (np.abs(dr) < height) & (np.abs(dc) < width)
    total = np.bincount(radius[keep], weights=pairs[keep], minlength=r_max + 1)
    count = np.bincount(radius[keep], weights=overlaps[keep], minlength=r_max + 1)
    return total / count


def describe(mask: np.ndarray) -> dict[str, float]:
    """All scalar descriptors of one boundary mask (the keys of ``DESCRIPTORS``)."""
    topology = skeleton_features(mask)
    return {
        "boundary_fraction": boundary_fraction(mask),
        "grains": float(grain_count(mask)),
        "lineal_intercept": mean_lineal_intercept(mask),
        "junctions": float(topology.junctions),
        "dangling_ends": float(topology.dangling_ends),
    }


@dataclass
class SetDescriptors:
    """Descriptors of a set of boundary images: what set-against-set comparisons work from."""

    per_image: dict[str, np.ndarray]  # descriptor name -> (N,) values
    grain_diameters: list[np.ndarray]  # per image, the equivalent-circle diameters of its grains
    s2: np.ndarray  # (N, r_max + 1) two-point correlation curves

    @property
    def size(self) -> int:
        return len(self.s2)

    @property
    def diameters(self) -> np.ndarray:
        """Grain diameters of all images, pooled."""
        return np.concatenate(self.grain_diameters) if self.grain_diameters else np.array([])

    def summary(self) -> dict[str, tuple[float, float]]:
        """Mean and standard deviation of each per-image descriptor."""
        return {k: (float(v.mean()), float(v.std())) for k, v in self.per_image.items()}

    def subset(self, index) -> "SetDescriptors":
        """The descriptors of the images selected by ``index`` (for splits of one set)."""
        index = np.arange(self.size)[index]
        return SetDescriptors({k: v[index] for k, v in self.per_image.items()},
                              [self.grain_diameters[i] for i in index], self.s2[index])


def describe_set(masks, progress: bool = False) -> SetDescriptors:
    """Descriptors of every mask in a set ((N, H, W) booleans, or images for ``boundary_masks``)."""
    masks = np.asarray(masks)
    if masks.dtype != bool:
        masks = boundary_masks(masks)
    if masks.ndim == 2:
        masks = masks[None]
    iterator = masks
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(masks, desc="descriptors", leave=False)
    rows, diameters, curves = [], [], []
    for mask in iterator:
        rows.append(describe(mask))
        diameters.append(grain_diameters(mask))
        curves.append(two_point_correlation(mask))
    per_image = {k: np.array([row[k] for row in rows]) for k in DESCRIPTORS}
    return SetDescriptors(per_image, diameters, np.stack(curves))


def seam_ratio(masks) -> float:
    """How a set of images tiles: pixel disagreement across the wrap-around seams / inside.

    Neighbouring pixels inside an image disagree (boundary next to grain) at some rate; for an
    image that tiles periodically the last row and the first row are neighbours too and disagree
    at the same rate, so the ratio is ~1. For images that do not tile it is well above 1.
    """
    masks = np.asarray(masks, dtype=bool)
    masks = masks[None] if masks.ndim == 2 else masks
    inside = np.concatenate([(masks[:, :-1, :] != masks[:, 1:, :]).ravel(),
                             (masks[:, :, :-1] != masks[:, :, 1:]).ravel()]).mean()
    seams = np.concatenate([(masks[:, -1, :] != masks[:, 0, :]).ravel(),
                            (masks[:, :, -1] != masks[:, :, 0]).ravel()]).mean()
    return float(seams / inside) if inside > 0 else float("nan")
