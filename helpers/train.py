"""Training a denoiser: one loop for either network, with checkpoints that resume exactly.

The whole dataset sits on the device as one tensor (a few MB), so a step is: pick a batch,
pick a timestep and noise per image, one forward and backward pass. AdamW with a short linear
warm-up, gradient clipping, an exponential moving average (EMA) of the weights for sampling,
bf16 autocast on CUDA. Every random draw comes from generators whose states go into each
checkpoint, so a run killed and resumed ends with the same weights as one never interrupted.
"""
from __future__ import annotations

import copy
import csv
import os
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from . import data as data_module
from .device import check_compile_mode, compile_network, configure_backends, memory_format, pick_device
from .diffusion import Schedule, diffusion_loss
from .unet import build_model, count_parameters

CHECKPOINT = "checkpoint.pt"
LOSS_CSV = "loss.csv"
BAR_CSV = "bar.csv"
BAR_FIELDS = ["step", "seconds", "boundary_fraction", "grains", "dangling_ends", "met"]
FORMAT = "microstructure-ddpm"
FORMAT_VERSION = 1


class TrainingError(RuntimeError):
    """Training cannot go on: bad configuration, a run folder in the way, or a diverged loss."""


class CheckpointError(ValueError):
    """A checkpoint file that cannot be used: the message names the file and says why."""


