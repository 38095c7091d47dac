"""Export a training run as the shipped model and write its README with measured statistics.

    python tools/pretrained_report.py --run outputs/pretrained_cpu --out data/pretrained \
        --machine "2-core CPU (the CI machine)" --command "python -m helpers train ..."

Writes OUT/model.pt (EMA weights, fp16), OUT/samples.png (a grid) and OUT/README.md: how the
model was trained, and its samples' statistics against the training set's, checked against
the fidelity bar of the training issue. Sampling uses the sampler named here (default DDIM-50,
eta 0, clipped x0 estimate) on the CPU, seed 0, and stores it in model.pt as the model's
recommended sampler.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from helpers import data, metrics, sample, train, viz  # noqa: E402
from helpers.checkpoint import (CheckpointError, export_weights, fast_sampler_refusal, load_checkpoint,  # noqa: E402
                               load_model, store_fast_sampler)
from helpers.device import AUTO_SAMPLING_PICKS, drawn_layout, sampling_layout, weights_words  # noqa: E402
from helpers.diffusion import SPACINGS  # noqa: E402
from helpers.sample import Sampler  # noqa: E402
from helpers.unet import count_parameters  # noqa: E402


PREDICTION_WORDS = {"eps": "the noise (eps)", "v": "the velocity v"}


def decay_words(cfg: dict) -> str:
    """The learning rate's decay at the end of a run (train --lr-decay), in words; '' if none."""
    n = cfg.get("lr_decay_steps", 0)  # absent from checkpoints older than --lr-decay
    return f", then linearly to 0 over the last {n} steps (from step {cfg['steps'] - n})" if n else ""


def measure(images: torch.Tensor, reference: metrics.SetDescriptors) -> dict:
    """The fidelity bar's means, the open-end rate and the gray-background rate of samples."""
    described = metrics.describe_set(metrics.boundary_masks(images))
    summary = metrics.bar_summary(described, reference)
    bar_met = summary.pop("met")
    return {**summary, "bar_met": bar_met, "open_end_rate": metrics.defect_rate(described),
            "gray_background_rate": metrics.gray_background_rate(images)}


def measured_header() -> str:
    """The headers of ``measured_cells``' columns (descriptor names from metrics' table)."""
    names = " | ".join(metrics.DESCRIPTOR_TABLE[name].short for name in metrics.BAR_DESCRIPTORS)
    return f"{names} | open-end rate | gray backgrounds | bar"


def measured_cells(row: dict) -> str:
    """The measured columns of the README's tables, from a row holding ``measure``'s keys."""
    return (f"{row['boundary_fraction']:.3f} | {row['grains']:.1f} | {row['dangling_ends']:.2f} | "
            f"{row['open_end_rate']:.0%} | {row['gray_background_rate']:.0%} | "
            f"{'met' if row['bar_met'] else 'not met'}")


def comparison_row(run: Path, checkpoint: dict, samples: int, measured: dict) -> dict:
    """One line of the comparison: how a run was trained, and its samples measured."""
    return {"run": str(run), "prediction": checkpoint["schedule"].get("prediction", "eps"),
            "network": checkpoint["model_config"], "step": checkpoint["step"],
            "batch_size": checkpoint["train_config"]["batch_size"], "samples": samples, **measured}


def load_run(run: Path) -> dict:
    """A run folder's checkpoint.pt, or else the weights its ``train --export`` wrote (model.pt):
    a GPU session brings back only those and loss.csv (the full checkpoint is too big to fetch)."""
    for name in (train.CHECKPOINT, "model.pt"):
        if (run / name).is_file():
            return load_checkpoint(run / name)
    raise SystemExit(f"{run}: holds neither {train.CHECKPOINT} nor model.pt (weights from train --export)")


def wall_minutes(checkpoint: dict, history: list[dict]) -> float:
    """The run's wall time: its checkpoint's, or for weights alone that of loss.csv's last row."""
    seconds = checkpoint["seconds"] if "seconds" in checkpoint else history[-1]["seconds"]
    return seconds / 60


def sample_run(run: Path, n: int, sampler: Sampler) -> tuple[dict, torch.Tensor]:
    """A run's checkpoint and ``n`` samples (CPU, seed 0) of its EMA network as exported (fp16
    weights), so that every compared run is measured exactly as the shipped model is."""
    checkpoint = load_run(run)
    with tempfile.TemporaryDirectory() as folder:
        exported = export_weights(checkpoint, Path(folder) / "model.pt")
        model, schedule, _ = load_model(exported, torch.device("cpu"))
    return checkpoint, sample.generate(model, schedule, n, sampler, seed=0, device=torch.device("cpu"))


