"""Training a denoiser: one loop for either network, with checkpoints that resume exactly.

The whole dataset sits on the device as one tensor (a few MB), so a step is: pick a batch,
pick a timestep and noise per image, one forward and backward pass. AdamW with a short linear
warm-up, gradient clipping, an exponential moving average (EMA) of the weights for sampling,
bf16 autocast on CUDA. Every random draw comes from generators whose states go into each
checkpoint, so a run killed and resumed ends with the same weights as one never interrupted.

Three layers: ``Trainer`` holds what lives on the device and takes one optimisation step;
``Run`` is a training run in its folder (start or resume it, log, check, save, restore);
``train`` is the loop, in labelled phases.
"""
from __future__ import annotations

import copy
import csv
import math
import os
import random
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Iterator, Optional

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from . import data as data_module
from . import distributed, metrics
from .conditions import condition_stats, normalise
from .checkpoint import (FORMAT, FORMAT_VERSION, CheckpointError, checkpoint_step, initial_weights, is_temporary,
                         load_checkpoint, load_weights, remove_stale_temporaries, restore_rng_states, rng_states,
                         save_atomic, start_from_weights)
from .device import autocast_dtype, check_compile_mode, compile_network, configure_backends, memory_format, pick_device
from .distributed import World
from .diffusion import PREDICTIONS, SCHEDULES, Schedule, diffusion_loss
from .sample import Sampler, generate, sample_grid
from .unet import MODELS, build_model, count_parameters
from .viz import loss_curve

# The run folder: what a run writes, and the lock held while a process trains in it (its pid).
CHECKPOINT = "checkpoint.pt"
LOSS_CSV = "loss.csv"
LOSS_PNG = "loss.png"
BAR_CSV = "bar.csv"
SAMPLES = "samples"
LOCK = ".lock"
RUN_FILES = f"{CHECKPOINT}, {LOSS_CSV}, {LOSS_PNG}, {SAMPLES}/"  # for messages
# The columns of the CSV logs and how each value is written.
LOSS_COLUMNS = {"step": int, "loss": "{:.6f}".format, "lr": "{:.3e}".format, "seconds": "{:.2f}".format}
# the fidelity bar's samples are drawn in batches of this size, shared out among the ranks of a
# data-parallel job (the same images whatever their number)
BAR_BATCH = 256
BAR_COLUMNS = {"step": int, "seconds": "{:.2f}".format, "boundary_fraction": "{:.4f}".format,
               "grains": "{:.3f}".format, "dangling_ends": "{:.3f}".format, "met": int}


class TrainingError(RuntimeError):
    """Training cannot go on: bad configuration, a run folder in the way, or a diverged loss."""


