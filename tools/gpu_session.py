"""One prepared GPU session: measure every speed lever, then train the fastest setting to the bar.

Runs in one process, in phases, each with its own time limit; session.json is rewritten after
every phase, so a session cut short still brings back what it measured.

  env       the card, torch, CUDA
  eager     the original recipe, then train's own step for each network of --models (unet and
            seed-unet; compact: the cpu profile's UNet, bench.NETWORKS), each batch of --batches
            (128 and 512), NCHW and channels_last (bf16 autocast), with a profiler summary of the
            default UNet
  compiled  torch.compile in each of --compile-modes (default and reduce-overhead) for each
            network at the first batch, in each of --compile-formats (default: the eager
            phase's fastest); compile time reported apart. --paddings wrap torch adds, in both
            measuring phases, the default UNet padding with F.pad (PyTorch's circular mode)
            beside our wrap_pad, side by side (training always uses wrap_pad)
  sampling  1000 images with DDIM-50 eta 1 from the shipped model three ways: today's path (fp32,
            NCHW, batches of 256), bf16 channels_last in one batch, and that compiled
  train     the network of --train-network (the default UNet, or the compact one that samples
            about 4x faster on a CPU) with its fastest setting measured at the first batch (this
            process has compiled it already, unless the network is conditional; --train-compile
            and --train-rate when nothing was measured), for the time left, set-up included: the
            gpu profile's recipe at that batch with its steps sized to the measured throughput,
            the last 30% decaying; the fidelity bar checked every --bar-every steps on 200 EMA
            samples (with --init-from MODEL: fine-tuned from that model file's weights)
  samples   its fp16 EMA weights exported (train --export's format), 200 samples with each of
            several samplers (DDIM with 25, 50 and 100 steps, DPM-Solver++(2M)-30), packed for
            evaluation off the GPU machine
  control   with --condition (e.g. --data voronoi_gb_range_64 --condition grains; the phases are
            then env train samples control unless --phases says otherwise): the conditional
            model's samples at 8 targets x 64 and guidance 0, 1, 2, 4, kept in control.npz for
            python -m helpers control --measure (measured here too with --measure-control)
  ddp       only when named in --phases: what data parallelism costs, one NCCL rank under torchrun
            against the plain loop, side by side (tools/ddp_overhead.py; gpu profile, batch 128)

The measuring phases (env, eager, compiled, sampling) have fixed budgets, so that training keeps
its time; in a session of measuring phases alone the last of them has the time left.

Files in --out (the device tool brings back at most 8): session.json, session.log (what was
printed), model.pt, loss.csv, bar.csv, samples.tar.gz (sample folders, progress grids, loss.png),
and control.npz with --condition. A folder that already holds any of the files the phases asked
for would write is refused before anything runs (nothing is replaced); it may hold the model.pt
that samples and control read when train is not asked for. Bad values are refused in one line
before the first phase, the train phase's data set, condition columns and --init-from weights
included; a phase that fails is logged with its traceback and the others still run, and the
session then exits with status 1.

  OUT=/tmp/x python3 tools/gpu_session.py                  # on the GPU machine (~9 minutes)
  python3 tools/gpu_session.py --out /tmp/x --smoke        # dry run on a CPU (small settings)
  OUT=/tmp/x python3 tools/gpu_session.py --phases env eager compiled train samples --models compact \
      --batches 128 --compile-modes reduce-overhead --train-network compact   # the UNet for CPUs
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from helpers.__main__ import (DEFAULT_MODEL, _OneLineParser, _non_negative_float, _non_negative_int,  # noqa: E402
                              _positive_float, _positive_int)
from helpers import bench, data, metrics, train  # noqa: E402
from helpers.device import COMPILE_MODES, MEMORY_FORMATS, device_name, pick_device  # noqa: E402
from helpers.checkpoint import (CheckpointError, export_weights, load_checkpoint, load_model,  # noqa: E402
                                weights_digest)
from helpers.control import (DrawnSamples, control_masks, default_targets, held_values,  # noqa: E402
                             measure, measured_condition)
from helpers.sample import Sampler, generate, recommended_sampler, write_pngs  # noqa: E402

# what the train phase keeps for compiling a network the measuring phases did not compile: the first
# compile of the default UNet took 83-112 s on an H200 (benchmarks/h200_session_*.json)
FIRST_COMPILE_SECONDS = 120.0
PHASES = ["env", "eager", "compiled", "sampling", "train", "samples", "control", "ddp"]
# control draws a conditional model's samples (with --condition); ddp starts processes of its own:
# asked for by name
DEFAULT_PHASES = [phase for phase in PHASES if phase not in ("control", "ddp")]
# a conditional session trains and draws: the measuring phases (measured in three sessions already)
# would leave its training less time than its network takes to compile
CONDITIONAL_PHASES = ["env", "train", "samples", "control"]
# the networks the train phase can train (bench.NETWORKS' names; SeedUNet is the original tutorial's)
TRAIN_NETWORKS = [name for name in bench.NETWORKS if name != "seed-unet"]


def fastest_row(rows: list[dict], batch: int, compile_mode: str = "", memory_format: str = "",
                network: str = "unet") -> dict:
    """The fastest training row of ``network`` (bench.NETWORKS) with wrap_pad at this batch (of that
    compile, e.g. "compiled (reduce-overhead)", and memory format if given); {} when none was measured."""
    rows = [r for r in rows if "error" not in r and r["name"] == network and not r["compile"].startswith("eager (")
            and r["batch_size"] == batch and r.get("padding", "wrap") == "wrap"
            and compile_mode in ("", r["compile"]) and memory_format in ("", r["memory_format"])]
    return max(rows, key=lambda r: r["images_per_second"]) if rows else {}


def plan_training(rows: list[dict], batch: int, seconds_left: float, *, compile_mode: str | None = None,
                  memory_format: str | None = None, rate: float | None = None, conditional: bool = False,
                  bar_every: int = 500, network: str = "unet") -> dict:
    """The train phase's setting and length for ``network``: the fastest setting the measuring
    phases found for it (rows) unless compile_mode/memory_format say otherwise, planned at rate if
    given, else that setting's measured throughput, else 1000 img/s, in the time left less what
    compiling will take."""
    best = fastest_row(rows, batch, network=network)
    measured = best.get("compile", "eager")
    mode = compile_mode or (measured.split("(")[1].rstrip(")") if measured.startswith("compiled (") else "none")
    fmt = memory_format or best.get("memory_format", "contiguous")
    chosen = fastest_row(rows, batch, "eager" if mode == "none" else f"compiled ({mode})", fmt, network)  # {}: none
    per_second = (rate or chosen.get("images_per_second", 1000.0)) / batch  # steps per second
    # the run's clock starts after its set-up, which compiles the network: again, from this
    # process's caches, a few seconds where the first compile took minutes (3 s after 112 s on an
    # H200); from scratch for a network the measuring phases did not compile (a conditional one)
    if mode == "none":
        compile_seconds = 0.0
    elif chosen:
        compile_seconds = chosen["compile_seconds"] if conditional else min(chosen["compile_seconds"], 20.0)
    else:
        compile_seconds = FIRST_COMPILE_SECONDS
    seconds = max(30.0, seconds_left - compile_seconds)
    checks = max(1, int(per_second * seconds) // bar_every) if bar_every else 0
    # 90% of what the throughput fits, less ~2 s per fidelity-bar check (200 samples + metrics)
    steps = max(100, int(0.9 * per_second * (seconds - 2.0 * checks)) // 100 * 100)
    return dict(compile=mode, memory_format=fmt, chosen_from=chosen, compile_reserved=compile_seconds,
                planned_seconds=seconds, steps=steps, lr_decay_steps=int(0.3 * steps))


def training_config(args: argparse.Namespace, plan: dict, batch: int, smoke: bool = False) -> train.TrainConfig:
    """The train phase's run: the gpu profile's recipe for --train-network at ``batch``, with the
    plan's steps, decay, compile mode and memory format; in a dry run (``smoke``) the smoke
    profile's few steps instead, on its tiny network for the default UNet, on the compact one as asked."""
    overrides = dict(steps=plan["steps"], lr_decay_steps=plan["lr_decay_steps"], bar_every=args.bar_every,
                     compile=plan["compile"], memory_format=plan["memory_format"], batch_size=batch)
    profile = "gpu"
    if smoke:
        profile, overrides = "smoke", dict(steps=20, bar_every=10, bar_samples=8, compile="none")
    overrides.update(bench.NETWORKS[args.train_network], data=args.data, condition=list(args.condition),
                     init_from=str(args.init_from) if args.init_from else "")
    return train.profile_config(profile, **overrides)