def parse_sampler(spec: str) -> Sampler:
    """'ddim:100:1' -> Sampler(ddim, 100 steps, eta 1); 'dpm++2m:25:1:quadratic' adds the spacing
    ('ddpm' alone for DDPM)."""
    parts = spec.split(":")
    try:
        if parts[0] == "ddpm" and len(parts) == 1:
            return Sampler("ddpm", 1, 0.0)
        name, steps, eta, *spacing = parts
        if len(spacing) > 1:
            raise ValueError("too many parts")
        return Sampler(name, int(steps), float(eta), spacing=spacing[0] if spacing else "uniform")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{spec!r}: {exc}; expected ddim:STEPS:ETA (e.g. ddim:100:1), "
                                         "dpm++2m:STEPS:ETA, either with :quadratic, or ddpm") from None


def json_rows(parser: argparse.ArgumentParser, path: Path | None) -> dict:
    """The rows a sweep's --json file holds ({} for a new file), checked before any work: its
    folder exists, and the file, if there, is a JSON object of rows (objects); otherwise the
    parser's one-line error."""
    if path is None:
        return {}
    if path.is_dir() or not path.parent.is_dir():
        parser.error(f"--json {path}: " + ("a folder; expected a file" if path.is_dir() else
                                            "its folder does not exist"))
    try:
        rows = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        parser.error(f"--json {path}: not readable as JSON ({exc}); expected the rows an earlier run wrote")
    if not isinstance(rows, dict) or not all(isinstance(row, dict) for row in rows.values()):
        held = f"a {type(rows).__name__}" if not isinstance(rows, dict) else "a value that is not a row"
        parser.error(f"--json {path}: holds {held}; expected the rows (an object of objects) an earlier run wrote")
    return rows


def model_file(parser: argparse.ArgumentParser, path: Path, precision: str = "fp32", layout: str | None = None):
    """``checkpoint.load_model(path)`` on the CPU, or the parser's one-line error naming the file."""
    try:
        return load_model(path, torch.device("cpu"), precision, layout)
    except CheckpointError as exc:
        parser.error(f"--model {exc}")


def layout_suffix(precision: str, layout: str) -> str:
    """What a row's key in --json adds for a layout other than ``sample``'s default at ``precision``
    without --fast (``":channels_last"`` for fp32 in NHWC); '' for the default."""
    return f":{layout}" if layout != sampling_layout(precision, torch.device("cpu")) else ""


def one_set_per_seed(rows: list[dict]) -> list[dict]:
    """One row per precision, seed and number of samples: a seed drawn in two layouts is one set of
    noise, so it counts once, in the layout ``sample --fast`` uses on a CPU where it was drawn so
    (a row without a layout was drawn in its precision's default), else the first."""
    kept = {}
    for row in rows:
        precision = row.get("precision")  # a row without one is refused by store_fast_sampler, by name
        fast = precision in AUTO_SAMPLING_PICKS and drawn_layout(row) == sampling_layout(
            precision, torch.device("cpu"), fast=True)
        same = (precision, row["seed"], row.get("samples"))
        if fast or same not in kept:  # --fast's layout replaces another, in its place
            kept[same] = row
    return list(kept.values())


def spec(sampler: Sampler) -> str:
    """``parse_sampler``'s spelling of a sampler: 'dpm++2m:30:1', 'ddim:25:1:quadratic' or 'ddpm'."""
    if sampler.kind == "ddpm":
        return "ddpm"
    return f"{sampler.kind}:{sampler.steps}:{sampler.eta:g}" + (f":{sampler.spacing}" if sampler.spacing != "uniform" else "")


def table_section(title: str, intro: str, columns: list[str], rows: list[list]) -> list[str]:
    """A README section: a heading, a sentence, and a table whose last columns are the measured ones."""
    header = " | ".join([*columns, measured_header()])
    rule = "|---" * (len(columns) + measured_header().count("|") + 1) + "|"
    return [f"## {title}", "", intro, "", f"| {header} |", rule, *(f"| {' | '.join(map(str, r))} |" for r in rows), ""]


