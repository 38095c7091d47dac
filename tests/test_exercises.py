"""The exercises' checks: each accepts its solution, rejects a typical mistake, and waits for a placeholder."""
import runpy

import numpy as np
import pytest
import torch
from scipy import ndimage

from helpers import exercises
from helpers.exercises import EXERCISES, SOLUTIONS


def solution(name):
    return runpy.run_path(str(SOLUTIONS / f"{name}.py"))[EXERCISES[name].function]


def _grains_eight_connected(mask):
    labels, n = ndimage.label(~mask, structure=np.ones((3, 3)))
    return int((np.bincount(labels.ravel())[1:] >= 4).sum())


def _ema_swapped(ema_params, params, decay):
    for e, p in zip(ema_params, params):
        e.mul_(1 - decay).add_(p, alpha=decay)


def _posterior_wrong_index(schedule, x0, x_t, t):
    beta, alpha, abar = schedule.betas[t], schedule.alphas[t], schedule.alpha_bars[t]
    abar_prev = abar  # the mistake: alpha-bar_t where alpha-bar_(t-1) belongs
    return (abar_prev.sqrt() * beta / (1 - abar)) * x0 + (alpha.sqrt() * (1 - abar_prev) / (1 - abar)) * x_t, beta


def _ddpm_with_beta(schedule, x_t, t, eps_hat, z):
    beta, alpha, abar = schedule.betas[t], schedule.alphas[t], schedule.alpha_bars[t]
    mean = (x_t - beta / (1 - abar).sqrt() * eps_hat) / alpha.sqrt()
    return mean if t == 0 else mean + beta.sqrt() * z  # beta_t where beta-tilde_t was asked for


def _posterior_x0_coefficient_with_abar_t(schedule, x0, x_t, t):
    beta, alpha, abar = schedule.betas[t], schedule.alphas[t], schedule.alpha_bars[t]
    abar_prev = schedule.alpha_bars[t - 1] if t > 0 else abar.new_tensor(1.0)
    # the mistake: sqrt(alpha-bar_t) where sqrt(alpha-bar_(t-1)) belongs; it moves the mean by ~5e-5
    mean = (abar.sqrt() * beta / (1 - abar)) * x0 + (alpha.sqrt() * (1 - abar_prev) / (1 - abar)) * x_t
    return mean, (1 - abar_prev) / (1 - abar) * beta


def _sigma_without_eta(schedule, t, s, eta):
    abar_t, abar_s = schedule.alpha_bars[t], schedule.alpha_bars[s]
    return ((1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)).sqrt()


def _bootstrap_without_replacement(values, statistic, rng, n_boot=2000, level=0.9):
    draws = [statistic(rng.permutation(values)) for _ in range(n_boot)]
    return tuple(np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]))


