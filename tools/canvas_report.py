"""Does a network trained on 64x64 images draw good larger canvases? Whole canvas against windows.

    python tools/canvas_report.py --size 256 --n 8 --out outputs/canvas_256
    python tools/canvas_report.py --size 96 --n 2 --steps 2 --reference-n 8 --out /tmp/c   # a dry run

Draws --n canvases of --size with the model's recommended sampler (seed --seed) two ways
(``sample --size``: the whole canvas at once; ``sample --size --windows``: overlapping windows of
the training size, blended at every step) and --reference-n real voronoi-gb canvases of the same size
and seed density (``data.voronoi_seeds``; seed 1, not the training set's). For each way:
descriptor means, ratios to the noise floor for the whole canvases and for their 64x64 crops
(``metrics.canvas_report``), the seam ratio of a 2x2 tiling with its standard error, and the wall
time. The samples are kept in --out/<way>/ (a rerun reuses them; a larger --n draws only the
batches that are missing), the report in --out/report.json and report.md, a picture of one canvas
of each tiled 2x2 in --out/tiles.png.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from helpers.__main__ import DEFAULT_MODEL  # noqa: E402
from helpers import data, metrics  # noqa: E402
from helpers.checkpoint import load_model  # noqa: E402
from helpers.sample import generate, recommended_sampler, write_batch, write_manifest  # noqa: E402

WAYS = {"whole": False, "windows": True}
REFERENCE_SEED = 1


def draw(model, schedule, sampler, args, windows: bool, folder: Path) -> tuple[np.ndarray, float | None, int]:
    """The canvases of one way as masks: read back from a previous run, and the batches it lacks
    drawn now and saved (batch b has its own seed, so a run with a larger --n extends a smaller
    one with the same --batch-size and --seed). The time is that of the batches drawn now."""
    have = len(data.read_manifest(folder)) if (folder / data.MANIFEST).exists() else 0
    if have % args.batch_size and have < args.n:
        raise SystemExit(f"{folder}: {have} canvases, not whole batches of {args.batch_size}; use a new --out")
    count = -(-args.n // args.batch_size)
    start, seconds = time.perf_counter(), None
    folder.mkdir(parents=True, exist_ok=True)
    for number in range(have // args.batch_size, count):
        images = generate(model, schedule, args.n, sampler, seed=args.seed, batch_size=args.batch_size,
                          size=args.size, windows=windows, progress=True, batches=[number])
        write_batch(images, folder, number * args.batch_size, args.n)
        seconds = time.perf_counter() - start
    if seconds is not None:
        write_manifest(folder, args.n)
    return metrics.boundary_masks(data.load_uint8(folder)[:args.n]), seconds, max(args.n - have, 0)


def markdown(reports: dict) -> str:
    """The report as a Markdown table: one column per way, the real canvases beside."""
    ways = list(reports)
    first = reports[ways[0]]
    lines = [f"| {first['size']}x{first['size']} | " + " | ".join(ways) + " | real |",
             "|---|" + "---|" * (len(ways) + 1)]
    for name in metrics.DESCRIPTORS:
        cells = [f"{reports[w]['means'][name][0]:.3f}" for w in ways]
        lines.append(f"| {metrics.descriptor_label(name)} (mean) | " + " | ".join(cells) +
                     f" | {first['means'][name][1]:.3f} |")
    for key, label in (("ratios", "whole canvas"), ("crop_ratios", f"{first['window']}x{first['window']} crops")):
        for name in metrics.SET_DISTANCES:
            cells = [f"{reports[w][key][name]:.2f}" for w in ways]
            lines.append(f"| ratio to floor, {label}: {metrics.DISTANCE_LABELS[name]} | " + " | ".join(cells) + " | 1 |")
    seam = [f"{reports[w]['seam']['generated'][0]:.3f} ± {reports[w]['seam']['generated'][1]:.3f}" for w in ways]
    real = first["seam"]["reference"]
    lines.append("| seam ratio of a 2x2 tiling | " + " | ".join(seam) + f" | {real[0]:.3f} ± {real[1]:.3f} |")
    lines.append("| wall time (s) of the canvases drawn in this run | " + " | ".join(
        f"{reports[w]['seconds']:.0f} ({reports[w]['drawn']} drawn)" if reports[w]["seconds"] else "(all reused)"
        for w in ways) + " | |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--n", type=int, default=8, help="canvases per way")
    parser.add_argument("--reference-n", type=int, default=64, help="real canvases")
    parser.add_argument("--steps", type=int, help="sampler steps (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    model, schedule, payload = load_model(args.checkpoint, torch.device("cpu"))
    sampler = recommended_sampler(payload).replace(steps=args.steps)
    window = model.config()["size"]
    real = np.stack([data.make_voronoi_gb(REFERENCE_SEED, i, args.size, data.voronoi_seeds(args.size)).image > 127
                     for i in range(args.reference_n)])
    reports = {}
    for way in args.ways:
        masks, seconds, drawn = draw(model, schedule, sampler, args, WAYS[way], args.out / way)
        reports[way] = {**metrics.canvas_report(masks, real, window), "seconds": seconds, "drawn": drawn,
                        "sampler": sampler.describe(), "threads": torch.get_num_threads()}
        print(f"{way}: done", flush=True)
    table = markdown(reports)
    print(table)
    (args.out / "report.md").write_text(table + "\n")
    (args.out / "report.json").write_text(json.dumps(metrics.json_safe(reports), indent=2) + "\n")
    tiles = [np.tile(data.load_uint8(args.out / way)[0], (2, 2)) for way in args.ways] + [np.tile(real[0], (2, 2))]
    fig, axes = plt.subplots(1, len(tiles), figsize=(5 * len(tiles), 5))
    for ax, tile, title in zip(np.atleast_1d(axes), tiles, [*args.ways, "real"]):
        ax.imshow(tile, cmap="gray")
        ax.set_title(f"{title}: one {args.size}x{args.size} canvas, tiled 2x2")
        ax.axis("off")
    fig.savefig(args.out / "tiles.png", dpi=80, bbox_inches="tight")
    print(f"wrote {args.out}/report.md, report.json, tiles.png")


if __name__ == "__main__":
    main()
