"""Generating microstructures from a trained model: batches, PNG folders, reverse-process GIFs."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch

from . import data as data_module
from .diffusion import Schedule, ddim_sample, ddim_timesteps, ddpm_sample, dpm_solver_sample
from .unet import build_model

# ddpm: every step (steps ignored); ddim: any steps, eta 0..1; dpm++2m: DPM-Solver++(2M), any
# steps (10-25 is its range), eta 0 (the ODE) to 1 (its SDE variant, fresh noise every step)
SAMPLERS = ("ddpm", "ddim", "dpm++2m")
# DDIM-50 without noise (Song et al.'s deterministic sampler), for models that recommend nothing else
DEFAULT_SAMPLER = {"sampler": "ddim", "steps": 50, "eta": 0.0}


def check_sampler(settings: dict) -> dict:
    """``settings`` ({sampler, steps, eta}) if they describe a sampler; a clear error otherwise."""
    if set(settings) != set(DEFAULT_SAMPLER):
        raise ValueError(f"sampler settings {settings!r}: expected exactly the keys "
                         f"{', '.join(DEFAULT_SAMPLER)}")
    if settings["sampler"] not in SAMPLERS:
        raise ValueError(f"unknown sampler {settings['sampler']!r}; expected one of {', '.join(SAMPLERS)}")
    if isinstance(settings["steps"], bool) or not isinstance(settings["steps"], int) or settings["steps"] < 1:
        raise ValueError(f"sampler steps must be a positive whole number, got {settings['steps']!r}")
    if not isinstance(settings["eta"], (int, float)) or not 0 <= settings["eta"] <= 1:
        raise ValueError(f"eta must be a number from 0 to 1, got {settings['eta']!r}")
    return {"sampler": settings["sampler"], "steps": settings["steps"], "eta": float(settings["eta"])}


def recommended_sampler(payload: dict) -> dict:
    """The sampler a model file was measured with (stored at export), else ``DEFAULT_SAMPLER``.

    The best sampler depends on the model: an under-trained network can gain more from DDIM's
    fresh noise (eta > 0) than a well-trained one, so the shipped model says which one its
    published statistics used, and ``python -m helpers sample`` uses it unless told otherwise.
    """
    return check_sampler(payload["sampler"]) if "sampler" in payload else dict(DEFAULT_SAMPLER)


def describe_sampler(settings: dict) -> str:
    """Short words for a sampler setting, e.g. 'DDIM-50, eta 1' or 'DDPM (every step)'."""
    if settings["sampler"] == "ddpm":
        return "DDPM (every step)"
    name = "DDIM" if settings["sampler"] == "ddim" else "DPM-Solver++(2M)"
    return f"{name}-{settings['steps']}, eta {settings['eta']:g}"


PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16}


def resolve_precision(precision: str, device: torch.device) -> str:
    """``auto`` -> bf16 where the processor computes it natively (device.native_bf16), else fp32."""
    from .device import native_bf16

    if precision == "auto":
        return "bf16" if native_bf16(torch.device(device)) else "fp32"
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected auto or one of {', '.join(PRECISIONS)}")
    return precision


def at_precision(model: torch.nn.Module, precision: str, device: torch.device) -> torch.nn.Module:
    """The network on ``device`` with its weights in ``precision`` (``auto``, fp32 or bf16), in eval mode.

    fp32 returns the network itself; bf16 a copy: ``generate`` then runs the network in bf16 and
    its own arithmetic in float32. bf16 on a CPU runs its convolutions 1.26x faster on NHWC
    tensors (2-core EPYC, 16 images; README, Performance). fp32 stays NCHW, where an image does
    not depend on the batch it was drawn in (bit for bit; NHWC kernels differ by ~1e-5 between
    batch sizes); GPUs train NCHW.
    """
    import copy

    precision = resolve_precision(precision, device)
    if precision == "fp32":
        return model.to(device).eval()
    nhwc = torch.device(device).type == "cpu"
    layout = torch.channels_last if nhwc else torch.contiguous_format
    return copy.deepcopy(model).to(device, dtype=PRECISIONS[precision], memory_format=layout).eval()


def load_model(path: str | Path, device: Optional[torch.device] = None, precision: str = "fp32"):
    """The EMA network of a checkpoint or weights file, in eval mode, and its schedule.

    ``precision`` bf16 (or ``auto`` where bf16 is native) keeps the weights in bfloat16
    (``at_precision``).
    """
    from .device import pick_device
    from .train import CheckpointError, load_checkpoint, load_weights

    device = device or pick_device()
    resolve_precision(precision, device)  # a clear error before the file is read
    payload = load_checkpoint(path, map_location="cpu")
    try:
        model = build_model(payload["model_config"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: its network config {payload['model_config']!r} builds no network "
                              f"({exc}); the file is damaged or was edited") from None
    load_weights(model, {k: v.float() if v.is_floating_point() else v for k, v in payload["ema"].items()},
                 Path(path))
    schedule = Schedule.create(**payload["schedule"])
    return at_precision(model, precision, device), schedule, payload


def visited_timesteps(schedule: Schedule, sampler: str, steps: int) -> list[int]:
    """The timesteps a sampler passes through, in order (T-1 down to 0)."""
    if sampler == "ddpm":
        return list(range(schedule.steps - 1, -1, -1))
    if sampler in ("ddim", "dpm++2m"):
        return ddim_timesteps(schedule.steps, steps)
    raise ValueError(f"unknown sampler {sampler!r}; expected one of {', '.join(SAMPLERS)}")


def gif_timesteps(visited: list[int], max_frames: int = 60) -> list[int]:
    """Which of the visited timesteps become GIF frames: at most ``max_frames``, crowded near 0."""
    from .viz import frame_timesteps

    ascending = sorted(visited)
    if len(ascending) <= max_frames:
        return ascending[::-1]
    picks = frame_timesteps(len(ascending), max_frames)
    return sorted({ascending[i] for i in picks}, reverse=True)


def reduced_precision(model: torch.nn.Module, dtype: torch.dtype):
    """A network whose weights are in ``dtype`` (bf16, fp16) as a float32 function: the sampler's
    arithmetic stays in float32, only the network runs in the smaller type."""

    def network(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return model(x.to(dtype), t).float()

    return network


@torch.no_grad()
def generate(model, schedule: Schedule, n: int, sampler: str = "ddim", steps: int = 50,
             eta: float = 0.0, variance: str = "beta", clip: bool = True, seed: int = 0,
             batch_size: int = 256, device: Optional[torch.device] = None, callback=None,
             progress: bool = False) -> torch.Tensor:
    """``n`` samples in [-1, 1] (float32, on the CPU), made in batches of ``batch_size``.

    Seeded through one generator, so the same arguments give the same images. ``callback`` is
    passed to the sampler for the first batch only (GIF frames). A network whose weights are
    bf16 or fp16 runs in that type, the sampler's own arithmetic in float32.
    """
    from tqdm.auto import tqdm

    if n <= 0:
        raise ValueError(f"--n must be a positive whole number, got {n}")
    if batch_size <= 0:
        raise ValueError(f"--batch-size must be a positive whole number, got {batch_size}")
    per_batch = len(visited_timesteps(schedule, sampler, steps))  # also validates sampler and steps
    weights = next(model.parameters())
    device = device or weights.device
    size = model.config()["size"]
    network = model if weights.dtype == torch.float32 else reduced_precision(model, weights.dtype)
    generator = torch.Generator(device=device).manual_seed(seed)
    starts = range(0, n, batch_size)
    # the bar counts network calls (denoising steps), so a single large batch still shows progress
    bar = tqdm(total=len(starts) * per_batch, desc=f"sampling {n} ({sampler})", unit="step",
               disable=not progress)
    batches = []
    for start in starts:
        shape = (min(batch_size, n - start), 1, size, size)
        first = callback if start == 0 else None

        def hook(step, t, x, x0_hat, first=first):
            bar.update()
            if first is not None:
                first(step, t, x, x0_hat)

        if sampler == "ddpm":
            x = ddpm_sample(network, schedule, shape, device, generator, variance, clip, hook)
        elif sampler == "ddim":
            x = ddim_sample(network, schedule, shape, steps, eta, device, generator, clip, hook)
        else:
            x = dpm_solver_sample(network, schedule, shape, steps, eta, device, generator, clip, hook)
        batches.append(x.float().cpu())
    bar.close()
    return torch.cat(batches)


def sample_grid(model, schedule: Schedule, n: int, steps: int, device, path: Path,
                title: str | None = None, seed: int = 0, eta: float = 0.0) -> Path:
    """A grid of ``n`` DDIM samples saved to ``path`` (the progress pictures of training)."""
    import matplotlib.pyplot as plt

    from .viz import image_grid

    was_training = model.training
    model.eval()
    images = generate(model, schedule, n, "ddim", steps, seed=seed, device=device, eta=eta)
    model.train(was_training)
    fig = image_grid(images, title=title, path=path)
    plt.close(fig)
    return Path(path)


def write_pngs(images: torch.Tensor, out: Path, force: bool = False) -> list[Path]:
    """Save samples as 8-bit PNGs (fixed mapping [-1, 1] -> [0, 255]) with a manifest.csv."""
    out = data_module.prepare_output_dir(Path(out), force)
    paths = []
    for i, image in enumerate(data_module.to_uint8(images.numpy()[:, 0])):
        path = out / f"{i:05d}.png"
        data_module.save_png(image, path)
        paths.append(path)
    (out / data_module.MANIFEST).write_text("file\n" + "".join(f"{p.name}\n" for p in paths))
    return paths


def reverse_process_gif(model, schedule: Schedule, n: int, path: Path, sampler: str = "ddim",
                        steps: int = 50, seed: int = 0, clip: bool = True, max_frames: int = 60,
                        variance: str = "beta", device=None, eta: float = 0.0,
                        show_x0: bool = True) -> tuple[torch.Tensor, Path]:
    """Sample ``n`` images and write the reverse process as a GIF; returns (samples, gif path).

    Each frame shows the batch after the step and, with ``show_x0``, beside it the step's estimate
    of the clean image: the estimate sharpens long before the noisy images show structure.
    """
    from .viz import save_gif, to_frame

    keep = set(gif_timesteps(visited_timesteps(schedule, sampler, steps), max_frames))
    frames: list[np.ndarray] = []

    def capture(step, t, x, x0_hat):
        if t in keep:
            frame = to_frame(x, label=f"{sampler}: x after t = {t}")
            if show_x0:
                frame = np.concatenate([frame, to_frame(x0_hat, label="estimate of x0")], axis=1)
            frames.append(frame)

    images = generate(model, schedule, n, sampler, steps, eta, variance=variance, clip=clip, seed=seed,
                      batch_size=n, device=device, callback=capture)
    return images, save_gif(frames, path)