def sampler_lines(rows: list[dict]) -> list[str]:
    """The README's table of other samplers on the same model (empty without --also)."""
    if not rows:
        return []
    return table_section(
        "Other samplers, same model",
        f"`model.pt` sampled other ways (seed 0, {rows[0]['samples']} samples, threshold 0; `samplers.json`), "
        "beside its recommended sampler:", ["sampler", "network calls per image"],
        [[row["sampler_words"] + sampler_weights(row), row["network_calls"], measured_cells(row)] for row in rows])


def sampler_weights(row: dict) -> str:
    """What the samplers table adds to a row drawn otherwise than fp32 in NCHW: ', bf16 weights in NHWC'."""
    precision, layout = row.get("precision", "fp32"), drawn_layout(row)  # rows older than precisions: fp32, NCHW
    return "" if (precision, layout) == ("fp32", "contiguous") else f", {weights_words(precision, layout)}"


def store_fast(weights: Path, sampler: Sampler, rows: list[dict]) -> str:
    """Store ``sampler`` as the fast one of ``weights`` (``sample --fast``) if ``rows``, its measured
    samples (seed 0) with the weights in each precision ``sample --fast`` may pick, all met the
    bar; the README's sentence saying which."""
    words = f"{sampler.describe()}, {rows[0]['network_calls']} network calls an image"
    failed = [row["precision"] for row in rows if not row["bar_met"]]
    if failed:
        return (f"Fast sampler (`sample --fast`): none stored; {words} did not meet the bar with "
                f"{' or '.join(failed)} weights (the samplers table).")
    store_fast_sampler(weights, sampler, [{**row, "seed": 0} for row in rows])
    return (f"Fast sampler (`python -m helpers sample --fast`, which also picks bf16 weights where the processor "
            f"computes bf16 natively): {words}, stored in `model.pt`: its {rows[0]['samples']} samples (seed 0) "
            f"met the bar with {' and with '.join(row['precision'] for row in rows)} weights (the samplers table).")


NOTES = "## Notes from earlier runs"  # a section of the README kept when it is rebuilt


def earlier_notes(readme: Path) -> list[str]:
    """The README's notes on earlier runs, written by hand, carried into the rebuilt README."""
    if not readme.is_file() or NOTES not in readme.read_text(encoding="utf-8"):
        return []
    text = readme.read_text(encoding="utf-8")
    section = text[text.index(NOTES):]
    ends = [i for i in (section.find("\n## ", 1), section.find("\nRebuild this README")) if i > 0]
    section = section[:min(ends)] if ends else section
    return section.rstrip("\n").split("\n") + [""]


