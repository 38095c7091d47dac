"""Model files: the checkpoint format, atomic saves, safe loads, weight export, ``load_model``.

Two kinds of file, one format: a training checkpoint (everything a run needs to resume exactly:
weights, EMA, optimiser, random states, logs) and a weights file (the EMA weights in fp16, the
configs, the recommended sampler and optionally a fast one with the measurements that vetted it).
Both are plain dicts of tensors and plain values, loaded with ``weights_only=True`` so that
opening a file can never run code. Saves go to a temporary file that is renamed over the old one,
so a file is never half written.
"""
from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from .data import write_failure
from .device import AUTO_SAMPLING_PICKS, MEMORY_FORMATS, at_precision, pick_device, resolve_precision
from .diffusion import Schedule
from .unet import build_model

FORMAT = "microstructure-ddpm"
FORMAT_VERSION = 1
# what every file written by this package holds, whatever its kind (training or weights)
REQUIRED_KEYS = ("model_config", "schedule", "ema", "step")


class CheckpointError(ValueError):
    """A model file that cannot be used or written: the message names the file and says why."""


def _temporary(path: Path, pid: int | str) -> Path:
    return path.with_name(f".{path.name}.tmp-{pid}")


def save_atomic(payload: dict, path: str | Path) -> None:
    """torch.save to a temporary file beside ``path``, then rename: never a half-written file.

    A failed write (a full disk) removes the temporary file and leaves ``path`` as it was.
    """
    path = Path(path)
    temporary = _temporary(path, os.getpid())
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(payload, temporary)
        os.replace(temporary, path)
    except (OSError, RuntimeError) as exc:  # torch's archive writer reports a failed write as RuntimeError
        if isinstance(exc, RuntimeError) and "PytorchStreamWriter" not in str(exc) and "directory" not in str(exc):
            raise
        kept = "the previous file is intact" if path.exists() else "nothing was written"
        raise CheckpointError(f"{path}: could not be written ({write_failure(exc)}); {kept}") from None
    finally:
        temporary.unlink(missing_ok=True)


def remove_stale_temporaries(path: str | Path) -> list[Path]:
    """Delete the temporary files a process killed in the middle of ``save_atomic`` left beside
    ``path`` (call it only while holding the folder, e.g. under a run's lock)."""
    path = Path(path)
    stale = sorted(path.parent.glob(_temporary(path, "*").name))
    for leftover in stale:
        leftover.unlink(missing_ok=True)
    return stale


def is_temporary(entry: Path, path: str | Path) -> bool:
    """Whether ``entry`` is one of ``save_atomic``'s temporary files for ``path``."""
    return entry.parent == Path(path).parent and entry.match(_temporary(Path(path), "*").name)


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
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; expected a model file (a run's checkpoint.pt, or model.pt)")
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


def checkpoint_step(path: str | Path) -> str:
    """The step of the checkpoint at ``path``, for messages ('none' if there is none)."""
    try:
        return str(load_checkpoint(path)["step"])
    except CheckpointError:
        return "none"


def load_weights(network: torch.nn.Module, state: dict, path: str | Path, which: str = "ema") -> None:
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


def build_network(payload: dict, path: str | Path) -> torch.nn.Module:
    """The (untrained) network a file's config describes, or a one-line error naming the file."""
    try:
        return build_model(payload["model_config"])
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: its network config {payload['model_config']!r} builds no network "
                              f"({exc}); the file is damaged or was edited") from None


def export_weights(checkpoint: dict, path: str | Path, dtype: torch.dtype = torch.float16,
                   sampler=None) -> Path:
    """Write a small sampling-only file: the EMA weights (fp16 by default) and the configs.

    ``sampler`` (a ``sample.Sampler``, checked when it was made) is kept, as ``sampler.stored()``,
    as the model's recommended sampler, the one measured best on it (``store_recommended_sampler``
    replaces it later); `python -m helpers sample` uses it by default.
    """
    weights = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in checkpoint["ema"].items()}
    payload = {"format": FORMAT, "version": FORMAT_VERSION, "kind": "weights",
               "model_config": checkpoint["model_config"], "schedule": checkpoint["schedule"],
               "train_config": checkpoint["train_config"], "step": checkpoint["step"], "ema": weights}
    if "condition" in checkpoint:  # a conditional model's condition names, scaling and range
        payload["condition"] = checkpoint["condition"]
    if sampler is not None:
        if not hasattr(sampler, "stored"):
            raise TypeError(f"sampler: expected a sample.Sampler (checked when made), got {sampler!r}")
        payload["sampler"] = sampler.stored()
    save_atomic(payload, Path(path))
    return Path(path)


