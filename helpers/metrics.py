"""Microstructure statistics of boundary images, and sets of them judged against each other.

Everything here works on boolean boundary masks (True = grain boundary). ``boundary_masks``
makes them from model outputs in [-1, 1] (threshold 0) or from 8-bit images (threshold 128,
the same cut). Per-image descriptors are plain functions; ``describe_set`` gathers them for a
whole set, which is what set-against-set comparisons (Wasserstein distances, the real-vs-real
noise floor) consume.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Sequence

import numpy as np
from scipy import ndimage

MIN_GRAIN_PX = 4  # grains smaller than this are counted as noise, not grains
BORDER_MARGIN = 1  # skeleton ends this close to the image edge are cut-off boundaries, not defects
SKELETON_PAD = 4  # edge pixels repeated around a mask before thinning (see ``skeleton``)


class Descriptor(NamedTuple):
    """How a descriptor is named for people: every table, plot and README reads it from here."""

    label: str  # the quantity, as a table row or a plot axis names it
    short: str  # a column header in a narrow table
    unit: str = ""  # "px", or "" for counts and fractions
    rule: str = ""  # what is counted or how values are pooled, where a table defines its rows
    per_image: bool = True  # one value per image; False: measured on a whole set


# The descriptors in the order every report lists them; the keys are the names code uses.
DESCRIPTOR_TABLE = {
    "boundary_fraction": Descriptor("boundary fraction", "boundary fraction"),
    "grains": Descriptor("grains per image", "grains", rule=f">= {MIN_GRAIN_PX} px"),
    "lineal_intercept": Descriptor("mean lineal intercept", "intercept", unit="px"),
    "junctions": Descriptor("junctions per image", "junctions"),
    "dangling_ends": Descriptor("dangling ends per image", "dangling ends"),
    "grain_diameters": Descriptor("grain diameters", "grain diameters", unit="px", rule="pooled",
                                  per_image=False),
    "s2": Descriptor("S2(r) curve", "S2", rule="RMS", per_image=False),
}
DESCRIPTORS = tuple(name for name, d in DESCRIPTOR_TABLE.items() if d.per_image)
BAR_DESCRIPTORS = ("boundary_fraction", "grains", "dangling_ends")  # what the fidelity bar judges


def descriptor_label(name: str, rule: bool = True) -> str:
    """A descriptor's label with its unit and, when ``rule``, its counting rule:
    "grains per image (>= 4 px)", "mean lineal intercept (px)"."""
    entry = DESCRIPTOR_TABLE[name]
    notes = [note for note in (entry.unit, entry.rule if rule else "") if note]
    return f"{entry.label} ({', '.join(notes)})" if notes else entry.label


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

    Regions smaller than ``min_px`` are dropped (``min_px=1`` keeps every region). A grain cut
    by the image edge counts as a whole one, and one that crosses the edge of an image that tiles
    counts once for each piece (ASTM E112's planimetric count would score an edge grain as half):
    real and generated images are counted alike, so comparisons between them hold.
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
    Returns total line length / intercepts. When no line meets a boundary the intercept is
    longer than any line, and the longest line (the image's larger side) is returned as its
    lower bound; an image that is all boundary has intercepts of 0 length.
    """
    if mask.all():
        return 0.0
    intercepts = 0.0
    for lines in (mask, mask.T):
        intercepts += _runs(lines) - 0.5 * (lines[:, 0].sum() + lines[:, -1].sum())
    length = 2 * mask.shape[0] * mask.shape[1]
    return float(length / intercepts) if intercepts > 0 else float(max(mask.shape))


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
    if mask.all():  # all boundary: no network to thin, and thinning would invent a line with two ends
        return SkeletonFeatures(junctions=0, dangling_ends=0, ends=np.zeros((0, 2), dtype=np.int64))
    skel = skeleton(mask)
    counts = skeleton_neighbours(skel)
    _, n_junctions = ndimage.label(counts >= 3, structure=_EIGHT_CONNECTED)
    ends = counts == 1
    if margin > 0:
        ends[:margin, :] = ends[-margin:, :] = False
        ends[:, :margin] = ends[:, -margin:] = False
    positions = np.argwhere(ends)
    return SkeletonFeatures(junctions=int(n_junctions), dangling_ends=len(positions), ends=positions)


