"""Keeping only the samples asked for: closed boundary networks, descriptors near their targets.

A diffusion model draws from a distribution. Asked for 30 grains, the shipped conditional model
draws 30 give or take two or three, and a few images of any model have an open boundary (a
dangling end) where a simulation would see two grains as one. Who needs exactly what they asked
for draws more and keeps the images that measure right. They are measured as ``evaluate``
measures a folder of samples: on the 8-bit image as ``sample`` writes it (``data.to_uint8``), cut
into a boundary mask (``metrics.boundary_masks``), with ``metrics.measure``. The price is the
images thrown away; ``Tally`` counts them, and ``sample`` prints the fraction kept.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch

from . import data as data_module
from . import metrics


class KeepError(ValueError):
    """A filter that cannot be applied: an unknown descriptor, a tolerance that is not a number."""


@dataclass(frozen=True)
class Wanted:
    """What a kept image must measure: a closed network (no dangling ends) and each descriptor
    in ``within`` (name -> (target, tolerance)) no further than its tolerance from its target."""

    closed: bool = False
    within: dict[str, tuple[float, float]] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.closed or bool(self.within)

    def describe(self) -> str:
        """For people: "closed networks, grains within 1 of 30"."""
        parts = ["closed networks"] if self.closed else []
        parts += [f"{name} within {tol:g} of {target:g}" for name, (target, tol) in self.within.items()]
        return ", ".join(parts) or "every image"

    def keeps(self, images: torch.Tensor) -> np.ndarray:
        """Which of ``images`` (N, 1, H, W) in [-1, 1] pass, as booleans (N,)."""
        masks = metrics.boundary_masks(data_module.to_uint8(images.detach().cpu().numpy()[:, 0]))
        return np.array([self._passes(mask) for mask in masks], dtype=bool)

    def _passes(self, mask: np.ndarray) -> bool:
        if self.closed and metrics.measure("dangling_ends", mask) > 0:
            return False
        return all(abs(metrics.measure(name, mask) - target) <= tol for name, (target, tol) in self.within.items())


def parse_within(items: Sequence[str], targets: dict[str, float]) -> dict[str, tuple[float, float]]:
    """``["grains=1", ...]`` as {name: (target, tolerance)}: each NAME one of the ``targets`` asked
    for (``--condition``) and a descriptor ``metrics.measure`` knows, each tolerance a number >= 0."""
    within = {}
    for item in items:
        name, _, text = item.partition("=")
        if name not in targets:
            asked = ", ".join(targets) if targets else "none"
            raise KeepError(f"--within {item}: expected NAME=TOLERANCE with NAME a condition given with "
                            f"--condition (given: {asked})")
        if name not in metrics.DESCRIPTORS:
            raise KeepError(f"--within {item}: {name} is not a descriptor helpers.metrics measures "
                            f"({', '.join(metrics.DESCRIPTORS)})")
        try:
            tolerance = float(text)
        except ValueError:
            tolerance = float("nan")
        if not tolerance >= 0 or tolerance == float("inf"):
            raise KeepError(f"--within {item}: expected NAME=TOLERANCE with a number >= 0, e.g. {name}=1")
        within[name] = (targets[name], tolerance)
    return within


@dataclass
class Tally:
    """How many images were drawn and kept so far."""

    drawn: int = 0
    kept: int = 0

    def fraction(self) -> float:
        return self.kept / self.drawn if self.drawn else 0.0


def kept_batches(batches: Iterable[torch.Tensor], n: int, wanted: Wanted, most: int,
                 tally: Tally | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """The images of ``batches`` that ``wanted`` keeps, as (index of the first kept image, images),
    until ``n`` are kept (the last batch's surplus is dropped) or ``most`` images have been drawn
    (then fewer than ``n`` come out: compare ``tally.kept`` with ``n``). ``batches`` is consumed
    lazily, so no image is drawn after the last one needed."""
    tally, source = Tally() if tally is None else tally, iter(batches)
    while tally.kept < n and tally.drawn < most:
        images = next(source, None)
        if images is None:
            return
        images = images[:most - tally.drawn]
        tally.drawn += len(images)
        chosen = images[torch.from_numpy(wanted.keeps(images))][:n - tally.kept]
        if len(chosen):
            tally.kept += len(chosen)
            yield tally.kept - len(chosen), chosen
