"""The lessons' "Your turn" exercises: one check per exercise, each against the helpers' own code.

A lesson's exercise cell (tag ``exercise``, metadata ``exercise: <name>``) defines a function;
the cell after it calls ``check("<name>", that_function)``, which prints one line, right or not
right (with what differed) or not done yet, and returns True, False or None. One solution of each
exercise is ``solutions/<name>.py``; the test suite runs every lesson with its solutions in place
and asserts that every check says right (tests/test_notebooks.py), and feeds each check wrong
answers to make sure it can say no (tests/test_exercises.py). Nothing imports this module.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from . import ROOT, control, data, diffusion, grains, metrics, sample, train, unet

SOLUTIONS = ROOT / "solutions"


class NotRight(AssertionError):
    """A candidate's answer differs from the reference; the message says how."""


def _close(name: str, got, expected, atol: float = 1e-5, rtol: float = 1e-5) -> None:
    """Raise NotRight unless ``got`` has the shape of ``expected`` and the same values."""
    got_t = torch.as_tensor(np.asarray(got) if isinstance(got, (list, tuple)) else got).double().cpu()
    expected_t = torch.as_tensor(expected).double().cpu()
    if got_t.shape != expected_t.shape:
        raise NotRight(f"{name}: shape {tuple(got_t.shape)}, expected {tuple(expected_t.shape)}")
    if not torch.allclose(got_t, expected_t, atol=atol, rtol=rtol):
        worst = (got_t - expected_t).abs().max().item()
        raise NotRight(f"{name}: values differ from the reference by up to {worst:.3g}")


# ---- lesson 01: the data --------------------------------------------------------------------
def _to_model_range(candidate: Callable) -> str:
    pixels = data.load_uint8("voronoi_gb_64", limit=8)
    got = candidate(pixels)
    if not isinstance(got, torch.Tensor) or got.dtype != torch.float32:
        raise NotRight(f"expected a float32 torch tensor, got {type(got).__name__} "
                       f"{getattr(got, 'dtype', '')}")
    _close("x", got, data.load_images("voronoi_gb_64", limit=8), atol=1e-6)
    return "8 training images mapped onto [-1, 1] exactly as data.load_images does"


def _designed_mask() -> np.ndarray:
    """A mask that tells 4- from 8-connectivity and counts the 4-pixel minimum."""
    mask = np.zeros((12, 12), dtype=bool)
    mask[np.arange(12), np.arange(12)] = True  # a 1-pixel diagonal: two grains if 4-connected, one if 8
    mask[8:11, 1:5] = True  # a boundary blob enclosing a 2-pixel island (too small to count)
    mask[9, 2:4] = False
    return mask


def _grain_count(candidate: Callable) -> str:
    masks = list(metrics.boundary_masks(data.load_uint8("voronoi_gb_64", limit=12)))
    masks += list(metrics.boundary_masks(data.load_uint8("grain_growth_64", column="boundary", limit=4)))
    masks.append(_designed_mask())
    expected = [metrics.grain_count(m) for m in masks]
    got = [int(candidate(m)) for m in masks]
    wrong = [i for i, (g, e) in enumerate(zip(got, expected)) if g != e]
    if wrong:
        i = wrong[0]
        which = "the designed test mask (4-connectivity, 4 px minimum)" if i == len(masks) - 1 else f"mask {i}"
        raise NotRight(f"{len(wrong)} of {len(masks)} counts differ; {which}: got {got[i]}, expected {expected[i]}")
    return f"grain counts of {len(masks)} masks agree with metrics.grain_count"


def _float64(schedule: diffusion.Schedule) -> diffusion.Schedule:
    """The schedule recomputed in float64: in float32, 1 - alpha-bar loses a quarter of its digits
    at small t (1 - abar_0 = 1.00017e-4 against beta_0 = 1e-4), too few to tell some mistakes apart."""
    betas = schedule.betas.double()
    return diffusion.Schedule(schedule.kind, betas, 1 - betas, torch.cumprod(1 - betas, 0), schedule.prediction)


# ---- lesson 02: the forward process ---------------------------------------------------------
def _x0_batch(n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, 1, 16, 16), generator=g) * 2 - 1


