"""Synthetic polycrystal microstructures: generators, dataset folders, and tensors in [-1, 1].

Two generators (each shipped dataset's README.md gives its parameters and measured statistics):

* ``voronoi-gb``: periodic Voronoi tessellations of a few random seeds, drawn as white grain
  boundaries on black grains (the original tutorial's training set, rebuilt).
* ``grain-growth``: a fine periodic Voronoi map coarsened by threshold dynamics (MBO), the way
  grains coarsen when a metal is annealed; kept as label maps, flat gray renders and boundary images.

Every image ``i`` draws from its own random generator seeded with ``(seed, i)``, so any single
image can be regenerated alone and a whole set is bit-identical on every machine.
"""
from __future__ import annotations

import csv
import errno
import io
import operator
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from . import metrics

DATA_ROOT = Path(__file__).resolve().parent.parent / "data"
KINDS = ("voronoi-gb", "voronoi-gb-range", "grain-growth")
MANIFEST = "manifest.csv"
BOUNDARY, GRAIN = 255, 0  # pixel values of boundary and grain pixels in boundary images
VORONOI_SEEDS = 15  # grains per voronoi-gb image, as in the original data
RANGE_SEEDS = (3, 80)  # voronoi-gb-range: seeds per image, log-uniform (4 to 90 grains at 64x64 in the shipped set)
# voronoi-gb-range: the descriptors measured on each image, a manifest column each (conditions)
RANGE_COLUMNS = ("grains", "lineal_intercept", "boundary_fraction")
GROWTH_INITIAL_GRAINS = 120  # grains of the Voronoi map that grain-growth coarsens
GROWTH_TARGET_GRAINS = (14, 24)  # range the final grain count is drawn from
GROWTH_SIGMA_PER_64PX = 3.0  # MBO Gaussian width (px) at 64x64, scaled with the image size


class DataError(ValueError):
    """Bad input data: the message names the file or value and says what was expected."""


# --------------------------------------------------------------------------------------------
# Generators
# --------------------------------------------------------------------------------------------
def image_rng(seed: int, index: int) -> np.random.Generator:
    """The random generator of image ``index`` in a set made with ``seed``."""
    return np.random.default_rng([seed, index])


def periodic_voronoi(seeds: np.ndarray, size: int) -> np.ndarray:
    """Label each pixel centre with its nearest seed under periodic (wrap-around) distance.

    ``seeds`` is a (K, 2) array of (row, col) positions in [0, size). Returns an int (size, size)
    label map with values 0..K-1.
    """
    centres = np.arange(size) + 0.5
    drow = np.abs(centres[None, :] - seeds[:, 0:1])  # (K, size)
    dcol = np.abs(centres[None, :] - seeds[:, 1:2])
    drow = np.minimum(drow, size - drow)
    dcol = np.minimum(dcol, size - dcol)
    dist2 = drow[:, :, None] ** 2 + dcol[:, None, :] ** 2  # (K, size, size)
    return np.argmin(dist2, axis=0)


def boundary_from_labels(labels: np.ndarray) -> np.ndarray:
    """Boundary mask: a pixel whose 4-neighbours (with wrap-around) carry another label.

    Both sides of every interface are marked, so boundaries are about 2 px thick and, because
    the rule wraps, the result tiles periodically when the label map does.
    """
    mask = np.zeros(labels.shape, dtype=bool)
    for axis in (0, 1):
        for shift in (1, -1):
            mask |= labels != np.roll(labels, shift, axis=axis)
    return mask


def boundary_image(labels: np.ndarray) -> np.ndarray:
    """8-bit boundary image: 255 on grain boundaries, 0 inside grains."""
    return np.where(boundary_from_labels(labels), BOUNDARY, GRAIN).astype(np.uint8)


@dataclass
class VoronoiSample:
    """One voronoi-gb image and the steps that made it (for teaching and tests)."""

    seeds: np.ndarray  # (K, 2) row, col positions
    labels: np.ndarray  # (S, S) nearest-seed labels
    image: np.ndarray  # (S, S) uint8 boundary image