# Model settings of each profile (``model`` picks the network, these its size).
COMPACT_UNET = {"widths": [16, 32, 64], "blocks": 1, "attention_at": [16]}
TINY_UNET = {"widths": [8, 16, 16], "blocks": 1, "attention_at": []}


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved in every checkpoint)."""

    data: str = "voronoi_gb_64"
    model: str = "unet"  # "unet" or "seed-unet"
    model_options: dict = field(default_factory=dict)  # UNet widths, blocks, attention_at, periodic
    schedule: str = "linear"
    diffusion_steps: int = 1000
    prediction: str = "eps"  # what the network learns to output: "eps" (the noise) or "v"
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
    compile: str = "none"  # torch.compile mode (device.COMPILE_MODES); eager where unavailable
    memory_format: str = "contiguous"  # layout of images and weights (device.MEMORY_FORMATS)

    def __post_init__(self) -> None:
        # checkpoints written before compile modes existed stored a bool
        if isinstance(self.compile, bool):
            self.compile = "default" if self.compile else "none"
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise TrainingError(f"--{name.replace('_', '-')} must be a positive whole number, got {value!r}")
        if not self.lr > 0:
            raise TrainingError(f"--lr must be a number above 0, got {self.lr!r}")
        if not isinstance(self.seed, int) or self.seed < 0:
            raise TrainingError(f"--seed must be a whole number of 0 or more, got {self.seed!r}")
        check_compile_mode(self.compile)
        memory_format(self.memory_format)  # a clear error for a name outside MEMORY_FORMATS


# Every profile trains the network to predict the velocity v rather than the noise: with the
# noise, errors in the predicted noise's mean reach the first clean-image estimates ~160x
# amplified, and many samples of the cpu profile's model came out with a gray background
# (data/pretrained/README.md compares the two). TrainConfig's default stays Ho et al.'s eps.
# The cpu and gpu profiles judge their samples (grids, fidelity bar) with DDIM-50 and eta 1, fresh
# noise at each step: on the cpu profile's model it leaves a third of the dangling boundary ends
# that eta 0 leaves (0.21 vs 0.69 per image at 10,000 steps); on the gpu profile's model, a
# fifth (0.07 vs 0.385 per image, 200 samples each, sampled on the H100; data/pretrained/README.md).
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
    known = {f.name for f in fields(TrainConfig)}
    unknown = set(settings) - known
    if unknown:
        raise TrainingError(f"unknown training settings: {', '.join(sorted(unknown))}")
    cfg = TrainConfig(**settings)
    from .sample import check_sampler

    check_sampler(run_sampler(cfg))  # a clear error for an eta outside 0..1
    return cfg


def default_profile(device: torch.device) -> str:
    """The profile a device gets unless one is named: gpu on CUDA, cpu elsewhere."""
    return "gpu" if device.type == "cuda" else "cpu"


def model_config(cfg: TrainConfig, size: int) -> dict:
    """The network's config dict for images of ``size`` pixels."""
    if cfg.model == "seed-unet":
        return {"name": "seed-unet", "size": size, "steps": cfg.diffusion_steps}
    if cfg.model == "unet":
        return {"name": "unet", "size": size, **cfg.model_options}
    raise TrainingError(f"unknown model {cfg.model!r}; expected unet or seed-unet")


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------
def _rng_states(generators: dict[str, torch.Generator]) -> dict:
    np_state = np.random.get_state()
    states = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "python": list(random.getstate()[1]) + [random.getstate()[2]],
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def _restore_rng_states(states: dict, generators: dict[str, torch.Generator]) -> None:
    torch.set_rng_state(states["torch"])
    np_state = states["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    python = states["python"]
    random.setstate((3, tuple(python[:-1]), python[-1]))
    for name, g in generators.items():
        g.set_state(states["generators"][name])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


def save_atomic(payload: dict, path: Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename: never a half-written file."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        torch.save(payload, temporary)
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()


# what every file written by this package holds, whatever its kind (training or weights)
REQUIRED_KEYS = ("model_config", "schedule", "ema", "step")


def _unreadable_reason(path: Path, exc: Exception) -> str:
    """Why torch could not read a file, in words a user can act on (torch's own text is long)."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if not head:
        return "the file is empty"
    if "central directory" in str(exc) or "PytorchStreamReader" in str(exc):
        return "the file is damaged or cut short (an incomplete archive)"
    if head != b"PK\x03\x04":
        return "it is not a PyTorch file"
    if "Weights only load failed" in str(exc):
        return ("it holds Python objects besides tensors and plain values, which are not loaded "
                "because loading them could run code")
    return exc.__class__.__name__


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """A checkpoint or weights file written by this package, loaded with weights_only=True."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises many kinds for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({_unreadable_reason(path, exc)}); "
                              "expected a file written by `python -m helpers train`") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a microstructure-ddpm checkpoint (no '{FORMAT}' format "
                              "marker); expected a file written by `python -m helpers train`")
    if payload.get("version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: written by a newer version (format {payload['version']}); "
                              "update this repository")
    missing = [key for key in REQUIRED_KEYS if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: has no {', '.join(missing)}; the file is damaged or was edited")
    return payload


def load_weights(network: torch.nn.Module, state: dict, path: Path, which: str = "ema") -> None:
    """Load ``state`` into ``network``, or say in one line how the file's weights do not fit it."""
    expected = network.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    reshaped = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or reshaped:
        parts = [f"{len(v)} {word} (first: {v[0]})" for v, word in
                 ((missing, "missing"), (unexpected, "unexpected"), (reshaped, "of another shape")) if v]
        raise CheckpointError(f"{path}: its {which} weights do not fit the network its config describes: "
                              f"{'; '.join(parts)}; the file is damaged or was edited")
    network.load_state_dict(state)


def export_weights(checkpoint: dict, path: str | Path, dtype: torch.dtype = torch.float16,
                   sampler: Optional[dict] = None) -> Path:
    """Write a small sampling-only file: the EMA weights (fp16 by default) and the configs.

    ``sampler`` ({sampler, steps, eta}) is stored as the model's recommended sampler, the one its
    published statistics were measured with; `python -m helpers sample` uses it by default.
    """
    from .sample import check_sampler

    weights = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in checkpoint["ema"].items()}
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "kind": "weights",
               "model_config": checkpoint["model_config"], "schedule": checkpoint["schedule"],
               "train_config": checkpoint["train_config"], "step": checkpoint["step"], "ema": weights}
    if sampler is not None:
        payload["sampler"] = check_sampler(sampler)
    save_atomic(payload, Path(path))
    return Path(path)


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype for a precision setting on a device (None: plain fp32).

    ``auto``: bf16 on GPUs that compute it natively (compute capability 8.0 and up: A100, H100,
    RTX 30xx and later); fp16 with a GradScaler on older ones (Colab's T4 and the V100, where
    bf16 is emulated, slowly, or refused); fp32 on CPUs and Apple's MPS, where mixed precision
    buys little for these small networks and fp32 is always right.
    """
    if precision not in PRECISIONS:
        raise TrainingError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            precision = "fp32"
        else:
            precision = "bf16" if torch.cuda.get_device_capability(device)[0] >= 8 else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise TrainingError("fp16 with a GradScaler needs a CUDA device; use fp32 or bf16")
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


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
    training step: what ``train`` loops over and what ``python -m helpers bench`` times.

    The step never waits for the device (no ``.item()``, no host-side index, no timestep check
    on the loss path), so on a GPU the host queues step after step while the kernels run; the
    loss comes back as a device tensor, read only when the loop logs.
    """

    def __init__(self, cfg: TrainConfig, images: torch.Tensor, device: torch.device):
        self.cfg, self.device = cfg, device
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
        self.network, self.compile_mode, self.compile_seconds = compile_network(
            self.model, cfg.compile, self._warm_up)

    def autocast(self):
        """The precision context of a forward pass (bf16 or fp16 autocast, or none for fp32)."""
        return torch.autocast(self.device.type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None)

    def _warm_up(self, network: torch.nn.Module) -> None:
        """Forward and backward passes at the real batch (compiles; records CUDA graphs), no update."""
        index = torch.arange(self.cfg.batch_size, device=self.device) % len(self.images)
        x, t = self.images[index], torch.zeros(self.cfg.batch_size, dtype=torch.long, device=self.device)
        for _ in range(3):  # reduce-overhead records its CUDA graphs on the later calls
            self._mark_step()
            with self.autocast():
                loss = network(x, t).float().square().mean()
            # fresh gradients each time, as in a step: under CUDA graphs a gradient is a graph
            # output, overwritten by the next replay, so it must not be accumulated into
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.zero_grad(set_to_none=True)

    def _mark_step(self) -> None:
        """Tell CUDA graphs (compile mode reduce-overhead) that a new step begins."""
        if self.cfg.compile == "reduce-overhead":
            torch.compiler.cudagraph_mark_step_begin()

    def step(self, step: int) -> torch.Tensor:
        """One optimisation step (``step`` counts from 0: it sets the learning rate and EMA decay);
        returns the loss as a device tensor."""
        cfg = self.cfg
        index = torch.randint(0, len(self.images), (cfg.batch_size,), generator=self.generators["data"],
                              device=self.device)
        x0 = self.images[index]
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(cfg, step)
        self._mark_step()
        with self.autocast():
            loss = diffusion_loss(self.network, self.schedule, x0, self.generators["noise"])
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        update_ema(self.ema, self.model, ema_decay(cfg, step))
        return loss.detach()


