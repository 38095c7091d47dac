"""Throughput, measured side by side in one process: the original recipe against our fast path.

(a) the original tutorial's recipe: SeedUNet, batch 9, a DataLoader that opens every PNG with
PIL and converts it per item, fp32, Adam 1e-3; (b) SeedUNet on our fast path; (c) our default
UNet on our fast path. The fast path keeps the dataset on the device as one tensor, uses large
batches, bf16 autocast and fused AdamW on CUDA, channels_last on CUDA, and optionally
torch.compile. Also sampling time for a batch with DDPM-1000 and DDIM-50. Warm-up steps are
excluded, the device is synchronised before each clock read, and each figure is the median of
several repeats.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from . import data as data_module
from .diffusion import Schedule, diffusion_loss, q_sample
from .unet import SeedUNet, UNet, count_parameters, gflops_per_image


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


def original_recipe(device: torch.device, schedule: Schedule, steps: int, warmup: int,
                    repeats: int) -> dict:
    """(a): SeedUNet, batch 9 from a PIL-decoding DataLoader, fp32, Adam 1e-3."""
    files = data_module.list_images(data_module.resolve_dataset("voronoi_gb_64"))
    loader = torch.utils.data.DataLoader(PngDataset(files), batch_size=9, shuffle=True)
    model = SeedUNet(64).to(device)
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
    return {"images_per_second": steps * 9 / seconds, "batch_size": 9, "precision": "fp32"}


def maybe_compile(model: torch.nn.Module, compile_model: bool,
                  example: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.nn.Module, str]:
    """torch.compile the model if asked and it works here (tried on ``example``); else eager.

    Compilation is lazy, so a missing compiler or an unsupported device shows only at the first
    call: that call is made here, and any failure falls back to the plain model, saying why.
    """
    if not compile_model:
        return model, "eager"
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled(*example)
        return compiled, "compiled"
    except Exception as exc:  # no C++ compiler or Triton, old GPU, unsupported op: stay eager
        return model, f"eager (torch.compile unavailable: {exc.__class__.__name__})"


def fast_path(model: torch.nn.Module, device: torch.device, schedule: Schedule, batch_size: int,
              steps: int, warmup: int, repeats: int, compile_model: bool = False) -> dict:
    """(b), (c): data resident on the device, bf16 + fused AdamW + channels_last on CUDA."""
    images = data_module.load_images("voronoi_gb_64").to(device)
    cuda = device.type == "cuda"
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    images = images.contiguous(memory_format=memory_format)
    t = torch.zeros(batch_size, dtype=torch.long, device=device)
    model, mode = maybe_compile(model, compile_model, (images[:batch_size], t))
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, fused=cuda or None)
    generator = torch.Generator().manual_seed(0)

    def run() -> None:
        for _ in range(steps):
            x0 = images[torch.randint(0, len(images), (batch_size,), generator=generator).to(device)]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = diffusion_loss(model, schedule, x0)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    seconds = median_seconds(run, device, warmup, repeats)
    return {"images_per_second": steps * batch_size / seconds, "batch_size": batch_size,
            "precision": "bf16" if cuda else "fp32", "mode": mode}


def sampling_times(model: torch.nn.Module, schedule: Schedule, device: torch.device, n: int,
                   quick: bool) -> dict:
    """Seconds to sample ``n`` images with DDIM-50 and DDPM-1000 (estimated from DDIM in quick mode)."""
    from .sample import generate

    model = model.to(device).eval()
    generate(model, schedule, n, "ddim", 2, device=device)  # warm-up
    ddim = median_seconds(lambda: generate(model, schedule, n, "ddim", 50, device=device), device, 0,
                          1 if quick else 3)
    if quick:  # one network call per step either way: 1000 steps cost 20 times 50
        ddpm, how = ddim * schedule.steps / 50, "estimated from DDIM-50 (--quick)"
    else:
        ddpm = median_seconds(lambda: generate(model, schedule, n, "ddpm", device=device), device, 0, 1)
        how = "measured"
    return {"images": n, "ddim50_seconds": ddim, "ddpm1000_seconds": ddpm, "ddpm_timing": how,
            "ddpm_over_ddim": ddpm / ddim}


def run_bench(quick: bool = False, device: Optional[torch.device] = None, compile_model: bool = False,
              progress: Callable[[str], None] = print) -> dict:
    """Run every measurement; returns a JSON-ready dict (also printed by ``format_bench``)."""
    from .device import pick_device

    device = device or pick_device()
    torch.manual_seed(0)
    schedule = Schedule.linear().to(device)
    cuda = device.type == "cuda"
    batch = 128 if cuda else (8 if quick else 32)
    steps, warmup, repeats = (2, 1, 3) if quick else (10 if cuda else 4, 3, 5)
    report = {"device": torch.cuda.get_device_name(device) if cuda else f"cpu ({torch.get_num_threads()} threads)",
              "torch": torch.__version__, "quick": quick, "training": {}}
    progress("(a) original recipe ...")
    report["training"]["original"] = original_recipe(device, schedule, steps * 3, warmup, repeats)
    for key, make in (("seed_unet_fast", lambda: SeedUNet(64)), ("unet_fast", lambda: UNet())):
        progress(f"({'b' if key.startswith('seed') else 'c'}) {key} ...")
        model = make()
        row = fast_path(model, device, schedule, batch, steps, warmup, repeats, compile_model)
        row.update(parameters=count_parameters(model), gflop_per_image=gflops_per_image(make(), 64))
        report["training"][key] = row
    original = report["training"]["original"]["images_per_second"]
    for row in report["training"].values():
        row["ratio_to_original"] = row["images_per_second"] / original
    progress("sampling ...")
    report["sampling"] = sampling_times(UNet(), schedule, device, 64 if not quick else 4, quick)
    return report


def format_bench(report: dict) -> str:
    """The bench report as a plain-text table."""
    names = {"original": "(a) original recipe (SeedUNet, PIL loader)", "seed_unet_fast": "(b) SeedUNet, fast path",
             "unet_fast": "(c) UNet (default), fast path"}
    lines = [f"device: {report['device']}, torch {report['torch']}{', --quick' if report['quick'] else ''}",
             f"{'training':<44} {'batch':>5} {'img/s':>9} {'x (a)':>7}  mode"]
    for key, row in report["training"].items():
        lines.append(f"{names[key]:<44} {row['batch_size']:>5} {row['images_per_second']:>9.1f} "
                     f"{row['ratio_to_original']:>7.2f}  {row.get('mode', 'eager')}, {row['precision']}")
    s = report["sampling"]
    lines.append(f"sampling {s['images']} images with the default UNet: DDIM-50 {s['ddim50_seconds']:.2f} s, "
                 f"DDPM-1000 {s['ddpm1000_seconds']:.2f} s ({s['ddpm_timing']}), ratio {s['ddpm_over_ddim']:.1f}")
    for key in ("seed_unet_fast", "unet_fast"):
        row = report["training"][key]
        lines.append(f"{names[key][4:]}: {row['parameters']:,} parameters, {row['gflop_per_image']:.2f} GFLOP per image")
    return "\n".join(lines)