def voronoi_seeds(size: int) -> int:
    """Seeds of a voronoi-gb image of side ``size`` at the training set's density (15 per 64x64)."""
    return max(1, round(VORONOI_SEEDS * (size / 64) ** 2))


def make_voronoi_gb(seed: int, index: int, size: int = 64, n_seeds: int = VORONOI_SEEDS) -> VoronoiSample:
    """Image ``index`` of the voronoi-gb set made with ``seed``."""
    rng = image_rng(seed, index)
    seeds = rng.uniform(0.0, size, size=(n_seeds, 2))
    labels = periodic_voronoi(seeds, size)
    return VoronoiSample(seeds=seeds, labels=labels, image=boundary_image(labels))


def make_voronoi_gb_range(seed: int, index: int, size: int = 64) -> VoronoiSample:
    """Image ``index`` of the voronoi-gb-range set: voronoi-gb with a seed count of its own, drawn
    log-uniformly from RANGE_SEEDS by the image's generator (before its seeds), so that few and
    many grains are equally well covered."""
    rng = image_rng(seed, index)
    seeds = rng.uniform(0.0, size, size=(range_seed_count(rng), 2))
    labels = periodic_voronoi(seeds, size)
    return VoronoiSample(seeds=seeds, labels=labels, image=boundary_image(labels))


def range_seed_count(rng: np.random.Generator) -> int:
    """A voronoi-gb-range image's seed count, log-uniform over RANGE_SEEDS: the first draw of its
    generator (``image_rng``)."""
    low, high = RANGE_SEEDS
    return int(round(np.exp(rng.uniform(np.log(low), np.log(high)))))


def periodic_components(labels: np.ndarray) -> np.ndarray:
    """Relabel a label map so that each 4-connected region (with wrap-around) has its own label.

    A grain that threshold dynamics split in two becomes two grains. Labels are 0..n-1, numbered
    in order of first appearance (row-major), so the result does not depend on the input's numbering.
    """
    from scipy import ndimage

    comp = np.full(labels.shape, -1, dtype=np.int64)
    offset = 0
    for value in np.unique(labels):
        lab, n = ndimage.label(labels == value)
        inside = lab > 0
        comp[inside] = lab[inside] - 1 + offset
        offset += n
    parent = np.arange(offset)

    def find(a: int) -> int:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    edges = [(comp[:, 0], comp[:, -1], labels[:, 0] == labels[:, -1]),
             (comp[0, :], comp[-1, :], labels[0, :] == labels[-1, :])]
    for first, last, same in edges:
        for a, b in zip(first[same], last[same]):
            ra, rb = find(int(a)), find(int(b))
            if ra != rb:
                parent[max(ra, rb)] = min(ra, rb)
    roots = np.array([find(a) for a in range(offset)])
    merged = roots[comp]
    _, first_seen = np.unique(merged.ravel(), return_index=True)
    order = np.argsort(np.argsort(first_seen))
    return order[np.searchsorted(np.unique(merged), merged)]


def _gaussian_kernel_fft(size: int, sigma: float) -> np.ndarray:
    """Fourier transform (rfft2 layout) of a periodic Gaussian of width ``sigma`` pixels."""
    k_row = np.fft.fftfreq(size)[:, None]
    k_col = np.fft.rfftfreq(size)[None, :]
    return np.exp(-2.0 * (np.pi * sigma) ** 2 * (k_row**2 + k_col**2))