def median_seconds(model, schedule, sampler: Sampler, n: int = 16, repeats: int = 3) -> float:
    """Median wall time to sample ``n`` images on the CPU, after a warm-up call."""
    cpu = torch.device("cpu")
    sample.generate(model, schedule, 2, sampler.replace(steps=2), seed=0, device=cpu)  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        sample.generate(model, schedule, n, sampler, seed=0, device=cpu)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def comparison_lines(compared: list[dict], sampler_words: str) -> list[str]:
    """The README's comparison table (empty without --compare)."""
    if not compared:
        return []
    return table_section(
        "Compared with other runs",
        f"The same measurement ({sampler_words}, seed 0, {compared[0]['samples']} samples, threshold 0) on each "
        "run's EMA network (`comparison.json`; the first row is `model.pt` itself):",
        ["run", "predicts", "steps x batch"],
        [[f"`{row['run']}`", row["prediction"], f"{row['step']} x {row['batch_size']}", measured_cells(row)]
         for row in compared])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, required=True,
                        help="training run folder: checkpoint.pt (or model.pt from train --export) and loss.csv")
    parser.add_argument("--out", type=Path, default=Path("data/pretrained"))
    parser.add_argument("--n", type=int, default=200, help="samples for the statistics")
    parser.add_argument("--machine", required=True, help="where the training ran, in words")
    parser.add_argument("--command", required=True, help="the exact training command(s)")
    parser.add_argument("--note", default="", help="a paragraph for the README (status, caveats)")
    parser.add_argument("--compare", type=Path, nargs="*", default=[], metavar="RUN",
                        help="other runs to measure the same way, for a comparison table "
                             "(written to OUT/comparison.json and the README)")
    parser.add_argument("--sampler", choices=sample.SAMPLERS, default=sample.DEFAULT_SAMPLER.kind,
                        help="the sampler to measure with, stored in model.pt as its recommended one")
    parser.add_argument("--steps", type=int, default=sample.DEFAULT_SAMPLER.steps, help="DDIM steps")
    parser.add_argument("--eta", type=float, default=sample.DEFAULT_SAMPLER.eta, help="DDIM noise, 0 to 1")
    parser.add_argument("--spacing", choices=SPACINGS, default=sample.DEFAULT_SAMPLER.spacing,
                        help="timesteps of ddim and dpm++2m (diffusion.SPACINGS)")
    parser.add_argument("--also", type=parse_sampler, nargs="*", default=[], metavar="SAMPLER",
                        help="other samplers to measure model.pt with, as ddim:STEPS:ETA, dpm++2m:STEPS:ETA "
                             "(either with :quadratic for quadratic spacing) or ddpm "
                             "(written to OUT/samplers.json and the README)")
    parser.add_argument("--fast", type=parse_sampler, metavar="SAMPLER", help="a sampler with fewer network "
                        "calls, as --also takes it: measured as sample --fast draws on a CPU (fp32 weights in NHWC, "
                        "then bf16) and stored in model.pt as its fast sampler if its samples meet the bar both "
                        "times (needs --n of at least "
                        f"{train.TrainConfig.bar_samples})")
    args = parser.parse_args()
    if args.fast and args.n < train.TrainConfig.bar_samples:
        parser.error(f"--fast with --n {args.n}: expected at least {train.TrainConfig.bar_samples} samples, "
                     "as the fidelity bar is judged on")
    try:
        settings = Sampler(args.sampler, args.steps, args.eta, spacing=args.spacing)
    except ValueError as exc:
        parser.error(str(exc))
    sampler_words = settings.describe()
    if args.fast == settings:  # sample --fast would draw as sample does: nothing faster to vet
        parser.error(f"--fast {spec(args.fast)}: the recommended sampler itself; expected one with fewer network calls")

    checkpoint = load_run(args.run)
    refusal = fast_sampler_refusal({**checkpoint, "kind": "weights"}, by_bar=True) if args.fast else None  # what export writes
    if refusal:  # said before anything is written or sampled
        parser.error(f"--fast: {args.run} holds {refusal}")
    args.out.mkdir(parents=True, exist_ok=True)
    weights = export_weights(checkpoint, args.out / "model.pt", sampler=settings)
    cpu = torch.device("cpu")
    model, schedule, _ = load_model(weights, cpu)
    seconds_16 = median_seconds(model, schedule, settings)
    images = sample.generate(model, schedule, args.n, settings, seed=0, device=cpu, progress=True)
    viz.image_grid(images[:64], ncols=8, title=f"model.pt: 64 of {args.n} samples ({sampler_words}, seed 0)",
                   path=args.out / "samples.png")
    generated = metrics.describe_set(metrics.boundary_masks(images), progress=True)
    reference = metrics.describe_set(metrics.boundary_masks(data.load_uint8(checkpoint["train_config"]["data"])))
    history = train.read_loss_history(args.run)
    cfg = checkpoint["train_config"]
    rows = metrics.fidelity_bar(generated, reference)
    met = metrics.meets_bar(rows)
    also = [*args.also, *([args.fast] if args.fast and args.fast not in args.also else [])]
    measured = measure(images, reference) if args.compare or also else {}
    compared = []
    if args.compare:
        compared = [comparison_row(args.run, checkpoint, args.n, measured)]
        for run in args.compare:
            other, other_images = sample_run(run, args.n, settings)
            compared.append(comparison_row(run, other, args.n, measure(other_images, reference)))
        (args.out / "comparison.json").write_text(json.dumps(compared, indent=1) + "\n", encoding="utf-8")
    others = []
    for other, precision in [(s, "fp32") for s in [settings, *also] if also] + (
            [(args.fast, "bf16")] if args.fast else []):  # sample --fast may pick either precision
        layout = sampling_layout(precision, cpu, fast=other == args.fast)  # the fast sampler as sample --fast draws
        plain = (precision, layout) == ("fp32", "contiguous")  # as ``model`` was loaded
        network = model if plain else load_model(weights, cpu, precision, layout)[0]
        other_measured = measured if (other, plain) == (settings, True) else measure(  # measured already
            sample.generate(network, schedule, args.n, other, seed=0, device=cpu), reference)
        others.append({"sampler_words": other.describe(), **other.stored(), "precision": precision,
                       "memory_format": layout, "samples": args.n, "network_calls": len(other.timesteps(schedule)),
                       **other_measured})
    if others:
        (args.out / "samplers.json").write_text(json.dumps(others, indent=1) + "\n", encoding="utf-8")
    fast_words = ""
    if args.fast:
        fast_words = store_fast(weights, args.fast, [row for row in others if row["sampler_words"] ==
                                                     args.fast.describe()])
    lines = [
        "# The shipped model",
        "",
        f"`model.pt`: EMA weights (fp16, {weights.stat().st_size / 2**20:.1f} MB) of a "
        f"`{checkpoint['model_config']['name']}` with {count_parameters(model):,} parameters, "
        f"trained on `{cfg['data']}`. Lessons 05 and 06 and `python -m helpers sample` use it.",
        "",
        args.note,
        "",
        "## How it was trained",
        "",
        "```",
        args.command,
        "```",
        "",
        f"| | |\n|---|---|\n| network | `{checkpoint['model_config']}` |\n"
        f"| schedule | {checkpoint['schedule']['kind']}, T = {checkpoint['schedule']['steps']}, the network "
        f"predicts {PREDICTION_WORDS[checkpoint['schedule'].get('prediction', 'eps')]} |\n"
        f"| steps | {checkpoint['step']} of batch {cfg['batch_size']} ({checkpoint['step'] * cfg['batch_size']:,} images) |\n"
        f"| optimiser | AdamW, lr {cfg['lr']:g}, warm-up {cfg['warmup']} steps{decay_words(cfg)}, "
        f"clip {cfg['grad_clip']:g}, EMA {cfg['ema_decay']:g} (warming up as (1 + s) / (10 + s) at step s: "
        f"{train.ema_decay(train.TrainConfig(**cfg), checkpoint['step'] - 1):.4f} at the last step) |\n"
        f"| precision | {cfg['precision']} |\n"
        f"| wall time | {wall_minutes(checkpoint, history):.1f} min |\n"
        f"| machine | {args.machine} |\n"
        f"| final loss | {history[-1]['loss']:.4f} (mean of the last {cfg['log_every']} steps) |",
        "",
        "## Samples and their statistics",
        "",
        "![samples](samples.png)",
        "",
        f"{args.n} samples with the model's recommended sampler ({sampler_words}, x0 clipped, seed 0; "
        "stored in `model.pt`, so `python -m helpers sample` uses it unless told otherwise), "
        f"thresholded at 0, measured with `helpers.metrics` against all {reference.size} training images. "
        f"The bar is the training issue's fidelity bar.",
        "",
        "| descriptor | samples | training set | bar | met |",
        "|---|---|---|---|---|",
    ]
    for name, value, ref, bar, ok in rows:
        lines.append(f"| {name} | {value:.3f} | {ref:.3f} | {bar} | {'' if ok is None else ('yes' if ok else 'no')} |")
    lines += [
        "",
        f"Fidelity bar {'met' if met else 'not met'}. Images with any dangling end: "
        f"{int((generated.per_image['dangling_ends'] > 0).sum())} of {args.n}. Images with a gray "
        f"background (median pixel above {metrics.GRAY_BACKGROUND:g}; training set: none): "
        f"{round(metrics.gray_background_rate(images) * args.n)} of {args.n}. "
        f"Sampling 16 images with {sampler_words} on this machine's CPU: {seconds_16:.1f} s "
        "(median of 3, after a warm-up).",
        "",
        *([fast_words, ""] if fast_words else []),
        *sampler_lines(others),
        *comparison_lines(compared, sampler_words),
        *earlier_notes(args.out / "README.md"),
        "Rebuild this README (and re-export the weights) with:",
        "",
        "```",
        f"python tools/pretrained_report.py --run RUN_DIR --out {args.out} --n {args.n} "
        f"--sampler {settings.kind} --steps {settings.steps} --eta {settings.eta:g} "
        f"{'' if settings.spacing == 'uniform' else f'--spacing {settings.spacing} '}"
        f"{f'--fast {spec(args.fast)} ' if args.fast else ''}"
        "--machine \"...\" --command \"...\"",
        "```",
        "",
    ]
    (args.out / "README.md").write_text("\n".join(lines), encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