def _q_sample(candidate: Callable) -> str:
    g = torch.Generator().manual_seed(1)
    x0 = _x0_batch()
    for schedule in (diffusion.Schedule.linear(), diffusion.Schedule.cosine()):
        t = torch.tensor([0, 1, 250, 500, 998, 999])
        eps = torch.randn(x0.shape, generator=g)
        _close(f"x_t ({schedule.kind} schedule)", candidate(schedule, x0, t, eps),
               diffusion.q_sample(schedule, x0, t, eps))
    return "x_t matches diffusion.q_sample on the linear and cosine schedules, t from 0 to 999"


def _posterior(candidate: Callable) -> str:
    # float64 in and out: in float32, 1 - abar_t loses digits at small t, and the mistakes this
    # exercise invites (alpha-bar_t for alpha-bar_(t-1)) change the mean by as little as 5e-5
    exact = _float64(diffusion.Schedule.linear())
    x0, x_t = _x0_batch(seed=2).double(), _x0_batch(seed=3).double()
    abar, abar_prev = exact.alpha_bars, exact.alpha_bars_prev()
    for t in (0, 1, 500, 999):
        mean, variance = candidate(exact, x0, x_t, t)
        expected = (abar_prev[t].sqrt() * exact.betas[t] / (1 - abar[t])) * x0 + \
                   (exact.alphas[t].sqrt() * (1 - abar_prev[t]) / (1 - abar[t])) * x_t
        _close(f"mean at t = {t} (the check passes float64 tensors: keep their dtype)", mean, expected,
               atol=1e-9, rtol=1e-9)
        _close(f"variance at t = {t}", torch.as_tensor(variance).reshape(()), exact.posterior_variance()[t],
               atol=1e-12, rtol=1e-9)
    return "posterior mean and variance agree at t = 0, 1, 500 and 999 (at t = 0 the mean is x0 itself)"


# ---- lesson 03: the network -----------------------------------------------------------------
def _embedding(candidate: Callable) -> str:
    t = torch.tensor([0, 1, 2, 10, 500, 999])
    for dim in (8, 32):
        _close(f"embedding with dim = {dim}", candidate(t, dim), unet.sinusoidal_embedding(t, dim), atol=2e-4)
    return "matches unet.sinusoidal_embedding for d = 8 and 32 (sin, cos interleaved; P = 10^4)"


def _block_parameters(candidate: Callable) -> str:
    for c_in, c_out, time_dim in ((32, 32, 128), (32, 64, 128), (64, 128, 128), (16, 8, 32)):
        expected = unet.count_parameters(unet.ResBlock(c_in, c_out, time_dim, "circular"))
        got = candidate(c_in, c_out, time_dim)
        if got != expected:
            raise NotRight(f"ResBlock({c_in} -> {c_out}, time {time_dim}): got {got}, expected {expected}")
    return "parameter counts agree for four residual blocks, with and without a 1x1 skip convolution"


# ---- lesson 04: training --------------------------------------------------------------------
def _v_target(candidate: Callable) -> str:
    g = torch.Generator().manual_seed(4)
    x0 = _x0_batch(seed=4)
    schedule = diffusion.Schedule.create("linear", prediction="v")
    t = torch.tensor([0, 10, 300, 600, 900, 999])
    eps = torch.randn(x0.shape, generator=g)
    _close("v", candidate(schedule, x0, t, eps), diffusion.velocity(schedule, x0, t, eps))
    return "v matches diffusion.velocity, the target the shipped model was trained on"


def _ema(candidate: Callable) -> str:
    torch.manual_seed(5)
    model, ema = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    reference = copy.deepcopy(ema)
    ema_params = list(ema.parameters())
    with torch.no_grad():
        result = candidate(ema_params, list(model.parameters()), 0.9)
    if result is not None and result is not ema_params:
        raise NotRight("update the EMA tensors in place (e.g. with mul_ and add_) and return nothing")
    train.update_ema(reference, model, 0.9)
    for name, got, expected in zip(("weight", "bias"), ema.parameters(), reference.parameters()):
        _close(f"EMA {name}", got, expected, atol=1e-7)
    return "one EMA step with decay 0.9 matches train.update_ema"


# ---- lesson 05: sampling --------------------------------------------------------------------
def _ddpm_step(candidate: Callable) -> str:
    exact = _float64(diffusion.Schedule.linear())  # float64, as in 02_posterior
    x_t, eps_hat = _x0_batch(seed=6).double(), _x0_batch(seed=7).double()
    for t in (999, 500, 10, 1, 0):
        z = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(t), dtype=torch.float64)
        expected, _ = diffusion.ddpm_step(exact, x_t, t, eps_hat, "posterior",
                                          generator=torch.Generator().manual_seed(t))
        _close(f"x_(t-1) at t = {t} (sigma_t^2 must be beta-tilde_t; the check passes float64 tensors)",
               candidate(exact, x_t, t, eps_hat, z), expected, atol=1e-9, rtol=1e-9)
    return "x_(t-1) matches diffusion.ddpm_step with sigma_t^2 = beta-tilde_t (and no noise at t = 0)"


