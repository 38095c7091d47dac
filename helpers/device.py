"""Pick the compute device once: CUDA, then Apple MPS, then CPU."""
from __future__ import annotations

import torch


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