@dataclass
class TrainResult:
    """What a finished (or stopped) run leaves behind."""

    run_dir: Path
    step: int
    final_loss: float
    seconds: float
    images_per_second: float
    ema: torch.nn.Module
    schedule: Schedule


def _read_numeric_csv(path: Path) -> list[dict]:
    """Rows of a run's CSV log as dicts of floats (none if the file is not there yet)."""
    if not path.exists():
        return []
    with open(path, newline="") as fh:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(fh)]


def read_loss_history(run_dir: Path) -> list[dict]:
    """Rows of loss.csv: step, loss (mean over the logging window), lr, seconds."""
    return _read_numeric_csv(Path(run_dir) / LOSS_CSV)


def _write_loss_history(run_dir: Path, rows: list[dict]) -> None:
    with open(Path(run_dir) / LOSS_CSV, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "loss", "lr", "seconds"], lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({"step": int(row["step"]), "loss": f"{row['loss']:.6f}",
                             "lr": f"{row['lr']:.3e}", "seconds": f"{row['seconds']:.2f}"})


def read_bar_history(run_dir: Path) -> list[dict]:
    """Rows of bar.csv: step, seconds of training so far (checks excluded), sample means, met (0/1)."""
    return _read_numeric_csv(Path(run_dir) / BAR_CSV)


