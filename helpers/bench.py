"""Throughput, measured side by side in one process: the original recipe against our training
step, and the samplers, with each speed lever (batch, memory format, torch.compile mode, sampling
precision) as an option, so one run gives every ratio on one machine.

(a) The original tutorial's recipe: SeedUNet, batch 9, a DataLoader that opens every PNG with
PIL and converts it per item, fp32, Adam 1e-3. Every other training row times ``Trainer.step``,
the step ``python -m helpers train`` runs (data on the device, bf16 autocast and fused AdamW on
CUDA, gradient clipping, EMA), for any network of NETWORKS and any combination of the levers. Sampling
rows time whole DDIM runs of ``n`` images. Warm-up calls (compilation among them) are excluded
and timed apart, the device is synchronised before each clock read, and each figure is the
median of several repeats. A profile summary (``profile=True``) adds the kernel launches per
step, the share of the wall time the GPU is busy, and the kernels that take the most time.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import itertools
import re
import statistics
import time
from typing import Callable, Iterable, Optional

import torch
import torch.nn.functional as F

from . import data as data_module
from .device import at_precision, compile_network, configure_backends, device_name, pick_device, resolve_precision
from .diffusion import Schedule, q_sample
from .sample import Sampler, call_size, generate
from .train import PROFILE_MODELS, Trainer, TrainConfig
from .unet import MODELS, PeriodicConv2d, SeedUNet, UNet, build_model, count_parameters, gflops_per_image
# A training step costs about three forward passes (forward, and backward through activations
# and weights): the achieved TFLOP/s below use that, with the forward counted by PyTorch.
TRAINING_FLOP_FACTOR = 3
# The networks a training row can time, by name: the two of MODELS as train builds them, and the
# cpu profile's compact UNet, the network for sampling on a CPU (trained on a GPU, it is timed there)
NETWORKS = {**{name: {"model": name} for name in MODELS},
            "compact": {"model": "unet", "model_options": dict(PROFILE_MODELS["cpu"])}}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(run: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` calls, after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def alternated_seconds(runs: dict[str, Callable[[], float]], repeats: int) -> tuple[dict, dict]:
    """Each of ``runs`` ``repeats`` times, in turn (a, b, a, b, ...), so that a noisy machine's
    drifts fall on every candidate alike; each call returns the seconds it measured itself (so
    that setup around the timed work stays untimed). The seconds of every call, and their
    medians, by name."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    return times, {name: statistics.median(values) for name, values in times.items()}


# The templated wrappers in ATen's kernel names; the operation is the first other functor or kernel
_WRAPPERS = {"elementwise_kernel", "vectorized_elementwise_kernel", "unrolled_elementwise_kernel", "reduce_kernel",
             "gpu_kernel_impl", "gpu_kernel_impl_nocast", "BinaryFunctor", "AUnaryFunctor", "BUnaryFunctor"}
_OPERATION = re.compile(r"\b\w*(?:[Ff]unctor\w*|_kernel\w*)\b")
KERNEL_NAME_CHARS = 300  # enough to hold an ATen kernel's functor, which its first 90 characters may not


def kernel_label(name: str) -> str:
    """A short name that says what a kernel does: an ATen element-wise kernel's name is a template
    whose first 90 characters are the wrapper (``elementwise_kernel<128, 4, gpu_kernel_impl_nocast<``);
    the operation is the functor inside it (``direct_copy_kernel_cuda``, ``CUDAFunctor_add``), kept
    beside the wrapper. Other names (cuDNN's, Triton's, CPU operators) come back cut to 90 characters."""
    wrapper = re.match(r"(?:void )?(?:[\w]+::)*(\w+)<", name)
    if wrapper and wrapper.group(1) in _WRAPPERS:
        operation = next((m for m in _OPERATION.findall(name) if m not in _WRAPPERS), None)
        if operation:
            return f"{wrapper.group(1)} ({operation})"
    return name[:90]


def kernel_sources(events) -> dict[str, collections.Counter]:
    """For each device kernel, the operators that launched it and how often, from the profiler's
    events (``prof.events()``): torch attaches each kernel to the innermost operator that was
    running on the host when it was launched. Under CUDA graphs the launch is the graph's replay,
    so there the operators say little and the kernel's label names the operation."""
    sources: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for event in events:
        for kernel in getattr(event, "kernels", ()):
            sources[kernel.name][event.name] += 1
    return sources


