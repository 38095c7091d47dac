"""How well a conditional model does what it is asked: achieved descriptor against target, and
fidelity at each target against fresh real images drawn at that target.

The generator of the training data is ours, so "real images with 30 grains" need not be looked
up: draw voronoi-gb-range images (with seeds the model never saw) and keep those whose measured
grain count is 30 (a length or a fraction: within 5% of the target). That is the training
distribution conditioned on the target, the reference a conditional sample should be
indistinguishable from. The descriptor asked for is judged by its error (R^2, mean absolute error),
not by a ratio: its real spread at a target is set by the tolerance, not by the data.

A sample that misses its target (31 grains for 30) differs from real images at the target in its
other descriptors too, as real images with 31 grains do. So each target's samples are also compared
with real images matched to them one by one (each sample's measured value, the same tolerance):
those ratios ask whether the images are realistic for what they came out as, apart from how well
they hit the target.

A model conditioned on several descriptors is measured along one of them (``vary``): at each of its
targets the others are held at what real images at that target have (their median; with two
held, one real image's pair), a combination the data holds (grain count and boundary fraction
move together, so "8 grains with the median boundary fraction of the whole set" would ask for
something no real image is). The real images it is compared with then hold every condition (the
held ones within the same tolerance), and so do the matched ones. A held descriptor is judged by
its error, beside the error real images at the target make about the held value: what a model
that ignored that condition would score.
"""
from __future__ import annotations

import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional, Sequence

import numpy as np
import torch

from . import data as data_module
from . import metrics
from .conditions import ConditionError, check_range, target_vector
from .keep import DRAWS_PER_IMAGE, Tally, Wanted, as_written, kept_batches, samples_tile
from .sample import BATCH_SIZE, Sampler, derived_seed, draw_batch, generate

# voronoi-gb-range images drawn with this base seed are not the shipped set's, made with seed 0
# (its README): a model trained on a set made with --seed 1000, 1001 or 1002 would meet its own
# training images here, which nothing checks
REAL_SEED = 1000
MATCHED_SEED = 1001  # nor these: the real images matched to samples, apart from those at the targets
HELD_SEED = 1002  # nor these: the real images that set a held condition's value (several conditions)
# how close a matched real image's length or fraction must be to its sample's: tight, so that the
# window's own spread adds little to the matched floor (a count is matched exactly)
MATCH_TOLERANCE = 0.01
# the descriptors whose ratios to the noise floor are reported at each target, but for the one asked
# for; dangling ends have no floor to speak of (real images have none), so they are reported as a
# mean per image instead
RATIO_NAMES = ("boundary_fraction", "grains", "lineal_intercept")
COUNTS = ("grains",)  # descriptors that count things: whole-number targets, matched exactly


def measured_condition(stats: dict | None, source: str = "the model", vary: Optional[str] = None) -> str:
    """The descriptor control varies over its targets: ``vary`` if given, else the model's first
    condition (its only one, mostly); refused for an unconditional model or a ``vary`` the model
    was not conditioned on."""
    if not stats:
        raise ConditionError(f"{source} was trained without a condition; expected a conditional model")
    if vary is not None and vary not in stats["names"]:
        raise ConditionError(f"cannot vary {vary}: {source} is conditioned on {', '.join(stats['names'])}; "
                             f"expected one of them")
    return vary or stats["names"][0]


def ratio_names(*names: str) -> tuple[str, ...]:
    """The descriptors compared with real images at a target of the conditions ``names``: all but
    those. Real images at a target hold each condition within ``tolerance`` (exactly, for a count),
    so their spread of a condition is the tolerance's, and a ratio against it would measure that
    choice."""
    return tuple(d for d in RATIO_NAMES if d not in names)


def tolerance(target: float, name: str = "grains", relative: float = 0.05) -> float:
    """How close a real image's descriptor must be to the target: exact for a count (an image with
    30 grains is what a perfect model asked for 30 draws), ``relative`` (5%) for a length or a fraction."""
    return 0.0 if name in COUNTS else relative * abs(target)


def check_target(name: str, value: float, label: str) -> None:
    """Refuse a target real images cannot hold: a count that is not a whole number."""
    if name in COUNTS and value != round(value):
        raise ConditionError(f"{label}: {name} counts whole things; expected a whole number, e.g. {round(value)}")


def check_targets(stats: dict, name: str, targets: Sequence[float], label: str = "--targets") -> None:
    """Refuse, in one line naming ``label`` and the value, a target of ``name`` that control cannot
    judge: outside the training range, or a count that is not a whole number."""
    for target in targets:
        check_range(stats, name, target, f"{label} {target:g}")
        check_target(name, target, f"{label} {target:g}")


