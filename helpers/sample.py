"""Generating microstructures from a trained model: the sampler, batches, PNG folders, GIFs."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import matplotlib.pyplot as plt
import numpy as np
import torch
from tqdm.auto import tqdm

from . import data as data_module
from .checkpoint import fast_evidence_keys, fast_sampler_refusal
from .device import drawn_layout, sampling_layout
from .diffusion import SPACINGS, VARIANCES, Schedule, ddim_sample, ddpm_sample, dpm_solver_sample, sampling_timesteps
from .viz import frame_timesteps, image_grid, save_gif, to_frame

# ddpm: every step (steps ignored); ddim: any steps, eta 0..1; dpm++2m: DPM-Solver++(2M), any
# steps (10-25 is its range), eta 0 (the ODE) to 1 (its SDE variant, fresh noise every step); an
# eta between 0 and 1 weighs the noise differently in ddim and dpm++2m (diffusion.dpm_solver_sample)
SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpm++2m": dpm_solver_sample}
SAMPLER_NAMES = {"ddpm": "DDPM", "ddim": "DDIM", "dpm++2m": "DPM-Solver++(2M)"}
STORED_KEYS = ("sampler", "steps", "eta")  # what a model file keeps of a sampler it names


@dataclass(frozen=True)
class Sampler:
    """How samples are drawn: the algorithm and its settings, checked when the value is made.

    ``kind`` is a SAMPLERS name; ``steps`` the network calls of ddim and dpm++2m (ddpm takes every
    step of the schedule); ``eta`` their fresh noise per step, 0 (deterministic) to 1 (in between,
    the two samplers weigh it differently);
    ``variance`` DDPM's step variance (diffusion.VARIANCES); ``clip`` clips each step's estimate
    of the clean image to [-1, 1]; ``guidance`` is classifier-free guidance's w for a conditional
    model (0: the conditional prediction alone; see ``guided``); ``spacing`` how ddim and dpm++2m
    pick their timesteps (diffusion.SPACINGS: evenly, or quadratic, crowded near the data).
    """

    kind: str = "ddim"
    steps: int = 50
    eta: float = 0.0
    variance: str = "beta"
    clip: bool = True
    guidance: float = 0.0
    spacing: str = "uniform"

    def __post_init__(self) -> None:
        if self.kind not in SAMPLERS:
            raise ValueError(f"unknown sampler {self.kind!r}; expected one of {', '.join(SAMPLERS)}")
        object.__setattr__(self, "steps", data_module.check_whole("sampler steps", self.steps, error=ValueError))
        if isinstance(self.eta, bool) or not isinstance(self.eta, (int, float)) or not 0 <= self.eta <= 1:
            raise ValueError(f"eta must be a number from 0 to 1, got {self.eta!r}")
        if not isinstance(self.clip, bool):
            raise ValueError(f"clip must be true or false, got {self.clip!r}")
        if self.variance not in VARIANCES:
            raise ValueError(f"unknown variance {self.variance!r}; expected one of {', '.join(VARIANCES)}")
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)) or \
                not 0 <= self.guidance < float("inf"):
            raise ValueError(f"guidance must be a number of 0 (none) or more, got {self.guidance!r}")
        if self.spacing not in SPACINGS:
            raise ValueError(f"unknown spacing {self.spacing!r}; expected one of {', '.join(SPACINGS)}")
        if self.kind == "ddpm":  # every step: there is nothing to space
            object.__setattr__(self, "spacing", "uniform")
        object.__setattr__(self, "eta", float(self.eta))
        object.__setattr__(self, "guidance", float(self.guidance))

    def describe(self) -> str:
        """Short words, e.g. 'DDIM-50, eta 1' or 'DDPM (every step)'; settings left at their
        defaults (beta variance, clipping, uniform spacing) are not mentioned."""
        if self.kind == "ddpm":
            words = f"DDPM (every step{', posterior variance' if self.variance == 'posterior' else ''})"
        else:
            words = f"{SAMPLER_NAMES[self.kind]}-{self.steps}, eta {self.eta:g}"
            words += f", {self.spacing} spacing" if self.spacing != "uniform" else ""
        return words + ("" if self.clip else ", no clipping") + (f", guidance {self.guidance:g}" if self.guidance else "")

    def timesteps(self, schedule: Schedule) -> list[int]:
        """The timesteps the sampler passes through, in order (T-1 down to 0)."""
        if self.kind == "ddpm":
            return list(range(schedule.steps - 1, -1, -1))
        return sampling_timesteps(schedule.steps, self.steps, self.spacing)

    def draw(self, network: Callable, schedule: Schedule, shape: tuple[int, ...], *, device: torch.device,
             generator: torch.Generator, callback: Optional[Callable] = None) -> torch.Tensor:
        """One batch of ``shape`` from pure noise, by this sampler (diffusion's sampler functions)."""
        settings = dict(device=device, generator=generator, clip=self.clip, callback=callback)
        if self.kind == "ddpm":
            return ddpm_sample(network, schedule, shape, variance=self.variance, **settings)
        return SAMPLERS[self.kind](network, schedule, shape, steps=self.steps, eta=self.eta,
                                   spacing=self.spacing, **settings)

    def replace(self, **changes) -> "Sampler":
        """A copy with the given settings changed (None: keep)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def stored(self) -> dict:
        """The recommendation a model file keeps: {sampler, steps, eta}, plus variance, clip,
        guidance and spacing when they differ from the defaults."""
        settings = {"sampler": self.kind, "steps": self.steps, "eta": self.eta}
        if self.variance != "beta":
            settings["variance"] = self.variance
        if not self.clip:
            settings["clip"] = False
        if self.guidance:
            settings["guidance"] = self.guidance
        if self.spacing != "uniform":
            settings["spacing"] = self.spacing
        return settings

    @classmethod
    def from_stored(cls, settings: dict) -> "Sampler":
        """The sampler a model file recommends (``stored``'s dict); a clear error for anything else."""
        optional = {"variance": "beta", "clip": True, "guidance": 0.0, "spacing": "uniform"}
        if not isinstance(settings, dict) or not set(STORED_KEYS) <= set(settings) <= {*STORED_KEYS, *optional}:
            raise ValueError(f"sampler settings {settings!r}: expected the keys {', '.join(STORED_KEYS)} "
                             f"(and optionally {', '.join(optional)})")
        return cls(settings["sampler"], settings["steps"], settings["eta"],
                   **{key: settings.get(key, default) for key, default in optional.items()})


# DDIM-50 without noise (Song et al.'s deterministic sampler), for models that recommend nothing else
DEFAULT_SAMPLER = Sampler("ddim", 50, 0.0)


def recommended_sampler(payload: dict) -> Sampler:
    """The sampler a model file recommends (stored at export, or later by
    ``checkpoint.store_recommended_sampler``), else ``DEFAULT_SAMPLER``.

    The best sampler depends on the model: an under-trained network can gain more from DDIM's
    fresh noise (eta > 0) than a well-trained one, so a model file says which one was measured best
    on it, and ``python -m helpers sample`` uses it unless told otherwise (a shipped model's card
    says which sampler drew each of its published tables).
    """
    return Sampler.from_stored(payload["sampler"]) if "sampler" in payload else DEFAULT_SAMPLER


def fast_sampler(payload: dict) -> Sampler:
    """A sampler with fewer network calls than the recommended one, measured on this model
    (``sample --fast``), stored beside it by ``tools/sampler_sweep.py --store-fast`` (the fidelity
    bar) or, for a conditional model, ``tools/control_fast.py --store-fast`` (no worse than the
    recommended sampler under ``control``, beyond ``control.FAST_TOLERANCES``).

    The recommended sampler is the one measured best on the model; the fast one takes
    fewer network calls and was also measured (the shipped models' READMEs give both). The errors
    read after the file's name: "FILE stores no fast sampler ...".
    """
    refusal = fast_sampler_refusal(payload)
    if refusal:
        raise ValueError(f"cannot use a fast sampler: it is {refusal}")
    if "fast_sampler" not in payload:
        tool = "control_fast.py" if "condition" in payload else "sampler_sweep.py"
        raise ValueError(f"stores no fast sampler (none was measured and stored for it); sample without --fast, "
                         f"or measure one with tools/{tool} --store-fast")
    try:
        return Sampler.from_stored(payload["fast_sampler"])
    except ValueError as exc:
        raise ValueError(f"holds an unusable fast sampler ({exc})") from None


def fast_sampler_evidence(payload: dict) -> str:
    """What the file says vetted its fast sampler, in words, e.g. "met the fidelity bar on this model
    in 2 sets of 200 samples: bf16 seed 0 (0.08 dangling ends per image), fp32 seed 0 (0.09)", or
    for a conditional model what ``control`` measured against its recommended sampler; empty where
    it records nothing. The errors read after the file's name, as ``fast_sampler``'s."""
    rows, keys = payload.get("fast_sampler_measured") or [], fast_evidence_keys(payload)
    if not isinstance(rows, list) or not all(
            isinstance(row, dict) and all(isinstance(row.get(key), kind) for key, kind in keys.items())
            for row in rows):
        raise ValueError(f"holds an unusable record of what vetted its fast sampler (expected rows of "
                         f"{', '.join(keys)}; got {rows!r:.80})")
    rows = sorted(rows, key=lambda row: (row["precision"], row["seed"]))
    if not rows:
        return ""

    def drawn(row: dict) -> str:  # 'fp32', or 'fp32 in NHWC' where the set was not drawn in its precision's default
        layout = drawn_layout(row)
        if layout == sampling_layout(row["precision"], torch.device("cpu")):
            return row["precision"]
        return row["precision"] + (" in NHWC" if layout == "channels_last" else " in NCHW")

    sets = f"{len(rows)} set{'s' if len(rows) > 1 else ''}"
    if "condition" in payload:
        each = [f"{drawn(row)} seed {row['seed']} (R^2 {row['r2']:.3f}, MAE {row['mae']:.2f}, "
                f"{row['dangling_ends']:.2f} dangling ends per image; recommended {row['recommended_r2']:.3f}, "
                f"{row['recommended_mae']:.2f}, {row['recommended_dangling_ends']:.2f})" for row in rows]
        shapes = sorted({f"{row['targets']} target{'s' if row['targets'] > 1 else ''} x "
                         f"{row['samples'] // max(row['targets'], 1)}" for row in rows})
        return (f"was no worse than its recommended sampler under control, beyond set margins, in {sets} of "
                f"{' or '.join(shapes)} samples: {', '.join(each)}")
    sizes = sorted({row["samples"] for row in rows})
    each = [f"{drawn(row)} seed {row['seed']} ({row['dangling_ends']:.3g}"
            f"{' dangling ends per image' if i == 0 else ''})" for i, row in enumerate(rows)]
    return f"met the fidelity bar on this model in {sets} of {' or '.join(map(str, sizes))} samples: {', '.join(each)}"


def gif_timesteps(visited: list[int], max_frames: int = 60) -> list[int]:
    """Which of the visited timesteps become GIF frames: at most ``max_frames``, crowded near 0."""
    ascending = sorted(visited)
    if len(ascending) <= max_frames:
        return ascending[::-1]
    picks = frame_timesteps(len(ascending), max_frames)
    return sorted({ascending[i] for i in picks}, reverse=True)


def reduced_precision(model: torch.nn.Module, dtype: torch.dtype):
    """A network whose weights are in ``dtype`` (bf16, fp16) as a float32 function: the sampler's
    arithmetic stays in float32, only the network runs in the smaller type."""

    def network(x: torch.Tensor, t: torch.Tensor, *condition: torch.Tensor) -> torch.Tensor:
        return model(x.to(dtype), t, *condition).float()

    return network


# the pixels a network call takes on a CPU, 8 images of 64x64: larger calls allocate activations
# big enough that the C library's allocator takes them fresh from the system and gives them back
# after each operation, and the page faults that follow cost more time than the arithmetic
# (python -m helpers bench --images-per-call 8 64 --sample-n 64 measures it: benchmarks/README.md, Images per network call)
CPU_PIXELS_PER_CALL = 8 * 64 * 64


def call_size(device: torch.device, side: int, asked: Optional[int] = None,
              batch: Optional[int] = None) -> Optional[int]:
    """The most images of ``side`` x ``side`` pixels one network call takes while sampling: ``asked``,
    else on a CPU as many as ``CPU_PIXELS_PER_CALL`` holds (at least one), else None (the whole batch).
    Given the ``batch``, the images a call of that batch really takes (what benchmarks record)."""
    most = (data_module.check_whole("--images-per-call", asked, error=ValueError) if asked is not None
            else max(1, CPU_PIXELS_PER_CALL // side ** 2) if torch.device(device).type == "cpu" else None)
    return most if batch is None else min(most or batch, batch)


def in_pieces(network: Callable, most: int) -> Callable:
    """The network ``f(x, t, *condition)`` called on at most ``most`` images at a time, the pieces'
    outputs joined in order. Each image's prediction depends on that image alone (the networks'
    normalisations are per image), so the output is the same up to rounding (a convolution may
    sum in another order for another batch); what changes is the memory each call touches.
    Each piece's output is copied before the next call, which may reuse its memory (CUDA graphs)."""

    def pieced(x: torch.Tensor, t: torch.Tensor, *condition: torch.Tensor) -> torch.Tensor:
        if len(x) <= most:
            return network(x, t, *condition)
        if any(len(a) != len(x) for a in (t, *condition)):
            raise ValueError(f"network inputs of {', '.join(str(len(a)) for a in (x, t, *condition))} rows; "
                             "expected one per image in each")
        return torch.cat([network(*parts).clone() for parts in zip(*(a.split(most) for a in (x, t, *condition)))])

    return pieced


def guided(network: Callable, condition: torch.Tensor, guidance: float) -> Callable:
    """Classifier-free guidance (Ho & Salimans 2022) as a network ``f(x, t)``: with ``c`` the condition
    and the null condition (NaN) for "none",

        f(x, t) = (1 + w) f(x, t, c) - w f(x, t, none),      w = ``guidance``,

    the conditional prediction pushed away from the unconditional one. The noise estimate (and x0's)
    is affine in the network's output at a given x_t and t, and the weights 1 + w and -w add up to 1,
    so the same mix serves a network that predicts eps or v. w = 0 is the conditional model alone
    (one network call); w > 0 makes both predictions in one batch of twice the size.
    """
    condition = condition.reshape(1, -1)
    if not guidance:
        return lambda x, t: network(x, t, condition.to(x.device).expand(len(x), -1))

    def mixed(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        c = condition.to(x.device).expand(len(x), -1)
        both = network(torch.cat([x, x]), torch.cat([t, t]), torch.cat([c, torch.full_like(c, float("nan"))]))
        conditional, unconditional = both.chunk(2)
        return (1 + guidance) * conditional - guidance * unconditional

    return mixed


def canvas_size(model, size: Optional[int] = None) -> int:
    """The side of the images ``model`` draws: its training size, or ``size`` when the network
    can take it. A UNet is convolutional apart from its attention (which has no positions), so
    it runs on any canvas its down-sampling divides; a periodic one samples a torus of that size,
    which tiles. SeedUNet's LayerNorms fix its size."""
    config = model.config()
    if size is None or size == config["size"]:
        return config["size"]
    if config["name"] != "unet":
        raise ValueError(f"a {config['name']} draws only the {config['size']}x{config['size']} images it was "
                         f"built for, not {size}x{size}")
    factor = 2 ** (len(config["widths"]) - 1)
    if isinstance(size, bool) or not isinstance(size, int) or size < factor or size % factor:
        raise ValueError(f"--size must be a multiple of {factor} (this network halves the image "
                         f"{len(config['widths']) - 1} times), got {size!r}")
    return size


def window_weights(window: int) -> torch.Tensor:
    """A (window, window) weight that is near 0 at a window's edges and peaks at its centre:
    sin^2 along each axis. Windows half a window apart add up to exactly 1 everywhere
    (sin^2 + cos^2 = 1), so the weighted average needs no division."""
    ramp = torch.sin(torch.pi * (torch.arange(window, dtype=torch.float64) + 0.5) / window) ** 2
    return (ramp[:, None] * ramp[None, :]).float()


def windowed(network: Callable, window: int) -> Callable:
    """A network ``f(x, t)`` for a canvas larger than the one it was trained on, as overlapping
    windows (MultiDiffusion, Bar-Tal et al. 2023, on a torus): the canvas is cut into
    ``window``-sized crops every ``window // 2`` pixels, wrapping around its edges; the network
    predicts each crop; the predictions are blended with ``window_weights``. The sampler then
    takes one step with the blended prediction and one noise field for the canvas, so every window
    agrees on one canvas at every step (for a deterministic step without clipping this is exactly
    MultiDiffusion's average of the windows' own steps; with clipping or fresh noise, a variant
    that keeps the noise at its right variance). Each crop is the size the network was trained
    on, so its attention sees a field of the size it knows; the weights down-weight the crop
    edges, next to the false wrap a periodic network sees in a crop. Costs 4 network calls per
    pixel of canvas.
    """
    stride = window // 2
    weights = window_weights(window)

    def blended(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        n, _, height, width = x.shape
        if height % stride or width % stride or height < window or width < window:
            raise ValueError(f"a canvas of {height}x{width} does not split into {window}-pixel windows "
                             f"every {stride} pixels")
        shifts = [(r, c) for r in range(0, height, stride) for c in range(0, width, stride)]
        crops = torch.cat([torch.roll(x, (-r, -c), dims=(2, 3))[..., :window, :window] for r, c in shifts])
        predicted = network(crops, t.repeat(len(shifts))).float() * weights.to(x.device)
        # add each window in place on a canvas one stride wider, then wrap the overhang around
        out = torch.zeros(n, x.shape[1], height + stride, width + stride, device=x.device)
        for (r, c), part in zip(shifts, predicted.split(n)):
            out[..., r:r + window, c:c + window] += part
        out[..., :stride, :] += out[..., height:, :]  # the rows past the bottom edge
        out[..., :, :stride] += out[..., :, width:]  # then the columns past the right, corner included
        return out[..., :height, :width].to(x.dtype)

    return blended


# images per batch of generate unless told otherwise
BATCH_SIZE = 256


def derived_seed(*keys: int) -> int:
    """A seed for the tuple of whole numbers ``keys`` (numpy's SeedSequence): distinct tuples give
    unrelated streams, whatever their numbers."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, dtype=np.uint64)[0] >> 1)


def batch_seed(seed: int, batch: int) -> int:
    """The seed of batch number ``batch`` of a draw seeded ``seed``. The first batch keeps
    ``seed``; each later one gets its own, so that a batch's images do not depend on which
    process draws it or on the batches before it (a sharded job draws the same images)."""
    return seed if batch == 0 else derived_seed(seed, batch)


def each_batch(model, schedule: Schedule, n: int, sampler: Sampler = DEFAULT_SAMPLER, *, seed: int = 0,
               batch_size: int = BATCH_SIZE, device: Optional[torch.device] = None, callback=None,
               progress: bool = False, condition: Optional[torch.Tensor] = None,
               batches: Optional[Iterable[int]] = None, size: Optional[int] = None,
               windows: bool = False, images_per_call: Optional[int] = None) -> Iterator[tuple[int, torch.Tensor]]:
    """The batches of ``generate`` one at a time, as (index of the batch's first image, images):
    all of them, or only the batch numbers in ``batches`` (a rank's share of a sharded job), the
    network called on at most ``images_per_call`` images at a time (see ``generate``)."""
    n = data_module.check_whole("--n", n, error=ValueError)
    batch_size = data_module.check_whole("--batch-size", batch_size, error=ValueError)
    per_batch = len(sampler.timesteps(schedule))  # also checks the steps against the schedule
    weights = next(model.parameters())
    device = torch.device(device) if device is not None else weights.device
    trained, size = model.config()["size"], canvas_size(model, size)
    # the network sees the training size with windows (it is called on crops), else the canvas
    most = call_size(device, trained if windows else size, images_per_call)
    network = model if weights.dtype == torch.float32 else reduced_precision(model, weights.dtype)
    if most is not None:
        network = in_pieces(network, most)
    if condition is not None:
        if "conditions" not in model.config():
            raise ValueError("this model was trained without a condition; sample it without one")
        network = guided(network, condition, sampler.guidance)
    elif sampler.guidance:
        raise ValueError(f"guidance {sampler.guidance:g} needs a condition to guide towards")
    if windows:
        if size < trained or size % (trained // 2):
            raise ValueError(f"--windows needs a canvas that {trained // 2}-pixel steps divide, of at least "
                             f"{trained}, got {size}")
        network = windowed(network, trained)
    numbers = list(range(-(-n // batch_size)) if batches is None else batches)
    # the bar counts network calls (denoising steps), so a single large batch still shows progress
    images = sum(max(0, min(batch_size, n - number * batch_size)) for number in numbers)
    bar = tqdm(total=len(numbers) * per_batch, desc=f"sampling {images} ({sampler.kind})", unit="step",
               disable=not progress)
    for number in numbers:
        first = callback if number == 0 else None

        def hook(step, t, x, x0_hat, first=first):
            bar.update()
            if first is not None:
                first(step, t, x, x0_hat)

        start = number * batch_size
        generator = torch.Generator(device=device).manual_seed(batch_seed(seed, number))
        shape = (min(batch_size, n - start), 1, size, size)
        images = sampler.draw(network, schedule, shape, device=device, generator=generator, callback=hook).float().cpu()
        if not torch.isfinite(images).all():  # written out, NaN would become black pixels without a word
            cause = f" (guidance {sampler.guidance:g} may be too large for float32)" if sampler.guidance else ""
            raise ValueError(f"{sampler.describe()} drew NaN or infinite values in the images from {start}{cause}; "
                             f"expected finite images")
        yield start, images
    bar.close()


def generate(model, schedule: Schedule, n: int, sampler: Sampler = DEFAULT_SAMPLER, *, seed: int = 0,
             batch_size: int = BATCH_SIZE, device: Optional[torch.device] = None, callback=None,
             progress: bool = False, condition: Optional[torch.Tensor] = None,
             batches: Optional[Iterable[int]] = None, size: Optional[int] = None,
             windows: bool = False, images_per_call: Optional[int] = None) -> torch.Tensor:
    """``n`` samples in [-1, 1] (float32, on the CPU), made in batches of ``batch_size``.

    Each batch has its own seed (``batch_seed``), so the same arguments give the same images,
    and image i is the same image whichever process draws it. ``batches`` draws only those
    batch numbers (a rank's share). ``callback`` is passed to the sampler for the first batch only
    (GIF frames). A network whose weights are bf16 or fp16 runs in that type, the sampler's own
    arithmetic in float32. ``condition`` (a conditional network's normalised vector,
    ``conditions.target_vector``) asks every image for it, guided by ``sampler.guidance``.
    ``size`` draws a larger (or smaller) canvas than the network was trained on (``canvas_size``);
    ``windows`` draws it as overlapping windows of the training size (``windowed``).
    ``images_per_call`` caps the images of one network call (``in_pieces``; default ``call_size``'s:
    ``CPU_PIXELS_PER_CALL`` on a CPU, the whole batch elsewhere): it changes the speed, not the
    images (up to rounding).
    """
    parts = [images for _, images in each_batch(model, schedule, n, sampler, seed=seed, batch_size=batch_size,
                                                 device=device, callback=callback, progress=progress,
                                                 condition=condition, batches=batches, size=size, windows=windows,
                                                 images_per_call=images_per_call)]
    if parts:
        return torch.cat(parts)
    side = canvas_size(model, size)  # a rank given no batches: an empty set of the right shape
    return torch.zeros(0, 1, side, side)


def draw_batch(model, schedule: Schedule, sampler: Sampler, number: int, count: int, **options) -> torch.Tensor:
    """Batch ``number`` of ``count`` samples, seeded as ``generate`` seeds its batches (``batch_seed``):
    batch k of ``generate`` when ``count`` is its ``batch_size``. For a caller that draws batch after
    batch until it has enough (``keep.kept_batches``). ``options`` are ``generate``'s."""
    return generate(model, schedule, (number + 1) * count, sampler, batch_size=count, batches=[number], **options)


def sample_grid(model, schedule: Schedule, n: int, path: Path, sampler: Sampler = DEFAULT_SAMPLER, *,
                device: Optional[torch.device] = None, title: str | None = None, seed: int = 0) -> Path:
    """A grid of ``n`` samples saved to ``path`` (the progress pictures of training)."""
    was_training = model.training
    model.eval()
    images = generate(model, schedule, n, sampler, seed=seed, device=device)
    model.train(was_training)
    fig = image_grid(images, title=title, path=path)
    plt.close(fig)
    return Path(path)


def png_name(index: int, n: int) -> str:
    """The file name of image ``index`` of a set of ``n``: zero-padded (at least five digits) so
    that the names sort in the images' order."""
    return f"{index:0{max(5, len(str(n - 1)))}d}.png"


def write_batch(images: torch.Tensor, out: Path, start: int, n: int) -> list[Path]:
    """Save a batch of samples (images ``start``... of a set of ``n``) as 8-bit PNGs in ``out``
    (fixed mapping [-1, 1] -> [0, 255])."""
    paths = []
    for i, image in enumerate(data_module.to_uint8(images.numpy()[:, 0]), start):
        path = Path(out) / png_name(i, n)
        data_module.save_png(image, path)
        paths.append(path)
    return paths


def write_manifest(out: Path, n: int, written: Optional[int] = None) -> None:
    """The manifest.csv of a folder of ``n`` samples written by ``write_batch``: all of them, or
    the first ``written`` (a draw that stopped short)."""
    rows = range(n if written is None else written)
    (Path(out) / data_module.MANIFEST).write_text("file\n" + "".join(f"{png_name(i, n)}\n" for i in rows))


def write_pngs(images: torch.Tensor, out: Path, force: bool = False) -> list[Path]:
    """Save samples as 8-bit PNGs (fixed mapping [-1, 1] -> [0, 255]) with a manifest.csv."""
    out = data_module.prepare_output_dir(Path(out), force)
    paths = write_batch(images, out, 0, len(images))
    write_manifest(out, len(images))
    return paths


def reverse_process_gif(model, schedule: Schedule, n: int, path: Path, sampler: Sampler = DEFAULT_SAMPLER, *,
                        seed: int = 0, max_frames: int = 60, device: Optional[torch.device] = None,
                        show_x0: bool = True, condition: Optional[torch.Tensor] = None, size: Optional[int] = None,
                        windows: bool = False) -> tuple[torch.Tensor, Path]:
    """Sample ``n`` images and write the reverse process as a GIF; returns (samples, gif path).

    Each frame shows the batch after the step and, with ``show_x0``, beside it the step's estimate
    of the clean image: the estimate sharpens long before the noisy images show structure.
    """
    keep = set(gif_timesteps(sampler.timesteps(schedule), max_frames))
    frames: list[np.ndarray] = []

    def capture(step, t, x, x0_hat):
        if t in keep:
            frame = to_frame(x, label=f"{sampler.kind}: x after t = {t}")
            if show_x0:
                frame = np.concatenate([frame, to_frame(x0_hat, label="estimate of x0")], axis=1)
            frames.append(frame)

    images = generate(model, schedule, n, sampler, seed=seed, batch_size=n, device=device, callback=capture,
                      condition=condition, size=size, windows=windows)
    return images, save_gif(frames, path)