def profile_summary(run: Callable[[], None], device: torch.device, calls: int, seconds_per_call: float,
                    top: int = 5) -> dict:
    """What one call of ``run`` launches, from torch.profiler over ``calls`` calls.

    On CUDA: kernel launches per call, GPU-busy share (kernel time over the unprofiled median wall
    time ``seconds_per_call``: how much of the step the card computes rather than waits for the
    host), and the ``top`` kernels by time, each with its label (``kernel_label``) and the
    operators that launched it (``kernel_sources``, at most three). On a CPU: operator calls per
    call and the top operators by their own time (there is no busy share to speak of).
    """
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(calls):
            run()
        _sync(device)
    events = prof.key_averages()

    def own_time(event) -> float:  # microseconds; the attribute's name changed across torch versions
        if cuda:
            return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)
        return event.self_cpu_time_total

    if cuda:
        chosen = [e for e in events if e.device_type == DeviceType.CUDA]
    else:
        chosen = [e for e in events if e.key.startswith("aten::")]
    busy = sum(own_time(e) for e in chosen) / calls / 1e6
    ranked = sorted(chosen, key=own_time, reverse=True)[:top]
    sources = kernel_sources(prof.events()) if cuda else {}
    summary = {"calls_profiled": calls, ("kernels" if cuda else "operators") + "_per_call":
               sum(e.count for e in chosen) / calls,
               "top": [{"name": e.key[:KERNEL_NAME_CHARS], "label": kernel_label(e.key),
                        "share": own_time(e) / calls / 1e6 / seconds_per_call, "count_per_call": e.count / calls}
                       for e in ranked]}
    if cuda:
        summary["gpu_busy_share"] = busy / seconds_per_call
        for entry, event in zip(summary["top"], ranked):
            entry["launched_by"] = [{"operator": op, "count_per_call": n / calls}
                                    for op, n in sources.get(event.key, collections.Counter()).most_common(3)]
    return summary


class PngDataset(torch.utils.data.Dataset):
    """The original's data path: open a PNG with PIL and convert it, every time an item is read."""

    def __init__(self, files):
        from torchvision.transforms import Compose, Lambda, ToTensor

        self.files = files
        self.transform = Compose([ToTensor(), Lambda(lambda x: (x - 0.5) * 2)])

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> torch.Tensor:
        from PIL import Image

        with Image.open(self.files[index]) as image:
            return self.transform(image.convert("L"))


def original_recipe(device: torch.device, steps: int, warmup: int, repeats: int) -> dict:
    """(a): SeedUNet, batch 9 from a PIL-decoding DataLoader, fp32, Adam 1e-3."""
    files = data_module.list_images(data_module.resolve_dataset("voronoi_gb_64"))
    loader = torch.utils.data.DataLoader(PngDataset(files), batch_size=9, shuffle=True)
    model = SeedUNet(64).to(device)
    schedule = Schedule.linear().to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    batches = iter(loader)

    def run() -> None:
        nonlocal batches
        for _ in range(steps):
            try:
                x0 = next(batches)
            except StopIteration:
                batches = iter(loader)
                x0 = next(batches)
            x0 = x0.to(device)
            t = torch.randint(0, schedule.steps, (len(x0),), device=device)
            noise = torch.randn_like(x0)
            loss = F.mse_loss(model(q_sample(schedule, x0, t, noise), t), noise)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

    seconds = median_seconds(run, device, warmup, repeats)
    return {"name": "original", "model": "seed-unet", "batch_size": 9, "precision": "fp32",
            "memory_format": "contiguous", "compile": "eager", "compile_seconds": 0.0,
            "images_per_second": steps * 9 / seconds, "parameters": count_parameters(model)}


# Circular padding of the periodic UNet: ours (``unet.wrap_pad``, in the input's memory layout) or
# PyTorch's (``F.pad``, which returns channels-first tensors), to measure what the difference costs.
PADDINGS = ("wrap", "torch")


@contextlib.contextmanager
def padding(name: str):
    """Within the block, periodic convolutions pad the ``name`` way (PADDINGS). ``torch`` swaps
    PeriodicConv2d's forward for nn.Conv2d's own (circular mode, ``F.pad``) on the class, so a
    network built and compiled inside the block traces that padding; the class is restored after.
    torch.compile's caches are cleared on the way in and out of a swap, so that no graph traced
    with one padding is reused for the other."""
    if name not in PADDINGS:
        raise ValueError(f"unknown padding {name!r}; expected one of {', '.join(PADDINGS)}")
    ours = PeriodicConv2d.__dict__["_conv_forward"]
    if name == "torch":
        torch._dynamo.reset()
        PeriodicConv2d._conv_forward = torch.nn.Conv2d._conv_forward
    try:
        yield
    finally:
        if name == "torch":
            PeriodicConv2d._conv_forward = ours
            torch._dynamo.reset()