def target_seed(seed: int, index: int) -> int:
    """The sampling seed of target number ``index`` of a run seeded ``seed``: one stream per
    (seed, target), so that runs with different seeds share no target's noise (the third key keeps
    it apart from ``batch_seed``'s (seed, batch) streams)."""
    return derived_seed(seed, index, 1)


# each stream's measured values by image index, (seed, size, descriptor) -> values (with the grain
# rule metrics.MIN_GRAIN_PX as it is): a second pass over a stream (the next guidance scale's matched
# images) measures nothing again
_MEASURED: dict[tuple[int, int, str], list[float]] = {}


def real_image(seed: int, index: int, size: int = 64) -> np.ndarray:
    """Image ``index`` of the voronoi-gb-range stream ``seed``, as a boundary mask."""
    return data_module.make_voronoi_gb_range(seed, index, size).image >= 128


def draw_real(values: Sequence[float], per: int, name: str = "grains", size: int = 64, seed: int = REAL_SEED,
              max_draws: int = 200_000, relative: float = 0.05,
              held: Optional[dict[str, Sequence[float]]] = None) -> list[list[np.ndarray]]:
    """Up to ``per`` fresh voronoi-gb-range boundary masks for each entry of ``values`` whose
    descriptor ``name`` lies within ``tolerance`` of it, drawn in one pass over image indices that
    ends when every entry has its ``per`` or after ``max_draws`` images (an entry the generator
    rarely makes comes back short: the pass then reads all ``max_draws``). A drawn image goes to
    the nearest entry it fits that still needs one (the first of equals), so no image is counted
    twice. ``held`` ({descriptor: a value per entry}) asks each image to hold those descriptors
    too, each within its tolerance (nearness is still judged on ``name``)."""
    wanted = np.asarray(values, dtype=np.float64)
    allowed = np.array([tolerance(v, name, relative) for v in wanted])
    others = {}
    for other, v in (held or {}).items():
        if len(v) != len(wanted):
            raise ValueError(f"held {other}: {len(v)} values for {len(wanted)} entries; expected one per entry")
        others[other] = (np.asarray(v, dtype=np.float64), np.array([tolerance(x, other, relative) for x in v]))
    found: list[list[np.ndarray]] = [[] for _ in wanted]
    missing = np.full(len(wanted), per)
    measured = {d: _MEASURED.setdefault((seed, size, d), []) for d in (name, *others)}
    for index in range(max_draws):
        if not missing.any():
            break
        mask = None
        for d, values_of in measured.items():  # the pass reads indices in order: each list is index long
            if index == len(values_of):
                mask = real_image(seed, index, size) if mask is None else mask
                values_of.append(metrics.measure(d, mask))
        gaps = np.abs(measured[name][index] - wanted)
        ok = (missing > 0) & (gaps <= allowed)
        for other, (want, allow) in others.items():
            ok &= np.abs(measured[other][index] - want) <= allow
        fits = np.flatnonzero(ok)
        if len(fits):
            entry = fits[np.argmin(gaps[fits])]
            found[entry].append(real_image(seed, index, size) if mask is None else mask)
            missing[entry] -= 1
    return found


def real_at_targets(targets: Sequence[float], n: int, size: int = 64, seed: int = REAL_SEED,
                    max_draws: int = 200_000, name: str = "grains",
                    held: Optional[dict[str, Sequence[float]]] = None, relative: float = 0.05) -> dict[float, np.ndarray]:
    """``n`` fresh voronoi-gb-range boundary masks per target value of the descriptor ``name``
    (within ``tolerance``; holding ``held`` too, see ``draw_real``), drawn in one pass over image
    indices; refused if the draws run out first (a target outside what the generator makes)."""
    for target in targets:
        check_target(name, target, f"target {target:g}")
    if len(set(targets)) < len(targets):
        raise ValueError(f"targets {', '.join(f'{t:g}' for t in targets)}: each target once, please")
    found = draw_real(targets, n, name, size, seed, max_draws, relative, held)
    short = {t: len(m) for t, m in zip(targets, found) if len(m) < n}
    if short:
        holding = "".join(f" holding {other} at {', '.join(f'{v:.3g}' for v in values)}"
                          for other, values in (held or {}).items())
        raise ValueError(f"only {short} real images near these values of {name}{holding} in {max_draws} draws; "
                         f"expected {n} each")
    return {t: np.stack(masks) for t, masks in zip(targets, found)}


