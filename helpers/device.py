"""The compute device: which one, how to describe it, and how to make a network fast on it.

Device choice (CUDA, then Apple MPS, then CPU), the precision each device computes well (training
autocast, sampling weights), the memory layout of images and weights, cuDNN's algorithm search,
and ``torch.compile`` with a warm-up at the real batch and a fall-back to eager. The training
loop, the bench and the samplers all read these, so a lever measured by ``python -m helpers
bench`` is the lever ``train`` pulls.
"""
from __future__ import annotations

import copy
import time
from typing import Callable, Optional

import torch

# Precision names and the dtype each stands for.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
# Training: autocast of the forward pass ("auto" picks by device; fp16 adds a GradScaler).
PRECISIONS = ("auto", *DTYPES)
# Sampling: the dtype of the network's weights ("auto" picks by device; the sampler stays fp32).
SAMPLING_PRECISIONS = ("auto", "fp32", "bf16")
# What sampling's "auto" may pick (resolve_precision), so a fast sampler (sample --fast) is vetted in each.
AUTO_SAMPLING_PICKS = ("fp32", "bf16")

# torch.compile modes we measure and train with: "none" is eager; "reduce-overhead" adds CUDA
# graphs, which replay a whole step's kernels with one launch.
COMPILE_MODES = ("none", "default", "reduce-overhead")
# Layouts of images and weights. NCHW is the default everywhere: on an H200 (bf16, batch 128,
# eager) the default UNet trained 1.35x faster in NCHW than in channels_last, whose gain in the
# convolutions is lost in the GroupNorm and element-wise kernels around them
# (benchmarks/h200_session_1.json, measured when circular padding still returned NCHW tensors).
MEMORY_FORMATS = ("contiguous", "channels_last")


def pick_device() -> torch.device:
    """The fastest available device: a CUDA GPU, then Apple's MPS, then the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def describe_device(device: torch.device) -> str:
    """One line for a notebook: which device, and what it means for run time."""
    if device.type == "cuda":
        return (f"GPU: {torch.cuda.get_device_name(device)}. Full settings: training takes "
                "minutes.")
    if device.type == "mps":
        return "Apple GPU (MPS). Training is several times faster than on the CPU."
    return (f"CPU ({torch.get_num_threads()} threads). Lessons use small settings; training the "
            "full model here would take hours, so later notebooks load the shipped pretrained model.")


def device_name(device: torch.device) -> str:
    """The card's name on CUDA (e.g. 'NVIDIA H200'), else 'cpu (N threads)' or 'mps'."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return device.type


def native_bf16(device: torch.device) -> bool:
    """Whether the processor computes bfloat16 natively, so that bf16 weights run faster than fp32.

    CUDA: compute capability 8.0 and up (A100, H100, RTX 30xx and later; not Colab's T4). CPU:
    the AVX512-BF16 or AMX-BF16 instructions, as Linux lists them in /proc/cpuinfo. Elsewhere bf16
    is emulated or takes a reference path, and this says no: on the 2-core EPYC the shipped UNet
    samples 2.3x faster in bf16, but 1.5x slower with the instruction set capped at AVX-512 without
    BF16 and 3.8x slower at AVX2 (tools/precision_speed.py; benchmarks/README.md).
    """
    if device.type == "cuda":
        return torch.cuda.get_device_capability(device)[0] >= 8
    return device.type == "cpu" and bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_flags() -> set[str]:
    """The CPU's instruction-set flags as Linux lists them (/proc/cpuinfo); empty elsewhere."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            return set(next((line for line in cpuinfo if line.startswith("flags")), "").split())
    except OSError:
        return set()


def cpu_isa() -> str:
    """The widest x86 vector or matrix instructions this CPU lists, which decide how fast each
    precision runs on it (``native_bf16``): "amx_bf16", "avx512_bf16", "avx512f", "avx2", else
    "older"; "unknown" where Linux's flags cannot be read (macOS, Windows)."""
    flags = cpu_flags()
    if not flags:
        return "unknown"
    return next((isa for isa in ("amx_bf16", "avx512_bf16", "avx512f", "avx2") if isa in flags), "older")


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The training autocast dtype for a precision setting on a device (None: plain fp32).

    ``auto``: bf16 on GPUs that compute it natively (``native_bf16``); fp16 with a GradScaler on
    older ones (Colab's T4 and the V100, where bf16 is emulated, slowly, or refused); fp32 on CPUs
    and Apple's MPS, where mixed precision buys little for these small networks and fp32 is
    always right.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return None
        precision = "bf16" if native_bf16(device) else "fp16"
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("fp16 with a GradScaler needs a CUDA device; use fp32 or bf16")
    return None if precision == "fp32" else DTYPES[precision]


def resolve_precision(precision: str, device: torch.device) -> str:
    """A sampling precision's name: ``auto`` -> bf16 where the processor computes it natively, else fp32."""
    if precision not in SAMPLING_PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(SAMPLING_PRECISIONS)}")
    if precision == "auto":
        return "bf16" if native_bf16(torch.device(device)) else "fp32"
    return precision