def weights_digest(payload: dict) -> str:
    """A short fingerprint of a file's EMA weights (SHA-256 of their names, dtypes and bytes; 12 hex
    digits): it tells one model's measurements from another's whatever else the file holds, so it
    stays the same when a fast sampler is stored in the file."""
    digest = hashlib.sha256()
    for name in sorted(payload["ema"]):
        tensor = payload["ema"][name].detach().cpu().contiguous()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:12]


# what each measurement that vetted a fast sampler keeps in the weights file, and as what (the rows
# sampler_sweep and pretrained_report write have these and more)
FAST_EVIDENCE = {"precision": str, "seed": int, "samples": int, "dangling_ends": float}
# kept too where a row says it: its memory_format, the layout the set was drawn in (files stored
# before layouts were recorded have none; device.drawn_layout reads either)
# and, for a conditional model, what control measured against its recommended sampler (the rows
# of tools/control_fast.py; samples counts every target's)
CONTROL_EVIDENCE = {"targets": int, "r2": float, "mae": float, "recommended_r2": float, "recommended_mae": float,
                    "recommended_dangling_ends": float}


def fast_evidence_keys(payload: dict) -> dict[str, type]:
    """The keys (and types) each row that vetted the fast sampler of ``payload``'s model keeps."""
    return {**FAST_EVIDENCE, **(CONTROL_EVIDENCE if "condition" in payload else {})}


def fast_sampler_refusal(payload: dict, by_bar: bool = False) -> Optional[str]:
    """Why the file ``payload`` was read from cannot take a fast sampler, in words that follow
    "FILE is", or None if it can. One rule for the writers (``store_fast_sampler``, the tools that
    measure before they store) and for ``sample --fast``'s refusal.

    Only a weights file: ``sample --fast`` reads weights files. An unconditional model's fast
    sampler is vetted by the fidelity bar (``tools/sampler_sweep.py``; ``by_bar``: the tools that
    apply it), a conditional model's by ``control`` against its recommended sampler
    (``tools/control_fast.py``).
    """
    if payload.get("kind") != "weights":
        return (f"a file of kind {payload.get('kind')!r}, not a weights file (train --export), which is what "
                "sample --fast reads")
    if by_bar and "condition" in payload:
        return ("a conditional model; the fidelity bar judges unconditional samples, which do not say how a "
                "conditional model samples: measure its fast sampler with tools/control_fast.py")
    return None