def matched_ratios(generated: metrics.SetDescriptors, name: str, within: tuple[float, float], size: int = 64,
                   seed: int = MATCHED_SEED, splits: int = 20, max_draws: int = 100_000,
                   comparison_seed: int = 0,
                   held_ranges: Optional[dict[str, tuple[float, float]]] = None) -> tuple[dict[str, float], int, int]:
    """The ratios to the noise floor of ``generated`` against real images matched to it one by one:
    two real images whose ``name`` is each sample's own (a count exactly, a length or a fraction
    within ``MATCH_TOLERANCE``), and each descriptor of ``held_ranges`` too ({descriptor: its
    training range}, for a model conditioned on several), compared as pairs
    (``metrics.compare_paired``). Samples outside ``within`` or a held range (the model's training
    range: control missed) and samples the draws did not match (values the generator rarely
    makes; with several conditions, often a combination real images do not have: a failure of
    realism in itself) are left out. Returns the ratios (NaN with fewer than 2 samples matched)
    and the two numbers left out: outside the range, not matched."""
    held_ranges = held_ranges or {}
    values = generated.per_image[name].astype(float)
    ok = (values >= within[0]) & (values <= within[1])
    for other, (low, high) in held_ranges.items():
        ok &= (generated.per_image[other] >= low) & (generated.per_image[other] <= high)
    inside = np.flatnonzero(ok)
    found = draw_real(values[inside], 2, name, size, seed, max_draws, relative=MATCH_TOLERANCE,
                      held={other: generated.per_image[other][inside].astype(float) for other in held_ranges})
    pairs = [(i, masks) for i, masks in zip(inside, found) if len(masks) == 2]
    outside, short = len(values) - len(inside), len(inside) - len(pairs)
    names = ratio_names(name, *held_ranges)
    if len(pairs) < 2:
        return {d: float("nan") for d in names}, outside, short
    first, second = (metrics.describe_set(np.stack([masks[k] for _, masks in pairs])) for k in (0, 1))
    comparison = metrics.compare_paired(generated.subset(np.array([i for i, _ in pairs])), first, second,
                                        splits=splits, seed=comparison_seed)
    return {d: comparison.ratio(d) for d in names}, outside, short


def default_targets(stats: dict, count: int = 8, name: Optional[str] = None) -> list[float]:
    """``count`` targets of the condition ``name`` (default: the model's first), spread geometrically
    over the middle 90% of its training range (the ends hold too few real images to compare with):
    whole numbers for a count (grains), three significant figures for a length or a fraction;
    fewer where a narrow range rounds two to the same value."""
    index = stats["names"].index(name) if name else 0
    low, high = stats["low"][index], stats["high"][index]
    margin = 0.05 * (high - low)
    values = np.geomspace(low + margin, high - margin, count)
    rounded = [float(round(v)) if stats["names"][index] in COUNTS else float(f"{v:.3g}") for v in values]
    return list(dict.fromkeys(rounded))  # a narrow range rounds some to one value: each once


HELD_DRAWS = 65  # real images per target that set the held values: odd, so a median is one of them


@dataclass
class Held:
    """A condition held while another is varied: its value at each target, and the mean absolute
    error about it of the other real images at the target that set it, the one it was taken from
    left out (what a model that ignored this condition, drawing it as real images at the target
    do, would score)."""

    values: list[float]
    real_mae: list[float]


def held_values(stats: dict, name: str, targets: Sequence[float], size: int = 64,
                seed: int = HELD_SEED) -> dict[str, Held]:
    """For a model conditioned on several descriptors, each condition but ``name`` at each target:
    ``HELD_DRAWS`` real images at the target (``name`` within ``MATCH_TOLERANCE``, exactly for a
    count), and the values of the one nearest the medians of the held descriptors (in units of
    their training spread): with one held descriptor, its median; with two, a combination one
    real image has. Refused if a value falls outside its training range. {} for one condition."""
    others = [other for other in stats["names"] if other != name]
    if not others:
        return {}
    try:
        real = real_at_targets(targets, HELD_DRAWS, size, seed, name=name, relative=MATCH_TOLERANCE)
    except ValueError as exc:
        raise ValueError(f"the held values' draw ({HELD_DRAWS} real images per target): {exc}") from None
    index = {other: stats["names"].index(other) for other in others}
    values: dict[str, list[float]] = {other: [] for other in others}
    errors: dict[str, list[float]] = {other: [] for other in others}
    for target in targets:
        measured = {other: np.array([metrics.measure(other, mask) for mask in real[target]]) for other in others}
        distance = sum(np.abs(measured[other] - np.median(measured[other])) / stats["std"][index[other]]
                       for other in others)
        chosen = int(np.argmin(distance))
        for other in others:
            low, high = stats["low"][index[other]], stats["high"][index[other]]
            value = float(measured[other][chosen])
            if not low <= value <= high:
                raise ConditionError(f"target {target:g}: real images with {name} {target:g} hold {other} {value:.3g}, "
                                     f"outside the model's training range {low:g} to {high:g}; expected a {name} "
                                     f"target whose real images have {other} in that range")
            values[other].append(value)
            # over the other real images: the chosen one's error is 0 by choice, and would flatter it
            errors[other].append(float(np.sum(np.abs(measured[other] - value)) / (len(measured[other]) - 1)))
    return {other: Held(values[other], errors[other]) for other in others}


