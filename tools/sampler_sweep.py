"""Measure a model with several samplers: the fidelity bar on 200 samples and the CPU time for 16.

    python tools/sampler_sweep.py --samplers dpm++2m:15:1 ddim:20:1 --json benchmarks/cpu_samplers.json
    python tools/sampler_sweep.py --samplers dpm++2m:15:1 --timing-only   # on a quiet machine

Each sampler draws --n samples (--seed, default 0) from --model on the CPU and is judged against the
training set with the fidelity bar (boundary fraction within 0.01, grains within 2, dangling
ends at most 0.1 per image above the training set's), the open-end rate and the gray-background
rate; --timing adds the median wall time of 16 images over 3 runs after a warm-up (run it with
nothing else on the machine; a row timed again keeps every run's median in ``runs_16``). Rows are
printed as a Markdown table and written to --json (merged into what the file already holds, one
row per sampler, precision, layout and seed).

    python tools/sampler_sweep.py --samplers dpm++2m:30:1 --precision fp32 --json ROWS.json
    python tools/sampler_sweep.py --samplers dpm++2m:30:1 --memory-format channels_last --json ROWS.json
    python tools/sampler_sweep.py --samplers dpm++2m:30:1 --precision bf16 --json ROWS.json --store-fast

--store-fast keeps the one sampler measured in --model as its fast sampler (``sample --fast``) if
no row of --json for the same sampler and model (this run, other seeds, the other precision)
failed the bar and rows of at least the bar's 200 samples met it in fp32 and in bf16, the
precisions ``sample --fast`` may pick: the other precision is measured first (checked before
this run draws anything).
--memory-format is the layout of the network's weights and images (default: ``sample``'s without
--fast: NCHW in fp32, NHWC in bf16); ``sample --fast`` runs fp32 in NHWC too, whose rounding differs
from NCHW's in the last bits, so a row in another layout than the default says so in its key.
Rows name their model by ``checkpoint.weights_digest``, so one --json can hold several models'.
The file keeps, beside the sampler, every row of it on this model that met the bar with at least
200 samples (precision, seed, samples, dangling ends), which ``sample --fast`` prints. Only an
unconditional weights file takes one here (``checkpoint.fast_sampler_refusal``: this sweep draws
unconditional samples); a conditional model's is measured by control, with ``tools/control_fast.py``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from helpers.__main__ import DEFAULT_MODEL  # noqa: E402
from helpers import data, metrics, sample  # noqa: E402
from helpers.train import TrainConfig  # noqa: E402
from helpers.checkpoint import fast_sampler_refusal, store_fast_sampler, weights_digest  # noqa: E402
from helpers.device import (AUTO_SAMPLING_PICKS, MEMORY_FORMATS, SAMPLING_PRECISIONS, cpu_isa,  # noqa: E402
                            resolve_precision, sampling_layout)
from helpers.sample import Sampler, fast_sampler_evidence  # noqa: E402
from pretrained_report import (json_rows, layout_suffix, measure, measured_cells, measured_header,  # noqa: E402
                               median_seconds, model_file, one_set_per_seed, parse_sampler, spec)



def key(sampler: Sampler, precision: str, seed: int, layout: str) -> str:
    """A row's name in --json: sampler, precision, a layout other than the precision's default, seed."""
    return f"{spec(sampler)}:{precision}{layout_suffix(precision, layout)}" + (f":seed{seed}" if seed else "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--samplers", nargs="+", type=parse_sampler, required=True,
                        help="as ddim:STEPS:ETA, dpm++2m:STEPS:ETA (either with :quadratic for "
                        "quadratic spacing) or ddpm")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fidelity-bar samples")
    parser.add_argument("--precision", choices=SAMPLING_PRECISIONS, default="fp32", help="network weights")
    parser.add_argument("--memory-format", choices=MEMORY_FORMATS, help="layout of weights and images "
                        "(default: contiguous in fp32, channels_last in bf16)")
    parser.add_argument("--timing", action="store_true", help="also time 16 images (median of 3)")
    parser.add_argument("--timing-only", action="store_true", help="only time 16 images")
    parser.add_argument("--json", type=Path, help="rows are merged into this file")
    parser.add_argument("--store-fast", action="store_true", help="store the one sampler measured in --model "
                        "as its fast sampler (sample --fast) if its samples met the fidelity bar, and rows of it "
                        "in --json met it in the other precision too")
    args = parser.parse_args()
    if args.n < 1 or args.seed < 0:
        parser.error(f"--n {args.n} --seed {args.seed}: expected a positive --n and a seed of 0 or more")
    if args.store_fast and (len(args.samplers) != 1 or args.timing_only or args.n < TrainConfig.bar_samples
                            or args.json is None):
        parser.error(f"--store-fast: expected one sampler in --samplers, measured (not --timing-only) on at least "
                     f"{TrainConfig.bar_samples} samples (--n), as the fidelity bar is, and --json with its rows")
    cpu = torch.device("cpu")
    args.precision = resolve_precision(args.precision, cpu)  # rows say what was measured: fp32 or bf16, not auto
    args.memory_format = args.memory_format or sampling_layout(args.precision, cpu)
    rows = json_rows(parser, args.json)
    model, schedule, payload = model_file(parser, args.model, args.precision, args.memory_format)
    refusal = fast_sampler_refusal(payload, by_bar=True) if args.store_fast else None
    if refusal:
        parser.error(f"--store-fast: {args.model} is {refusal}")
    digest = weights_digest(payload)  # which model a row measured: --json may hold several models' rows
    if args.store_fast:  # sample --fast may pick either precision: the other one is measured first
        measured = {row.get("precision") for row in judged_rows(rows, args.samplers[0], digest)[1]}
        other = [p for p in AUTO_SAMPLING_PICKS if p != args.precision and p not in measured]
        if other:
            parser.error(f"--store-fast: {args.json} holds no row of {args.samplers[0].describe()} on this model "
                         f"that met the bar in {other[0]} (sample --fast may use {' or '.join(AUTO_SAMPLING_PICKS)}); "
                         f"measure it first with --precision {other[0]} --json {args.json}, without --store-fast")
    reference = metrics.describe_set(metrics.boundary_masks(data.load_images(payload["train_config"]["data"])))
    print(f"{args.model} (step {payload['step']}), on {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(f"| sampler | {measured_header()} | 16 images (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for settings in args.samplers:
        name = key(settings, args.precision, args.seed, args.memory_format)
        row = dict(rows.get(name, {}))
        row.update(sampler_words=settings.describe(), precision=args.precision, memory_format=args.memory_format,
                   weights=digest, **settings.stored())
        if not args.timing_only:
            start = time.perf_counter()
            images = sample.generate(model, schedule, args.n, settings, seed=args.seed, device=cpu)
            row.update(measure(images, reference), samples=args.n, seed=args.seed,
                       seconds=time.perf_counter() - start,
                       images_per_call=sample.call_size(cpu, model.config()["size"], batch=args.n))
        if args.timing or args.timing_only:
            row["seconds_16"] = median_seconds(model, schedule, settings)
            row.update(threads=torch.get_num_threads(), cpu=cpu_isa())  # the timings depend on both
            row["runs_16"] = [*row.get("runs_16", []), row["seconds_16"]]  # each timing run of this row, in turn
        rows[name] = row
        cells = measured_cells(row) if "dangling_ends" in row else "| | | | | "
        seconds, words = row.get("seconds_16", float("nan")), f"{row['sampler_words']}, {args.precision}"
        print(f"| {words}, {args.memory_format} | {cells} | {seconds:.1f} |", flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return store(args.model, settings, digest, rows) if args.store_fast else 0


def judged_rows(rows: dict, sampler: Sampler, digest: str) -> tuple[list[str], list[dict]]:
    """The rows of --json that measured ``sampler`` on the model ``digest``: the keys of those that
    failed the bar (in any layout), and those that met it on at least the bar's 200 samples (seed 0
    where the key names none), one per precision and seed: a seed drawn in two layouts is one set
    of noise, so it counts once, in the layout ``sample --fast`` uses on a CPU where it was drawn so."""
    same = {name: other for name, other in rows.items()
            if other.get("sampler_words") == sampler.describe() and other.get("weights") == digest}
    failed = [name for name, other in same.items() if other.get("bar_met") is False]
    met = [{**other, "seed": other.get("seed") or 0} for other in same.values()  # a key without :seedN: seed 0
           if other.get("bar_met") and other.get("samples", 0) >= TrainConfig.bar_samples]
    return failed, one_set_per_seed(met)


def store(model: Path, sampler: Sampler, digest: str, rows: dict) -> int:
    """--store-fast: keep ``sampler`` in ``model`` if every row of it on this model met the bar
    (``main`` checked before drawing that the other precision has a row that met it); say why not
    otherwise (exit status 1)."""
    failed, vetted = judged_rows(rows, sampler, digest)
    if failed:
        print(f"{sampler.describe()} did not meet the bar on {model} ({', '.join(failed)}): not stored")
        return 1
    stored = store_fast_sampler(model, sampler, vetted)
    print(f"stored {sampler.describe()} in {model} as its fast sampler (sample --fast); it "
          f"{fast_sampler_evidence(stored)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