class Session:
    """The clock, the report and the log of one session."""

    def __init__(self, out: Path, deadline: float, arguments: list[str]):
        self.out, self.deadline, self.start = out, deadline, time.perf_counter()
        # the arguments, so that the report says which call made it (earlier reports did not)
        self.report: dict = {"arguments": arguments, "deadline_s": deadline, "phases": {}}
        out.mkdir(parents=True, exist_ok=True)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def left(self) -> float:
        return self.deadline - self.elapsed()

    def log(self, text: str) -> None:
        line = f"[{self.elapsed():6.1f} s] {text}"
        print(line, flush=True)
        with open(self.out / "session.log", "a") as fh:
            fh.write(line + "\n")

    def save(self) -> None:
        """session.json, written whole under another name and renamed: a kill mid-write leaves the last one."""
        partial = self.out / "session.json.partial"
        partial.write_text(json.dumps(metrics.json_safe(self.report), indent=2) + "\n")
        partial.replace(self.out / "session.json")

    def attempt(self, label: str, rows: list, make) -> None:
        """Append ``make()`` to ``rows``; a failure is logged and recorded, and the phase goes on."""
        try:
            rows.append(make())
        except Exception as exc:
            rows.append({"label": label, "error": f"{exc.__class__.__name__}: {str(exc)[:300]}"})
            self.log(f"{label} failed:\n{traceback.format_exc()}")
        self.save()

    def phase(self, name: str, budget: float, run) -> None:
        """Run ``run(until)`` with ``until`` the session time at which it must stop starting work."""
        until = min(self.elapsed() + budget, self.deadline)
        started = self.elapsed()
        self.log(f"phase {name}: {budget:.0f} s budget, {self.left():.0f} s left in the session")
        record = self.report["phases"].setdefault(name, {})
        try:
            run(until, record)
            record["status"] = "done"
        except Exception as exc:  # record it and go on: the next phase may still work
            record["status"] = f"failed: {exc.__class__.__name__}: {str(exc)[:300]}"
            self.log(traceback.format_exc())
        record["seconds"] = self.elapsed() - started
        self.save()
        self.log(f"phase {name}: {record['status']} in {record['seconds']:.0f} s")


