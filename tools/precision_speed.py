"""What bf16 weights are worth for sampling on CPUs with and without native bf16, side by side.

    python tools/precision_speed.py --json benchmarks/cpu_precision.json

The shipped model samples --n images (16) with --sampler (DPM-Solver++(2M)-30, eta 1) with fp32
weights and with bf16 weights (``helpers.device.at_precision``: NHWC on a CPU), alternated,
--repeats times each after a warm-up; the medians and their ratio are printed (and merged into
--json, one row per instruction set, sampler and --n). Each instruction set in --isa runs in its own process,
because oneDNN (the convolutions) and ATen (everything else) read their caps when they load:

- ``native``: whatever this processor has;
- ``avx512``: oneDNN capped at AVX512_CORE_VNNI, AVX-512 without the BF16 instructions (Intel's
  Skylake to Ice Lake Xeons and laptops, many cloud and Colab CPUs): bf16 convolutions are emulated;
- ``avx2``: oneDNN and ATen capped at AVX2 (most laptops): PyTorch then finds no bf16 support in
  oneDNN and runs bf16 convolutions on its own slower path.

A cap emulates the instruction set on this processor: its ratio of bf16 to fp32 is what carries
over to such a CPU, not its seconds. Each row records what the process saw (ATen's capability and
whether oneDNN offered bf16), so a cap this machine ignored shows. Run it with nothing else on the
machine. ``--precision auto`` (``helpers.device.native_bf16``) picks bf16 only where it is native.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from helpers import sample  # noqa: E402
from helpers.bench import alternated_seconds  # noqa: E402
from helpers.checkpoint import load_model  # noqa: E402
from helpers.device import at_precision  # noqa: E402
from pretrained_report import spec  # noqa: E402
from speed_arguments import add_speed_arguments, check_speed_arguments  # noqa: E402

# the environment each instruction set runs under (oneDNN's and ATen's documented caps)
CAPS = {
    "native": {},
    "avx512": {"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_VNNI"},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}
# caps this process may have inherited, removed so that each child runs under its own alone
# (DNNL_MAX_CPU_ISA is oneDNN's older name for ONEDNN_MAX_CPU_ISA)
INHERITED_CAPS = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")
PRECISIONS = ("fp32", "bf16")


def measure(args: argparse.Namespace) -> dict:
    """One instruction set's row, in this process: the seconds of each precision and their ratio."""
    cpu = torch.device("cpu")
    model, schedule, payload = load_model(args.model, cpu)
    networks = {precision: at_precision(model, precision, cpu) for precision in PRECISIONS}
    for network in networks.values():  # warm-up: oneDNN builds its kernels on first use
        sample.generate(network, schedule, 2, args.sampler.replace(steps=2), seed=0, device=cpu)

    def draw(network: torch.nn.Module) -> float:
        start = time.perf_counter()
        sample.generate(network, schedule, args.n, args.sampler, seed=0, device=cpu,
                        images_per_call=args.images_per_call)
        return time.perf_counter() - start

    times, medians = alternated_seconds({precision: lambda network=network: draw(network)
                                         for precision, network in networks.items()}, args.repeats)
    mkldnn_bf16 = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return {"isa": args.child, "env": CAPS[args.child], "aten_capability": torch.backends.cpu.get_cpu_capability(),
            "onednn_bf16": bool(mkldnn_bf16()) if mkldnn_bf16 else None,
            "sampler": args.sampler.describe(), "n": args.n,
            "images_per_call": sample.call_size(cpu, model.config()["size"], args.images_per_call, batch=args.n),
            "model_step": payload["step"], "threads": torch.get_num_threads(), "torch": torch.__version__,
            "seconds": medians, "runs": times, "ratio": medians["bf16"] / medians["fp32"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_speed_arguments(parser)
    parser.add_argument("--isa", nargs="+", choices=CAPS, default=list(CAPS))
    parser.add_argument("--json", type=Path, help="rows are merged into this file, one per instruction set, sampler and --n")
    parser.add_argument("--child", choices=CAPS, help=argparse.SUPPRESS)  # one row, printed as JSON
    args = parser.parse_args()
    check_speed_arguments(parser, args)
    if args.child:
        print(json.dumps(measure(args)))
        return
    rows = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
    common = ["--model", str(args.model), "--n", str(args.n), "--repeats", str(args.repeats),
              "--sampler", spec(args.sampler)]
    if args.images_per_call is not None:
        common += ["--images-per-call", str(args.images_per_call)]
    print(f"{args.model}, {args.n} images, {args.sampler.describe()}, torch {torch.__version__}")
    print("| instruction set | ATen | oneDNN bf16 | fp32 (s) | bf16 (s) | bf16 / fp32 |\n|---|---|---|---|---|---|")
    for isa in args.isa:
        env = {key: value for key, value in os.environ.items() if key not in INHERITED_CAPS}
        done = subprocess.run([sys.executable, __file__, "--child", isa, *common], env={**env, **CAPS[isa]},
                              capture_output=True, text=True)
        if done.returncode:
            last = (done.stderr.strip().splitlines() or ["no message"])[-1]
            raise SystemExit(f"{isa}: measuring {args.model} failed ({last})")
        row = json.loads(done.stdout.strip().splitlines()[-1])
        rows[f"{isa}:{spec(args.sampler)}:n{args.n}"] = row
        print(f"| {isa} | {row['aten_capability']} | {'yes' if row['onednn_bf16'] else 'no'} | "
              f"{row['seconds']['fp32']:.2f} | {row['seconds']['bf16']:.2f} | {row['ratio']:.2f} |", flush=True)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
