"""Keeping only the samples asked for: closed boundary networks, descriptors near their targets.

A diffusion model draws from a distribution. Asked for 30 grains, the shipped conditional model
draws 30 give or take two or three, and a few images of any model have an open boundary (a
dangling end) where a simulation would see two grains as one. Who needs each image within a
tolerance of what they asked for (or exactly it) draws more and keeps the images that measure
right. They are measured as ``evaluate`` measures a folder of samples: on the 8-bit image as
``sample`` writes it (``as_written``), with ``metrics.measure``; a periodic network's images tile,
and their networks are judged closed on the torus. The price is the images drawn and not kept:
``Tally`` counts them.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import numpy as np
import torch

from . import data as data_module
from . import metrics


# images drawn at most for each one asked for, unless told otherwise (``sample --max-draws``)
DRAWS_PER_IMAGE = 20


class KeepError(ValueError):
    """A filter that cannot be applied: an unknown descriptor, a tolerance that is not a number."""


@dataclass(frozen=True)
class Wanted:
    """What a kept image must measure: a closed network (two grains or more and no dangling ends;
    a blank image has no network to be closed) and each descriptor in ``within`` (name -> (target,
    tolerance)) no further than its tolerance from its target. The ends are counted on the torus
    when the images ``tiles`` (a periodic network's: ``metrics.torus_dangling_ends``, so that a
    boundary open across the seam of a tiled image or a periodic simulation grid is open), else as
    ``evaluate`` counts them (``metrics.skeleton_features``: ends at the image's edge do not count)."""

    closed: bool = False
    within: dict[str, tuple[float, float]] = field(default_factory=dict)
    tiles: bool = False

    def __bool__(self) -> bool:
        return self.closed or bool(self.within)

    def describe(self) -> str:
        """For people: "closed networks, grains within 1 of 30"."""
        parts = ["closed networks"] if self.closed else []
        parts += [f"{name} within {tol:g} of {target:g}" for name, (target, tol) in self.within.items()]
        return ", ".join(parts) or "every image"

    def keeps(self, images: torch.Tensor) -> np.ndarray:
        """Which of ``images`` (N, 1, H, W) in [-1, 1] pass, as booleans (N,)."""
        return np.array([self._passes(mask) for mask in as_written(images)], dtype=bool)

    def _passes(self, mask: np.ndarray) -> bool:
        names = dict.fromkeys((["grains"] if self.closed else []) + list(self.within))
        value = {name: metrics.measure(name, mask) for name in names}  # each descriptor measured once
        if self.closed and (value["grains"] < 2 or (metrics.torus_dangling_ends(mask) if self.tiles else
                                                    metrics.measure("dangling_ends", mask)) > 0):
            return False
        return all(abs(value[name] - target) <= tol for name, (target, tol) in self.within.items())


def samples_tile(model) -> bool:
    """Whether ``model``'s samples tile (a periodic UNet's: every convolution pads circularly), so
    that ``Wanted.tiles`` judges their networks closed on the torus."""
    return bool(model.config().get("periodic"))


def as_written(images: torch.Tensor) -> np.ndarray:
    """Boundary masks (N, H, W) of ``images`` (N, 1, H, W) in [-1, 1] as their 8-bit PNGs give them
    (``data.to_uint8``, then ``metrics.boundary_masks``): what ``evaluate`` reads back."""
    return metrics.boundary_masks(data_module.to_uint8(images.detach().cpu().numpy()[:, 0]))


def parse_within(items: Sequence[str], targets: dict[str, float],
                 counts: Sequence[str] = ()) -> dict[str, tuple[float, float]]:
    """``["grains=1", ...]`` as {name: (target, tolerance)}: each NAME one of the ``targets`` asked
    for (``--condition``) and a descriptor ``metrics.measure`` knows, each tolerance a number >= 0,
    and for a descriptor in ``counts`` (whole numbers) a whole number within the tolerance, as
    ``Wanted`` compares, so that an image can be kept at all."""
    within = {}
    for item in items:
        name, _, text = item.partition("=")
        if name in within:
            raise KeepError(f"--within {item}: {name} is given twice; expected each name once")
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
        if not 0 <= tolerance < float("inf"):
            raise KeepError(f"--within {item}: expected NAME=TOLERANCE with a finite number >= 0, e.g. {name}=1")
        target = targets[name]
        whole = range(math.floor(target - tolerance), math.ceil(target + tolerance) + 1)
        if name in counts and not any(abs(k - target) <= tolerance for k in whole):
            raise KeepError(f"--within {item}: no whole number of {name} lies within {tolerance:g} of {target:g}, "
                            f"so no image could be kept; ask for a whole number or widen it")
        within[name] = (target, tolerance)
    return within


@dataclass
class Tally:
    """Images drawn, those of them that passed, and those kept (passing ones beyond the number
    asked for, in the last batch, are not kept)."""

    drawn: int = 0
    passed: int = 0
    kept: int = 0

    def rate(self) -> float:
        """The fraction of drawn images that passed: what an image kept costs is 1 / rate draws."""
        return self.passed / self.drawn if self.drawn else 0.0

    def describe(self) -> str:
        return f"{self.passed} of {self.drawn} drawn passed ({self.rate():.0%})"


def next_size(n: int, tally: Tally, batch_size: int, most: int) -> int:
    """How many images the next batch draws: ``batch_size`` until one has passed; then as many as
    the pass rate so far says the rest needs, a quarter more for luck, at most ``batch_size``;
    never more than ``most`` leaves."""
    wish = math.ceil(1.25 * (n - tally.kept) / tally.rate()) if tally.passed else batch_size
    return max(1, min(wish, batch_size, most - tally.drawn))


def kept_batches(draw: Callable[[int, int], torch.Tensor], n: int, wanted: Wanted, most: int, batch_size: int,
                 tally: Tally | None = None) -> Iterator[tuple[int, torch.Tensor]]:
    """The images that ``wanted`` keeps of the batches ``draw(number, size)`` makes (numbers 0, 1,
    ...; sizes by ``next_size``: give ``batch_size`` at most ``n``, so that the first batch is the
    one a plain draw of ``n`` starts with), as (index of the first kept image, images), until ``n`` are kept
    or ``most`` images have been drawn (then fewer than ``n`` come out: compare ``tally.kept``
    with ``n``). No batch is drawn once ``n`` are kept."""
    tally = Tally() if tally is None else tally
    for number in itertools.count():
        if tally.kept >= n or tally.drawn >= most:
            return
        images = draw(number, next_size(n, tally, batch_size, most))
        passing = images[torch.from_numpy(wanted.keeps(images))]
        tally.drawn, tally.passed = tally.drawn + len(images), tally.passed + len(passing)
        chosen = passing[:n - tally.kept]
        if len(chosen):
            tally.kept += len(chosen)
            yield tally.kept - len(chosen), chosen