def mbo_coarsen(labels: np.ndarray, target_grains: int, sigma: float = 3.0,
                max_iterations: int = 1000) -> tuple[np.ndarray, int]:
    """Coarsen a periodic label map by threshold dynamics until it has <= ``target_grains``.

    Each iteration smooths every grain's indicator function with a periodic Gaussian (by FFT)
    and gives each pixel to the grain with the largest smoothed value: curvature-driven motion,
    the mechanism of normal grain growth. Small grains shrink and vanish. When the map stops
    changing (the pixel grid pins slow boundaries) the Gaussian widens by 25% until it moves again. Returns the map
    relabelled 0..n-1 with each grain connected across the wrap-around, and the iteration count.
    """
    size = labels.shape[0]
    width = sigma
    kernel = _gaussian_kernel_fft(size, width)
    labels = periodic_components(labels)
    for iteration in range(max_iterations):
        present = np.unique(labels)
        if present.size <= target_grains:
            labels = periodic_components(labels)  # a grain split in two counts twice
            present = np.unique(labels)
            if present.size <= target_grains:
                return labels, iteration
        indicators = (labels[None, :, :] == present[:, None, None]).astype(np.float64)
        smoothed = np.fft.irfft2(np.fft.rfft2(indicators) * kernel, s=labels.shape)
        updated = present[np.argmax(smoothed, axis=0)]
        if np.array_equal(updated, labels):
            width *= 1.25
            kernel = _gaussian_kernel_fft(size, width)
        elif width != sigma:
            width = sigma  # moving again: back to the base width, so grains vanish one by one
            kernel = _gaussian_kernel_fft(size, width)
        labels = updated
    raise RuntimeError(f"threshold dynamics did not reach {target_grains} grains in "
                       f"{max_iterations} iterations ({np.unique(labels).size} left)")


def grain_neighbours(labels: np.ndarray, periodic: bool = True) -> list[set[int]]:
    """For each grain, the set of grains it touches (4-neighbours, with wrap-around when ``periodic``)."""
    n = int(labels.max()) + 1
    neighbours: list[set[int]] = [set() for _ in range(n)]
    for axis in (0, 1):
        other = np.roll(labels, 1, axis=axis)
        differ = labels != other
        if not periodic:  # the first row (column) met the last one only through the wrap
            differ[(slice(None),) * axis + (0,)] = False
        for a, b in set(zip(labels[differ].tolist(), other[differ].tolist())):
            neighbours[a].add(b)
            neighbours[b].add(a)
    return neighbours


# Seven 8-bit gray levels 39 apart (0.153 of full scale): any two differ by more than 0.15.
GRAY_LEVELS = np.arange(21, 256, 39, dtype=np.uint8)


