"""The compute device: which one, how to describe it, and how to make a network fast on it.

Device choice (CUDA, then Apple MPS, then CPU), the memory layout of images and weights, cuDNN's
algorithm search, and ``torch.compile`` with a warm-up at the real batch and a fall-back to
eager. The training loop, the bench and the samplers all read these, so a lever measured by
``python -m helpers bench`` is the lever ``train`` pulls.
"""
from __future__ import annotations

import time
from typing import Callable

import torch

# torch.compile modes we measure and train with: "none" is eager; "reduce-overhead" adds CUDA
# graphs, which replay a whole step's kernels with one launch.
COMPILE_MODES = ("none", "default", "reduce-overhead")
# Layouts of images and weights. NCHW is the default everywhere: on an H200 (bf16, batch 128,
# eager) the default UNet trained 1.35x faster in NCHW than in channels_last, whose gain in the
# convolutions is lost in the GroupNorm and element-wise kernels around them
# (benchmarks/h200_session_1.json).
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
    the AVX512-BF16 or AMX-BF16 instructions, as Linux lists them in /proc/cpuinfo (2-core EPYC:
    the shipped UNet samples 1.9x faster in bf16; README, Performance). Elsewhere bf16 is
    emulated, slower than fp32, and this says no.
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