def training_row(model: str, device: torch.device, batch_size: int, memory_format_name: str = "contiguous",
                 compile_mode: str = "none", precision: str = "auto", steps: int = 10, warmup: int = 3,
                 repeats: int = 5, profile: bool = False, images: Optional[torch.Tensor] = None,
                 padding_name: str = "wrap") -> dict:
    """Images per second of ``Trainer.step`` (train's own step) for one network of NETWORKS and one
    setting (``padding_name``: PADDINGS, the UNets' circular padding; SeedUNet pads with zeros)."""
    if model not in NETWORKS:
        raise ValueError(f"unknown model {model!r}; expected one of {', '.join(NETWORKS)}")
    images = data_module.load_images("voronoi_gb_64") if images is None else images
    cfg = TrainConfig(**NETWORKS[model], batch_size=batch_size, precision=precision, compile=compile_mode,
                      memory_format=memory_format_name, prediction="v", lr=2e-4, warmup=10)
    with padding(padding_name):
        trainer = Trainer(cfg, images, device)
        counter = itertools.count()

        def run() -> None:
            for _ in range(steps):
                trainer.step(next(counter))

        seconds = median_seconds(run, device, warmup, repeats)
        profiled = _try_profile(lambda: trainer.step(next(counter)), device, 3, seconds / steps) if profile else None
    gflop = gflops_per_image(build_model(trainer.model.config()), trainer.size)
    per_second = steps * batch_size / seconds
    row = {"name": model, "model": cfg.model, "batch_size": batch_size,
           "precision": {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[trainer.dtype],
           "memory_format": "channels_last" if trainer.memory_format == torch.channels_last else "contiguous",
           "compile": trainer.compile_mode, "compile_seconds": trainer.compile_seconds,
           "images_per_second": per_second, "parameters": count_parameters(trainer.model),
           "gflop_per_image": gflop, "tflops": TRAINING_FLOP_FACTOR * gflop * per_second / 1000,
           "padding": padding_name}
    if profiled is not None:
        row["profile"] = profiled
    return row


def sampling_row(model: torch.nn.Module, schedule: Schedule, device: torch.device, n: int, batch_size: int,
                 precision: str = "fp32", memory_format_name: str = "contiguous", compile_mode: str = "none",
                 steps: int = 50, eta: float = 1.0, repeats: int = 3, profile: bool = False,
                 images_per_call: Optional[int] = None) -> dict:
    """Seconds to sample ``n`` images with DDIM-``steps`` in batches of ``batch_size``, the network
    called on at most ``images_per_call`` of them at a time (default: as ``sample.generate``).

    ``precision`` (device.SAMPLING_PRECISIONS) bf16 runs the network with bf16 weights (the
    sampler's arithmetic stays float32), the copy ``sample`` makes (``device.at_precision``).
    Compiled shapes are static: make ``n`` a multiple of ``batch_size``, or the last, smaller
    batch compiles again inside the timed runs.
    """
    configure_backends(device)
    network = at_precision(copy.deepcopy(model), precision, device, memory_format_name)

    def sample(net, count: int, sampler_steps: int) -> torch.Tensor:
        return generate(net, schedule, count, Sampler("ddim", sampler_steps, eta), batch_size=batch_size,
                        device=device, images_per_call=images_per_call)

    batch = min(batch_size, n)  # the batch that runs: n images at most
    network, mode, compile_seconds = compile_network(network, compile_mode, lambda net: sample(net, batch, 3))
    sample(network, batch, 2)  # warm-up: cuDNN's algorithm search, allocations
    seconds = median_seconds(lambda: sample(network, n, steps), device, 0, repeats)
    row = {"images": n, "batch_size": batch,
           "images_per_call": call_size(device, model.config()["size"], images_per_call, batch=batch),
           "sampler": Sampler("ddim", steps, eta).describe(),
           "precision": resolve_precision(precision, device),
           "memory_format": memory_format_name, "compile": mode, "compile_seconds": compile_seconds, "seconds": seconds,
           "images_per_second": n / seconds}
    if profile:
        row["profile"] = _try_profile(lambda: sample(network, batch, 5), device, 1,
                                      seconds * batch / n * 5 / steps)
    return row


def _try_profile(run: Callable[[], None], device: torch.device, calls: int, seconds_per_call: float) -> dict:
    """``profile_summary``, or what went wrong: a profiler that fails must not lose the timing."""
    try:
        return profile_summary(run, device, calls, seconds_per_call)
    except Exception as exc:
        return {"error": f"{exc.__class__.__name__}: {str(exc)[:200]}"}


def run_bench(quick: bool = False, device: Optional[torch.device] = None,
              models: Iterable[str] = tuple(MODELS), batch_sizes: Optional[Iterable[int]] = None,
              memory_formats: Iterable[str] = ("contiguous",), compile_modes: Iterable[str] = ("none",),
              sample_n: Optional[int] = None, sample_batch: Optional[int] = None,
              sample_precisions: Iterable[str] = ("fp32",), profile: bool = False,
              images_per_call: Iterable[Optional[int]] = (None,),
              progress: Callable[[str], None] = print) -> dict:
    """Every measurement: the original recipe, then a training row for each combination of
    model x batch x memory format x compile mode, then a sampling row per precision (with each
    memory format, compile mode and cap on the images per network call, None: the default).
    Returns a JSON-ready dict (``format_bench`` prints it)."""
    device = device or pick_device()
    torch.manual_seed(0)
    cuda = device.type == "cuda"
    batch_sizes = list(batch_sizes or [128 if cuda else (8 if quick else 32)])
    steps, warmup, repeats = (2, 1, 3) if quick else (10 if cuda else 4, 3, 5)
    report = {"device": device_name(device), "torch": torch.__version__, "quick": quick, "training": [],
              "sampling": []}
    images = data_module.load_images("voronoi_gb_64")
    progress("(a) original recipe ...")
    report["training"].append(original_recipe(device, steps * 3, warmup, repeats))
    for model, batch, fmt, mode in itertools.product(models, batch_sizes, memory_formats, compile_modes):
        progress(f"training {model}, batch {batch}, {fmt}, compile {mode} ...")
        report["training"].append(training_row(model, device, batch, fmt, mode, "auto", steps, warmup, repeats,
                                               profile, images))
    original = report["training"][0]["images_per_second"]
    for row in report["training"]:
        row["ratio_to_original"] = row["images_per_second"] / original
    n = sample_n or (4 if quick else 64)
    schedule = Schedule.linear().to(device)
    for precision, fmt, mode, calls in itertools.product(sample_precisions, memory_formats, compile_modes,
                                                         images_per_call):
        progress(f"sampling {n} images, {precision}, {fmt}, compile {mode}, {calls or 'default'} per call ...")
        report["sampling"].append(sampling_row(UNet(), schedule, device, n, sample_batch or min(n, 256),
                                               precision, fmt, mode, 50, 1.0, 1 if quick else 3, profile, calls))
    return report


def format_bench(report: dict) -> str:
    """The bench report as plain-text tables."""
    lines = [f"device: {report['device']}, torch {report['torch']}{', --quick' if report['quick'] else ''}",
             f"{'training':<12} {'batch':>5} {'format':<14} {'precision':<9} {'mode':<26} "
             f"{'img/s':>9} {'x (a)':>7} {'TFLOP/s':>8} {'compile s':>9}"]
    for row in report["training"]:
        name = "(a) original" if row["name"] == "original" else row["name"]
        lines.append(f"{name:<12} {row['batch_size']:>5} {row['memory_format']:<14} {row['precision']:<9} "
                     f"{row['compile'][:26]:<26} {row['images_per_second']:>9.1f} {row['ratio_to_original']:>7.2f} "
                     f"{row.get('tflops', float('nan')):>8.2f} {row['compile_seconds']:>9.1f}")
        if "profile" in row:
            lines.append("    " + _profile_line(row["profile"]))
    for row in report["sampling"]:
        lines.append(f"sampling {row['images']} images, {row['sampler']}, batch {row['batch_size']} "
                     f"({row['images_per_call']} per network call), "
                     f"{row['precision']}, {row['memory_format']}, {row['compile']}: {row['seconds']:.2f} s "
                     f"({_rate(row['images_per_second'])} img/s; compile {row['compile_seconds']:.0f} s)")
        if "profile" in row:
            lines.append("    " + _profile_line(row["profile"]))
    return "\n".join(lines)


def _rate(per_second: float) -> str:
    """A rate with three significant digits below 100 (a CPU samples under one image a second), whole above."""
    return f"{per_second:.0f}" if per_second >= 100 else f"{per_second:.3g}"


def _profile_line(summary: dict) -> str:
    if "error" in summary:
        return f"profiler failed: {summary['error']}"
    key = "kernels_per_call" if "kernels_per_call" in summary else "operators_per_call"
    busy = f", GPU busy {summary['gpu_busy_share']:.0%}" if "gpu_busy_share" in summary else ""
    top = "; ".join(f"{_top_words(t)} {t['share']:.0%}" for t in summary["top"][:3])
    return f"{summary[key]:.0f} {key.split('_')[0]} per call{busy}; top: {top}"


def _top_words(entry: dict) -> str:
    """A top kernel or operator in a few words: its label, and the operator that launched it most."""
    words = entry.get("label", entry["name"])[:60]
    sources = entry.get("launched_by")
    return f"{words} from {sources[0]['operator']}" if sources else words
