"""Conditions: measured descriptors (grains per image, ...) as the vectors a conditional network takes.

A network learns best from inputs of order one, so each descriptor is standardised with the mean
and standard deviation of its training values. Those statistics, and the range the training data
covered, travel in the model file: a target is turned into the network's vector the same way, and
a target outside the range the model has seen is refused instead of extrapolated.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


class ConditionError(ValueError):
    """A condition a model cannot take: unknown name, missing value, or outside the training range."""


def condition_stats(names: Sequence[str], values: np.ndarray) -> dict:
    """What a model file keeps about its conditions: names, mean and std (the scaling), low and high
    (the range of the training values), from the training values (N, len(names))."""
    values = np.asarray(values, dtype=np.float64).reshape(len(values), len(names))
    std = values.std(axis=0)
    return {"names": list(names), "mean": values.mean(axis=0).tolist(),
            "std": np.where(std > 0, std, 1.0).tolist(),
            "low": values.min(axis=0).tolist(), "high": values.max(axis=0).tolist()}


def normalise(stats: dict, values) -> torch.Tensor:
    """Descriptor values (N, k) or (k,) as the network's condition vectors: (value - mean) / std."""
    values = torch.as_tensor(np.asarray(values, dtype=np.float64))
    mean, std = (torch.tensor(stats[key], dtype=torch.float64) for key in ("mean", "std"))
    return ((values - mean) / std).float()


def check_range(stats: dict, name: str, value: float, label: str) -> None:
    """Refuse a ``value`` of the condition ``name`` outside its training range (the network would
    extrapolate from what it never saw); ``label`` names the value in the message."""
    index = stats["names"].index(name)
    low, high = stats["low"][index], stats["high"][index]
    if not low <= value <= high:
        raise ConditionError(f"{label}: outside the training range of {name}, {low:g} to {high:g}")


def parse_targets(stats: dict | None, items: Sequence[str], source: str = "the model") -> dict[str, float]:
    """``["grains=30", ...]`` as {name: value}, checked against what ``source`` was trained on:
    every condition named once, each value a number inside the training range."""
    if not stats:
        raise ConditionError(f"{source} was trained without a condition; sample it without --condition")
    targets = {}
    for item in items:
        name, _, text = item.partition("=")
        if name not in stats["names"]:
            raise ConditionError(f"--condition {item}: {source} was trained on {', '.join(stats['names'])}; "
                                 f"expected NAME=VALUE with one of them")
        try:
            value = float(text)
        except ValueError:
            raise ConditionError(f"--condition {item}: expected NAME=VALUE with a number, e.g. {name}=30") from None
        check_range(stats, name, value, f"--condition {item}")
        if name in targets:
            raise ConditionError(f"--condition {item}: {name} is given twice; expected each name once")
        targets[name] = value
    missing = [name for name in stats["names"] if name not in targets]
    if missing:
        raise ConditionError(f"--condition: {source} needs a value for {', '.join(missing)} too "
                             f"(e.g. {missing[0]}={stats['mean'][stats['names'].index(missing[0])]:.3g})")
    return targets


def target_vector(stats: dict, targets: dict[str, float]) -> torch.Tensor:
    """The network's condition vector (k,) for {name: value} targets (``parse_targets`` reads them
    from the command line). Refused for a condition left out or a value outside the training range,
    where the network would extrapolate from what it never saw."""
    missing = [name for name in stats["names"] if name not in targets]
    if missing:
        raise ConditionError(f"the model needs a value for {', '.join(missing)} too; got {targets}")
    for name in stats["names"]:
        check_range(stats, name, targets[name], f"{name} = {targets[name]:g}")
    return normalise(stats, [targets[name] for name in stats["names"]])
