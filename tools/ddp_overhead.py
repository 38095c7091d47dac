"""The cost of data-parallel training: the same run, N ranks under torchrun against one plain process.

Trains with ``python -m helpers train`` and with ``torchrun --standalone --nproc_per_node N -m
helpers train`` (same data, profile, global batch and seed), alternating, ``--repeats`` times
each, and measures each session's training rate from its loss.csv (between the first and the last
row, so start-up, the data load and the first, slower steps are left out). Prints the medians and
their ratio and writes them, with the machine, as JSON.

    python tools/ddp_overhead.py --nproc 2 --json benchmarks/cpu_ddp.json   # 2 gloo ranks, 2-core CPU
    python tools/ddp_overhead.py --nproc 1 --profile gpu --batch-size 128 --stop-after 300 \\
        --json benchmarks/h100_ddp.json                                       # 1 NCCL rank vs the plain loop

On the CPU, torchrun gives each of its processes one thread (OMP_NUM_THREADS=1) and the plain
process uses every core: both use the whole machine.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from helpers.train import LOSS_CSV  # noqa: E402


def rate(run_dir: Path, batch_size: int) -> float:
    """Images per second between the first and the last row of a run's loss.csv."""
    with open(run_dir / LOSS_CSV, newline="") as handle:
        rows = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    if len(rows) < 2:
        raise SystemExit(f"{run_dir / LOSS_CSV}: fewer than two rows; raise --stop-after")
    first, last = rows[0], rows[-1]
    return (last["step"] - first["step"]) * batch_size / (last["seconds"] - first["seconds"])


def command(nproc: int, args: argparse.Namespace, out: Path) -> list[str]:
    """The plain command (``nproc`` 0) or the torchrun one, training into ``out``."""
    train = ["-m", "helpers", "train", "--data", args.data, "--profile", args.profile, "--batch-size",
             str(args.batch_size), "--steps", str(10 * args.stop_after), "--stop-after", str(args.stop_after),
             "--quiet", "--out", str(out)]
    if nproc == 0:
        return [sys.executable, *train]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *train]


def machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "gpu": gpu, "torch": torch.__version__, "python": platform.python_version()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nproc", type=int, default=2, help="ranks of the torchrun job (default 2)")
    parser.add_argument("--data", default="voronoi_gb_64")
    parser.add_argument("--profile", default="cpu")
    parser.add_argument("--batch-size", type=int, default=32, help="the global batch (default 32)")
    parser.add_argument("--stop-after", type=int, default=50,
                        help="steps per session; the rate is measured from the first log row on (default 50)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.json and args.json.exists():
        raise SystemExit(f"--json {args.json}: exists; expected a new file (nothing was replaced)")
    rates: dict[str, list[float]] = {"plain": [], f"torchrun x{args.nproc}": []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for name, nproc in (("plain", 0), (f"torchrun x{args.nproc}", args.nproc)):
                out = Path(scratch) / f"{name.replace(' ', '_')}_{repeat}"
                done = subprocess.run(command(nproc, args, out), cwd=ROOT, capture_output=True, text=True)
                if done.returncode:
                    raise SystemExit(f"{name} failed:\n{done.stderr[-2000:]}")
                rates[name].append(rate(out, args.batch_size))
                print(f"{name}, run {repeat + 1}: {rates[name][-1]:.1f} images/s", flush=True)
    medians = {name: statistics.median(values) for name, values in rates.items()}
    ratio = medians[f"torchrun x{args.nproc}"] / medians["plain"]
    print(f"median: plain {medians['plain']:.1f} images/s, torchrun x{args.nproc} "
          f"{medians[f'torchrun x{args.nproc}']:.1f} images/s: ratio {ratio:.3f}")
    if args.json:
        report = {"machine": machine(), "settings": {k: str(v) for k, v in vars(args).items() if k != "json"},
                  "images_per_second": rates, "median": medians, "ratio_to_plain": ratio}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