def arguments() -> argparse.Namespace:
    """The command line, with the defaults that depend on --condition filled in."""
    parser = _OneLineParser(prog="tools/gpu_session.py", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=_folder, default=os.environ.get("OUT") or None, help="the folder of the "
                        "session's files (default: $OUT); it may hold the model.pt that samples and control read, "
                        "and nothing the session writes")
    parser.add_argument("--deadline", type=_positive_float, default=540, help="seconds for the whole session")
    parser.add_argument("--after", type=_non_negative_float, help="seconds kept after training (export, samples, "
                        "and with --condition the control phase; default 45, with --condition 150)")
    parser.add_argument("--bar-every", type=_non_negative_int, default=500, metavar="N", help="the train phase "
                        "checks the fidelity bar on 200 EMA samples every N steps (0: never)")
    parser.add_argument("--phases", nargs="+", choices=PHASES, help="phases to run (default: all but control and "
                        "ddp; with --condition: " + " ".join(CONDITIONAL_PHASES) + ")")
    parser.add_argument("--compile-modes", nargs="+", choices=[m for m in COMPILE_MODES if m != "none"],
                        default=["default", "reduce-overhead"],
                        help="torch.compile modes of the compiled phase")
    parser.add_argument("--no-512", action="store_true", help="no compiled batch-512 row")
    parser.add_argument("--models", nargs="+", choices=bench.NETWORKS, default=["unet", "seed-unet"],
                        help="networks of the eager and compiled phases (compact: the cpu profile's UNet)")
    parser.add_argument("--batches", nargs="+", type=_positive_int, default=[128, 512],
                        help="batches of the eager phase; the first is the compiled phase's and training's")
    parser.add_argument("--compile-formats", nargs="+", choices=MEMORY_FORMATS,
                        help="memory formats of the compiled phase (default: --memory-format, else the eager phase's fastest)")
    parser.add_argument("--memory-format", choices=MEMORY_FORMATS, help="for the compiled phase and training (default: the "
                        "eager phase's fastest, else contiguous)")
    parser.add_argument("--train-network", choices=TRAIN_NETWORKS, default="unet", help="the network the "
                        "train phase trains with the gpu profile's recipe: unet (the default UNet) or compact "
                        "(the cpu profile's UNet, which samples about 4x faster on a CPU)")
    parser.add_argument("--train-compile", choices=COMPILE_MODES, help="torch.compile mode of the train phase (default: "
                        "the fastest the measuring phases found, none when they did not run)")
    parser.add_argument("--measure-control", action="store_true", help="the control phase also measures its "
                        "samples (CPU work, minutes; default: control.npz only, for control --measure)")
    parser.add_argument("--train-rate", type=_positive_float, metavar="IMG/S", help="the training throughput its steps are "
                        "planned with (default: what the measuring phases found for the chosen setting, else 1000)")
    parser.add_argument("--paddings", nargs="+", choices=bench.PADDINGS, default=["wrap"],
                        help="circular paddings of the default UNet in the eager and compiled phases (torch: F.pad)")
    parser.add_argument("--smoke", action="store_true", help="small settings for a dry run on a CPU (batch 8 "
                        "whatever --batches says, a few steps and images, the smoke profile's network)")
    parser.add_argument("--data", default="voronoi_gb_64", help="the training set of the train phase")
    parser.add_argument("--condition", nargs="+", default=[], metavar="COLUMN",
                        help="train a conditional model on these manifest columns (e.g. --data "
                             "voronoi_gb_range_64 --condition grains); the export recommends --guidance")
    parser.add_argument("--guidance", type=_non_negative_float, default=1.0, help="the guidance a conditional export recommends, "
                        "drawn first by the control phase (default: the shipped conditional model's, w = 1)")
    parser.add_argument("--init-from", type=Path, metavar="MODEL", help="the train phase fine-tunes this model file "
                        "instead of starting from random weights (train --init-from; e.g. data/pretrained/model.pt "
                        "with --condition grains: the unconditional model, given silent condition layers)")
    args = parser.parse_args()
    if args.phases is None:
        args.phases = CONDITIONAL_PHASES if args.condition else DEFAULT_PHASES
    measuring = {"eager", "compiled"} & set(args.phases)
    if "train" in args.phases and measuring and args.train_network not in args.models and args.train_rate is None:
        parser.error(f"--train-network {args.train_network}: the measuring phases ({', '.join(sorted(measuring))}) "
                     f"time --models {' '.join(args.models)} only; add {args.train_network} to --models, or give "
                     "--train-rate")
    if args.after is None:
        args.after = 150.0 if args.condition else 45.0
    check_inputs(args, parser)
    return args


