"""Measure a model with several samplers: the fidelity bar on 200 samples and the CPU time for 16.

    python tools/sampler_sweep.py --samplers dpm++2m:15:1 ddim:20:1 --json benchmarks/cpu_samplers.json
    python tools/sampler_sweep.py --samplers dpm++2m:15:1 --timing-only   # on a quiet machine

Each sampler draws --n samples (--seed, default 0) from --model on the CPU and is judged against the
training set with the fidelity bar (boundary fraction within 0.01, grains within 2, dangling
ends at most 0.1 per image above the training set's), the open-end rate and the gray-background
rate; --timing adds the median wall time of 16 images over 3 runs after a warm-up (run it with
nothing else on the machine). Rows are printed as a Markdown table and written to --json
(merged into what the file already holds, one row per sampler).
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
from helpers.checkpoint import load_model  # noqa: E402
from helpers.device import SAMPLING_PRECISIONS  # noqa: E402
from helpers.sample import Sampler  # noqa: E402
from pretrained_report import (measure, measured_cells, measured_header, median_seconds,  # noqa: E402
                               parse_sampler)



def key(sampler: Sampler, precision: str, seed: int) -> str:
    spacing = f":{sampler.spacing}" if sampler.spacing != "uniform" else ""
    return f"{sampler.kind}:{sampler.steps}:{sampler.eta:g}{spacing}:{precision}" + (f":seed{seed}" if seed else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--samplers", nargs="+", type=parse_sampler, required=True,
                        help="as ddim:STEPS:ETA, dpm++2m:STEPS:ETA (either with :quadratic for "
                        "quadratic spacing) or ddpm")
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0, help="seed of the fidelity-bar samples")
    parser.add_argument("--precision", choices=SAMPLING_PRECISIONS, default="fp32", help="network weights")
    parser.add_argument("--timing", action="store_true", help="also time 16 images (median of 3)")
    parser.add_argument("--timing-only", action="store_true", help="only time 16 images")
    parser.add_argument("--json", type=Path, help="rows are merged into this file")
    args = parser.parse_args()
    cpu = torch.device("cpu")
    model, schedule, payload = load_model(args.model, cpu, args.precision)
    reference = metrics.describe_set(metrics.boundary_masks(data.load_images(payload["train_config"]["data"])))
    rows = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
    print(f"{args.model} (step {payload['step']}), on {torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print(f"| sampler | {measured_header()} | 16 images (s) |")
    print("|---|---|---|---|---|---|---|---|")
    for settings in args.samplers:
        row = dict(rows.get(key(settings, args.precision, args.seed), {}))
        row.update(sampler_words=settings.describe(), precision=args.precision, **settings.stored())
        if not args.timing_only:
            start = time.perf_counter()
            images = sample.generate(model, schedule, args.n, settings, seed=args.seed, device=cpu)
            row.update(measure(images, reference), samples=args.n, seed=args.seed,
                       seconds=time.perf_counter() - start)
        if args.timing or args.timing_only:
            row["seconds_16"] = median_seconds(model, schedule, settings)
            row["threads"] = torch.get_num_threads()
        rows[key(settings, args.precision, args.seed)] = row
        cells = measured_cells(row) if "dangling_ends" in row else "| | | | | "
        print(f"| {row['sampler_words']}, {args.precision} | {cells} | {row.get('seconds_16', float('nan')):.1f} |", flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