def _write_bar_history(run_dir: Path, rows: list[dict]) -> None:
    with open(Path(run_dir) / BAR_CSV, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=BAR_FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({"step": int(row["step"]), "seconds": f"{row['seconds']:.2f}",
                             "boundary_fraction": f"{row['boundary_fraction']:.4f}",
                             "grains": f"{row['grains']:.3f}", "dangling_ends": f"{row['dangling_ends']:.3f}",
                             "met": int(row["met"])})


def run_sampler(cfg: TrainConfig) -> dict:
    """The sampler a run judges its samples with ({sampler, steps, eta}; see sample.check_sampler)."""
    return {"sampler": "ddim", "steps": cfg.sample_steps, "eta": cfg.sample_eta}


def check_bar(ema: torch.nn.Module, schedule: Schedule, reference, cfg: TrainConfig,
              device: torch.device) -> dict:
    """The fidelity bar on ``cfg.bar_samples`` EMA samples (the run's sampler, seed 0) against ``reference``."""
    from . import metrics
    from .sample import generate

    images = generate(ema, schedule, cfg.bar_samples, "ddim", cfg.sample_steps, seed=0, device=device,
                      eta=cfg.sample_eta)
    return metrics.bar_summary(metrics.describe_set(metrics.boundary_masks(images)), reference)


LOCK = ".lock"  # in a run folder while a process trains there; holds that process's pid


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
    leaves behind (its lock and an empty samples/ folder), which a new run may start over."""
    for entry in run_dir.iterdir():
        if entry.name == LOCK or (entry.name == "samples" and entry.is_dir() and not any(entry.iterdir())):
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


def train(cfg: TrainConfig, run_dir: str | Path, device: Optional[torch.device] = None,
          resume: bool = False, progress: bool = True, stop_after: Optional[int] = None,
          on_log: Optional[Callable[[list[dict]], None]] = None,
          extend_to: Optional[int] = None, max_seconds: Optional[float] = None,
          lr_decay_steps: Optional[int] = None) -> TrainResult:
    """Train (or, with ``resume``, continue training) a denoiser into ``run_dir``.

    ``run_dir`` gets checkpoint.pt (written atomically every ``checkpoint_every`` steps and at
    the end), loss.csv, loss.png and samples/step_NNNNNN.png grids. ``stop_after`` ends the
    session early at that step, as an interruption would (tests and notebooks use it).
    ``on_log(history)`` is called at every logging step (a notebook's live loss curve).
    ``extend_to`` (with ``resume``) raises the run's total number of steps, to train on, and
    ``lr_decay_steps`` (with ``resume``) sets how many of its last steps decay the learning rate:
    a run trained at a constant rate can be carried on and annealed.
    ``max_seconds`` ends this session (with a checkpoint) once it has trained that long: for
    time-limited machines, with ``resume`` carrying the run on next time. With ``cfg.bar_every``
    the fidelity bar is checked on EMA samples every that many steps and logged to bar.csv with
    the training time so far (the checks' own time left out): how long the recipe takes to
    reach the bar.
    """
    from .sample import sample_grid

    device = device or pick_device()
    run_dir = Path(run_dir)
    checkpoint_path = run_dir / CHECKPOINT
    if resume:
        state = load_checkpoint(checkpoint_path, map_location=device)
        if state.get("kind") != "training":
            raise CheckpointError(f"{checkpoint_path}: holds weights only; cannot resume from it")
        cfg = TrainConfig(**state["train_config"])
        if extend_to is not None:
            if extend_to < state["step"]:
                raise TrainingError(f"--steps {extend_to} is below the checkpoint's step {state['step']}")
            cfg.steps = extend_to
        if lr_decay_steps is not None:
            cfg.lr_decay_steps = lr_decay_steps
    elif checkpoint_path.exists():
        raise TrainingError(f"{run_dir} already holds a run ({CHECKPOINT}); pass --resume to "
                            "continue it, or choose another --out")
    elif run_dir.is_dir() and _holds_files(run_dir):
        raise TrainingError(f"{run_dir} is not empty and holds no run ({CHECKPOINT}); choose a new or "
                            "empty --out (nothing in it was changed)")
    elif run_dir.exists() and not run_dir.is_dir():
        raise TrainingError(f"--out {run_dir} is a file; expected a folder for the run")
    if cfg.lr_decay_steps < 0:
        raise TrainingError(f"--lr-decay must be 0 (no decay) or a number of steps, got {cfg.lr_decay_steps}")

    images = data_module.load_images(cfg.data, limit=cfg.limit)
    run = Trainer(cfg, images, device)
    model, ema, schedule, optimizer, scaler = run.model, run.ema, run.schedule, run.optimizer, run.scaler
    size, generators = run.size, run.generators
    if progress and cfg.compile != "none":
        print(f"network: {run.compile_mode}, {run.compile_seconds:.0f} s to compile")
    step, history, base_seconds, bar_rows, check_seconds = 0, [], 0.0, [], 0.0
    if resume:
        load_weights(model, state["model"], checkpoint_path, "model")
        load_weights(ema, state["ema"], checkpoint_path, "EMA")
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        _restore_rng_states(state["rng"], generators)
        step, base_seconds = state["step"], state.get("seconds", 0.0)
        history = [row for row in read_loss_history(run_dir) if row["step"] <= step]
        bar_rows = [row for row in read_bar_history(run_dir) if row["step"] <= step]
        check_seconds = state.get("check_seconds", 0.0)
    reference = None
    if cfg.bar_every:
        from .metrics import boundary_masks, describe_set

        reference = describe_set(boundary_masks(images))
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = acquire_run_lock(run_dir)  # refuses a folder another live process is training in
    try:
        (run_dir / "samples").mkdir(exist_ok=True)

        def save_checkpoint() -> None:
            save_atomic({"format": FORMAT, "version": FORMAT_VERSION, "kind": "training",
                         "model_config": model_config(cfg, size), "schedule": schedule.config(),
                         "train_config": asdict(cfg), "step": step, "seconds": seconds(),
                         "check_seconds": check_seconds,
                         "model": model.state_dict(), "ema": ema.state_dict(),
                         "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                         "rng": _rng_states(generators),
                         "loss_window": [float(v) for v in window]}, checkpoint_path)
            _write_loss_history(run_dir, history)
            if cfg.bar_every:
                _write_bar_history(run_dir, bar_rows)

        from tqdm.auto import tqdm

        end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
        progress_bar = tqdm(total=cfg.steps, initial=step, desc="training", unit="step", disable=not progress)
        window = [torch.tensor(v, device=device) for v in state.get("loss_window", [])] if resume else []
        started, start_step = time.perf_counter(), step

        def seconds() -> float:  # wall time of the whole run, across resumes
            return base_seconds + time.perf_counter() - started

        model.train()
        while step < end:
            window.append(run.step(step).float())
            step += 1
            progress_bar.update()
            logging = step % cfg.log_every == 0 or step == cfg.steps
            out_of_time = max_seconds is not None and time.perf_counter() - started > max_seconds
            if logging or step % cfg.checkpoint_every == 0 or step == end or out_of_time:
                # checked here rather than every step: reading the loss waits for the GPU
                losses = torch.stack(window) if window else torch.zeros(0, device=device)
                bad = (~torch.isfinite(losses)).nonzero()
                if len(bad):
                    progress_bar.close()
                    first = int(bad[0])
                    raise TrainingError(
                        f"loss became {losses[first].item()} at step {step - len(window) + first + 1}; "
                        f"stopped. The last good checkpoint (step {state_step(checkpoint_path)}) is kept "
                        f"in {checkpoint_path}; try a lower --lr or fp32")
            if logging:
                mean_loss = torch.stack(window).float().mean().item()
                window = []
                history.append({"step": step, "loss": mean_loss, "lr": learning_rate(cfg, step - 1),
                                "seconds": seconds()})
                progress_bar.set_postfix(loss=f"{mean_loss:.4f}")
                if on_log is not None:
                    on_log(history)
            if step % cfg.sample_every == 0 or step == cfg.steps:
                sample_grid(ema, schedule, cfg.sample_count, cfg.sample_steps, device,
                            run_dir / "samples" / f"step_{step:06d}.png", title=f"EMA samples, step {step}",
                            eta=cfg.sample_eta)
            if cfg.bar_every and (step % cfg.bar_every == 0 or step == cfg.steps or out_of_time):
                check_start = time.perf_counter()
                row = {"step": step, **check_bar(ema, schedule, reference, cfg, device)}
                check_seconds += time.perf_counter() - check_start
                bar_rows.append({**row, "seconds": seconds() - check_seconds})
                progress_bar.write(f"step {step}: boundary fraction {row['boundary_fraction']:.3f}, grains "
                          f"{row['grains']:.1f}, dangling ends {row['dangling_ends']:.2f} per image; "
                          f"fidelity bar {'met' if row['met'] else 'not met'}")
            if step % cfg.checkpoint_every == 0 or step == end or out_of_time:
                save_checkpoint()
            if out_of_time:
                break
        progress_bar.close()
        session = time.perf_counter() - started
        if history:
            from .viz import loss_curve

            loss_curve(history, path=run_dir / "loss.png", prediction=cfg.prediction)
        trained = step - start_step
        final = history[-1]["loss"] if history else float("nan")
        return TrainResult(run_dir, step, final, seconds(),
                           trained * cfg.batch_size / session if trained else 0.0, ema, schedule)
    finally:
        lock.unlink(missing_ok=True)


def state_step(path: Path) -> str:
    """The step of the checkpoint at ``path``, for messages ('none' if there is none)."""
    try:
        return str(load_checkpoint(path)["step"])
    except CheckpointError:
        return "none"


def describe_model(cfg: TrainConfig, size: int) -> str:
    """One line: which network, how many parameters."""
    model = build_model(model_config(cfg, size))
    return f"{cfg.model} {model_config(cfg, size)} with {count_parameters(model):,} parameters"