def torus_dangling_ends(mask: np.ndarray) -> int:
    """Dangling ends of a boundary image that tiles, counted on the torus: the ends of the skeleton
    of its 3x3 tiling that lie in the middle tile.

    ``skeleton_features`` reads the image as cut out of a larger one: a boundary that reaches the
    border runs on past it, and ends within ``BORDER_MARGIN`` of it are skipped. The data sets here
    tile, and so do the canvases and DAMASK grids made from them: there a boundary that reaches one
    edge without a partner at the opposite edge is open, which only this count sees.
    """
    if mask.all():  # as skeleton_features: no network to thin
        return 0
    n, m = mask.shape
    # a pixel's neighbours lie within one pixel of it: the middle tile and a one-pixel ring around
    # it are all that its counts need (a ninth of the tiling's work)
    middle = skeleton(np.tile(mask, (3, 3)), pad=0)[n - 1:2 * n + 1, m - 1:2 * m + 1]
    return int((skeleton_neighbours(middle)[1:-1, 1:-1] == 1).sum())


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


# the descriptors measured each by its own function; the others (``TOPOLOGY``) are read off the skeleton
_ALONE = {"boundary_fraction": boundary_fraction, "grains": grain_count, "lineal_intercept": mean_lineal_intercept}
TOPOLOGY = ("junctions", "dangling_ends")  # fields of SkeletonFeatures


def describe(mask: np.ndarray) -> dict[str, float]:
    """All scalar descriptors of one boundary mask (the keys of ``DESCRIPTORS``)."""
    topology = skeleton_features(mask)
    return {**{name: float(function(mask)) for name, function in _ALONE.items()},
            **{name: float(getattr(topology, name)) for name in TOPOLOGY}}


def measure(name: str, mask: np.ndarray) -> float:
    """Descriptor ``name`` (a key of ``DESCRIPTORS``) of one boundary mask, as ``describe`` gives it,
    computing only what that descriptor needs."""
    if name not in DESCRIPTORS:
        raise ValueError(f"unknown descriptor {name!r}; expected one of {', '.join(DESCRIPTORS)}")
    return float(_ALONE[name](mask)) if name in _ALONE else float(getattr(skeleton_features(mask), name))


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

    def concat(self, other: "SetDescriptors") -> "SetDescriptors":
        """This set's images, then ``other``'s."""
        return SetDescriptors({k: np.concatenate([v, other.per_image[k]]) for k, v in self.per_image.items()},
                              self.grain_diameters + other.grain_diameters, np.concatenate([self.s2, other.s2]))


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


def seam_band(masks, resamples: int = 500, seed: int = 0) -> tuple[float, float]:
    """``seam_ratio`` of a set and its standard error (bootstrap over images): a handful of
    images has few seam pixels, so a ratio of 0.95 may be chance."""
    masks = np.asarray(masks, dtype=bool)
    rng = np.random.default_rng(seed)
    draws = [seam_ratio(masks[rng.integers(0, len(masks), len(masks))]) for _ in range(resamples)]
    return seam_ratio(masks), float(np.std(draws))