# Model settings of each profile (``model`` picks the network, these its size).
COMPACT_UNET = {"widths": [16, 32, 64], "blocks": 1, "attention_at": [16]}
TINY_UNET = {"widths": [8, 16, 16], "blocks": 1, "attention_at": []}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint)."""

    data: str = "voronoi_gb_64"
    model: str = "unet"  # a unet.MODELS name
    model_options: dict = field(default_factory=dict)  # UNet widths, blocks, attention_at, periodic
    schedule: str = "linear"
    diffusion_steps: int = 1000
    prediction: str = "eps"  # what the network learns to output (diffusion.PREDICTIONS): the noise or v
    steps: int = 6000
    batch_size: int = 128
    lr: float = 2e-4
    warmup: int = 200
    lr_decay_steps: int = 0  # decay the learning rate linearly to 0 over the run's last N steps (0: never)
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    precision: str = "auto"  # auto (bf16 or fp16 on CUDA by the GPU, else fp32), fp32, bf16, fp16
    seed: int = 0
    limit: Optional[int] = None  # use only the first images of the dataset
    log_every: int = 20
    sample_every: int = 1000
    sample_count: int = 16
    sample_steps: int = 50  # DDIM steps for the progress grids and fidelity-bar checks
    sample_eta: float = 0.0  # their DDIM eta (0: deterministic); exported weights recommend it
    checkpoint_every: int = 500
    bar_every: int = 0  # check the fidelity bar every N steps (0: never); rows go to bar.csv
    bar_samples: int = 200  # EMA samples (DDIM, sample_steps, sample_eta) per fidelity-bar check
    condition: list = field(default_factory=list)  # manifest columns the network is conditioned on
    condition_dropout: float = 0.15  # share of images trained without their condition (guidance)
    compile: str = "none"  # torch.compile mode (device.COMPILE_MODES); eager where unavailable
    memory_format: str = "contiguous"  # layout of images and weights (device.MEMORY_FORMATS)
    init_from: str = ""  # a model file whose EMA weights start the network (fine-tuning); "": random

    def __post_init__(self) -> None:
        # checkpoints written before compile modes existed stored a bool
        if isinstance(self.compile, bool):
            self.compile = "default" if self.compile else "none"
        for name in ("steps", "batch_size"):
            setattr(self, name, data_module.check_whole(f"--{name.replace('_', '-')}", getattr(self, name),
                                                        error=TrainingError))
        if not self.lr > 0:
            raise TrainingError(f"--lr must be a number above 0, got {self.lr!r}")
        self.seed = data_module.check_whole("--seed", self.seed, least=0, error=TrainingError)
        if not isinstance(self.bar_every, int) or self.bar_every < 0:
            raise TrainingError(f"--bar-every must be 0 (never) or a number of steps, got {self.bar_every!r}")
        if not isinstance(self.lr_decay_steps, int) or self.lr_decay_steps < 0:
            raise TrainingError(f"--lr-decay must be 0 (no decay) or a number of steps, got {self.lr_decay_steps!r}")
        if not isinstance(self.condition, list) or not all(isinstance(c, str) and c for c in self.condition):
            raise TrainingError(f"--condition: expected manifest column names, got {self.condition!r}")
        twice = sorted({c for c in self.condition if self.condition.count(c) > 1})
        if twice:
            raise TrainingError(f"--condition: {twice[0]} is given twice; expected each column once")
        if self.condition and self.model != "unet":
            raise TrainingError(f"--condition needs --model unet ({self.model} takes no condition)")
        if isinstance(self.init_from, os.PathLike):
            self.init_from = str(self.init_from)
        if not isinstance(self.init_from, str):
            raise TrainingError(f"--init-from: expected the path of a model file, got {self.init_from!r}")
        if not 0 <= self.condition_dropout < 1:
            raise TrainingError(f"condition_dropout must be from 0 to below 1, got {self.condition_dropout!r}")
        for flag, value, table in (("--model", self.model, MODELS), ("--prediction", self.prediction, PREDICTIONS),
                                   ("schedule", self.schedule, SCHEDULES)):
            if value not in table:
                raise TrainingError(f"{flag} {value!r}: expected one of {', '.join(table)}")
        try:
            check_compile_mode(self.compile)
            memory_format(self.memory_format)
            self.sampler()
        except ValueError as exc:
            raise TrainingError(str(exc)) from None

    def sampler(self) -> Sampler:
        """The sampler the run judges its samples with (grids, fidelity bar) and its export recommends."""
        return Sampler("ddim", self.sample_steps, self.sample_eta)


# Every profile trains the network to predict the velocity v rather than the noise: with the
# noise, an error in the predicted noise's mean reaches the first clean-image estimates ~160x
# amplified (lesson 02). The cpu and gpu profiles judge their samples with DDIM-50 and eta 1,
# fresh noise at each step, which leaves far fewer dangling boundary ends than eta 0 on their
# models (data/pretrained/README.md, the samplers table). TrainConfig's default stays Ho et al.'s eps.
PROFILES = {
    # seconds on a CPU: a tiny network and a handful of steps (tests, smoke runs of notebooks)
    "smoke": dict(steps=30, batch_size=8, warmup=5, log_every=5, sample_every=30, sample_count=4,
                  sample_steps=5, checkpoint_every=15, limit=64, ema_decay=0.9, prediction="v"),
    # a compact UNet (0.7 M parameters): about 50 min on the 2-core CI machine (1.0 s a step)
    "cpu": dict(steps=3000, batch_size=32, lr=5e-4, warmup=100, log_every=25, sample_every=500,
                checkpoint_every=250, ema_decay=0.995, prediction="v", sample_eta=1.0),
    # the full recipe on one GPU, the shipped model's: the default UNet, large batches, bf16, the
    # rate decaying to 0 over the last 30% of steps; 5.7 min on an H100 (data/pretrained/README.md)
    "gpu": dict(steps=3300, batch_size=128, lr=5e-4, warmup=200, lr_decay_steps=990, log_every=50,
                sample_every=1000, checkpoint_every=500, ema_decay=0.999, prediction="v", sample_eta=1.0),
}
PROFILE_MODELS = {"smoke": TINY_UNET, "cpu": COMPACT_UNET, "gpu": {}}


def profile_config(profile: str, **overrides) -> TrainConfig:
    """A TrainConfig from a profile name, with explicit overrides (None means: keep)."""
    if profile not in PROFILES:
        raise TrainingError(f"unknown profile {profile!r}; expected one of {', '.join(PROFILES)}")
    settings = dict(PROFILES[profile])
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if overrides.get("model", "unet") == "unet" and "model_options" not in overrides:
        settings["model_options"] = dict(PROFILE_MODELS[profile])
    settings.update(overrides)
    unknown = set(settings) - {f.name for f in fields(TrainConfig)}
    if unknown:
        raise TrainingError(f"unknown training settings: {', '.join(sorted(unknown))}")
    return TrainConfig(**settings)


def default_profile(device: torch.device) -> str:
    """The profile a device gets unless one is named: gpu on CUDA, cpu elsewhere."""
    return "gpu" if device.type == "cuda" else "cpu"


def model_config(cfg: TrainConfig, size: int) -> dict:
    """The network's config dict for images of ``size`` pixels."""
    if cfg.model == "seed-unet":
        return {"name": "seed-unet", "size": size, "steps": cfg.diffusion_steps}
    conditions = {"conditions": len(cfg.condition)} if cfg.condition else {}
    return {"name": cfg.model, "size": size, **cfg.model_options, **conditions}