def reference(stats: dict, name: str, targets: Sequence[float], n: int, size: int = 64,
              held: Optional[dict[str, Held]] = None) -> tuple[dict[str, Held], dict[float, np.ndarray]]:
    """What a control run compares with: the held values (``held``, default ``held_values``) and
    ``n`` real images per target (``real_at_targets``) holding them."""
    held = held if held is not None else held_values(stats, name, targets, size)
    return held, real_at_targets(targets, n, size, name=name, held={other: h.values for other, h in held.items()})


def r_squared(targets: np.ndarray, achieved: np.ndarray) -> float:
    """1 - sum (achieved - target)^2 / sum (achieved - mean)^2: 1 when every image hits its target,
    below 0 when the images sit further from their targets than from their own mean."""
    residual = float(np.sum((achieved - targets) ** 2))
    spread = float(np.sum((achieved - achieved.mean()) ** 2))
    return 1.0 - residual / spread if spread > 0 else float("nan")


def worst(ratios: Sequence[dict[str, float]]) -> float:
    """The largest ratio over targets and descriptors, NaNs (nothing to compare) left out."""
    values = [v for r in ratios for v in r.values() if not np.isnan(v)]
    return max(values) if values else float("nan")


# How far a conditional model's fast sampler may fall behind its recommended sampler under control
# and still be stored as the model's fast one (tools/control_fast.py): a margin of non-inferiority,
# judged on control's default targets (eight spread over the training range) with at least
# FAST_VETTING_N samples each, the same targets, samples and seed for both, on the means over all
# the targets. At that size, from the card's control_8x64.json at guidance 1, a sample's absolute
# count error spreads by about 1.9 grains (sqrt(MSE - MAE^2) = sqrt(7.8 - 2.06^2), the MSE rebuilt
# from each target's achieved mean and sd), so 0.25 grains is about 2 standard errors of the
# difference between two independent runs, and half of what guidance 0 to 1 bought (MAE 2.56 to
# 2.06). Dangling ends at a mean of 0.36 per image spread by about 0.5 to 0.8 per image (unchecked:
# 0.5 if images with an open boundary mostly have one end, 0.8 if they mostly have two), so 0.1,
# also the fidelity bar's allowance, is 2 to 3 standard errors. R^2 only guards against a gross
# failure: 0.01 is more than guidance 0 to 4 moved it there (0.007). The ratios to the noise floor
# are reported, not judged: at 64 samples a target they move by more than 1 either way between
# samplers whose counts and dangling ends agree (the card's "Sampling faster"). Both samplers start
# from the same noise, so their errors are correlated and the difference's true standard error is
# smaller than the independent runs' above: the margins are looser than their counts of standard
# errors say, as a guard against a sampler that is worse, not proof that one is as good.
FAST_TOLERANCES = {"r2": 0.01, "mae": 0.25, "dangling_ends": 0.1}
FAST_VETTING_N = 64


def falls_behind(candidate: dict, recommended: dict) -> list[str]:
    """Where one sampler's control (a ``ControlReport.summary()``) falls behind the recommended
    sampler's by more than ``FAST_TOLERANCES`` (NaN on either side counts as behind), in words;
    empty where it does not. Both must have measured the same targets."""
    if candidate["targets"] != recommended["targets"]:
        raise ValueError(f"targets {candidate['targets']} and {recommended['targets']}: expected the same")
    ours = {name: candidate[name] for name in FAST_TOLERANCES}
    margin = {name: recommended[name] + (-1 if name == "r2" else 1) * FAST_TOLERANCES[name] for name in ours}
    behind = {name: bool(np.isnan(ours[name]) or np.isnan(margin[name])
                         or (ours[name] < margin[name] if name == "r2" else ours[name] > margin[name]))
              for name in ours}
    return [f"{name} {ours[name]:.3g} against {recommended[name]:.3g} (tolerance {FAST_TOLERANCES[name]:g})"
            for name in ours if behind[name]]