def crops(masks, window: int) -> np.ndarray:
    """Every non-overlapping ``window``-sized crop of a set of (N, H, W) masks, row by row."""
    masks = np.asarray(masks)
    n, height, width = masks.shape
    if height % window or width % window:
        raise ValueError(f"{height}x{width} images do not split into {window}x{window} crops")
    blocks = masks.reshape(n, height // window, window, width // window, window)
    return blocks.transpose(0, 1, 3, 2, 4).reshape(-1, window, window)


def canvas_report(generated: np.ndarray, reference: np.ndarray, window: int, splits: int = 20,
                  seed: int = 0) -> dict:
    """Large generated canvases against real ones of the same size and seed density, as masks:
    each descriptor's means and ratio to the noise floor for the whole canvases and for their
    ``window``-sized crops (does the network keep the training size's statistics everywhere?),
    and how the canvases tile (``seam_band``)."""
    mine, real = describe_set(generated), describe_set(reference)
    whole = compare_sets(mine, real, splits, seed)
    in_crops = compare_sets(describe_set(crops(generated, window)), describe_set(crops(reference, window)),
                            splits, seed)
    means = {name: (mine.summary()[name][0], real.summary()[name][0]) for name in DESCRIPTORS}
    return {
        "size": int(generated.shape[-1]), "window": window, "generated": len(generated), "reference": len(reference),
        "subset_size": whole.subset_size, "crop_subset_size": in_crops.subset_size,
        "means": means,
        "ratios": {name: whole.ratio(name) for name in SET_DISTANCES},
        "crop_ratios": {name: in_crops.ratio(name) for name in SET_DISTANCES},
        "seam": {"generated": seam_band(generated), "reference": seam_band(reference)},
    }


# ---------------------------------------------------------------------------------------------
# Set against set: distances, the real-vs-real noise floor, defects, memorisation
# ---------------------------------------------------------------------------------------------
SET_DISTANCES = tuple(DESCRIPTOR_TABLE)  # per-image descriptors, then the set-level ones
COPY_MARGIN = 0.1  # IoU above the closest held-out image that flags a generated image as a copy


def set_distances(a: SetDescriptors, b: SetDescriptors) -> dict[str, float]:
    """How far apart two sets are, per descriptor.

    The 1-D Wasserstein (earth mover's) distance between the two sets' per-image values of each
    descriptor, and between their pooled grain diameters; for S2, the root-mean-square difference
    of the two mean curves. Each is in the descriptor's own unit (px, grains, fraction).
    """
    from scipy.stats import wasserstein_distance

    distances = {name: float(wasserstein_distance(a.per_image[name], b.per_image[name]))
                 for name in DESCRIPTORS}
    distances["grain_diameters"] = float(wasserstein_distance(a.diameters, b.diameters)) \
        if a.diameters.size and b.diameters.size else float("nan")
    distances["s2"] = float(np.sqrt(np.mean((a.s2.mean(axis=0) - b.s2.mean(axis=0)) ** 2)))
    return distances


@dataclass
class Comparison:
    """Generated against real, each distance set against the real-vs-real noise floor."""

    distances: dict[str, np.ndarray]  # per split: generated subset vs a real half
    floor: dict[str, np.ndarray]  # per split: one real half vs the other
    subset_size: int

    def ratio(self, name: str) -> float:
        """Median generated-vs-real distance / median real-vs-real distance (~1: like real data)."""
        floor, distance = float(np.median(self.floor[name])), float(np.median(self.distances[name]))
        if floor > 0:
            return distance / floor
        return 1.0 if distance == 0 else float("inf")  # real data never differs here; generated does


def _compare(splits: int, size: int, halves) -> Comparison:
    """The split loop of both comparisons: ``halves()`` gives each split's (A, B, G), sets of ``size``
    images; the floor is d(A, B), the generated distance d(G, B)."""
    distances = {name: [] for name in SET_DISTANCES}
    floor = {name: [] for name in SET_DISTANCES}
    for _ in range(splits):
        half_a, half_b, subset = halves()
        for name, value in set_distances(half_a, half_b).items():
            floor[name].append(value)
        for name, value in set_distances(subset, half_b).items():
            distances[name].append(value)
    return Comparison({k: np.array(v) for k, v in distances.items()},
                      {k: np.array(v) for k, v in floor.items()}, size)


def compare_sets(generated: SetDescriptors, reference: SetDescriptors, splits: int = 20,
                 seed: int = 0) -> Comparison:
    """Distances of generated to real images, measured against the noise floor of real data.

    Each split draws two disjoint random halves of the reference set, A and B, of m images each
    (m = half the reference, or the generated count if smaller), and m generated images G. The
    floor is d(A, B); the generated distance is d(G, B). Equal sizes make the two comparable:
    finite samples alone put distances above zero, by the same amount on both sides.
    """
    m = min(reference.size // 2, generated.size)
    if m < 2:
        raise ValueError(f"need at least 4 reference and 2 generated images, got "
                         f"{reference.size} and {generated.size}")
    rng = np.random.default_rng(seed)

    def halves():
        order = rng.permutation(reference.size)
        return (reference.subset(order[:m]), reference.subset(order[m:2 * m]),
                generated.subset(rng.permutation(generated.size)[:m]))

    return _compare(splits, m, halves)


def compare_paired(generated: SetDescriptors, first: SetDescriptors, second: SetDescriptors, splits: int = 20,
                   seed: int = 0) -> Comparison:
    """``compare_sets`` for a reference paired with the generated images: ``first`` and ``second``
    hold two real images for each generated one (matched to it, say by grain count), in its order.

    Each split flips a coin per generated image for which of its two real images goes to half A
    and which to half B; the floor is d(A, B), the distance d(G, B). All three sets then hold the
    same mix of whatever was matched, so the floor carries no difference in that mix that the
    distance does not (random halves of one pooled reference would: theirs differ by chance, while
    G's is the pool's own, and the ratio of a perfect generator would fall below 1).
    """
    n = generated.size
    if not n == first.size == second.size >= 2:
        raise ValueError(f"need two real images for each of at least 2 generated images, got "
                         f"{n} generated and {first.size} and {second.size} real")
    rng, pairs, rows = np.random.default_rng(seed), first.concat(second), np.arange(n)

    def halves():
        swap = rng.random(n) < 0.5  # True: the second real image of that pair goes to A
        return pairs.subset(rows + swap * n), pairs.subset(rows + ~swap * n), generated

    return _compare(splits, n, halves)


def ratios_by_size(generated: SetDescriptors, reference: SetDescriptors, sizes: Sequence[int],
                   splits: int = 20, seed: int = 0) -> dict[str, list[float]]:
    """Each descriptor's ratio to the floor, measured with the first m generated images, per m.

    A ratio is a test statistic: a real difference between the sets grows it with m (the floor
    shrinks like 1/sqrt(m), a true distance does not), while one too small to detect at the sizes
    tried stays near 1 over them. So compare ratios only at equal m.
    """
    ratios: dict[str, list[float]] = {name: [] for name in SET_DISTANCES}
    for m in sizes:
        if not 2 <= m <= min(generated.size, reference.size // 2):
            raise ValueError(f"m = {m}: needs 2 <= m <= {min(generated.size, reference.size // 2)} "
                             f"({generated.size} generated, {reference.size} reference images)")
        comparison = compare_sets(generated.subset(np.arange(m)), reference, splits, seed)
        for name in SET_DISTANCES:
            ratios[name].append(comparison.ratio(name))
    return ratios


def bootstrap_means(stats: SetDescriptors, resamples: int = 2000, level: float = 0.9,
                    seed: int = 0) -> dict[str, tuple[float, float, float]]:
    """Each per-image descriptor's mean over a set, with a percentile bootstrap interval.

    Draws the set's images again with replacement, ``resamples`` times: the central ``level`` of
    the resampled means is how far the mean would move with another set of as many images.
    (Ratios to the floor are not bootstrapped: a distance near 0 is biased upward by resampling,
    which repeats images; ``null_band`` is the yardstick for them.)
    """
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, got {level}")
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, stats.size, (resamples, stats.size))
    intervals = {}
    for name in DESCRIPTORS:
        values = stats.per_image[name]
        low, high = np.quantile(values[draws].mean(axis=1), [(1 - level) / 2, (1 + level) / 2])
        intervals[name] = (float(values.mean()), float(low), float(high))
    return intervals


def null_ratios(real_sets: Sequence[SetDescriptors], reference: SetDescriptors, splits: int = 20,
                seed: int = 0) -> dict[str, np.ndarray]:
    """The ratios that sets of real images score, per descriptor: the null distribution.

    Each set in ``real_sets`` (images the reference never held, as many as the generated set) is
    scored exactly like a generated set, with the same ``seed`` (the same reference halves and
    splits) as the generated set's ``compare_sets``: every ratio is then the same function of its
    set's images, so a generator that differs from the data by nothing detectable scores like one
    of them, and ``p_value``'s rank is exact.
    """
    if len(real_sets) < 2:
        raise ValueError(f"a null distribution needs at least 2 real sets, got {len(real_sets)}")
    ratios = {name: [] for name in SET_DISTANCES}
    for real in real_sets:
        comparison = compare_sets(real, reference, splits, seed)
        for name in SET_DISTANCES:
            ratios[name].append(comparison.ratio(name))
    return {name: np.array(values) for name, values in ratios.items()}


def null_band(null: np.ndarray, level: float = 0.9) -> tuple[float, float]:
    """The central ``level`` range of real sets' ratios (an empirical quantile, no interpolation)."""
    low, high = np.quantile(null, [(1 - level) / 2, (1 + level) / 2], method="inverted_cdf")
    return float(low), float(high)


def p_value(ratio: float, null: np.ndarray, above: bool = True) -> float:
    """Monte Carlo p-value of a ratio against real sets' ratios: (1 + #{real >= ratio}) / (1 + n).

    Small means few real sets score as high: a difference detectable at this m. ``above=False``
    asks the other way round: a generated set closer to the training data than new real data is
    (a hint of copying). With n real sets the smallest possible value is 1 / (n + 1).
    """
    hits = np.sum(null >= ratio) if above else np.sum(null <= ratio)
    return float((1 + hits) / (1 + len(null)))


def defect_rate(stats: SetDescriptors) -> float:
    """Share of images with at least one dangling boundary end (an open boundary)."""
    return float(np.mean(stats.per_image["dangling_ends"] > 0))


# The training issue's fidelity bar for a shipped model: sample means against the training set's.
BAR_BOUNDARY_FRACTION = 0.01  # mean boundary fraction within +- this
BAR_GRAINS = 2.0  # mean grains per image within +- this
BAR_EXTRA_DANGLING_ENDS = 0.1  # mean dangling ends per image at most the training set's + this


class BarRow(NamedTuple):
    """One line of the fidelity bar: a descriptor's mean on samples and on training data."""

    name: str
    generated: float
    reference: float
    bar: str  # the rule, in words ("" for descriptors shown for context only)
    met: Optional[bool]  # None for context-only rows


def fidelity_bar(generated: SetDescriptors, reference: SetDescriptors) -> list[BarRow]:
    """The fidelity bar row by row, followed by two context rows (intercept, junctions)."""
    g = {k: float(v.mean()) for k, v in generated.per_image.items()}
    r = {k: float(v.mean()) for k, v in reference.per_image.items()}
    rules = {
        "boundary_fraction": (f"within ± {BAR_BOUNDARY_FRACTION:g}",
                              abs(g["boundary_fraction"] - r["boundary_fraction"]) <= BAR_BOUNDARY_FRACTION),
        "grains": (f"within ± {BAR_GRAINS:g}", abs(g["grains"] - r["grains"]) <= BAR_GRAINS),
        "dangling_ends": (f"at most training + {BAR_EXTRA_DANGLING_ENDS:g}",
                          g["dangling_ends"] <= r["dangling_ends"] + BAR_EXTRA_DANGLING_ENDS),
    }
    return [BarRow(descriptor_label(name, rule=False), g[name], r[name], *rules.get(name, ("", None)))
            for name in (*BAR_DESCRIPTORS, "lineal_intercept", "junctions")]


def meets_bar(rows: list[BarRow]) -> bool:
    """True when every rule of the fidelity bar holds."""
    return all(row.met for row in rows if row.met is not None)


def bar_summary(generated: SetDescriptors, reference: SetDescriptors) -> dict:
    """The three means the fidelity bar judges, and whether it is met (for logs and JSON)."""
    rows = fidelity_bar(generated, reference)
    return {"boundary_fraction": rows[0].generated, "grains": rows[1].generated,
            "dangling_ends": rows[2].generated, "met": meets_bar(rows)}


GRAY_BACKGROUND = -0.5  # a sample whose median pixel lies above this has a gray, not black, background


def gray_background_rate(images) -> float:
    """Share of images (values in [-1, 1]) whose background is gray rather than black (-1).

    Boundaries cover about a fifth of an image, so its median pixel is background. A model
    whose estimate of the overall brightness drifts makes such images; thresholding at 0
    then counts the gray background as boundary, which is how they show up in the descriptors.
    """
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
    images = np.asarray(images, dtype=np.float32)
    images = images.reshape(len(images), -1)
    return float(np.mean(np.median(images, axis=1) > GRAY_BACKGROUND))


# IoU values nearest_iou holds at once (4 bytes each: 64 MB a block)
NEAREST_BLOCK = 16_000_000


def nearest_iou(queries: np.ndarray, library: np.ndarray, exclude_self: bool = False
                ) -> tuple[np.ndarray, np.ndarray]:
    """For each query mask, the library mask with the highest IoU of boundary pixels.

    Returns (best IoU, index of that library image) per query. With ``exclude_self`` (queries
    and library the same set) an image is not its own neighbour. IoU is taken at the same
    position only: a copy shifted by a few pixels is not caught. The queries go in blocks, so
    that memory stays near ``NEAREST_BLOCK`` IoU values at once whatever the sizes of the sets.
    """
    q = queries.reshape(len(queries), -1).astype(np.float32)
    lib = library.reshape(len(library), -1).astype(np.float32)
    lib_sizes = lib.sum(1)
    best_iou, best = np.empty(len(q), dtype=np.float32), np.empty(len(q), dtype=np.int64)
    rows = max(1, NEAREST_BLOCK // max(len(lib), 1))  # queries a block
    for start in range(0, len(q), rows):
        block = q[start:start + rows]
        intersection = block @ lib.T
        union = block.sum(1)[:, None] + lib_sizes[None, :] - intersection
        iou = np.where(union > 0, intersection / np.maximum(union, 1), 1.0)
        if exclude_self:  # query i is library image i
            iou[np.arange(len(block)), start + np.arange(len(block))] = -1.0
        best[start:start + rows] = iou.argmax(axis=1)
        best_iou[start:start + rows] = iou[np.arange(len(block)), best[start:start + rows]]
    return best_iou, best


@dataclass
class Memorisation:
    """Nearest training images of generated and of held-out real images."""

    generated_iou: np.ndarray  # per generated image: IoU with its nearest training image
    generated_nearest: np.ndarray  # index of that training image
    heldout_iou: np.ndarray  # the same for real images the model never saw
    threshold: Optional[float]  # above this a generated image is flagged as a near-copy; None: no check

    @property
    def flagged(self) -> np.ndarray:
        if self.threshold is None:
            return np.zeros(0, dtype=np.int64)
        return np.flatnonzero(self.generated_iou > self.threshold)


def memorisation_check(generated: np.ndarray, training: np.ndarray,
                       heldout: np.ndarray | None = None) -> Memorisation:
    """Flag generated images much closer to a training image than held-out real images come.

    Held-out real images (new images from the same process) show how close an honest new
    image gets to its nearest training image by chance. A generated image is flagged when its
    IoU exceeds the largest held-out IoU by more than ``COPY_MARGIN`` (a copy scores ~1, an
    honest image about what held-out images score). Without held-out images, each training
    image's nearest *other* training image stands in. When held-out images come within
    ``COPY_MARGIN`` of IoU 1 (they are training images, or have no boundary network) no IoU could
    exceed theirs by the margin: the threshold is None and nothing is flagged.
    """
    gen_iou, gen_nearest = nearest_iou(generated, training)
    if heldout is None:
        held_iou, _ = nearest_iou(training, training, exclude_self=True)
    else:
        held_iou, _ = nearest_iou(heldout, training)
    threshold = float(held_iou.max()) + COPY_MARGIN
    return Memorisation(gen_iou, gen_nearest, held_iou, threshold if threshold < 1.0 else None)


def evaluation_report(generated_masks: np.ndarray, reference_masks: np.ndarray, splits: int = 20,
                      seed: int = 0, heldout_masks: np.ndarray | None = None) -> dict:
    """Everything ``python -m helpers evaluate`` prints and writes, as a JSON-ready dict.

    ``descriptors[name]["ratio"]`` is each generated-vs-real distance over the real-vs-real
    floor's median; ``defect_rate`` and ``memorisation`` complete the picture.
    """
    generated = describe_set(generated_masks)
    reference = describe_set(reference_masks)
    comparison = compare_sets(generated, reference, splits, seed)
    memo = memorisation_check(generated_masks, reference_masks, heldout_masks)
    means_g = {k: float(v.mean()) for k, v in generated.per_image.items()}
    means_r = {k: float(v.mean()) for k, v in reference.per_image.items()}
    # a set without grains has no mean diameter; S2 is a curve, with no one mean
    means_g.update(grain_diameters=float(generated.diameters.mean()) if generated.diameters.size else None, s2=None)
    means_r.update(grain_diameters=float(reference.diameters.mean()) if reference.diameters.size else None, s2=None)
    descriptors = {}
    for name in SET_DISTANCES:
        floor, ratio = comparison.floor[name], comparison.ratio(name)
        descriptors[name] = {
            "generated_mean": means_g[name], "reference_mean": means_r[name],
            "distance": float(np.median(comparison.distances[name])),
            "floor_median": float(np.median(floor)), "floor_p10": float(np.percentile(floor, 10)),
            "floor_p90": float(np.percentile(floor, 90)),
            "ratio": ratio if np.isfinite(ratio) else None,
        }
    warnings = degenerate_set_warnings(generated_masks, reference_masks)
    if memo.threshold is None:
        whose = "held-out images" if heldout_masks is not None else "training images (leave-one-out)"
        warnings.append(f"{whose} come within {COPY_MARGIN:g} of IoU 1 with their nearest training image "
                        f"(up to {memo.heldout_iou.max():.3f}), as close as a copy: near-copies cannot be "
                        "told from them and are not checked")
    return {
        "warnings": warnings,
        "n_generated": generated.size, "n_reference": reference.size,
        "splits": splits, "subset_size": comparison.subset_size,
        "descriptors": descriptors,
        "defect_rate": {"generated": defect_rate(generated), "reference": defect_rate(reference)},
        "torus_dangling_ends": {name: float(np.mean([torus_dangling_ends(mask) for mask in masks]))
                                for name, masks in (("generated", generated_masks), ("reference", reference_masks))},
        "memorisation": {"generated_nearest_iou_median": float(np.median(memo.generated_iou)),
                         "heldout_nearest_iou_median": float(np.median(memo.heldout_iou)),
                         "threshold": memo.threshold, "flagged": memo.flagged.tolist(),
                         "heldout": "given" if heldout_masks is not None else "training leave-one-out"},
    }


DISTANCE_LABELS = {name: descriptor_label(name) for name in SET_DISTANCES}  # rows of the report


def degenerate_set_warnings(generated_masks: np.ndarray, reference_masks: np.ndarray) -> list[str]:
    """Say when images are all grain or all boundary: no network to describe, and, in the
    reference set, a floor that makes every ratio meaningless."""
    warnings = []
    for label, masks in (("generated", generated_masks), ("reference", reference_masks)):
        flat = np.asarray(masks).reshape(len(masks), -1)
        empty = int((~flat.any(axis=1)).sum() + flat.all(axis=1).sum())
        if empty:
            consequence = "; the noise floor and the ratios mean little" if label == "reference" else ""
            warnings.append(f"{empty} of {len(masks)} {label} images are all grain or all boundary "
                            f"(no boundary network){consequence}")
    return warnings


def json_safe(value):
    """A report with NaN and infinite numbers replaced by None, so that it is valid JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def format_report(report: dict) -> str:
    """The evaluation report as a plain-text table."""
    def number(value):
        return "-" if value is None or not np.isfinite(value) else f"{value:.4g}"

    lines = [f"{report['n_generated']} generated vs {report['n_reference']} reference images; "
             f"{report['splits']} splits of {report['subset_size']} images each",
             f"{'descriptor':<30} {'generated':>10} {'reference':>10} {'distance':>10} "
             f"{'floor':>10} {'floor p10-p90':>17} {'ratio':>7}"]
    for name, row in report["descriptors"].items():
        spread = "-" if not np.isfinite(row["floor_p10"]) else f"{row['floor_p10']:.3g}-{row['floor_p90']:.3g}"
        lines.append(f"{descriptor_label(name):<30} {number(row['generated_mean']):>10} "
                     f"{number(row['reference_mean']):>10} {number(row['distance']):>10} "
                     f"{number(row['floor_median']):>10} {spread:>17} "
                     f"{'inf' if row['ratio'] is None else format(row['ratio'], '.2f'):>7}")
    defects, memo = report["defect_rate"], report["memorisation"]
    lines.append(f"images with a dangling end: generated {defects['generated']:.1%}, "
                 f"reference {defects['reference']:.1%}")
    torus = report["torus_dangling_ends"]
    lines.append(f"dangling ends per image if the images tile (counted on the torus, the border too): "
                 f"generated {torus['generated']:.3f}, reference {torus['reference']:.3f}")
    copies = "not checked (see the warning)" if memo["threshold"] is None else \
        f"(IoU > {memo['threshold']:.3f}): {len(memo['flagged'])}"
    lines.append(f"nearest training image (IoU of boundary pixels): generated median "
                 f"{memo['generated_nearest_iou_median']:.3f}, held-out real median "
                 f"{memo['heldout_nearest_iou_median']:.3f} ({memo['heldout']}); near-copies {copies}")
    lines += [f"warning: {w}" for w in report.get("warnings", [])]
    return "\n".join(lines)
