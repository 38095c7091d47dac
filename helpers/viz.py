"""Pictures for the lessons: image grids on one fixed gray scale, and statistics plots.

Every image in a grid is drawn with the same mapping from values to gray: [-1, 1] for model
tensors, [0, 255] for 8-bit images, or a ``value_range`` you pass. Nothing is rescaled per
image, so a drift in gray levels (the original tutorial's samples had one) stays visible.
Each function returns its matplotlib figure (Jupyter shows it inline) and saves it when given
a ``path``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np

from .metrics import (DESCRIPTOR_TABLE, DESCRIPTORS, MIN_GRAIN_PX, SetDescriptors, descriptor_label,
                      grain_areas, skeleton, skeleton_features, skeleton_neighbours)

if TYPE_CHECKING:
    from .diffusion import Schedule


def as_images(images) -> np.ndarray:
    """Images as a numpy (N, H, W) array, from torch or numpy, (H, W), (N, H, W) or (N, 1, H, W)."""
    if hasattr(images, "detach"):
        images = images.detach().float().cpu().numpy()
    images = np.asarray(images)
    if images.ndim == 2:
        images = images[None]
    if images.ndim == 4:
        if images.shape[1] != 1:
            raise ValueError(f"expected single-channel images, got shape {images.shape}")
        images = images[:, 0]
    if images.ndim != 3:
        raise ValueError(f"expected (H, W), (N, H, W) or (N, 1, H, W) images, got {images.shape}")
    return images


def default_range(images: np.ndarray) -> tuple[float, float]:
    """The fixed gray scale for a dtype: 0..255 for 8-bit, -1..1 (the model's range) otherwise."""
    return (0.0, 255.0) if images.dtype == np.uint8 else (-1.0, 1.0)


def _save(fig: plt.Figure, path: str | Path | None) -> plt.Figure:
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=fig.dpi, bbox_inches="tight")
    return fig