def _ddim_sigma(candidate: Callable) -> str:
    for schedule in (diffusion.Schedule.linear(), diffusion.Schedule.cosine()):
        exact = _float64(schedule)
        for steps in (1000, 50, 10):
            path = diffusion.ddim_timesteps(schedule.steps, steps)
            for eta in (0.0, 0.3, 1.0):
                expected = diffusion.ddim_sigmas(exact, path, eta)
                for i, (t, s) in enumerate(zip(path[:-1], path[1:])):
                    got = candidate(schedule, t, s, eta)
                    _close(f"sigma from t = {t} to s = {s}, eta = {eta:g} ({schedule.kind})",
                           torch.as_tensor(got).reshape(()), expected[i], atol=1e-7, rtol=1e-3)
    posterior = _float64(diffusion.Schedule.linear()).posterior_variance().sqrt()
    return (f"sigma matches diffusion.ddim_sigmas; with eta = 1 over single steps it is sqrt(beta-tilde_t), "
            f"e.g. {float(candidate(diffusion.Schedule.linear(), 500, 499, 1.0)):.5f} = {float(posterior[500]):.5f} at t = 500")


# ---- lesson 06: evaluation ------------------------------------------------------------------
def _wasserstein(candidate: Callable) -> str:
    from scipy.stats import wasserstein_distance

    rng = np.random.default_rng(11)
    for n in (1, 5, 200):
        a, b = rng.normal(0.0, 1.0, n), rng.normal(0.3, 2.0, n)
        _close(f"distance between two sets of {n}", float(candidate(a, b)), wasserstein_distance(a, b), atol=1e-9)
    return "matches scipy.stats.wasserstein_distance for sets of 1, 5 and 200 values"


def _bootstrap(candidate: Callable) -> str:
    rng = np.random.default_rng(12)
    for n, level in ((50, 0.9), (400, 0.8)):
        values = rng.gamma(2.0, 1.0, n)
        low, high = candidate(values, np.mean, np.random.default_rng(0), 2000, level)
        # for the mean of n values, the normal approximation is accurate to a few percent here
        z = {0.9: 1.6449, 0.8: 1.2816}[level]
        half = z * values.std(ddof=1) / np.sqrt(n)
        if not low < values.mean() < high:
            raise NotRight(f"{n} values, level {level}: the interval ({low:.3f}, {high:.3f}) misses the mean")
        if not 0.75 < (high - low) / (2 * half) < 1.25:
            raise NotRight(f"{n} values, level {level}: interval width {high - low:.3f}, "
                           f"expected about {2 * half:.3f} (are you resampling with replacement, n values a time?)")
    return "bootstrap intervals of a mean have the width theory predicts at levels 0.9 and 0.8"


# ---- lesson 07: conditioning and guidance ---------------------------------------------------------
def _guidance(candidate: Callable) -> str:
    generator = torch.Generator().manual_seed(7)
    conditional, unconditional = torch.randn(4, 1, 8, 8, generator=generator), torch.randn(4, 1, 8, 8, generator=generator)
    for w in (0.0, 1.0, 3.0):
        # the reference: sample.guided around a stand-in network that returns the two predictions
        network = lambda x, t, c: torch.where(torch.isnan(c)[:, :1, None, None], x[..., 1:2, :, :], x[..., :1, :, :])
        both = torch.cat([conditional, unconditional], dim=1)
        expected = sample.guided(network, torch.zeros(1), w)(both, torch.zeros(4, dtype=torch.long))
        _close(f"w = {w:g}", candidate(conditional, unconditional, w), expected, atol=1e-6)
    return "(1 + w) conditional - w unconditional at w = 0, 1 and 3, as sample.guided mixes them"


