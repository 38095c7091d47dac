"""microstructure-ddpm helpers: the thin package every notebook imports.

Modules, one idea each, importing one way: ``data`` (generators, dataset folders, tensors),
``diffusion`` (schedules, forward jump, loss, samplers), ``unet`` (SeedUNet and UNet),
``metrics`` (microstructure statistics, set-vs-set evaluation), ``conditions`` (descriptors as
a network's condition), ``viz`` (grids, GIFs, plots), ``grains`` (label maps from boundaries),
``export`` (label maps in simulation formats),
``device`` (CUDA, MPS or CPU; precision; compile), ``checkpoint`` (model files), ``sample``
(the Sampler, guidance, batches, PNGs, GIFs), ``train`` (the training run), ``bench``
(throughput), ``control`` (how well a conditional model hits its targets),
``notebooks`` (executing the lessons). ``python -m helpers --help`` is the command line.
"""
import os
from pathlib import Path

# The repository's public address: README badges and every notebook's Colab setup cell are
# generated from this one line by `python tools/sync_notebooks.py` (a test checks they agree).
REPO = "microstructure-ddpm/microstructure-ddpm"
BRANCH = "main"
REPO_URL = f"https://github.com/{REPO}"
ROOT = Path(__file__).resolve().parent.parent



def output_dir(lesson: str) -> Path:
    """Folder for what a lesson writes: $MDDPM_OUTPUTS/<lesson>, else outputs/<lesson> (git-ignored)."""
    path = Path(os.environ.get("MDDPM_OUTPUTS") or ROOT / "outputs") / lesson
    path.mkdir(parents=True, exist_ok=True)
    return path


def smoke_mode(smoke: bool = False) -> bool:
    """Whether a notebook runs on its smallest settings: its SMOKE parameter or MDDPM_SMOKE=1."""
    return bool(smoke) or os.environ.get("MDDPM_SMOKE") == "1"


__all__ = ["REPO", "BRANCH", "REPO_URL", "ROOT", "output_dir", "smoke_mode"]