def _embedding_cos_first(t, dim):
    angles = t.double()[:, None] * 10_000.0 ** (-torch.arange(dim // 2).double() / (dim // 2))
    return torch.stack([angles.cos(), angles.sin()], -1).reshape(len(t), dim).float()


MISTAKES = {
    "01_to_model_range": lambda p: torch.as_tensor(p).float()[:, None] / 255,
    "01_grain_count": _grains_eight_connected,
    "02_q_sample": lambda s, x0, t, e: s.alpha_bars[t].float().view(-1, 1, 1, 1) * x0
    + (1 - s.alpha_bars[t].float().view(-1, 1, 1, 1)) * e,  # variances where square roots belong
    "02_posterior": _posterior_wrong_index,
    "03_embedding": _embedding_cos_first,
    "03_block_parameters": lambda c_in, c_out, d: 2 * c_in + 9 * c_in * c_out + d * c_out + 2 * c_out
    + 9 * c_out * c_out + (c_in * c_out if c_in != c_out else 0),  # no biases
    "04_v_target": lambda s, x0, t, e: s.alpha_bars[t].float().sqrt().view(-1, 1, 1, 1) * x0
    - (1 - s.alpha_bars[t].float()).sqrt().view(-1, 1, 1, 1) * e,  # x0 and eps swapped
    "04_ema": _ema_swapped,
    "05_ddpm_step": _ddpm_with_beta,
    "05_ddim_sigma": _sigma_without_eta,
    "06_wasserstein": lambda a, b: abs(np.mean(a) - np.mean(b)),
    "06_bootstrap": _bootstrap_without_replacement,
    "07_guidance": lambda c, u, w: w * c + (1 - w) * u,  # a guidance *scale* s = w, not Ho & Salimans' w
    "07_r_squared": lambda t, a: np.corrcoef(t, a)[0, 1] ** 2,  # blind to a bias: hits +6 grains score 1
    "08_window_weights": lambda w: torch.outer(*[torch.sin(torch.pi * (torch.arange(w) + 0.5) / w)] * 2),  # sin, not
    # sin^2: overlapping windows then add up to more than 1
    "08_periodic_centroid": lambda x, size: float(np.mean(x)),  # the plain mean: a grain across the edge lands mid-image
}


def _posterior_float64_with_x0_at_zero(schedule, x0, x_t, t):
    betas = schedule.betas
    abar = torch.cumprod(1 - betas, 0)
    if t == 0:
        return x0, 0.0
    mean = (abar[t - 1].sqrt() * betas[t] / (1 - abar[t])) * x0 + ((1 - betas[t]).sqrt() * (1 - abar[t - 1]) / (1 - abar[t])) * x_t
    return mean, (1 - abar[t - 1]) / (1 - abar[t]) * betas[t]


def _ddpm_through_x0_hat(schedule, x_t, t, eps_hat, z):
    beta, abar = schedule.betas[t], schedule.alpha_bars[t]
    abar_prev = schedule.alpha_bars[t - 1] if t > 0 else torch.tensor(1.0, dtype=torch.float64)
    x0_hat = (x_t - (1 - abar).sqrt() * eps_hat) / abar.sqrt()
    mean = abar_prev.sqrt() * beta / (1 - abar) * x0_hat + (1 - beta).sqrt() * (1 - abar_prev) / (1 - abar) * x_t
    return mean if t == 0 else mean + ((1 - abar_prev) / (1 - abar) * beta).sqrt() * z


def _sigma_float64_other_form(schedule, t, s, eta):
    abar = torch.cumprod(1 - schedule.betas.double(), 0)
    return eta * ((1 - abar[s]) / (1 - abar[t]) * (abar[s] - abar[t]) / abar[s]).sqrt()


# correct answers written unlike the solutions: a check must not reject them
OTHER_RIGHT_ANSWERS = {
    "02_posterior": _posterior_float64_with_x0_at_zero,
    "05_ddpm_step": _ddpm_through_x0_hat,
    "05_ddim_sigma": _sigma_float64_other_form,
    "06_wasserstein": lambda a, b: float(np.abs(np.sort(a) - np.sort(b)).sum() / len(a)),
    "03_embedding": lambda t, dim: torch.stack([torch.sin(t.float()[:, None] * 1e4 ** (-torch.arange(dim // 2) / (dim // 2))),
                                                torch.cos(t.float()[:, None] * 1e4 ** (-torch.arange(dim // 2) / (dim // 2)))],
                                               -1).reshape(len(t), dim),  # float32 angles
}


def test_a_small_mistake_in_the_posterior_mean_is_caught(capsys):
    assert exercises.check("02_posterior", _posterior_x0_coefficient_with_abar_t) is False


@pytest.mark.parametrize("name", sorted(OTHER_RIGHT_ANSWERS))
def test_a_right_answer_written_another_way_is_right(name, capsys):
    assert exercises.check(name, OTHER_RIGHT_ANSWERS[name]) is True, capsys.readouterr().out


def test_every_exercise_has_a_solution_and_a_mistake():
    assert sorted(p.stem for p in SOLUTIONS.glob("*.py")) == sorted(EXERCISES) == sorted(MISTAKES)


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_the_solution_is_right(name, capsys):
    assert exercises.check(name, solution(name)) is True
    assert capsys.readouterr().out.startswith(f"[exercise {name}] right: ")


@pytest.mark.parametrize("name", sorted(EXERCISES))
def test_a_typical_mistake_is_not_right(name, capsys):
    assert exercises.check(name, MISTAKES[name]) is False
    assert capsys.readouterr().out.startswith(f"[exercise {name}] not right: ")


def test_a_placeholder_is_not_done_yet_and_a_crash_is_reported(capsys):
    def placeholder(*args):
        raise NotImplementedError("your code here")

    assert exercises.check("02_q_sample", placeholder) is None
    assert "not done yet: fill in q_sample_by_hand (one solution: solutions/02_q_sample.py)" in capsys.readouterr().out
    assert exercises.check("02_q_sample", lambda *args: 1 / 0) is False
    assert "raised ZeroDivisionError" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown exercise 'nope'"):
        exercises.check("nope", placeholder)