def store_fast_sampler(path: str | Path, sampler, measured: list[dict]) -> dict:
    """Keep ``sampler`` (a ``sample.Sampler``) in the weights file at ``path`` as its fast sampler,
    the one ``sample --fast`` uses, with the measurements that vetted it; everything else in the
    file is kept as it was.

    ``measured``: at least one row per set of samples the sampler was judged on, every one vetting
    it, and rows in each precision ``sample --fast`` may pick (``device.AUTO_SAMPLING_PICKS``):
    for an unconditional model, rows of ``tools/sampler_sweep.py`` or
    ``tools/pretrained_report.py`` with ``bar_met`` true; for a conditional one, rows of
    ``tools/control_fast.py`` with ``as_good`` true. The ``fast_evidence_keys`` entries of each
    are stored (and the layout, where a row gives one), so the file says which precisions and
    seeds it was measured with. Returns the
    file's contents as saved (``sample.fast_sampler_evidence`` words them).
    """
    payload = load_checkpoint(path)
    refusal = fast_sampler_refusal(payload)
    if refusal:
        raise CheckpointError(f"{path} is {refusal}")
    if not hasattr(sampler, "stored"):
        raise TypeError(f"sampler: expected a sample.Sampler (checked when made), got {sampler!r}")
    conditional = "condition" in payload
    passed, rule = (("as_good", "within the margins of the recommended sampler under control") if conditional
                    else ("bar_met", "meeting the fidelity bar"))
    if not measured or any(row.get(passed) is not True for row in measured):
        raise ValueError(f"measured: expected at least one measurement of {sampler.describe()}, every one "
                         f"{rule}; got {[row.get(passed) for row in measured]}")
    keys = fast_evidence_keys(payload)
    missing = sorted({key for row in measured for key in keys if key not in row})
    if missing:
        raise ValueError(f"measured: every row needs {', '.join(keys)}; missing {', '.join(missing)}")
    unmeasured = [p for p in AUTO_SAMPLING_PICKS if p not in {row["precision"] for row in measured}]
    if unmeasured:
        raise ValueError(f"measured: expected rows in each precision sample --fast may pick "
                         f"({', '.join(AUTO_SAMPLING_PICKS)}); none in {', '.join(unmeasured)}")
    payload["fast_sampler"] = sampler.stored()
    payload["fast_sampler_measured"] = [
        {**{key: kind(row[key]) for key, kind in keys.items()},
         **({"memory_format": row["memory_format"]} if row.get("memory_format") in MEMORY_FORMATS else {})}
        for row in measured]
    save_atomic(payload, Path(path))
    return payload


def check_guidance(payload: dict, guidance: float, source: str = "the model") -> None:
    """Refuse guidance for a model trained without dropping its condition: its null embedding never
    learned the unconditional prediction that guidance steers away from."""
    if guidance and payload.get("train_config", {}).get("condition_dropout", 1.0) == 0:
        raise ValueError(f"guidance {guidance:g}: {source} was trained with condition_dropout 0, so it has no "
                         f"unconditional prediction to guide with; expected guidance 0")


def store_recommended_sampler(path: str | Path, sampler) -> dict:
    """Make ``sampler`` (a ``sample.Sampler``) the recommended sampler of the weights file at
    ``path``, the one ``sample`` and ``control`` draw with unless told otherwise, for a model
    re-measured after its export; everything else in the file is kept, but for the fast sampler:
    a conditional model's was vetted against the recommended one (``tools/control_fast.py``), so
    it goes, with its record, until it is vetted against the new one; an unconditional model's,
    vetted by the fidelity bar alone, stays while it takes fewer network calls. The sampler the file
    already recommends changes nothing. Refused, naming the file: a training checkpoint, guidance
    for an unconditional model or one trained without dropping its condition, steps the schedule
    lacks. Returns the file's contents as saved."""
    payload = load_checkpoint(path)
    if payload.get("kind") != "weights":
        raise CheckpointError(f"{path} is a file of kind {payload.get('kind')!r}, not a weights file "
                              "(train --export), the kind that recommends a sampler")
    if not hasattr(sampler, "stored"):
        raise TypeError(f"sampler: expected a sample.Sampler (checked when made), got {sampler!r}")
    if sampler.guidance and "condition" not in payload:
        raise ValueError(f"sampler: guidance {sampler.guidance:g} for {path}, an unconditional model; expected 0")
    check_guidance(payload, sampler.guidance, str(path))
    if sampler.stored() == payload.get("sampler"):
        return payload
    schedule = Schedule.create(**payload["schedule"])
    try:
        calls = len(sampler.timesteps(schedule))
    except ValueError as exc:
        raise ValueError(f"sampler: {exc} for {path}") from None
    if "fast_sampler" in payload and ("condition" in payload or len(
            type(sampler).from_stored(payload["fast_sampler"]).timesteps(schedule)) >= calls):
        del payload["fast_sampler"]
        payload.pop("fast_sampler_measured", None)
    payload["sampler"] = sampler.stored()
    save_atomic(payload, Path(path))
    return payload


# what a fine-tuned run may change of the network it starts from (train --init-from): a condition
# input (layers the file may lack) and dropout (no weights)
FINE_TUNING_MAY_CHANGE = ("conditions", "dropout")


