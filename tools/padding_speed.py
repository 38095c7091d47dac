"""What circular padding costs a sampling run on the CPU: ``wrap_pad`` against ``F.pad``, side by side.

    python tools/padding_speed.py --json benchmarks/cpu_padding.json

The shipped model samples --n images (16) with --sampler (DPM-Solver++(2M)-30, eta 1) in each
layout and precision below, once with its convolutions as they are (``PeriodicConv2d``, padding by
``wrap_pad`` in the input's layout) and once padding as ``nn.Conv2d(padding_mode="circular")``
does, with ``F.pad``, which returns channels-first tensors (``helpers.bench.padding``). The two
runs alternate, --repeats times each after a warm-up, and the medians and their ratio are printed
(and merged into --json, one row per precision and layout); the two paddings' images are checked
to be identical. Run it with nothing else on the machine.
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

from helpers import sample  # noqa: E402
from helpers.bench import alternated_seconds, padding  # noqa: E402
from helpers.checkpoint import load_model  # noqa: E402
from helpers.device import at_precision  # noqa: E402
from speed_arguments import add_speed_arguments, check_speed_arguments  # noqa: E402

# (precision, layout): the default fp32 path, fp32 in NHWC, and --precision bf16 (NHWC on a CPU)
WAYS = (("fp32", "contiguous"), ("fp32", "channels_last"), ("bf16", "channels_last"))
PADDINGS = {"wrap_pad": "wrap", "F.pad": "torch"}  # column name: helpers.bench.padding's name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_speed_arguments(parser)
    parser.add_argument("--json", type=Path, help="write the rows here")
    args = parser.parse_args()
    check_speed_arguments(parser, args)
    cpu = torch.device("cpu")
    model, schedule, payload = load_model(args.model, cpu)
    rows = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
    print(f"{args.model} (step {payload['step']}), {args.n} images, {args.sampler.describe()}, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}")
    print("| weights | layout | F.pad (s) | wrap_pad (s) | ratio |\n|---|---|---|---|---|")
    for precision, layout in WAYS:
        network = at_precision(model, precision, cpu, layout)

        def draw(name: str) -> tuple[torch.Tensor, float]:
            """The images and the seconds they took (switching the padding is not timed)."""
            with padding(PADDINGS[name]):
                start = time.perf_counter()
                images = sample.generate(network, schedule, args.n, args.sampler, seed=0, device=cpu,
                                         images_per_call=args.images_per_call)
                return images, time.perf_counter() - start

        images = {name: draw(name)[0] for name in PADDINGS}  # the warm-up, and the check
        if not torch.equal(images["wrap_pad"], images["F.pad"]):
            raise SystemExit(f"{precision} {layout}: the two paddings gave different images")
        times, medians = alternated_seconds({name: lambda name=name: draw(name)[1] for name in PADDINGS},
                                            args.repeats)
        row = {"precision": precision, "layout": layout, "sampler": args.sampler.describe(), "n": args.n,
               "images_per_call": sample.call_size(cpu, model.config()["size"], args.images_per_call, batch=args.n),
               "threads": torch.get_num_threads(), "torch": torch.__version__, "seconds": medians,
               "runs": times, "ratio": medians["F.pad"] / medians["wrap_pad"]}
        rows[f"{precision}:{layout}"] = row
        print(f"| {precision} | {layout} | {medians['F.pad']:.2f} | {medians['wrap_pad']:.2f} | "
              f"{row['ratio']:.2f} |", flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