def sampling_layout(precision: str, device: torch.device, fast: bool = False) -> str:
    """The memory layout (MEMORY_FORMATS) a sampler runs the network in, unless asked for another.

    On a CPU: channels_last in bf16 (1.8x faster than fp32 NCHW where bf16 is native), and in fp32
    when speed comes first (``sample --fast``): with fp32 weights, 16 images were drawn 1.2x faster
    in NHWC than in NCHW on the 2-core EPYC with AVX-512, 1.02x to 1.16x on one with AVX2 only
    (benchmarks/README.md). Otherwise NCHW: in fp32 an image then does not depend on the batch it
    was drawn in, bit for bit (NHWC kernels differ by ~1e-5 between batch sizes), and GPUs train NCHW.
    """
    precision, device = resolve_precision(precision, device), torch.device(device)
    return "channels_last" if device.type == "cpu" and (fast or precision != "fp32") else "contiguous"


def drawn_layout(row: dict) -> str:
    """The layout a measured set of samples (a row of the tools' JSON, or of a model file's
    fast-sampler evidence) was drawn in on a CPU: its ``memory_format``, or, for rows written before
    layouts were recorded, its precision's default (fp32's where it names no precision either)."""
    return row.get("memory_format") or sampling_layout(row.get("precision", "fp32"), torch.device("cpu"))


def weights_words(precision: str, layout: str) -> str:
    """How a command's last line names the weights it sampled with: 'fp32 weights', 'bf16 weights in NHWC'."""
    return f"{precision} weights" + (" in NHWC" if layout == "channels_last" else "")


def at_precision(model: torch.nn.Module, precision: str, device: torch.device,
                 layout: Optional[str] = None) -> torch.nn.Module:
    """The network on ``device`` with its weights in a sampling ``precision``, in eval mode.

    fp32 in the default layout returns the network itself; anything else a copy (the samplers then
    run the network in its dtype and their own arithmetic in float32). ``layout`` (MEMORY_FORMATS)
    defaults to ``sampling_layout``'s choice without --fast.
    """
    precision, device = resolve_precision(precision, device), torch.device(device)
    layout = layout or sampling_layout(precision, device)
    if precision == "fp32" and layout == "contiguous":
        return model.to(device).eval()
    return copy.deepcopy(model).to(device, dtype=DTYPES[precision], memory_format=memory_format(layout)).eval()


def configure_backends(device: torch.device) -> None:
    """Let cuDNN time its convolution algorithms once per input shape and keep the fastest.

    Our shapes never change within a run (fixed batch, fixed image size), so the search is paid
    once, in the first steps.
    """
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True


def memory_format(name: str) -> torch.memory_format:
    """The torch memory format for a MEMORY_FORMATS name."""
    if name not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory format {name!r}; expected one of {', '.join(MEMORY_FORMATS)}")
    return torch.channels_last if name == "channels_last" else torch.contiguous_format


def check_compile_mode(mode: str) -> str:
    """``mode`` if it is one of COMPILE_MODES; a one-line error otherwise."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; expected one of {', '.join(COMPILE_MODES)}")
    return mode


def compile_network(model: torch.nn.Module, mode: str, warm_up: Callable[[torch.nn.Module], None],
                    ) -> tuple[torch.nn.Module, str, float]:
    """``torch.compile(model)`` in ``mode``, warmed up; returns (network, what it is, seconds).

    Compilation is lazy: it happens in the first calls, so ``warm_up(network)`` makes them here,
    with the shapes and autograd state the real work will use (a training step at the real batch
    with a backward pass; a sampler at its batch). ``dynamic=False`` keeps every shape static, as
    ours are, so nothing is compiled twice. Any failure (no C compiler or Triton, an old GPU, an
    unsupported operation) falls back to the plain model, saying why; the seconds are the
    warm-up's, which is the compile time.
    """
    if check_compile_mode(mode) == "none":
        return model, "eager", 0.0
    start = time.perf_counter()
    try:
        compiled = torch.compile(model, mode=mode, dynamic=False)
        warm_up(compiled)
        if next(model.parameters()).is_cuda:
            torch.cuda.synchronize()
    except Exception as exc:  # stay eager, and say why
        reason = str(exc).strip().splitlines()[0][:100] if str(exc).strip() else ""
        return model, f"eager (torch.compile failed: {exc.__class__.__name__} {reason})".strip(), 0.0
    return compiled, f"compiled ({mode})", time.perf_counter() - start