def _folder(text: str) -> Path:
    """--out's path; an empty one (OUT= with nothing after it) would be the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"expected the path of a folder, got {text!r}")
    return Path(text)


def written(phases: list[str], smoke: bool) -> list[str]:
    """The names the session writes in --out, by the phases asked for."""
    names = ["session.json", "session.json.partial", "session.log"]
    if "train" in phases:
        names += ["model.pt", train.LOSS_CSV, train.BAR_CSV] + (["run"] if smoke else [])
    if "samples" in phases:
        names += ["samples.tar.gz", "pack"]
    return names + (["control.npz"] if "control" in phases else [])


def check_inputs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    """What the phases asked for need, checked before any of them spends device time: one line
    naming the value otherwise (``check_out``, ``check_model``, ``check_training``)."""
    try:
        check_out(args)
        if "train" in args.phases:
            check_training(args)
        else:
            check_model(args)
    except (ValueError, train.TrainingError) as exc:  # DataError, CheckpointError, ConditionError
        parser.error(str(exc))


def check_out(args: argparse.Namespace) -> None:
    """A folder that holds none of the files the session writes, so that nothing there is replaced."""
    out = args.out
    if out is None:
        raise ValueError("--out: expected a new or empty folder for the session's files (or set OUT)")
    above = next(parent for parent in [out, *out.absolute().parents] if parent.exists())
    if not above.is_dir():
        raise ValueError(f"--out {out}: {above} is a file; expected a folder")
    taken = [name for name in written(args.phases, args.smoke) if (out / name).exists()]
    if taken:
        raise ValueError(f"--out {out}: already holds {', '.join(taken)}; expected a folder without the files the "
                         "session writes (nothing was replaced)")
    if "control" in args.phases and not args.condition:
        raise ValueError("--phases control: draws a conditional model's samples; expected --condition (e.g. --data "
                         "voronoi_gb_range_64 --condition grains)")


def check_model(args: argparse.Namespace) -> None:
    """The model.pt in --out that samples and control read when the session does not train it:
    a model file, conditioned on --condition for control."""
    readers = [phase for phase in ("samples", "control") if phase in args.phases]
    if not readers:
        return
    path = args.out / "model.pt"
    if not path.is_file():
        raise ValueError(f"--out {args.out}: holds no model.pt for the {readers[0]} phase; add train to --phases, "
                         "or put the model there")
    names = (load_model(path)[2].get("condition") or {}).get("names", [])
    if "control" in args.phases and names != list(args.condition):
        raise ValueError(f"--phases control: {path} is conditioned on {', '.join(names) or 'nothing'}; expected "
                         f"--condition {' '.join(args.condition)} to match it")


def check_training(args: argparse.Namespace) -> None:
    """The train phase's data set (its images, and the manifest's columns of --condition) and
    --init-from's weights, read as a run reads them."""
    plan = dict(steps=100, lr_decay_steps=0, compile="none", memory_format="contiguous")
    cfg = training_config(args, plan, args.batches[0], args.smoke)
    data.list_images(data.resolve_dataset(cfg.data))
    if cfg.condition:
        data.manifest_values(cfg.data, cfg.condition)
    try:
        train.starting_weights(cfg)
    except CheckpointError as exc:
        if not args.smoke:
            raise
        raise CheckpointError(f"{exc} (--smoke trains the smoke profile's tiny network: dry-run --init-from with a "
                              "model of that network, from train --profile smoke)") from None