def gray_levels(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An 8-bit gray level per grain, neighbouring grains at least 0.15 of full scale apart.

    Grains are coloured with the seven levels of ``GRAY_LEVELS`` in smallest-last order: on a
    periodic map every grain then has at most six coloured neighbours when its turn comes, so a
    free level always exists. Among the free levels one is drawn at random, for variety.
    """
    neighbours = grain_neighbours(labels)
    remaining = {g: set(nb) for g, nb in enumerate(neighbours)}
    removal: list[int] = []
    while remaining:
        g = min(remaining, key=lambda k: (len(remaining[k]), k))
        removal.append(g)
        for nb in remaining.pop(g):
            remaining[nb].discard(g)
    level = np.full(len(neighbours), -1, dtype=np.int64)
    for g in reversed(removal):
        taken = {int(level[nb]) for nb in neighbours[g] if level[nb] >= 0}
        free = [i for i in range(len(GRAY_LEVELS)) if i not in taken]
        if not free:
            raise RuntimeError(f"grain {g} has {len(taken)} coloured neighbours: no free gray level")
        level[g] = free[int(rng.integers(len(free)))]
    return GRAY_LEVELS[level]


@dataclass
class GrainGrowthSample:
    """One grain-growth microstructure: the maps before and after coarsening and their renders."""

    initial_labels: np.ndarray  # (S, S) periodic Voronoi map before growth
    labels: np.ndarray  # (S, S) grain map after growth, 0..n-1
    target_grains: int
    iterations: int
    gray: np.ndarray  # (S, S) uint8 flat gray render
    boundary: np.ndarray  # (S, S) uint8 boundary image (255 = boundary)


def make_grain_growth(seed: int, index: int, size: int = 64,
                      initial_grains: int = GROWTH_INITIAL_GRAINS,
                      grain_range: tuple[int, int] = GROWTH_TARGET_GRAINS) -> GrainGrowthSample:
    """Image ``index`` of the grain-growth set made with ``seed``."""
    rng = image_rng(seed, index)
    seeds = rng.uniform(0.0, size, size=(initial_grains, 2))
    target = int(rng.integers(grain_range[0], grain_range[1] + 1))
    initial = periodic_voronoi(seeds, size)
    labels, iterations = mbo_coarsen(initial, target, sigma=GROWTH_SIGMA_PER_64PX * size / 64)
    gray = gray_levels(labels, rng)[labels]
    return GrainGrowthSample(initial_labels=initial, labels=labels, target_grains=target,
                             iterations=iterations, gray=gray, boundary=boundary_image(labels))


# --------------------------------------------------------------------------------------------
# Dataset folders
# --------------------------------------------------------------------------------------------
def save_png(array: np.ndarray, path: Path) -> None:
    """Write an 8-bit grayscale PNG with fixed settings, so the bytes are reproducible."""
    Image.fromarray(np.ascontiguousarray(array, dtype=np.uint8), mode="L").save(
        path, format="PNG", optimize=False, compress_level=6)


def check_whole(name: str, value, least: int = 1, error: type[Exception] = DataError) -> int:
    """``value`` as an int if it is a whole number of at least ``least`` (an int or a numpy integer;
    not a bool, a float or a string), else an ``error`` naming ``name`` in one line. The one rule for
    counts and sizes (``least`` 1) and seeds (0) across helpers: data, sampling and training."""
    try:
        number = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        number = None
    if number is None or number < least:
        wanted = "a positive whole number" if least == 1 else f"a whole number of {least} or more"
        raise error(f"{name} must be {wanted}, got {value!r}")
    return number


def write_failure(exc: BaseException) -> str:
    """A failed write in a few words: a full disk said as such, else the system's reason."""
    if getattr(exc, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left" in str(exc):
        return "the disk is full"
    return getattr(exc, "strerror", None) or str(exc).strip().splitlines()[0][:100]


def prepare_output_dir(out: Path, force: bool) -> Path:
    """Create ``out``; refuse a non-empty folder unless ``force`` (nothing is overwritten silently)."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DataError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise DataError(f"{out} is not empty; choose an empty folder or pass --force to write into it")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"could not create the folder {out}: {exc.strerror or exc}") from None
    return out


# Columns of each kind's manifest: the first is the training image (what load_images reads).
COLUMNS = {"voronoi-gb": ("file",), "voronoi-gb-range": ("file", *RANGE_COLUMNS),
           "grain-growth": ("file", "boundary", "labels")}


def generate_files(kind: str, seed: int, index: int, size: int) -> dict[str, np.ndarray]:
    """The 8-bit images of one dataset row, by manifest column."""
    if kind == "voronoi-gb":
        return {"file": make_voronoi_gb(seed, index, size).image}
    if kind == "voronoi-gb-range":
        return {"file": make_voronoi_gb_range(seed, index, size).image}
    if kind == "grain-growth":
        sample = make_grain_growth(seed, index, size)
        return {"file": sample.gray, "boundary": sample.boundary,
                "labels": sample.labels.astype(np.uint8)}
    raise DataError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")


def measured_columns(kind: str, images: dict[str, np.ndarray]) -> dict[str, str]:
    """The descriptor columns of one manifest row, measured by ``helpers.metrics`` on its image
    (voronoi-gb-range; other kinds have none)."""
    if kind != "voronoi-gb-range":
        return {}
    values = metrics.describe(images["file"] >= 128)
    return {"grains": str(int(values["grains"])), "lineal_intercept": f"{values['lineal_intercept']:.4f}",
            "boundary_fraction": f"{values['boundary_fraction']:.4f}"}


def row_paths(kind: str, index: int) -> dict[str, str]:
    """Relative file names of one dataset row, by manifest column."""
    name = f"{index:05d}.png"
    if kind in ("voronoi-gb", "voronoi-gb-range"):
        return {"file": name}
    return {"file": f"gray/{name}", "boundary": f"boundary/{name}", "labels": f"labels/{name}"}


def make_command(kind: str, n: int, size: int, seed: int, out: str) -> str:
    """The ``data make`` command line that writes this dataset to ``out``."""
    return f"python -m helpers data make --kind {kind} --n {n} --size {size} --seed {seed} --out {out}"


def unfinished_readme(kind: str, n: int, size: int, seed: int, folder: Path) -> str:
    """The README.md a dataset folder holds while it is written, replaced when the last image is."""
    return "\n".join([
        f"# {folder.name} (unfinished)",
        "",
        f"This folder is being written, or its writing stopped before the end: `{MANIFEST}` lists the "
        f"images written in full, of {n}. To write the whole set, run again with `--force`:",
        "",
        "```",
        f"{make_command(kind, n, size, seed, str(folder))} --force",
        "```",
        "",
    ])


def make_dataset(kind: str, n: int, size: int, seed: int, out: Path | str, force: bool = False,
                 progress: Callable[[int], None] | None = None) -> Path:
    """Generate ``n`` images of ``kind`` into ``out``: PNGs, manifest.csv and a README.md.

    The manifest grows by one row as each image is written, and the README says the set is
    unfinished until the last one is, so a folder whose writing was killed tells what it holds.
    A write that fails (a full disk) is a ``DataError`` naming the file and how far it got.
    """
    if kind not in KINDS:
        raise DataError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    n = check_whole("--n", n)
    size = check_whole("--size", size)
    seed = check_whole("--seed", seed, least=0)
    if size < 8:
        raise DataError(f"--size must be at least 8 pixels, got {size}")
    out = prepare_output_dir(Path(out), force)
    written, target = 0, out / "README.md"
    try:
        target.write_text(unfinished_readme(kind, n, size, seed, out), encoding="utf-8")
        target = out / MANIFEST
        with open(target, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(COLUMNS[kind]), lineterminator="\n")
            writer.writeheader()
            fh.flush()
            for index in range(n):
                images = generate_files(kind, seed, index, size)
                paths = row_paths(kind, index)
                for column, image in images.items():
                    target = out / paths[column]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    save_png(image, target)
                target = out / MANIFEST
                writer.writerow({**paths, **measured_columns(kind, images)})
                fh.flush()  # a killed run's manifest lists every image written in full
                written += 1
                if progress is not None:
                    progress(index)
        target = out / "README.md"
        target.write_text(dataset_readme(kind, n, size, seed, out), encoding="utf-8")
    except OSError as exc:
        reason = write_failure(exc)
        remedy = "free some space" if reason == "the disk is full" else "fix that"
        raise DataError(f"could not write {target}: {reason}; {written} of {n} images were "
                        f"written to {out} (listed in its {MANIFEST}); {remedy} and run the same "
                        "command again with --force to write the whole set") from None
    return out


DESCRIPTIONS = {
    "voronoi-gb": "Periodic Voronoi tessellations: {seeds} seed points uniform in the periodic "
                  "{size}x{size} box, each pixel labelled by its nearest seed (periodic distance "
                  "between pixel centres), and a pixel marked boundary (255) when any of its 4 "
                  "neighbours, with wrap-around, has another label; grains are 0.",
    "voronoi-gb-range": "Periodic Voronoi tessellations as in voronoi-gb, but each image with its own "
                        "number of seed points, drawn log-uniformly from {range_low}..{range_high}, so "
                        "that grain counts span a wide range: the data for conditional generation. "
                        "`manifest.csv` gives each image's descriptors measured by `helpers.metrics` "
                        "(grains >= 4 px, mean lineal intercept in px, boundary fraction).",
    "grain-growth": "Normal grain growth: a periodic Voronoi map of {initial} grains coarsened by "
                    "threshold dynamics (MBO: each grain's indicator smoothed by a periodic Gaussian "
                    "via FFT, sigma {sigma:g} px, widened 25% while the map is pinned; each "
                    "pixel goes to the largest) until at most a target grain count drawn uniformly "
                    "from {low}..{high} remains. `gray/`: grains as flat gray levels from {levels}, "
                    "neighbouring grains at least 39/255 = 0.153 apart. `boundary/`: boundary image "
                    "by the 4-neighbour wrap-around rule (255 boundary, 0 grain). `labels/`: grain "
                    "label maps (8-bit, 0..n-1, each grain connected across the wrap-around).",
}


def dataset_readme(kind: str, n: int, size: int, seed: int, folder: Path) -> str:
    """README.md of a generated dataset: how it was made and its measured statistics."""
    boundary_column = "boundary" if kind == "grain-growth" else "file"
    masks = metrics.boundary_masks(load_uint8(folder, boundary_column))
    stats = metrics.describe_set(masks)
    all_components = np.array([metrics.grain_count(m, min_px=1) for m in masks])
    lines = [
        f"# {folder.name}",
        "",
        DESCRIPTIONS[kind].format(seeds=VORONOI_SEEDS, range_low=RANGE_SEEDS[0], range_high=RANGE_SEEDS[1], size=size, initial=GROWTH_INITIAL_GRAINS,
                                  sigma=GROWTH_SIGMA_PER_64PX * size / 64,
                                  low=GROWTH_TARGET_GRAINS[0], high=GROWTH_TARGET_GRAINS[1],
                                  levels=", ".join(str(v) for v in GRAY_LEVELS)),
        "",
        "Made by (bit-identical on every machine; image i uses its own generator seeded (seed, i)):",
        "",
        "```",
        make_command(kind, n, size, seed, folder.name),
        "```",
        "",
        f"{n} images, {size}x{size}, 8-bit grayscale PNG; `manifest.csv` lists them "
        f"(columns: {', '.join(COLUMNS[kind])}).",
        "",
        "## Statistics of the boundary images",
        "",
        "Measured by `helpers.metrics` (mean ± standard deviation over images):",
        "",
        "| descriptor | mean | std |",
        "|---|---|---|",
    ]
    for key, (mean, std) in stats.summary().items():
        lines.append(f"| {metrics.descriptor_label(key)} | {mean:.4f} | {std:.4f} |")
    lines.append(f"| {metrics.DESCRIPTOR_TABLE['grains'].label} (every component) "
                 f"| {all_components.mean():.4f} | {all_components.std():.4f} |")
    diameters = stats.diameters
    lines.append(f"| {metrics.descriptor_label('grain_diameters')} | {diameters.mean():.4f} "
                 f"| {diameters.std():.4f} |")
    if kind == "grain-growth":
        grains = load_uint8(folder, "labels").reshape(n, -1).max(axis=1) + 1
        lines.append(f"| grains per label map (periodic, each grain once) | {grains.mean():.4f} "
                     f"| {grains.std():.4f} (range {grains.min()}..{grains.max()}) |")
    lines += [
        "",
        f"Images with any dangling end: {int((stats.per_image['dangling_ends'] > 0).sum())} of {n}. "
        f"Seam ratio (pixel disagreement across the wrap-around seams / inside; 1 = tiles "
        f"seamlessly): {metrics.seam_ratio(masks):.3f}.",
        "",
    ]
    if kind == "voronoi-gb-range":
        lines += grain_count_spread(stats.per_image["grains"], seed)
    return "\n".join(lines)


PERCENTILES = (1, 5, 25, 50, 75, 95, 99)


def grain_count_spread(grains: np.ndarray, seed: int) -> list[str]:
    """README lines on how a voronoi-gb-range set's grain counts spread: their percentiles, and how
    they follow the seed counts (where a conditional model has few training images to learn from)."""
    seeds = np.array([range_seed_count(image_rng(seed, i)) for i in range(len(grains))])
    extra, top = grains - seeds, RANGE_SEEDS[1]
    values = [grains.min(), *np.percentile(grains, PERCENTILES), grains.max()]
    return [
        "## Spread of the grain counts",
        "",
        "Grains per image (>= 4 px, the manifest's `grains`), percentiles over the images:",
        "",
        "| min | " + " | ".join(f"{p}%" for p in PERCENTILES) + " | max |",
        "|---" * (len(PERCENTILES) + 2) + "|",
        "| " + " | ".join(f"{v:g}" for v in values) + " |",
        "",
        f"An image counts {extra.mean():.1f} grains more than it has seed points on average (standard "
        f"deviation {extra.std():.1f}), mostly because the images tile: a grain crossing the wrap-around "
        "seam appears as two pieces on opposite edges (four at a corner), and each piece counts, as in "
        "a micrograph (grains under 4 px are not counted). The top of the range is thinly covered: the "
        f"seed counts are drawn log-uniformly, fewest images per seed count at the top, and end at {top}, "
        f"so {int((grains > top).sum())} of {len(grains)} images have more than {top} grains. A "
        "conditional model trained here has few examples of the largest counts to learn from.",
        "",
    ]


def resolve_dataset(name_or_path: str | os.PathLike) -> Path:
    """A shipped dataset name (``voronoi_gb_64``) or any folder path, as an existing folder."""
    path = Path(name_or_path)
    if not path.exists() and (DATA_ROOT / str(name_or_path)).is_dir():
        path = DATA_ROOT / str(name_or_path)
    if path.is_file():
        raise DataError(f"{name_or_path}: is a file; expected a dataset folder")
    if not path.is_dir():
        shipped = sorted(p.name for p in DATA_ROOT.iterdir() if (p / MANIFEST).exists()) \
            if DATA_ROOT.is_dir() else []
        raise DataError(f"{name_or_path}: no such folder or shipped dataset "
                        f"(shipped: {', '.join(shipped) or 'none'})")
    return path


def read_manifest(folder: Path, column: str = "file") -> list[Path]:
    """Files listed in ``folder/manifest.csv``, in order.

    Accepts a header line naming ``column`` (ours) or no header at all, one file per row (the
    original tutorial's; a UTF-8 byte-order mark is stripped, so no row is lost as a "header").
    """
    manifest = folder / MANIFEST
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        rows = [row for row in csv.reader(fh) if row and any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{manifest} lists no images")
    header = [cell.strip() for cell in rows[0]]
    if column in header:
        index = header.index(column)
        rows = rows[1:]
    elif column != "file":
        raise DataError(f"{manifest} has no column {column!r} (header: {', '.join(header)})")
    elif header[0].lower() in ("file", "filename", "path", "image", "name"):
        raise DataError(f"{manifest}: header {header} has no 'file' column")
    else:
        index = 0
    files = []
    for number, row in enumerate(rows, start=2 if column in header else 1):
        if index >= len(row) or not row[index].strip():
            raise DataError(f"{manifest}, line {number}: no file in column {column!r}")
        files.append(folder / row[index].strip())
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise DataError(f"{manifest} names a missing file: {missing[0]}"
                        + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    return files


def manifest_values(name_or_path: str | os.PathLike, columns: Sequence[str],
                    limit: int | None = None) -> np.ndarray:
    """Numeric manifest columns as a float (N, len(columns)) array, rows in the manifest's order
    (the conditions a model can be trained on)."""
    manifest = resolve_dataset(name_or_path) / MANIFEST
    if not manifest.is_file():
        raise DataError(f"{manifest.parent}: no {MANIFEST}; the columns a model is conditioned on are read from it")
    with open(manifest, newline="", encoding="utf-8-sig") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        raise DataError(f"{manifest} lists no images")
    numeric = [c for c in rows[0] if c != "file" and _is_number(rows[0][c])]
    missing = [c for c in columns if c not in rows[0]]
    if missing:
        raise DataError(f"{manifest} has no column {missing[0]!r}; its numeric columns: {', '.join(numeric) or 'none'}")
    rows = rows[:limit] if limit else rows
    values = np.empty((len(rows), len(columns)))
    for number, row in enumerate(rows, start=2):
        for j, column in enumerate(columns):
            if not _is_number(row[column]):
                raise DataError(f"{manifest}, line {number}: {column} is {row[column]!r}; expected a number")
            values[number - 2, j] = float(row[column])
    return values


def _is_number(text: str | None) -> bool:
    try:
        return text is not None and np.isfinite(float(text))
    except ValueError:
        return False


def list_images(folder: Path, column: str = "file") -> list[Path]:
    """The image files of a dataset folder: its manifest's rows, else every PNG in name order."""
    folder = Path(folder)
    if (folder / MANIFEST).is_file():
        return read_manifest(folder, column)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".png")
    if not files:
        raise DataError(f"{folder} holds no PNG images (and no {MANIFEST})")
    return files


def read_gray(path: Path) -> tuple[np.ndarray, bool]:
    """An image file as a uint8 (H, W) array; the flag says whether it had to be converted."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode == "L":
                return np.asarray(img, dtype=np.uint8), False
            if mode in ("I;16", "I;16B", "I"):
                raise DataError(f"{path}: {mode} (16/32-bit) image; expected 8-bit grayscale PNG")
            return np.asarray(img.convert("L"), dtype=np.uint8), True
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path}: not a readable image ({exc.__class__.__name__}); "
                        "expected an 8-bit grayscale PNG") from None


def read_images(paths: Sequence[Path]) -> np.ndarray:
    """Read image files into a uint8 (N, H, W) array; all must share one size.

    Colour or palette images are converted to grayscale with a single warning for the batch.
    """
    if not paths:
        raise DataError("no image files given")
    arrays, converted = [], []
    for path in paths:
        array, was_converted = read_gray(path)
        if arrays and array.shape != arrays[0].shape:
            raise DataError(f"{path} is {array.shape[1]}x{array.shape[0]} but {paths[0]} is "
                            f"{arrays[0].shape[1]}x{arrays[0].shape[0]}; expected one size")
        arrays.append(array)
        if was_converted:
            converted.append(path)
    if converted:
        warnings.warn(f"converted {len(converted)} non-grayscale image(s) to grayscale, "
                      f"first: {converted[0]}", stacklevel=2)
    return np.stack(arrays)


def load_uint8(name_or_path: str | os.PathLike, column: str = "file",
               limit: int | None = None) -> np.ndarray:
    """A dataset as uint8 (N, H, W), from a shipped name or any folder of PNGs."""
    files = list_images(resolve_dataset(name_or_path), column)
    return read_images(files[:limit] if limit else files)


def image_size(name_or_path: str | os.PathLike, column: str = "file") -> int:
    """The side of a dataset's images, from its first file alone (no warnings: the set is not read)."""
    return read_gray(list_images(resolve_dataset(name_or_path), column)[0])[0].shape[-1]


def to_model_range(images: np.ndarray) -> np.ndarray:
    """Map 8-bit pixels 0..255 linearly onto [-1, 1] (float32)."""
    return (np.asarray(images, dtype=np.float32) / 127.5 - 1.0).astype(np.float32)


def to_uint8(x) -> np.ndarray:
    """Map values in [-1, 1] back to 8-bit pixels with one fixed, clamped mapping."""
    x = np.asarray(x, dtype=np.float64)
    return np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def load_images(name_or_path: str | os.PathLike, column: str = "file", limit: int | None = None):
    """A dataset as a float32 torch tensor (N, 1, H, W) in [-1, 1], ready for a DDPM."""
    import torch

    return torch.from_numpy(to_model_range(load_uint8(name_or_path, column, limit))[:, None])


def png_bytes(array: np.ndarray) -> bytes:
    """The exact bytes ``save_png`` writes for ``array`` (for reproducibility checks)."""
    buffer = io.BytesIO()
    save_png(array, buffer)  # type: ignore[arg-type]
    return buffer.getvalue()