@dataclass
class ControlReport:
    """One sampler's (and guidance's) control over a descriptor, over a list of targets."""

    name: str  # the descriptor asked for (a manifest column the model was trained on)
    sampler: str  # the sampler's words, guidance included
    targets: list[float]
    achieved: list[list[float]]  # per target: each sample's measured value
    ratios: list[dict[str, float]]  # per target: distance / noise floor, against real images at the target
    dangling_ends: list[float]  # per target: mean dangling ends per sample
    matched: list[dict[str, float]]  # per target: the ratios against real images matched to each sample
    outside: list[int]  # per target: samples outside the training range, left out of ``matched``
    unmatched: list[int]  # per target: samples whose value the real draws did not match, left out too
    # the model's other conditions (several): name -> (its Held, each sample's measured value per target)
    held: dict[str, tuple[Held, list[list[float]]]] = field(default_factory=dict)
    # samples judged only if kept (``Keeping``): its rules, and per target the images drawn and passed
    keeping: dict = field(default_factory=dict)

    @property
    def r2(self) -> float:
        return _r2(self.targets, self.achieved)

    @property
    def mae(self) -> float:
        return _mae(self.targets, self.achieved)

    def summary(self) -> dict:
        return {"name": self.name, "sampler": self.sampler, "r2": self.r2, "mae": self.mae,
                "worst_ratio": worst(self.ratios),
                "dangling_ends": float(np.mean(self.dangling_ends)),
                "targets": self.targets, "achieved_mean": [float(np.mean(a)) for a in self.achieved],
                "achieved_sd": [float(np.std(a)) for a in self.achieved], "ratios": self.ratios,
                "dangling_ends_by_target": self.dangling_ends,
                "worst_matched_ratio": worst(self.matched), "matched_ratios": self.matched,
                "outside": self.outside, "unmatched": self.unmatched,
                "held": {other: {"values": h.values, "achieved_mean": [float(np.mean(a)) for a in achieved],
                                 "mae": _mae(h.values, achieved), "real_mae": float(np.mean(h.real_mae)),
                                 "real_mae_by_target": h.real_mae}
                         for other, (h, achieved) in self.held.items()},
                **({"keeping": self.keeping} if self.keeping else {})}


def _r2(targets: Sequence[float], achieved: Sequence[Sequence[float]]) -> float:
    """R^2 of every sample's measured value against its target; NaN for a single target: with no
    spread of targets to follow, R^2 = -n (mean - target)^2 / scatter, 0 at best, scores the
    samples' bias against their scatter, not control."""
    if len(set(targets)) < 2:
        return float("nan")
    pairs = [(t, a) for t, values in zip(targets, achieved) for a in values]
    return r_squared(*map(np.array, zip(*pairs)))


def _mae(targets: Sequence[float], achieved: Sequence[Sequence[float]]) -> float:
    """Mean absolute error of every sample's measured value against its target."""
    return float(np.mean([abs(a - t) for t, values in zip(targets, achieved) for a in values]))


@dataclass(frozen=True)
class Keeping:
    """Which samples ``control`` judges, as ``sample --closed --within`` keeps them: a closed
    network, the varied descriptor within ``within`` of its target; each target's draw (at each
    guidance scale) stops after ``most`` images (default ``keep.DRAWS_PER_IMAGE`` per sample)."""

    within: Optional[float] = None
    closed: bool = False
    most: Optional[int] = None

    def wanted(self, name: str, target: float, tiles: bool) -> Wanted:
        """What a sample at ``target`` must measure to be judged (``tiles``: as ``Wanted``; no default,
        so that no caller counts a periodic model's ends as if its images did not tile)."""
        return Wanted(self.closed, {name: (target, self.within)} if self.within is not None else {}, tiles)

    def rules(self, name: str) -> str:
        """In words: "closed networks, grains within 1"."""
        return ", ".join((["closed networks"] if self.closed else [])
                         + ([f"{name} within {self.within:g}"] if self.within is not None else []))


def _kept_images(model, schedule, n: int, sampler: Sampler, wanted: Wanted, most: int, tally: Tally, label: str,
                 **options) -> torch.Tensor:
    """The first ``n`` images ``wanted`` keeps, drawn in batches as ``generate`` draws them; refused
    if ``most`` images were drawn first (``label`` names the target in the message)."""
    def draw(number: int, count: int) -> torch.Tensor:
        return draw_batch(model, schedule, sampler, number, count, **options)

    parts = [kept for _, kept in kept_batches(draw, n, wanted, most, min(n, BATCH_SIZE), tally)]
    if tally.kept < n:
        raise ValueError(f"control: {tally.kept} of the {n} samples asked for at {label} ({sampler.describe()}) "
                         f"were kept ({wanted.describe()}; {tally.describe()}, --max-draws {most}); "
                         f"{'widen --within or ' if wanted.within else ''}raise --max-draws")
    return torch.cat(parts)