def initial_weights(path: str | Path, network_config: dict, schedule: dict, condition: list[str]) -> dict:
    """The EMA weights a new run starts from (``train --init-from``), read from the model file at
    ``path`` (a weights file or a training checkpoint) and checked, before any other work, against
    the run's network config, schedule and condition names; errors begin "--init-from PATH:".

    The file's network must be the run's (``FINE_TUNING_MAY_CHANGE`` aside) and trained with the
    same schedule (noise levels and what it predicts). A conditional run may start from an
    unconditional model (``start_from_weights`` then silences the layers the file lacks); a
    conditional file needs a run on the same condition columns.
    """
    where = f"--init-from {path}"
    try:
        payload = load_checkpoint(path)
    except CheckpointError as exc:
        raise CheckpointError(f"--init-from {exc}") from None
    theirs = Schedule.create(**payload["schedule"]).config()  # files from before `prediction` was stored: eps
    if theirs != schedule:
        raise CheckpointError(f"{where}: the file was trained with the schedule {theirs}, this run has {schedule}; "
                              "expected the same (the run's --prediction and profile set it)")
    theirs_network = build_network(payload, path)
    load_weights(theirs_network, payload["ema"], path)  # a damaged file: said here, not as odd weights later
    file_net = {k: v for k, v in theirs_network.config().items() if k not in FINE_TUNING_MAY_CHANGE}
    run_net = {k: v for k, v in build_model(network_config).config().items() if k not in FINE_TUNING_MAY_CHANGE}
    if file_net != run_net:
        differ = ", ".join(f"{k} {file_net.get(k)!r} in the file, {run_net.get(k)!r} in this run"
                           for k in sorted(set(file_net) | set(run_net)) if file_net.get(k) != run_net.get(k))
        raise CheckpointError(f"{where}: another network ({differ}); expected the same (the run's --model and "
                              "--profile set it)")
    names = payload.get("condition", {}).get("names", [])
    if names and names != list(condition):
        raise CheckpointError(f"{where}: a model conditioned on {', '.join(names)}, this run "
                              f"{'on ' + ', '.join(condition) if condition else 'unconditional'}; expected the "
                              "same --condition")
    return payload["ema"]


def start_from_weights(network: torch.nn.Module, state: dict) -> None:
    """Copy ``state`` (from ``initial_weights``) into ``network``, in the network's own dtype and
    layout; condition layers the state lacks (an unconditional model fine-tuned with a condition)
    start silent (``UNet.silence_condition``), so the network begins as exactly that model for
    every condition."""
    expected = network.state_dict()
    new = [k for k in expected if k not in state]
    network.load_state_dict({**expected, **state})
    if new:
        network.silence_condition()


def load_model(path: str | Path, device: Optional[torch.device] = None, precision: str = "fp32",
               layout: Optional[str] = None):
    """The EMA network of a checkpoint or weights file, in eval mode, its schedule and the file's dict.

    ``precision`` bf16 (or ``auto`` where bf16 is native) keeps the weights in bfloat16, and
    ``layout`` (channels_last or contiguous; default: ``device.sampling_layout``'s) is their memory
    layout (``device.at_precision``).
    """
    device = device or pick_device()
    resolve_precision(precision, device)  # a clear error before the file is read
    payload = load_checkpoint(path, map_location="cpu")
    model = build_network(payload, path)
    load_weights(model, {k: v.float() if v.is_floating_point() else v for k, v in payload["ema"].items()},
                 path)
    schedule = Schedule.create(**payload["schedule"])
    return at_precision(model, precision, device, layout), schedule, payload


def rng_states(generators: dict[str, torch.Generator]) -> dict:
    """Every random state a run draws from (Python, NumPy, torch, CUDA and ``generators``), as
    tensors and plain values that a weights-only load reads back."""
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


def restore_rng_states(states: dict, generators: dict[str, torch.Generator]) -> None:
    """Put back what ``rng_states`` saved, so the next draws are the ones the saved run made."""
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