def describe_model(cfg: TrainConfig, size: int) -> str:
    """One line: which network, how many parameters."""
    model = build_model(model_config(cfg, size))
    return f"{cfg.model} {model_config(cfg, size)} with {count_parameters(model):,} parameters"


# ---------------------------------------------------------------------------------------------
# One step on the device
# ---------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def learning_rate(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then constant, then (with ``cfg.lr_decay_steps``)
    a linear decay to zero over the run's last steps: the weights settle instead of jittering."""
    warmup = min(1.0, (step + 1) / max(cfg.warmup, 1))
    decay = min(1.0, (cfg.steps - step) / cfg.lr_decay_steps) if cfg.lr_decay_steps else 1.0
    return cfg.lr * warmup * decay


@torch.no_grad()
def update_ema(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """ema <- decay * ema + (1 - decay) * model, for every parameter in one fused call.

    ``_foreach_lerp_`` updates all the tensors in a few kernel launches instead of one per
    parameter (the default UNet has 246).
    """
    torch._foreach_lerp_(list(ema.parameters()), [p.detach() for p in model.parameters()], 1.0 - decay)
    for e, b in zip(ema.buffers(), model.buffers()):
        e.copy_(b)


def ema_decay(cfg: TrainConfig, step: int) -> float:
    """The EMA's decay at a step: short memory early (the weights move fast), cfg.ema_decay later."""
    return min(cfg.ema_decay, (1 + step) / (10 + step))


class Trainer:
    """A run's network, EMA copy, optimiser, schedule, data and generators on one device, and its
    training step: what ``Run`` steps and what ``python -m helpers bench`` times.

    The step never waits for the device (no ``.item()``, no host-side index, no timestep check
    on the loss path), so on a GPU the host queues step after step while the kernels run; the
    loss comes back as a device tensor, read only when the loop logs.
    """

    def __init__(self, cfg: TrainConfig, images: torch.Tensor, device: torch.device,
                 conditions: Optional[torch.Tensor] = None, world: World = World()):
        self.cfg, self.device = cfg, device
        # this process's rows of each global batch (all of them in a single process)
        self.rows = world.rows(cfg.batch_size)
        # each image's condition vector (normalised descriptors) in a conditional run, else None
        self.conditions = None if conditions is None else conditions.to(device)
        configure_backends(device)
        self.memory_format = memory_format(cfg.memory_format)
        self.images = images.to(device).contiguous(memory_format=self.memory_format)
        self.size = images.shape[-1]
        seed_everything(cfg.seed)
        self.model = build_model(model_config(cfg, self.size)).to(device, memory_format=self.memory_format)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()
        self.schedule = Schedule.create(cfg.schedule, cfg.diffusion_steps, cfg.prediction).to(device)
        self.dtype = autocast_dtype(cfg.precision, device)
        # fused AdamW: one kernel for all parameters, and no host read of the step count
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                           fused=True if device.type in ("cuda", "cpu") else None)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.dtype == torch.float16)
        # data indices are drawn on the device: a host-side index would be copied over and wait
        self.generators = {"data": torch.Generator(device=device).manual_seed(cfg.seed),
                           "noise": torch.Generator(device=device).manual_seed(cfg.seed + 1)}
        # the network the loss calls, compiled (and warmed up) as the module itself, then, in a
        # data-parallel job, wrapped so that backward averages the gradients over the ranks
        # (self.model stays the plain module the optimiser and EMA see)
        network, self.compile_mode, self.compile_seconds = compile_network(self.model, cfg.compile, self._warm_up)
        modes = distributed.gather([self.compile_mode])
        if any(mode.startswith("eager") for mode in modes) and not self.compile_mode.startswith("eager"):
            # a rank that could not compile runs eager, so all do: the ranks then do the same work
            network, self.compile_mode = self.model, f"eager (another process could not compile: {modes})"
        self.network = distributed.parallel(network, device)

    def state_dict(self) -> dict:
        """The state a checkpoint keeps: weights, EMA, optimiser, loss scaler and random states."""
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": rng_states(self.generators)}

    def load_state_dict(self, state: dict, path: Path) -> None:
        """Put back a ``state_dict`` read from the checkpoint at ``path`` (named in errors)."""
        load_weights(self.model, state["model"], path, "model")
        load_weights(self.ema, state["ema"], path, "EMA")
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng_states(state["rng"], self.generators)

    def start_from(self, state: dict) -> None:
        """Begin from ``state``, a model file's EMA weights (``checkpoint.initial_weights``), the
        network and its EMA both, instead of the random weights the seed drew."""
        start_from_weights(self.model, state)
        self.ema.load_state_dict(self.model.state_dict())

    def autocast(self):
        """The precision context of a forward pass (bf16 or fp16 autocast, or none for fp32)."""
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None)

    def _warm_up(self, network: torch.nn.Module) -> None:
        """Forward and backward passes at this rank's real batch (compiles; records CUDA graphs), no update."""
        batch = self.rows.stop - self.rows.start
        index = torch.arange(batch, device=self.device) % len(self.images)
        x, t = self.images[index], torch.zeros(batch, dtype=torch.long, device=self.device)
        conditioned = self._with_condition(network, index, drop=False)
        for _ in range(3):  # reduce-overhead records its CUDA graphs on the later calls
            self._mark_step()
            with self.autocast():
                loss = conditioned(x, t).float().square().mean()
            # fresh gradients each time, as in a step: under CUDA graphs a gradient is a graph
            # output, overwritten by the next replay, so it must not be accumulated into
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)

    def _with_condition(self, network: Callable, index: torch.Tensor, drop: bool,
                        rows: slice = slice(None)) -> Callable:
        """The network as the loss calls it, ``network(x, t)``: in a conditional run with the
        conditions of the batch ``index`` (its ``rows``), each replaced by the null condition (NaN)
        with probability condition_dropout when ``drop``, so that the one network also learns the
        unconditional model guidance needs."""
        if self.conditions is None:
            return network
        condition = self.conditions[index]
        if drop:  # drawn for the whole batch, as for the timesteps and noise
            dropped = torch.rand(len(index), generator=self.generators["data"], device=self.device)
            condition = condition.masked_fill((dropped < self.cfg.condition_dropout)[:, None], float("nan"))
        condition = condition[rows]
        return lambda x, t: network(x, t, condition)

    def _mark_step(self) -> None:
        """Tell CUDA graphs (compile mode reduce-overhead) that a new step begins."""
        if self.cfg.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()

    def step(self, step: int) -> torch.Tensor:
        """One optimisation step (``step`` counts from 0: it sets the learning rate and EMA decay);
        returns this rank's loss as a device tensor.

        Every rank draws the whole global batch (its images, timesteps, noise and dropped
        conditions) from generators seeded alike, and trains on its rows of it: the ranks
        together take the step one process would, and their generators stay in one state.
        """
        cfg = self.cfg
        index = torch.randint(0, len(self.images), (cfg.batch_size,), generator=self.generators["data"],
                              device=self.device)
        x0, network = self.images[index], self._with_condition(self.network, index, drop=True, rows=self.rows)
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        self._mark_step()
        with self.autocast():
            loss = diffusion_loss(network, self.schedule, x0, self.generators["noise"], rows=self.rows)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        update_ema(self.ema, self.model, ema_decay(cfg, step))
        return loss.detach()