# seconds of each measuring phase on a GPU, and in a dry run (--smoke): the smoke budgets leave
# about three times what a quiet 2-core CPU needs (eager: 51 s for its five rows), so that a dry
# run on a busy machine still runs every row it is asked for
MEASURING_BUDGETS = {"env": (30, 30), "eager": (75, 150), "compiled": (170, 200), "sampling": (90, 200)}


class Phases:
    """The session's phases, one method each, named as in PHASES and called as ``run(until,
    record)`` by ``Session.phase``: they share the arguments, the device, the session that times
    and records them, and the measuring phases' settings."""

    def __init__(self, args: argparse.Namespace, device: torch.device, session: Session):
        self.args, self.device, self.session, self.smoke = args, device, session, args.smoke
        self.batches = (8,) if self.smoke else tuple(args.batches)
        self.base_batch = self.batches[0]  # the compiled phase's and training's batch
        self.steps, self.warmup, self.repeats = (2, 1, 2) if self.smoke else (5, 2, 3)
        self.images = data.load_images("voronoi_gb_64")
        # the training run's folder: in --out for a dry run, else a new one of this process's
        self.run_dir = args.out / "run" if self.smoke else Path(tempfile.gettempdir()) / f"mddpm_gpu_run_{os.getpid()}"

    def budget(self, name: str) -> float:
        """Seconds phase ``name`` may take, decided when it starts: fixed for the measuring phases,
        except the last one asked for in a session of measuring phases alone, which has the time
        left (at least its fixed seconds); for the others what is left, less what the phases
        after training keep (--after)."""
        if name in MEASURING_BUDGETS:
            asked = [phase for phase in PHASES if phase in self.args.phases]
            last = set(asked) <= set(MEASURING_BUDGETS) and name == asked[-1]
            fixed = MEASURING_BUDGETS[name][self.smoke]
            return max(fixed, self.session.left()) if last else fixed
        if name == "train":
            return max(30.0, self.session.left() - self.args.after)
        kept = self.args.after / 2 if name == "samples" and self.args.condition else 0.0
        return max(10.0, self.session.left() - kept)

    def env(self, until, record):
        """The card, torch, CUDA and cuDNN."""
        s = self.session
        record.update(device=device_name(self.device), torch=torch.__version__, cuda=torch.version.cuda,
                      cudnn=torch.backends.cudnn.version() if self.device.type == "cuda" else None)
        if self.device.type == "cuda":
            props = torch.cuda.get_device_properties(self.device)
            record.update(memory_gib=props.total_memory / 2**30, multiprocessors=props.multi_processor_count)
            record["nvidia_smi"] = nvidia_smi()  # the card's form (an H200 SXM or NVL) shows in its power limit
        s.log(f"{record}")

    def eager(self, until, record):
        """The original recipe, then train's own step for each network, batch, memory format and padding."""
        s, args = self.session, self.args
        rows = record.setdefault("rows", [])
        s.attempt("original recipe", rows, lambda: bench.original_recipe(self.device, 3 if self.smoke else 30, 1,
                                                                         self.repeats))
        if "error" not in rows[-1]:  # a failure is recorded; the rows of ours still run
            s.log(f"original recipe: {rows[-1]['images_per_second']:.0f} img/s")
        for model in args.models:
            for batch in self.batches:
                for fmt in ("contiguous", "channels_last"):
                    for pad in self.paddings(model):
                        if s.elapsed() > until:
                            s.log(f"skipped {model} {batch} {fmt} {pad}: phase out of time")
                            continue
                        profile = model == "unet" and batch == self.base_batch
                        s.attempt(f"eager {model} {batch} {fmt} {pad}", rows, lambda: bench.training_row(
                            model, self.device, batch, fmt, "none", "auto", self.steps, self.warmup, self.repeats,
                            profile, self.images, pad))
                        row = rows[-1]
                        if "error" not in row:
                            s.log(f"eager {model} batch {batch} {fmt} padding {pad}: "
                                  f"{row['images_per_second']:.0f} img/s, {row['tflops']:.1f} TFLOP/s" +
                                  (f"; {bench._profile_line(row['profile'])}" if profile else ""))

    def paddings(self, model: str) -> list[str]:
        """The circular paddings measured for ``model``: --paddings for the default UNet."""
        return self.args.paddings if model == "unet" else ["wrap"]  # SeedUNet pads with zeros

    def best_format(self, model: str) -> str:
        """--memory-format, else the memory format the eager phase found fastest for ``model``."""
        s, args = self.session, self.args
        if args.memory_format:
            return args.memory_format
        rows = [r for r in s.report["phases"].get("eager", {}).get("rows", [])
                if "error" not in r and r["name"] == model and r["batch_size"] == self.base_batch
                and r.get("padding", "wrap") == "wrap"]
        return max(rows, key=lambda r: r["images_per_second"])["memory_format"] if rows else "contiguous"

    def compiled(self, until, record):
        """torch.compile in each mode and memory format at the first batch; compile time apart."""
        s, args = self.session, self.args
        rows = record.setdefault("rows", [])
        models = args.models
        # F.pad rows first: leaving F.pad clears torch.compile's caches (bench.padding), and the train
        # phase reuses what the last wrap_pad rows compiled
        settings = [(model, self.base_batch, mode, fmt, pad) for model in models for pad in sorted(
                    self.paddings(model), key=lambda p: p == "wrap") for mode in args.compile_modes
                    for fmt in (args.compile_formats or [self.best_format(model)])]
        if not self.smoke and not args.no_512 and "unet" in models and "reduce-overhead" in args.compile_modes:
            settings.append(("unet", 512, "reduce-overhead", self.best_format("unet"), "wrap"))  # if time is left
        for model, batch, mode, fmt, pad in settings:
            if s.elapsed() > until:
                s.log(f"skipped {model} {batch} {mode} {fmt} {pad}: phase out of time")
                continue
            s.attempt(f"compiled {model} {batch} {mode} {fmt} {pad}", rows, lambda: bench.training_row(
                model, self.device, batch, fmt, mode, "auto", self.steps, self.warmup, self.repeats,
                model == "unet" and batch == self.base_batch, self.images, pad))
            row = rows[-1]
            if "error" not in row:
                s.log(f"{row['compile']} {model} batch {batch} {row['memory_format']} padding {pad}: "
                      f"{row['images_per_second']:.0f} img/s, {row['tflops']:.1f} TFLOP/s, "
                      f"compile {row['compile_seconds']:.0f} s" +
                      (f"; {bench._profile_line(row['profile'])}" if "profile" in row else ""))

    def sampling(self, until, record):
        """1000 images with DDIM-50 eta 1 from the shipped model: today's path, bf16 NHWC, compiled."""
        s = self.session
        rows = record.setdefault("rows", [])
        model, schedule, _ = load_model(DEFAULT_MODEL, self.device)
        n = 8 if self.smoke else 1000
        ways = [("fp32", "contiguous", "none", min(n, 256)), ("bf16", "channels_last", "none", n),
                ("bf16", "channels_last", "default" if self.smoke else "reduce-overhead", n)]
        for precision, fmt, mode, batch in ways:
            if s.elapsed() > until:
                s.log(f"skipped sampling {precision} {fmt} {mode}: phase out of time")
                continue
            s.attempt(f"sampling {precision} {fmt} {mode}", rows, lambda: bench.sampling_row(
                model, schedule, self.device, n, batch, precision, fmt, mode, 5 if self.smoke else 50, 1.0,
                2 if self.smoke else 3, profile=mode == "none" and precision == "bf16"))
            row = rows[-1]
            if "error" not in row:
                s.log(f"sampling {n} {row['sampler']}, {precision} {fmt} {row['compile']} batch {batch}: "
                      f"{row['seconds']:.2f} s (compile {row['compile_seconds']:.0f} s)")

    def train(self, until, record):
        """The fastest measured setting trained for the time left, then its EMA weights exported."""
        s, args = self.session, self.args
        rows = [r for phase in ("eager", "compiled") for r in s.report["phases"].get(phase, {}).get("rows", [])]
        plan = plan_training(rows, self.base_batch, until - s.elapsed(), compile_mode=args.train_compile,
                             memory_format=args.memory_format, rate=args.train_rate,
                             conditional=bool(args.condition), bar_every=args.bar_every,
                             network=args.train_network)
        seconds, compile_seconds = plan["planned_seconds"], plan["compile_reserved"]
        cfg = training_config(args, plan, self.base_batch, self.smoke)
        record.update(config={k: v for k, v in vars(cfg).items() if k != "model_options"},
                      network=train.describe_model(cfg, self.images.shape[-1]),
                      chosen_from=plan["chosen_from"], planned_seconds=seconds, compile_reserved=compile_seconds)
        s.save()  # the plan comes back even if the job is killed while training
        s.log(f"training {record['network']}: {cfg.steps} steps of "
              f"{cfg.batch_size}, compile {cfg.compile}, {cfg.memory_format}, "
              f"decay over the last {cfg.lr_decay_steps}, for at most {seconds:.0f} s after "
              f"{compile_seconds:.0f} s kept for compiling")
        saved = [time.perf_counter()]

        def progress(history: list[dict]) -> None:  # the latest loss row, saved at most every 10 s
            record["last_log"] = history[-1]
            if time.perf_counter() - saved[0] > 10.0:
                s.save()
                saved[0] = time.perf_counter()

        wall = time.perf_counter()
        # the phase's end holds, set-up and compiling included, if compiling took longer than kept
        result = train.train(cfg, self.run_dir, self.device, progress=False, max_seconds=seconds, on_log=progress,
                             ends_by=s.start + until)
        record.update(step=result.step, final_loss=result.final_loss, training_seconds=result.seconds,
                      wall_seconds=time.perf_counter() - wall, images_per_second=result.images_per_second,
                      bar=train.read_bar_history(self.run_dir))
        met = [row for row in record["bar"] if row["met"]]
        record["first_met"] = met[0] if met else None
        loss = "none logged" if result.final_loss is None else f"{result.final_loss:.4f}"
        s.log(f"trained to step {result.step}: loss {loss}, {result.images_per_second:.0f} img/s, "
              f"{result.seconds:.0f} s of training; bar first met: {record['first_met']}")
        checkpoint = load_checkpoint(self.run_dir / train.CHECKPOINT)
        sampler = train.TrainConfig(**checkpoint["train_config"]).sampler()
        if args.condition:
            sampler = sampler.replace(guidance=args.guidance)
        export_weights(checkpoint, s.out / "model.pt", sampler=sampler)
        for name in (train.LOSS_CSV, train.BAR_CSV):
            shutil.copy(self.run_dir / name, s.out / name)
        s.log(f"exported {s.out / 'model.pt'} recommending {sampler.describe()}; the run, checkpoint included, "
              f"stays in {self.run_dir}")

    def samples(self, until, record):
        """200 samples of the exported model with each of several samplers, packed."""
        s = self.session
        pack = s.out / "pack"
        model, schedule, _ = load_model(s.out / "model.pt", self.device)
        n = 8 if self.smoke else 200
        # DDIM-50 with eta 1 (what the cpu and gpu profiles recommend) with two seeds, then the others
        # a model card compares; the last, DPM-Solver++(2M)-30, is the shipped model's fast sampler
        samplers = [("samples", Sampler("ddim", 50, 1.0), 0), ("samples_seed1", Sampler("ddim", 50, 1.0), 1),
                    ("samples_eta0", Sampler("ddim", 50, 0.0), 0), ("samples_ddim25", Sampler("ddim", 25, 1.0), 0),
                    ("samples_ddim100", Sampler("ddim", 100, 1.0), 0),
                    ("samples_dpm30", Sampler("dpm++2m", 30, 1.0), 0)]
        for folder, sampler, seed in samplers:
            if s.elapsed() > until:
                s.log(f"skipped {folder}: phase out of time")
                continue
            start = time.perf_counter()
            images = generate(model, schedule, n, sampler, seed=seed, device=self.device)
            write_pngs(images, pack / folder)
            record[folder] = {"sampler": sampler.describe(), "steps": sampler.steps, "eta": sampler.eta, "seed": seed,
                              "seconds": time.perf_counter() - start}
            s.log(f"{folder}: {n} images, {sampler.describe()}, seed {seed}")
        if (self.run_dir / train.SAMPLES).exists():
            shutil.copytree(self.run_dir / train.SAMPLES, pack / "grids")
        if (self.run_dir / train.LOSS_PNG).exists():
            shutil.copy(self.run_dir / train.LOSS_PNG, pack / train.LOSS_PNG)
        with tarfile.open(s.out / "samples.tar.gz", "w:gz") as tar:
            tar.add(pack, arcname=".")
        shutil.rmtree(pack)

    def control(self, until, record):
        """A conditional model's samples at 8 targets x 64 and guidance 0, 1, 2, 4 (the recommended
        first), saved to control.npz after each scale. Measuring them (R^2, MAE, ratios at each
        target) is CPU work, minutes of drawing and measuring real images: ``python -m helpers
        control --checkpoint model.pt --measure control.npz`` does it off the GPU machine, and
        --measure-control here, for as long as the phase has time."""
        s, args = self.session, self.args
        model, schedule, payload = load_model(s.out / "model.pt", self.device)
        stats = payload["condition"]  # a conditional model: checked before the first phase
        name = measured_condition(stats)
        targets = default_targets(stats)[:2] if self.smoke else default_targets(stats)
        n, scales = (2, [0.0, 1.0]) if self.smoke else (64, [0.0, 1.0, 2.0, 4.0])
        scales.sort(key=lambda w: w != args.guidance)
        sampler, size = recommended_sampler(payload), model.config()["size"]
        drawn = DrawnSamples(name, targets, 0, held_values(stats, name, targets, size), weights_digest(payload))
        record.update(drawn=[], reports=[])
        last = 0.0
        for w in scales:
            if s.elapsed() + last > until:
                s.log(f"control: guidance {w:g} not drawn, out of time")
                continue
            started, guided = time.perf_counter(), sampler.replace(guidance=w)
            drawn.add(guided.describe(), control_masks(model, schedule, stats, targets, n, guided, name=name,
                                                       held=drawn.held, seed=drawn.seed, device=self.device))
            drawn.save(s.out / "control.npz")
            last = time.perf_counter() - started
            record["drawn"].append({"sampler": drawn.samplers[-1], "seconds": last})
            s.save()
            s.log(f"control: {len(targets)} targets x {n} samples with {drawn.samplers[-1]} in {last:.0f} s")
        if not args.measure_control:
            s.log("control: measure with python -m helpers control --checkpoint model.pt --measure control.npz")
            return
        if s.elapsed() > until:
            s.log("control: not measured, out of time (control --measure does it)")
            return
        for report in measure(drawn, stats, splits=2 if self.smoke else 20):
            summary = report.summary()
            record["reports"].append(summary)
            s.save()
            s.log(f"control: {summary['sampler']}: R^2 {summary['r2']:.3f}, "
                  f"{summary['dangling_ends']:.2f} dangling ends per image")
            if s.elapsed() > until and len(record["reports"]) < len(drawn.samplers):
                s.log("control: the other samplers not measured, out of time (control --measure does it)")
                break

    def ddp(self, until, record):
        """What data parallelism costs: one NCCL rank under torchrun against the plain loop."""
        s = self.session
        settings = (["--profile", "smoke", "--batch-size", "8", "--stop-after", "10", "--repeats", "1"] if self.smoke
                    else ["--profile", "gpu", "--batch-size", "128", "--stop-after", "150", "--repeats", "2"])
        with tempfile.TemporaryDirectory() as scratch:
            report = Path(scratch) / "ddp.json"
            done = subprocess.run([sys.executable, str(ROOT / "tools" / "ddp_overhead.py"), "--nproc", "1",
                                   *settings, "--json", str(report)], capture_output=True, text=True,
                                  timeout=max(10.0, until - s.elapsed()))
            s.log(done.stdout)
            if done.returncode:
                raise RuntimeError(done.stderr[-300:])
            record.update(json.loads(report.read_text()))


def nvidia_smi() -> str:
    """The card's name, power limit, top SM clock and memory as nvidia-smi reports them, or why not."""
    query = "--query-gpu=name,power.limit,clocks.max.sm,memory.total"
    try:
        done = subprocess.run(["nvidia-smi", query, "--format=csv,noheader"], capture_output=True, text=True,
                              timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"not read: {exc.__class__.__name__}: {exc}"
    return done.stdout.strip() or f"not read: {done.stderr.strip()[:200]}"


def main() -> None:
    args = arguments()
    os.environ.setdefault("MPLBACKEND", "Agg")
    torch._dynamo.config.cache_size_limit = 64  # several networks and modes compile in one process
    s = Session(args.out, args.deadline, sys.argv[1:])
    phases = Phases(args, pick_device(), s)
    for name in PHASES:  # in this order, each asked for
        if name in args.phases:
            s.phase(name, phases.budget(name), getattr(phases, name))
    s.report["total_seconds"] = s.elapsed()
    s.save()
    failed = [name for name, record in s.report["phases"].items() if record["status"] != "done"]
    s.log(f"done; failed: {', '.join(failed)} (session.log has why)" if failed else "done")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