def image_grid(images, ncols: int | None = None, value_range: tuple[float, float] | None = None,
               titles: Sequence[str] | None = None, title: str | None = None,
               path: str | Path | None = None, cell_inches: float = 1.3,
               cmap: str = "gray") -> plt.Figure:
    """Images in a near-square grid, all on one gray scale (see the module docstring)."""
    images = as_images(images)
    low, high = value_range if value_range is not None else default_range(images)
    n = len(images)
    if titles is not None and len(titles) != n:
        raise ValueError(f"{len(titles)} titles for {n} images")
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    extra = 0.25 if titles is not None else 0.0
    fig, axes = plt.subplots(nrows, ncols, squeeze=False,
                             figsize=(ncols * cell_inches, nrows * (cell_inches + extra)
                                      + (0.4 if title else 0.0)))
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i < n:
            ax.imshow(images[i], cmap=cmap, vmin=low, vmax=high, interpolation="nearest")
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def voronoi_steps(sample, path: str | Path | None = None) -> plt.Figure:
    """How one voronoi-gb image is made: seeds, nearest-seed labels, boundary image."""
    size = sample.labels.shape[0]
    fig, (seeds_ax, labels_ax, image_ax) = plt.subplots(1, 3, figsize=(10, 3.6))
    seeds_ax.set_facecolor("black")
    labels_ax.imshow(sample.labels, cmap="tab20", interpolation="nearest")
    image_ax.imshow(sample.image, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    for ax in (seeds_ax, labels_ax):
        ax.scatter(sample.seeds[:, 1] - 0.5, sample.seeds[:, 0] - 0.5, c="white",
                   edgecolors="black", s=30)
    titles = ("1. random seeds in a periodic box", "2. label = nearest seed (periodic)",
              "3. boundary: a 4-neighbour differs")
    for ax, title in zip((seeds_ax, labels_ax, image_ax), titles):
        ax.set_xlim(-0.5, size - 0.5)
        ax.set_ylim(size - 0.5, -0.5)
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


DESCRIPTOR_LABELS = {name: descriptor_label(name) for name in DESCRIPTORS}  # from metrics' table


def descriptor_histograms(sets: Mapping[str, SetDescriptors],
                          names: Sequence[str] = ("boundary_fraction", "grains", "lineal_intercept"),
                          path: str | Path | None = None) -> plt.Figure:
    """Overlaid histograms of per-image descriptors, one panel per descriptor, one colour per set."""
    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        values = [s.per_image[name] for s in sets.values()]
        low = min(v.min() for v in values)
        high = max(v.max() for v in values)
        integer = all(np.allclose(v, np.round(v)) for v in values)
        bins = np.arange(low - 0.5, high + 1.5) if integer else np.linspace(low, high, 30)
        for label, v in zip(sets, values):
            ax.hist(v, bins=bins, density=True, alpha=0.55, label=f"{label} ({v.mean():.3g})")
        ax.set_xlabel(descriptor_label(name) if name in DESCRIPTOR_TABLE else name)
        ax.set_ylabel("density")
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def lognormal_fit(diameters: np.ndarray) -> tuple[float, float]:
    """Log-normal fit of grain diameters: mean and standard deviation of ln(d)."""
    logs = np.log(diameters[diameters > 0])
    return float(logs.mean()), float(logs.std())


def size_distribution(sets: Mapping[str, np.ndarray], path: str | Path | None = None) -> plt.Figure:
    """Histogram of grain equivalent-circle diameters per set, each with its log-normal fit."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    high = max(d.max() for d in sets.values())
    bins = np.linspace(0, high, 40)
    grid = np.linspace(bins[1] / 4, high, 300)
    for label, diameters in sets.items():
        mu, sigma = lognormal_fit(diameters)
        bars = ax.hist(diameters, bins=bins, density=True, alpha=0.5, label=f"{label}")
        pdf = np.exp(-(np.log(grid) - mu) ** 2 / (2 * sigma**2)) / (grid * sigma * np.sqrt(2 * np.pi))
        ax.plot(grid, pdf, color=bars[2][0].get_facecolor(), alpha=1.0, lw=2,
                label=f"log-normal fit: median {np.exp(mu):.1f} px, sigma {sigma:.2f}")
    ax.set_xlabel(descriptor_label("grain_diameters", rule=False))
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def grain_map(labels: np.ndarray, boundary: np.ndarray | None = None, title: str | None = None,
              path: str | Path | None = None) -> plt.Figure:
    """A grain label map in random colours (neighbours rarely alike), beside the boundary image
    it came from when given."""
    colours = np.random.default_rng(0).uniform(0.15, 1.0, size=(int(labels.max()) + 1, 3))
    panels = ([("boundary image", boundary.astype(float), "gray")] if boundary is not None else []) + \
        [(f"{int(labels.max()) + 1} grains", colours[labels], None)]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.4), squeeze=False)
    for ax, (name, image, cmap) in zip(axes[0], panels):
        ax.imshow(image, cmap=cmap, interpolation="nearest")
        ax.set_title(name, fontsize=10)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def s2_curves(sets: Mapping[str, SetDescriptors], path: str | Path | None = None) -> plt.Figure:
    """Mean two-point correlation S2(r) per set, with its limits f (r = 0) and f^2 (long range)."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for label, s in sets.items():
        mean = s.s2.mean(axis=0)
        line, = ax.plot(np.arange(len(mean)), mean, marker="o", ms=3, label=label)
        fraction = s.per_image["boundary_fraction"].mean()
        ax.axhline(fraction**2, color=line.get_color(), ls=":", lw=1)
    ax.set_xlabel("distance r (px)")
    ax.set_ylabel("S2(r) of the boundary phase")
    ax.set_title("dotted: f^2, the value for uncorrelated points", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def ratios_by_size_plot(sizes: Sequence[int], series: Mapping[str, Mapping[str, Sequence[float]]],
                        names: Sequence[str], path: str | Path | None = None) -> plt.Figure:
    """Ratio to the noise floor against the number of images m, one panel per descriptor.

    ``series`` maps a set's label (e.g. "generated", "held-out real") to ``metrics.ratios_by_size``.
    """
    fig, axes = plt.subplots(1, len(names), figsize=(3.0 * len(names), 3.0), squeeze=False)
    for ax, name in zip(axes[0], names):
        for label, ratios in series.items():
            ax.plot(sizes, ratios[name], marker="o", label=label)
        ax.axhline(1.0, color="gray", ls=":", lw=1)
        ax.set(xscale="log", xlabel="images m", title=descriptor_label(name))
        ax.set_xticks(list(sizes), [str(m) for m in sizes])
        ax.set_ylim(bottom=0)
    axes[0][0].set_ylabel("ratio to the floor")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


# ---------------------------------------------------------------------------------------------
# GIFs of the forward and reverse processes
# ---------------------------------------------------------------------------------------------
def frame_timesteps(total: int, frames: int, power: float = 2.0) -> list[int]:
    """Timesteps for GIF frames, ascending, crowded near t = 0.

    Structure appears (reverse) or dissolves (forward) in the last / first few hundred steps, so
    frames are spaced as t_k = (k / (frames - 1))^power * (total - 1): none of those is skipped.
    """
    if not 2 <= frames <= total:
        raise ValueError(f"a GIF needs 2..{total} frames, got {frames}")
    steps: list[int] = []
    for k in range(frames):
        t = round((k / (frames - 1)) ** power * (total - 1))
        steps.append(max(t, steps[-1] + 1) if steps else t)  # early frames would round together
    return steps


def to_frame(images, value_range: tuple[float, float] = (-1.0, 1.0), ncols: int | None = None,
             scale: int = 3, label: str | None = None, pad: int = 2) -> np.ndarray:
    """A batch of images as one uint8 RGB picture: a grid on one fixed, clamped gray mapping.

    Values map linearly from ``value_range`` to 0..255 and are clamped: never a per-frame or
    per-image min-max, which would hide a drifting gray level. ``label`` is written underneath.
    """
    from PIL import Image, ImageDraw

    images = as_images(images).astype(np.float64)
    low, high = value_range
    pixels = np.round(np.clip((images - low) / (high - low), 0.0, 1.0) * 255).astype(np.uint8)
    n, h, w = pixels.shape
    ncols = ncols or math.ceil(math.sqrt(n))
    nrows = math.ceil(n / ncols)
    band = 14 if label else 0
    grid = np.full((nrows * (h + pad) + pad, ncols * (w + pad) + pad), 255, np.uint8)
    for i, image in enumerate(pixels):
        r, c = divmod(i, ncols)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = image
    picture = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    canvas = Image.new("RGB", (picture.width, picture.height + band), "white")
    canvas.paste(picture.convert("RGB"), (0, 0))
    if label:
        ImageDraw.Draw(canvas).text((4, picture.height + 1), label, fill=(0, 0, 0))
    return np.asarray(canvas)


def save_gif(frames: Sequence[np.ndarray], path: str | Path, seconds_per_frame: float = 0.08,
             hold_last: float = 1.5) -> Path:
    """Write frames from ``to_frame`` as a looping GIF, holding the last frame ``hold_last`` s."""
    import imageio.v2 as imageio

    if not frames:
        raise ValueError("no frames to write")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    durations = [seconds_per_frame] * (len(frames) - 1) + [hold_last]
    imageio.mimsave(path, list(frames), format="GIF", duration=[1000 * d for d in durations], loop=0)
    return path


def schedule_plot(schedules: Mapping[str, "Schedule"], path: str | Path | None = None) -> plt.Figure:
    """beta_t, alpha-bar_t and the signal-to-noise ratio of each schedule, side by side."""
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for name, schedule in schedules.items():
        t = np.arange(schedule.steps)
        axes[0].plot(t, schedule.betas.numpy(), label=name)
        axes[1].plot(t, schedule.alpha_bars.numpy(), label=name)
        axes[2].semilogy(t, schedule.snr().numpy(), label=name)
    for ax, title in zip(axes, (r"$\beta_t$: noise added at step t", r"$\bar\alpha_t$: signal kept",
                                r"SNR $=\bar\alpha_t / (1-\bar\alpha_t)$")):
        ax.set_title(title)
        ax.set_xlabel("t")
        ax.legend()
    axes[2].axhline(1.0, color="gray", lw=0.8, ls=":")
    fig.tight_layout()
    return _save(fig, path)


def embedding_heatmap(tables: Mapping[str, np.ndarray], path: str | Path | None = None) -> plt.Figure:
    """Time-embedding tables (T x d) as heat maps, and the cosine similarity of their rows."""
    fig, axes = plt.subplots(2, len(tables), figsize=(5.2 * len(tables), 8), squeeze=False)
    for column, (name, table) in enumerate(tables.items()):
        table = np.asarray(table)
        image = axes[0, column].imshow(table, aspect="auto", cmap="RdBu", vmin=-1, vmax=1,
                                       interpolation="nearest")
        axes[0, column].set(title=f"{name}: embedding of t", xlabel="dimension", ylabel="t")
        fig.colorbar(image, ax=axes[0, column])
        unit = table / np.linalg.norm(table, axis=1, keepdims=True)
        similarity = unit @ unit.T
        image = axes[1, column].imshow(similarity, cmap="viridis", vmin=-1, vmax=1)
        axes[1, column].set(title="cosine similarity of two timesteps", xlabel="t", ylabel="t")
        fig.colorbar(image, ax=axes[1, column])
    fig.tight_layout()
    return _save(fig, path)


# what the loss measures, by the network's target (Schedule.prediction)
LOSS_LABELS = {"eps": "MSE loss (noise prediction)", "v": "MSE loss (velocity prediction)"}


def loss_curve(history: Sequence[dict], path: str | Path | None = None, ax=None,
               prediction: str = "eps") -> plt.Figure:
    """Training loss (mean per logging window) against step, on a log scale, labelled by target."""
    if ax is None:
        fig, ax = plt.subplots(figsize=(6, 3.4))
    else:
        fig = ax.figure
        ax.clear()
    steps = [row["step"] for row in history]
    ax.semilogy(steps, [row["loss"] for row in history])
    ax.set(xlabel="step", ylabel=LOSS_LABELS[prediction], title="training loss")
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


class LiveLossPlot:
    """A loss curve that redraws in place in a notebook while training runs (pass as on_log)."""

    def __init__(self, prediction: str = "eps"):
        from IPython.display import display

        self.prediction = prediction
        self.fig, self.ax = plt.subplots(figsize=(6, 3.4))
        self.handle = display(self.fig, display_id=True)
        plt.close(self.fig)

    def __call__(self, history: Sequence[dict]) -> None:
        loss_curve(history, ax=self.ax, prediction=self.prediction)
        if self.handle is not None:
            self.handle.update(self.fig)


def descriptor_anatomy(mask: np.ndarray, path: str | Path | None = None) -> plt.Figure:
    """What each descriptor looks at, on one boundary mask: grains, skeleton, junctions, ends."""
    from scipy import ndimage

    fig, axes = plt.subplots(1, 3, figsize=(12, 4.2))
    axes[0].imshow(mask, cmap="gray", interpolation="nearest")
    row = mask.shape[0] // 2
    axes[0].axhline(row, color="tab:orange", lw=1)
    crossings = np.flatnonzero(mask[row] & ~np.r_[False, mask[row, :-1]])
    axes[0].plot(crossings, [row] * len(crossings), "o", color="tab:orange", ms=4)
    axes[0].set_title(f"{descriptor_label('boundary_fraction')} {mask.mean():.3f}\n"
                      f"intercepts along one test line: {len(crossings)}")
    labels, _ = ndimage.label(~mask)
    sizes = np.bincount(labels.ravel())
    labels[(sizes < MIN_GRAIN_PX)[labels]] = 0
    axes[1].imshow(np.ma.masked_equal(labels, 0), cmap="tab20", interpolation="nearest")
    grains = DESCRIPTOR_TABLE["grains"]
    axes[1].set_title(f"{grains.short} (4-connected, {grains.rule}): "
                      f"{len(grain_areas(mask))}")
    skel = skeleton(mask)
    counts = skeleton_neighbours(skel)
    topology = skeleton_features(mask)
    axes[2].imshow(mask, cmap="gray", alpha=0.35, interpolation="nearest")
    axes[2].imshow(np.ma.masked_equal(skel, 0), cmap="autumn", interpolation="nearest")
    junction_px = np.argwhere(counts >= 3)
    axes[2].plot(junction_px[:, 1], junction_px[:, 0], "s", color="tab:blue", ms=3, label="junction")
    if len(topology.ends):
        axes[2].plot(topology.ends[:, 1], topology.ends[:, 0], "o", color="red", ms=6, label="dangling end")
    axes[2].set_title(f"skeleton: {topology.junctions} {DESCRIPTOR_TABLE['junctions'].short}, "
                      f"{topology.dangling_ends} {DESCRIPTOR_TABLE['dangling_ends'].short}")
    axes[2].legend(fontsize=7, loc="lower right")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return _save(fig, path)


def defect_gallery(masks: np.ndarray, path: str | Path | None = None, ncols: int = 6) -> plt.Figure:
    """Boundary masks with their dangling ends circled in red (open boundaries)."""
    n = len(masks)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2 * ncols, 2.2 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    for ax, mask in zip(axes.flat, masks):
        ends = skeleton_features(mask).ends
        ax.imshow(mask, cmap="gray", interpolation="nearest")
        if len(ends):
            ax.plot(ends[:, 1], ends[:, 0], "o", mfc="none", mec="red", ms=9, mew=1.5)
        ax.set_title(f"{len(ends)} open end(s)", fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def nearest_pairs(generated: np.ndarray, training: np.ndarray, nearest: np.ndarray, iou: np.ndarray,
                  path: str | Path | None = None) -> plt.Figure:
    """Each generated mask above its nearest training mask, with their IoU."""
    n = len(generated)
    fig, axes = plt.subplots(2, n, figsize=(1.9 * n, 4.2), squeeze=False)
    for i in range(n):
        axes[0, i].imshow(generated[i], cmap="gray", interpolation="nearest")
        axes[0, i].set_title(f"generated\nIoU {iou[i]:.2f}", fontsize=8)
        axes[1, i].imshow(training[nearest[i]], cmap="gray", interpolation="nearest")
        axes[1, i].set_title(f"training #{nearest[i]}", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.tight_layout()
    return _save(fig, path)


def control_plot(reports: Sequence, path: str | Path | None = None) -> plt.Figure:
    """Achieved against target (mean and spread of each target's samples, the diagonal is perfect
    control), one series per report (a guidance scale), and each report's R^2 and worst ratios to
    the noise floor (against real images at the target, and matched to each sample): the trade
    between control and fidelity. ``reports``: control.ControlReport."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    low, high = min(min(r.targets) for r in reports), max(max(r.targets) for r in reports)
    left.plot([low, high], [low, high], color="0.6", lw=1, label="achieved = target")
    for report in reports:
        means = [np.mean(a) for a in report.achieved]
        spreads = [np.std(a) for a in report.achieved]
        left.errorbar(report.targets, means, yerr=spreads, marker="o", ms=4, capsize=3, label=report.sampler)
    label = descriptor_label(report.name, rule=False)
    left.set(xlabel=f"target {label}", ylabel=f"achieved {label}", title="control (mean ± std per target)")
    left.legend(fontsize=7)
    names = [r.sampler.split(", ")[-1] if "guidance" in r.sampler else "guidance 0" for r in reports]
    right.plot(names, [r.r2 for r in reports], "o-", label="R² (left axis)")
    right.set(ylabel="R² of achieved vs target", title="guidance: control against fidelity")
    twin = right.twinx()
    summaries = [r.summary() for r in reports]
    twin.plot(names, [s["worst_ratio"] for s in summaries], "s--", color="C3", label="worst ratio: real at the target")
    twin.plot(names, [s["worst_matched_ratio"] for s in summaries], "^:", color="C1",
              label="worst ratio: real matched to each sample")
    twin.set_ylabel("worst ratio to the noise floor (1: like real)", color="C3")
    twin.legend(fontsize=7, loc="upper right")
    fig.tight_layout()
    return _save(fig, path)