def control_masks(model, schedule, stats: dict, targets: Sequence[float], n: int, sampler: Sampler, *,
                  name: str, held: dict[str, Held], seed: int = 0, device: Optional[torch.device] = None,
                  keeping: Optional[Keeping] = None, tallies: Optional[list[Tally]] = None) -> list[np.ndarray]:
    """Boundary masks of ``n`` samples at each target of ``name``, the model's other conditions at
    their ``held`` values, target ``i`` seeded ``target_seed(seed, i)``: what ``judge`` measures.
    With ``keeping``, the first ``n`` that it keeps, as their 8-bit images give them (``tallies``
    gets each target's count of images drawn and passed)."""
    masks = []
    for i, target in enumerate(targets):
        asked = {name: target, **{other: h.values[i] for other, h in held.items()}}
        options = dict(seed=target_seed(seed, i), device=device, condition=target_vector(stats, asked))
        if keeping is None:
            masks.append(metrics.boundary_masks(generate(model, schedule, n, sampler, **options)))
            continue
        tally = Tally()
        images = _kept_images(model, schedule, n, sampler, keeping.wanted(name, target, samples_tile(model)),
                              keeping.most or DRAWS_PER_IMAGE * n, tally, f"{name} = {target:g}", **options)
        masks.append(as_written(images))
        if tallies is not None:
            tallies.append(tally)
    return masks


def judge(masks: Sequence[np.ndarray], stats: dict, targets: Sequence[float], sampler_words: str, *, name: str,
          real: dict[float, np.ndarray], held: dict[str, Held], size: int = 64, splits: int = 20) -> ControlReport:
    """Measure the samples at each target (``masks``, as ``control_masks`` makes them): achieved
    against target, ratios to the noise floor against the ``real`` images at each target, and
    against real images matched to each sample (``matched_ratios``)."""
    described = {t: metrics.describe_set(real[t]) for t in targets}
    ranges = {d: (stats["low"][i], stats["high"][i]) for i, d in enumerate(stats["names"])}
    achieved, ratios, ends, matched, outside, unmatched = [], [], [], [], [], []
    held_achieved: dict[str, list[list[float]]] = {other: [] for other in held}
    for i, (target, mask) in enumerate(zip(targets, masks)):
        generated = metrics.describe_set(mask)
        comparison = metrics.compare_sets(generated, described[target], splits=splits, seed=i)
        achieved.append(generated.per_image[name].astype(float).tolist())
        for other in held:
            held_achieved[other].append(generated.per_image[other].astype(float).tolist())
        ratios.append({d: comparison.ratio(d) for d in ratio_names(*stats["names"])})
        ends.append(float(generated.per_image["dangling_ends"].mean()))
        like, out, short = matched_ratios(generated, name, ranges[name], size, splits=splits, comparison_seed=i,
                                          held_ranges={other: ranges[other] for other in held})
        matched.append(like)
        outside.append(out)
        unmatched.append(short)
    return ControlReport(name, sampler_words, [float(t) for t in targets], achieved, ratios, ends, matched,
                         outside, unmatched, {other: (h, held_achieved[other]) for other, h in held.items()})