def _r_squared(candidate: Callable) -> str:
    rng = np.random.default_rng(3)
    targets = np.repeat([8.0, 16, 32, 64], 25)
    for name, achieved in (("close", targets + rng.normal(0, 2, targets.size)),
                           ("biased by +6 grains", targets + 6 + rng.normal(0, 2, targets.size)),
                           ("ignoring the target", rng.normal(30, 5, targets.size))):
        expected = control.r_squared(targets, achieved)
        got = float(candidate(targets, achieved))
        if not abs(got - expected) < 1e-9:
            raise NotRight(f"{name}: R^2 {got:.4f}, expected {expected:.4f}")
    return "R^2 of achieved against target for close, biased and ignored targets, as control.r_squared"


# ---- lesson 08: from image to simulation ---------------------------------------------------
def _window_weights(candidate: Callable) -> str:
    for window in (8, 64):
        got = torch.as_tensor(candidate(window)).float()
        _close(f"window {window}", got, sample.window_weights(window), atol=1e-6)
    canvas = torch.zeros(32, 32)
    weights = torch.nn.functional.pad(torch.as_tensor(candidate(8)).float(), (0, 24, 0, 24))
    for r in range(0, 32, 4):
        for c in range(0, 32, 4):
            canvas += torch.roll(weights, (r, c), dims=(0, 1))
    _close("windows half a window apart, added up", canvas, torch.ones(32, 32), atol=1e-5)
    return "sin^2 weights as sample.window_weights, adding up to 1 at every pixel of the canvas"


def _periodic_centroid(candidate: Callable) -> str:
    cases = {"a grain in the middle": np.array([30.5, 31.5, 32.5, 33.5]),
             "a grain across the edge": np.array([62.5, 63.5, 0.5, 1.5, 2.5]),
             "a wide grain across the edge": np.arange(50, 76) % 64 + 0.5}
    for name, coordinates in cases.items():
        expected = grains._centroid(coordinates, np.zeros(len(coordinates), dtype=int), 64, periodic=True)[0]
        got = float(candidate(coordinates, 64))
        gap = abs((got - expected + 32) % 64 - 32)  # 63.99 and 0.01 are neighbours on the circle
        if not gap < 1e-6:
            raise NotRight(f"{name}: centre {got:.3f}, expected {expected:.3f}")
    return "centres of grains in the middle and across the edge, as grains.grain_table finds them"


@dataclass(frozen=True)
class Exercise:
    """One exercise: the function a student writes and how it is checked."""

    function: str
    check: Callable[[Callable], str]


EXERCISES: dict[str, Exercise] = {
    "01_to_model_range": Exercise("to_model_range", _to_model_range),
    "01_grain_count": Exercise("count_grains", _grain_count),
    "02_q_sample": Exercise("q_sample_by_hand", _q_sample),
    "02_posterior": Exercise("posterior_mean_variance", _posterior),
    "03_embedding": Exercise("embedding", _embedding),
    "03_block_parameters": Exercise("resblock_parameters", _block_parameters),
    "04_v_target": Exercise("v_target", _v_target),
    "04_ema": Exercise("ema_update", _ema),
    "05_ddpm_step": Exercise("ddpm_step_posterior", _ddpm_step),
    "05_ddim_sigma": Exercise("ddim_sigma", _ddim_sigma),
    "06_wasserstein": Exercise("wasserstein_1d", _wasserstein),
    "06_bootstrap": Exercise("bootstrap_interval", _bootstrap),
    "07_guidance": Exercise("guide", _guidance),
    "07_r_squared": Exercise("r_squared", _r_squared),
    "08_window_weights": Exercise("window_weights", _window_weights),
    "08_periodic_centroid": Exercise("periodic_centroid", _periodic_centroid),
}


def check(name: str, candidate: Callable, quiet: bool = False) -> Optional[bool]:
    """Check a student's function for exercise ``name``; print one line and return True (right),
    False (not right, or it raised) or None (still the placeholder: NotImplementedError)."""
    if name not in EXERCISES:
        raise ValueError(f"unknown exercise {name!r}; expected one of {', '.join(EXERCISES)}")
    solution = f"solutions/{name}.py"
    try:
        message, verdict = f"right: {EXERCISES[name].check(candidate)}", True
    except NotImplementedError:
        message, verdict = f"not done yet: fill in {EXERCISES[name].function} (one solution: {solution})", None
    except NotRight as wrong:
        message, verdict = f"not right: {wrong}", False
    except Exception as error:  # a student's code may fail in any way; say how, do not stop the lesson
        message, verdict = f"not right: your function raised {type(error).__name__}: {error}", False
    if not quiet:
        print(f"[exercise {name}] {message}")
    return verdict