# ---------------------------------------------------------------------------------------------
# The run folder: logs, lock
# ---------------------------------------------------------------------------------------------
def _read_numeric_csv(path: Path) -> list[dict]:
    """Rows of a run's CSV log as dicts of floats (none if the file is not there yet)."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    try:
        return [{k: float(v) for k, v in row.items()} for row in rows]
    except (TypeError, ValueError):
        raise TrainingError(f"{path}: a row is cut short or not numbers; expected a log written by "
                            "`python -m helpers train`") from None


def _write_rows(path: Path, columns: dict, rows: list[dict]) -> None:
    """A CSV log, written to a temporary file and renamed over the old one: never half a file."""
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(temporary, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(columns), lineterminator="\n")
            writer.writeheader()
            for row in rows:
                writer.writerow({name: write(row[name]) for name, write in columns.items()})
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_loss_history(run_dir: Path) -> list[dict]:
    """Rows of loss.csv: step, loss (mean over the logging window), lr, seconds."""
    return _read_numeric_csv(Path(run_dir) / LOSS_CSV)


def read_bar_history(run_dir: Path) -> list[dict]:
    """Rows of bar.csv: step, seconds of training so far (checks excluded), sample means, met (0/1)."""
    return _read_numeric_csv(Path(run_dir) / BAR_CSV)


def _same_log(on_disk: list[dict], kept: list[dict]) -> bool:
    """Whether the rows of a log file are the run's own rows (as far as the file's rounding shows)."""
    return len(on_disk) == len(kept) and all(
        a["step"] == b["step"] and abs(a["loss"] - b["loss"]) <= 1e-6 for a, b in zip(on_disk, kept))


def _process_alive(pid: int) -> bool:
    """Whether a process with this pid runs (on Windows, where signal 0 would stop it, assume so)."""
    if os.name == "nt":
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it runs, under another user
        return True
    return True


def _holds_files(run_dir: Path) -> bool:
    """Whether a folder holds anything besides what a run killed before its first checkpoint
    leaves behind (its lock, an empty samples/ folder, a half-written temporary checkpoint),
    which a new run may start over."""
    for entry in run_dir.iterdir():
        if entry.name == LOCK or is_temporary(entry, run_dir / CHECKPOINT):
            continue
        if entry.name == SAMPLES and entry.is_dir() and not any(entry.iterdir()):
            continue
        return True
    return False


def acquire_run_lock(run_dir: Path) -> Path:
    """Claim ``run_dir`` for this process: an exclusive lock file holding its pid.

    Two processes training into one folder would overwrite each other's checkpoints, and one run
    would be lost without a word; the second is refused instead. A lock left behind by a process
    that no longer runs (a killed run) is taken over.
    """
    lock = Path(run_dir) / LOCK
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            text = lock.read_text(encoding="utf-8", errors="replace").strip() if lock.exists() else ""
            owner = int(text) if text.isdigit() else None
            if owner is not None and owner != os.getpid() and _process_alive(owner):
                raise TrainingError(f"{run_dir} is in use by another training process (pid {owner}); wait "
                                    f"for it to finish or choose another --out (if no such process runs, "
                                    f"delete {lock})") from None
            lock.unlink(missing_ok=True)  # stale: its process is gone
            continue
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(f"{os.getpid()}\n")
        return lock
    raise TrainingError(f"{run_dir}: could not take its lock {lock}; another process keeps taking it")


def check_new_run_folder(run_dir: Path) -> None:
    """Refuse, before any work, a --out that holds a run, a user's files, or is a file."""
    if (run_dir / CHECKPOINT).exists():
        raise TrainingError(f"{run_dir} already holds a run ({CHECKPOINT}); pass --resume to "
                            "continue it, or choose another --out")
    if run_dir.is_dir() and _holds_files(run_dir):
        raise TrainingError(f"{run_dir} is not empty and holds no run ({CHECKPOINT}); choose a new or "
                            "empty --out (nothing in it was changed)")
    if run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"--out {run_dir} is a file; expected a folder for the run")
    parent = next((p for p in run_dir.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise TrainingError(f"--out {run_dir}: {parent} is a file; expected a folder for the run")


def _check_same_data(name: str, images: torch.Tensor) -> None:
    """Refuse a data-parallel run whose ranks read different images (another version of the set at
    the same path on another machine): each would train on batches the others do not see."""
    prints = distributed.gather([(tuple(images.shape), round(float(images.double().sum()), 3))])
    with distributed.together():
        if len(set(prints)) > 1:
            raise TrainingError(f"{name}: the processes read different images (shape and sum per rank: {prints}); "
                                "expected the same data set on every machine")


# ---------------------------------------------------------------------------------------------
# A run
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Due:
    """What a step is due to do once its update is made, worked out once per step."""

    check: bool  # read the losses since the last check and stop on a NaN (waits for the device)
    log: bool  # a loss.csv row
    samples: bool  # a grid of EMA samples in samples/
    bar: bool  # a fidelity-bar check on EMA samples (bar.csv)
    save: bool  # a checkpoint
    stop: bool  # the session ends here


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves behind."""

    run_dir: Path
    step: int
    final_loss: Optional[float]  # the last logged loss (None before the first log line)
    seconds: float
    images_per_second: float
    ema: torch.nn.Module
    schedule: Schedule


def starting_weights(cfg: TrainConfig) -> Optional[dict]:
    """--init-from's weights, checked against the run's network, schedule and condition (a one-line
    ``CheckpointError`` if they do not fit); None for a run that starts from random weights."""
    if not cfg.init_from:
        return None
    schedule = Schedule.create(cfg.schedule, cfg.diffusion_steps, cfg.prediction).config()
    return initial_weights(cfg.init_from, model_config(cfg, data_module.image_size(cfg.data)), schedule, cfg.condition)


class Run:
    """A training run in its folder: the ``Trainer``, the logs, the clock and the checkpoint.

    ``Run.start`` begins a run in a new or empty folder, ``Run.resume`` carries one on from its
    checkpoint; ``advance`` makes one step, ``due`` says what else the step has to do, and
    ``check``, ``log``, ``save_samples``, ``check_bar`` and ``save`` do it. ``checkpoint`` and
    ``restore`` turn the whole state into a checkpoint's dict and back.
    """

    def __init__(self, cfg: TrainConfig, run_dir: str | Path, device: torch.device):
        self.cfg, self.dir, self.device = cfg, Path(run_dir), device
        self.world = distributed.current()  # rank 0 alone writes the folder, the logs and the bar
        with distributed.together():  # every rank reads the data set: a path may be missing on one
            try:
                self.world.rows(cfg.batch_size)
            except ValueError as exc:
                raise TrainingError(str(exc)) from None
            images = data_module.load_images(cfg.data, limit=cfg.limit)
            values = data_module.manifest_values(cfg.data, cfg.condition, limit=cfg.limit) if cfg.condition else None
            # the fidelity bar compares EMA samples with the training images' statistics (rank 0's)
            self.reference = (metrics.describe_set(metrics.boundary_masks(images))
                              if cfg.bar_every and self.world.main else None)
        _check_same_data(cfg.data, images)
        # a conditional run's scaling and range of each condition (kept in its model files)
        self.condition_stats = condition_stats(cfg.condition, values) if cfg.condition else None
        self.trainer = Trainer(cfg, images, device, None if values is None else normalise(self.condition_stats, values),
                               self.world)
        self.step = 0
        self.history: list[dict] = []  # loss.csv's rows
        self.bar_rows: list[dict] = []  # bar.csv's rows
        self.window: list[torch.Tensor] = []  # losses since the last log line, on the device
        self.checked = 0  # how many of them have been checked for NaN
        self.earlier_seconds = 0.0  # training time of the sessions before this one
        self.check_seconds = 0.0  # time spent checking the bar, left out of the training time
        self.resumed = False
        self.clock = time.perf_counter()

    @property
    def checkpoint_path(self) -> Path:
        return self.dir / CHECKPOINT

    @classmethod
    def start(cls, cfg: TrainConfig, run_dir: str | Path, device: torch.device) -> "Run":
        """A new run in ``run_dir`` (new or empty; refused otherwise, before any work)."""
        with distributed.together():
            if distributed.current().main:
                check_new_run_folder(Path(run_dir))
            state = starting_weights(cfg)  # checked before the data, the network and any compiling
        run = cls(cfg, run_dir, device)
        if state is not None:
            run.trainer.start_from(state)
        return run

    @classmethod
    def resume(cls, run_dir: str | Path, device: torch.device, extend_to: Optional[int] = None,
               lr_decay_steps: Optional[int] = None) -> "Run":
        """The run in ``run_dir`` as its checkpoint left it; ``extend_to`` raises its total steps and
        ``lr_decay_steps`` sets how many of its last steps decay the learning rate. In a
        data-parallel job rank 0 reads the checkpoint and hands it to the other ranks."""
        state, cfg, alone = None, None, distributed.current().size == 1
        with distributed.together():
            if distributed.current().main:
                path = Path(run_dir) / CHECKPOINT
                state = load_checkpoint(path, map_location=device if alone else "cpu")
                if state.get("kind") != "training":
                    raise CheckpointError(f"{path}: holds weights only; cannot resume from it")
                settings = dict(state["train_config"])
                if extend_to is not None:
                    if extend_to < state["step"]:
                        raise TrainingError(f"--steps {extend_to} is below the checkpoint's step {state['step']}")
                    settings["steps"] = extend_to
                if lr_decay_steps is not None:
                    settings["lr_decay_steps"] = lr_decay_steps
                cfg = TrainConfig(**settings)
        state, cfg = distributed.share((state, cfg))
        run = cls(cfg, run_dir, device)
        with distributed.together():  # a mismatched checkpoint fails alike everywhere: said once
            run.restore(state)
        return run

    # -- state --------------------------------------------------------------------------------
    def checkpoint(self) -> dict:
        """Everything needed to carry the run on exactly: the trainer's state, logs and clock."""
        return {"format": FORMAT, "version": FORMAT_VERSION, "kind": "training",
                "model_config": model_config(self.cfg, self.trainer.size),
                "schedule": self.trainer.schedule.config(), "train_config": asdict(self.cfg),
                "sampler": self.cfg.sampler().stored(),  # what `sample` draws a checkpoint with by default
                "step": self.step, "seconds": self.seconds(), "check_seconds": self.check_seconds,
                "world_size": self.world.size,
                **self.trainer.state_dict(), "loss_window": [float(v) for v in self.window],
                "history": self.history, "bar_history": self.bar_rows,
                **({"condition": self.condition_stats} if self.condition_stats else {})}

    def restore(self, state: dict) -> None:
        """Put back the state of a ``checkpoint()`` dict (from the file at ``checkpoint_path``)."""
        self.trainer.load_state_dict(state, self.checkpoint_path)
        self.step, self.resumed = state["step"], True
        self.earlier_seconds, self.check_seconds = state.get("seconds", 0.0), state.get("check_seconds", 0.0)
        self.window = [torch.tensor(v, device=self.device) for v in state.get("loss_window", [])]
        self.checked = len(self.window)
        # checkpoints written before the logs went into them: the folder's rows up to their step
        self.history = state["history"] if "history" in state else \
            [r for r in read_loss_history(self.dir) if r["step"] <= self.step]
        self.bar_rows = state["bar_history"] if "bar_history" in state else \
            [r for r in read_bar_history(self.dir) if r["step"] <= self.step]

    @contextmanager
    def claimed(self) -> Iterator[None]:
        """Hold the folder while training in it (rank 0 does, for every rank): its lock, no stale
        temporary files, samples/."""
        lock = None
        with distributed.together():
            if self.world.main:
                lock = self._claim()
        try:
            yield
        finally:
            if lock is not None:
                lock.unlink(missing_ok=True)

    def _claim(self) -> Path:
        """Take the folder's lock and check the folder under it; returns the lock's path."""
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = acquire_run_lock(self.dir)  # refuses a folder another live process is training in
        try:
            if self.resumed:
                self._check_log_belongs()
            else:  # again, under the lock: a run that finished meanwhile must not be replaced
                check_new_run_folder(self.dir)
            remove_stale_temporaries(self.checkpoint_path)
            (self.dir / SAMPLES).mkdir(exist_ok=True)
        except BaseException:
            lock.unlink(missing_ok=True)
            raise
        return lock

    def _check_log_belongs(self) -> None:
        """Resuming rewrites loss.csv from the checkpoint's own log. Refuse when the folder's file is
        another run's (a checkpoint copied in); when it is this run's and goes further (an earlier
        checkpoint put back), keep its rows beyond the checkpoint in a file of their own."""
        on_disk = read_loss_history(self.dir)
        kept = [row for row in on_disk if row["step"] <= self.step]
        if not _same_log(kept, self.history[:len(kept)]):
            raise TrainingError(f"{self.dir / LOSS_CSV} is not the log of the run in {CHECKPOINT} (step "
                                f"{self.step}): it would be replaced; move it away, then --resume again")
        if len(kept) < len(on_disk):
            aside = self.dir / f"loss_to_step_{int(on_disk[-1]['step'])}.csv"
            if aside.exists():
                raise TrainingError(f"{self.dir / LOSS_CSV} goes beyond the checkpoint's step {self.step}, and "
                                    f"{aside} exists; move one of them away, then --resume again")
            os.replace(self.dir / LOSS_CSV, aside)
            print(f"{LOSS_CSV} went on to step {int(on_disk[-1]['step'])}, beyond the checkpoint (step {self.step}): "
                  f"kept as {aside.name}")

    # -- the loop's parts ---------------------------------------------------------------------
    def start_clock(self, max_seconds: Optional[float] = None, ends_by: Optional[float] = None) -> Optional[float]:
        """Start timing this session (set-up and compilation are not training time). Returns the
        session's limit in seconds of training: ``max_seconds``, or less if what set-up left of the
        wall-clock limit ``ends_by`` (a ``time.perf_counter()`` reading) is shorter."""
        self.clock = time.perf_counter()
        self.trainer.model.train()
        if ends_by is None:
            return max_seconds
        return min(max_seconds if max_seconds is not None else math.inf, ends_by - self.clock)

    def session_seconds(self) -> float:
        return time.perf_counter() - self.clock

    def seconds(self) -> float:
        """Wall time of the whole run, across sessions."""
        return self.earlier_seconds + self.session_seconds()

    def advance(self) -> None:
        """One optimisation step; its loss joins the window (a device tensor, not read yet)."""
        self.window.append(self.trainer.step(self.step).float())
        self.step += 1

    def due(self, end: int, max_seconds: Optional[float]) -> Due:
        """What the step just made has to do: every rule about logging, saving and checking."""
        cfg, step = self.cfg, self.step
        last = step == cfg.steps
        log = step % cfg.log_every == 0 or last
        out_of_time = max_seconds is not None and self.session_seconds() > max_seconds
        if self.world.size > 1:  # the ranks' clocks differ: rank 0's, read at the log steps, decides
            out_of_time = max_seconds is not None and log and distributed.decide(out_of_time)
        stop = step == end or out_of_time
        save = step % cfg.checkpoint_every == 0 or stop
        bar = bool(cfg.bar_every) and (step % cfg.bar_every == 0 or last or out_of_time)
        return Due(check=log or save, log=log, samples=step % cfg.sample_every == 0 or last, bar=bar,
                   save=save, stop=stop)

    def check(self) -> None:
        """Stop on a loss that is not finite (the last checkpoint is kept), naming its step."""
        # each step's loss over the global batch (the mean over the ranks; the window keeps it, for
        # the log and the checkpoint): a NaN on any rank stops every rank at the same step
        losses = distributed.mean(torch.stack(self.window[self.checked:])) if self.window[self.checked:] else None
        if losses is not None:
            self.window[self.checked:] = list(losses)
            bad = (~torch.isfinite(losses)).nonzero()
            if len(bad):  # the same on every rank: said once
                first = int(bad[0])
                with distributed.together():
                    raise TrainingError(
                        f"loss became {losses[first].item()} at step {self.step - len(losses) + first + 1}; "
                        f"stopped. The last good checkpoint (step {checkpoint_step(self.checkpoint_path)}) is kept "
                        f"in {self.checkpoint_path}; try a lower --lr or fp32")
        self.checked = len(self.window)

    def log(self) -> dict:
        """A loss.csv row: the mean loss since the last row (the window, checked), the learning
        rate, the time so far."""
        row = {"step": self.step, "loss": torch.stack(self.window).mean().item(),
               "lr": learning_rate(self.cfg, self.step - 1), "seconds": self.seconds()}
        self.history.append(row)
        self.window, self.checked = [], 0
        return row

    def save_samples(self) -> None:
        """A grid of EMA samples in samples/, by the run's sampler (seed 0), drawn by rank 0."""
        with distributed.together():
            if self.world.main:
                self._grid()

    def _grid(self) -> Path:
        return sample_grid(self.trainer.ema, self.trainer.schedule, self.cfg.sample_count,
                           self.dir / SAMPLES / f"step_{self.step:06d}.png", self.cfg.sampler(),
                           device=self.device, title=f"EMA samples, step {self.step}")

    def check_bar(self) -> Optional[dict]:
        """The fidelity bar on ``bar_samples`` EMA samples (the run's sampler, seed 0), drawn in one
        batch per rank and gathered: a bar.csv row on rank 0 (None on the others). Its time is
        left out of the training time."""
        start = time.perf_counter()
        n = self.cfg.bar_samples
        mine = generate(self.trainer.ema, self.trainer.schedule, n, self.cfg.sampler(), seed=0, batch_size=BAR_BATCH,
                        device=self.device, batches=self.world.batches(-(-n // BAR_BATCH)))
        images = torch.cat(distributed.gather([mine]))
        row = None
        with distributed.together():
            if self.world.main:
                row = {"step": self.step,
                       **metrics.bar_summary(metrics.describe_set(metrics.boundary_masks(images)), self.reference)}
        self.check_seconds += time.perf_counter() - start
        if row is not None:
            self.bar_rows.append({**row, "seconds": self.seconds() - self.check_seconds})
        return row

    def save(self) -> None:
        """The checkpoint (atomically), then the CSV logs it holds; a failed write says what is intact.
        Rank 0 writes; the other ranks wait, and stop with it if it fails."""
        with distributed.together():
            if self.world.main:
                self._save()

    def _save(self) -> None:
        try:
            save_atomic(self.checkpoint(), self.checkpoint_path)
        except CheckpointError as exc:
            raise TrainingError(f"{exc} (step {checkpoint_step(self.checkpoint_path)}); stopped at step "
                                f"{self.step}: make room, then --resume") from None
        _write_rows(self.dir / LOSS_CSV, LOSS_COLUMNS, self.history)
        if self.cfg.bar_every:
            _write_rows(self.dir / BAR_CSV, BAR_COLUMNS, self.bar_rows)

    def plot_loss(self) -> None:
        with distributed.together():
            if self.history and self.world.main:
                plt.close(loss_curve(self.history, path=self.dir / LOSS_PNG, prediction=self.cfg.prediction))

    def result(self, start_step: int) -> TrainResult:
        trained, session = self.step - start_step, self.session_seconds()
        return TrainResult(self.dir, self.step, self.history[-1]["loss"] if self.history else None, self.seconds(),
                           trained * self.cfg.batch_size / session if trained else 0.0, self.trainer.ema,
                           self.trainer.schedule)


def describe_bar_row(row: dict) -> str:
    """One line for a fidelity-bar check."""
    return (f"step {row['step']}: boundary fraction {row['boundary_fraction']:.3f}, grains {row['grains']:.1f}, "
            f"dangling ends {row['dangling_ends']:.2f} per image; fidelity bar {'met' if row['met'] else 'not met'}")


def train(cfg: Optional[TrainConfig], run_dir: str | Path, device: Optional[torch.device] = None,
          resume: bool = False, progress: bool = True, stop_after: Optional[int] = None,
          on_log: Optional[Callable[[list[dict]], None]] = None,
          extend_to: Optional[int] = None, max_seconds: Optional[float] = None,
          lr_decay_steps: Optional[int] = None, ends_by: Optional[float] = None) -> TrainResult:
    """Train (or, with ``resume``, continue training) a denoiser into ``run_dir``.

    ``run_dir`` gets checkpoint.pt (atomic, every ``checkpoint_every`` steps and at the end),
    loss.csv, loss.png and samples/step_NNNNNN.png grids (bar.csv with ``cfg.bar_every``: the
    fidelity bar on EMA samples, with the training time so far). ``stop_after`` ends the session
    at that step, as an interruption would; ``max_seconds`` once it has trained that long (with a
    checkpoint; ``resume`` carries the run on); ``ends_by`` at that ``time.perf_counter()`` reading,
    set-up included (a job's hard limit). ``on_log(history)`` is called at every log line (a
    notebook's live loss curve). With ``resume``, ``extend_to`` raises the run's total steps and
    ``lr_decay_steps`` sets how many of its last steps decay the rate (a constant rate annealed).
    """
    # set-up: a new run, or the one in the folder carried on
    device = device or pick_device()
    run = (Run.resume(run_dir, device, extend_to, lr_decay_steps) if resume
           else Run.start(cfg, run_dir, device))
    progress = progress and run.world.main  # one progress bar for the job
    if progress and run.cfg.compile != "none":
        print(f"network: {run.trainer.compile_mode}, {run.trainer.compile_seconds:.0f} s to compile")
    end = run.cfg.steps if stop_after is None else min(run.cfg.steps, stop_after)
    with run.claimed():
        bar = tqdm(total=run.cfg.steps, initial=run.step, desc="training", unit="step", disable=not progress)
        start_step = run.step
        max_seconds = run.start_clock(max_seconds, ends_by)
        try:
            while run.step < end:
                # 1. one optimisation step
                run.advance()
                bar.update()
                # 2. what else this step is due to do
                due = run.due(end, max_seconds)
                if due.check:
                    run.check()
                if due.log:
                    bar.set_postfix(loss=f"{run.log()['loss']:.4f}")
                    if on_log is not None:
                        on_log(run.history)
                if due.samples:
                    run.save_samples()
                if due.bar and (row := run.check_bar()) is not None:
                    bar.write(describe_bar_row(row))
                if due.save:
                    run.save()
                if due.stop:
                    break
            # 3. the session's end
            run.plot_loss()
        except OSError as exc:  # a full disk while writing a log, a picture or a grid
            saved = checkpoint_step(run.checkpoint_path)
            kept = (f"the checkpoint {run.checkpoint_path} (step {saved}) is intact: make room, then --resume"
                    if saved != "none" else "no checkpoint was written yet: make room, then start again")
            raise TrainingError(f"{exc.filename or run.dir}: could not be written "
                                f"({data_module.write_failure(exc)}); {kept}") from None
        finally:
            bar.close()
    return run.result(start_step)