@dataclass
class DrawnSamples:
    """A conditional model's samples at each target, kept as boundary masks with what ``judge``
    needs to measure them later and elsewhere: drawn where the GPU is, measured where the time is
    (``python -m helpers control --measure FILE``). One list of masks per sampler."""

    name: str  # the descriptor varied over the targets
    targets: list[float]
    seed: int
    held: dict[str, Held]  # the model's other conditions, as the samples were asked for them
    weights: str  # checkpoint.weights_digest of the model that drew them
    samplers: list[str] = field(default_factory=list)  # each set's sampler, in words
    masks: list[list[np.ndarray]] = field(default_factory=list)  # per set, per target: (n, H, W) bool

    def add(self, sampler_words: str, masks: Sequence[np.ndarray]) -> None:
        if len(masks) != len(self.targets):
            raise ValueError(f"{len(masks)} mask sets for {len(self.targets)} targets")
        self.samplers.append(sampler_words)
        self.masks.append([np.asarray(m, dtype=bool) for m in masks])

    def save(self, path: str | Path) -> None:
        """One compressed .npz (bool masks: about 1 MB per sampler at 8 targets x 64 at 64 x 64),
        written whole to a temporary name and then renamed, so a job killed mid-write leaves the last one."""
        meta = {"name": self.name, "targets": self.targets, "seed": self.seed, "weights": self.weights,
                "samplers": self.samplers, "held": {o: {"values": h.values, "real_mae": h.real_mae}
                                                    for o, h in self.held.items()}}
        arrays = {f"set{k}_target{i}": m for k, masks in enumerate(self.masks) for i, m in enumerate(masks)}
        path = Path(path)
        partial = path.with_name(path.name + ".partial.npz")
        np.savez_compressed(partial, meta=np.array(json.dumps(meta)), **arrays)
        partial.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> "DrawnSamples":
        """Read a file ``save`` wrote; anything else is refused in one line that names it."""
        try:
            with open(path, "rb") as head:
                if head.read(4) != b"PK\x03\x04":  # an .npz is a zip archive; numpy would guess at anything else
                    raise ValueError("not an .npz archive")
            with np.load(path, allow_pickle=False) as file:
                meta = json.loads(str(file["meta"]))
                drawn = cls(meta["name"], [float(t) for t in meta["targets"]], int(meta["seed"]),
                            {o: Held(h["values"], h["real_mae"]) for o, h in meta["held"].items()}, meta["weights"])
                for k, words in enumerate(meta["samplers"]):
                    drawn.add(words, [file[f"set{k}_target{i}"] for i in range(len(drawn.targets))])
        except (OSError, ValueError, KeyError, TypeError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
            raise ValueError(f"{path}: not a file of drawn control samples ({exc.__class__.__name__}: {exc}); "
                             f"expected the control.npz of tools/gpu_session.py") from None
        if not drawn.masks or len({m.shape[0] for masks in drawn.masks for m in masks}) != 1:
            raise ValueError(f"{path}: expected one or more sets with the same number of samples at every target")
        return drawn

    @property
    def n(self) -> int:
        return int(self.masks[0][0].shape[0])


def measure(drawn: DrawnSamples, stats: dict, splits: int = 20) -> Iterator[ControlReport]:
    """Each sampler's set of ``drawn`` measured by ``judge``, against one draw of real images at the
    targets (``reference``, made before the first report): a caller may stop between sets."""
    size = drawn.masks[0][0].shape[-1]
    held, real = reference(stats, drawn.name, drawn.targets, 2 * drawn.n, size, drawn.held)
    for words, masks in zip(drawn.samplers, drawn.masks):
        yield judge(masks, stats, drawn.targets, words, name=drawn.name, real=real, held=held, size=size,
                    splits=splits)


def controllability(model, schedule, stats: dict, targets: Sequence[float], n: int, sampler: Sampler, *,
                    name: Optional[str] = None, seed: int = 0, device: Optional[torch.device] = None,
                    real: Optional[dict[float, np.ndarray]] = None, splits: int = 20,
                    held: Optional[dict[str, Held]] = None, keeping: Optional[Keeping] = None) -> ControlReport:
    """Sample ``n`` images at each target value of ``name`` and measure them: achieved against target,
    each target's ratios to the noise floor against ``real`` images at that target (drawn fresh, 2n
    per target, when not given), and against real images matched to each sample (``matched_ratios``).
    ``name`` defaults to the model's first condition; its others, if any, are held at ``held``
    (default ``held_values``), and the real images hold them too (give ``held`` with ``real``).
    ``keeping`` judges only the samples it keeps, as ``sample --closed --within`` keeps them."""
    name = measured_condition(stats, vary=name)
    size = model.config()["size"]
    if len(set(targets)) < len(targets):
        raise ValueError(f"targets {', '.join(f'{t:g}' for t in targets)}: each target once, please")
    if real is None:
        held, real = reference(stats, name, targets, 2 * n, size, held)
    elif held is None:
        if len(stats["names"]) > 1:
            raise ValueError("real images were given without the held values they hold; expected held= too")
        held = {}
    tallies: list[Tally] = []
    masks = control_masks(model, schedule, stats, targets, n, sampler, name=name, held=held, seed=seed, device=device,
                          keeping=keeping, tallies=tallies)
    report = judge(masks, stats, targets, sampler.describe(), name=name, real=real, held=held, size=size,
                   splits=splits)
    if keeping is not None:
        report.keeping = {"rules": keeping.rules(name), "drawn": [t.drawn for t in tallies],
                          "passed": [t.passed for t in tallies]}
    return report


def guidance_sweep(model, schedule, stats: dict, targets: Sequence[float], n: int, sampler: Sampler,
                   scales: Sequence[float] = (0.0, 1.0, 2.0, 4.0), **options) -> list[ControlReport]:
    """``controllability`` at each guidance scale, on the same targets, seeds and real images at the
    targets (the matched real images follow each scale's samples): how much control the guidance
    buys, and what it costs in fidelity."""
    name = measured_condition(stats, vary=options.pop("name", None))
    held, real = reference(stats, name, targets, 2 * n, model.config()["size"])
    return [controllability(model, schedule, stats, targets, n, sampler.replace(guidance=w), name=name, real=real,
                            held=held, **options) for w in scales]


def format_control(reports: Sequence[ControlReport]) -> str:
    """The reports as a plain-text table: one row per sampler/guidance, then the per-target rows
    of the first."""
    width = max([34] + [len(report.sampler) for report in reports])
    lines = [f"{'sampler':<{width}} {'R^2':>6} {'MAE':>6} {'worst ratio':>11} {'(matched)':>9} {'dangling ends':>13}"]
    for report in reports:
        s = report.summary()
        r2 = "n/a" if np.isnan(s["r2"]) else f"{s['r2']:.3f}"
        lines.append(f"{s['sampler']:<{width}} {r2:>6} {s['mae']:>6.2f} {s['worst_ratio']:>11.2f} "
                     f"{s['worst_matched_ratio']:>9.2f} {s['dangling_ends']:>13.2f}")
    if len(set(reports[0].targets)) < 2:
        lines.append("  (R^2 needs two targets or more: with one it would score only the samples' bias against "
                     "their scatter)")
    for report in reports:
        if report.keeping:
            lines.append(f"  judged only if kept ({report.keeping['rules']}), images passed of drawn per target: "
                         + ", ".join(f"{t:g}: {p} of {d} ({p / d:.0%})" for t, p, d in
                                     zip(report.targets, report.keeping["passed"], report.keeping["drawn"])))
    if any(report.keeping for report in reports):
        lines.append("  (the kept samples' error, spread and dangling ends are bounded by what kept them)")
    first = reports[0]
    names = ratio_names(first.name, *first.held)
    headers = [metrics.DESCRIPTOR_TABLE[n].short for n in names]
    widths = [max(len(h), 9) + 2 for h in headers]
    holding = f" (and {', '.join(first.held)})" if first.held else ""
    lines.append(f"{first.sampler}: achieved mean and standard deviation; ratios to the noise floor against real "
                 f"images at the target, then against real images matched to each sample's {first.name}{holding}")
    lines.append((" " * 32 + f"{'at the target':^{sum(widths)}}{'matched':^{sum(widths)}}").rstrip())
    lines.append(f"{first.name + ' target':>14} {'achieved':>10} {'sd':>6}"
                 + "".join(f"{h:>{w}}" for h, w in zip(headers, widths)) * 2 + f" {'dangling ends':>14}")
    # a count to a tenth; a length or a fraction to three significant figures (0.213, not 0.2)
    mean_format, sd_format = (".1f", ".2f") if first.name in COUNTS else (".3g", ".2g")
    for target, values, ratio, like, ends in zip(first.targets, first.achieved, first.ratios, first.matched,
                                                 first.dangling_ends):
        lines.append(f"{target:>14g} {np.mean(values):>10{mean_format}} {np.std(values):>6{sd_format}}"
                     + "".join(f"{ratio[n]:>{w}.2f}" for n, w in zip(names, widths))
                     + "".join(f"{like[n]:>{w}.2f}" for n, w in zip(names, widths)) + f" {ends:>14.2f}")
    if not names:
        lines.append("(every descriptor with a noise floor is a condition of this model: no ratios)")
    for other, (held, _) in first.held.items():
        lines.append(f"{other} held at what real images at each target have ({', '.join(f'{v:.3g}' for v in held.values)}); "
                     f"its mean absolute error, against {np.mean(held.real_mae):.3g} for those real images "
                     f"(a model that ignored it):")
        for report in reports:
            mine = report.summary()["held"][other]
            lines.append(f"  {report.sampler:<34} MAE {mine['mae']:.3g}; achieved "
                         f"{', '.join(f'{a:.3g}' for a in mine['achieved_mean'])}")
    for report in reports:
        lines += _left_out_lines(report, f"{report.sampler}: " if len(reports) > 1 else "")
    return "\n".join(lines)


def _left_out_lines(report: ControlReport, tag: str) -> list[str]:
    """What the matched ratios of one report leave out: samples outside the training range or with
    no real image matched, and targets with fewer than two samples left to judge, which the worst
    matched ratio cannot include."""
    lines = []
    for counts, why in ((report.outside, "outside the training range"),
                        (report.unmatched, "with no real image matched")):
        if any(counts):
            lines.append(f"({tag}left out of the matched ratios, samples {why}: "
                         f"{', '.join(f'{c} at {t:g}' for t, c in zip(report.targets, counts) if c)})")
    unjudged = [t for t, like in zip(report.targets, report.matched)
                if like and all(np.isnan(v) for v in like.values())]
    if unjudged:
        lines.append(f"({tag}no matched ratios at {', '.join(f'{t:g}' for t in unjudged)}: fewer than 2 samples left "
                     f"to judge there; the worst matched ratio is over the other targets)")
    return lines
