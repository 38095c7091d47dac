"""The DDPM itself: noise schedules, the forward jump q(x_t | x_0), the loss, and the samplers.

Kept apart from the networks (``helpers.unet``) and the training loop, as a scheduler is in
Hugging Face diffusers: any network mapping ``(x_t, t) -> predicted noise`` plugs in (or
``-> predicted velocity v``, with a schedule made with ``prediction="v"``).

Conventions: timesteps are 0-based, ``t`` in 0..T-1, one per image, as a (N,) long tensor.
``alpha_bars[t]`` is the product of ``alphas[0..t]``, so ``x_t`` at ``t = 0`` is one step of
noise away from the data, and sampling runs ``t = T-1, ..., 0``. Randomness always comes from a
``torch.Generator`` passed in, so a seeded run repeats exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, Optional

import torch
import torch.nn.functional as F

SCHEDULES = ("linear", "cosine")
VARIANCES = ("beta", "posterior")
# What the network's output means: the noise (Ho et al.) or the velocity v (Salimans & Ho 2022).
PREDICTIONS = ("eps", "v")

# callback(step, t, x_t, x0_hat): called after each reverse step with the new sample and the
# network's current estimate of the clean image; used for GIF frames and progress bars.
StepCallback = Callable[[int, int, torch.Tensor, torch.Tensor], None]


@dataclass
class Schedule:
    """A variance schedule: betas, alphas = 1 - betas, and their cumulative products alpha-bar.

    ``prediction`` says what the network trained with it outputs (as a diffusers scheduler's
    ``prediction_type`` does): ``"eps"``, the noise, or ``"v"``, the velocity
    sqrt(abar) noise - sqrt(1 - abar) x_0. The samplers turn either into a noise estimate.
    """

    kind: str
    betas: torch.Tensor  # (T,) float32
    alphas: torch.Tensor
    alpha_bars: torch.Tensor
    prediction: str = "eps"

    @classmethod
    def from_betas(cls, kind: str, betas: torch.Tensor) -> "Schedule":
        """Derive alphas and alpha-bars (cumulative product in float64, stored as float32)."""
        betas = betas.to(torch.float64)
        alphas = 1.0 - betas
        alpha_bars = torch.cumprod(alphas, dim=0)
        return cls(kind, betas.float(), alphas.float(), alpha_bars.float())

    @classmethod
    def linear(cls, steps: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02) -> "Schedule":
        """Ho et al.'s linear betas (the original tutorial's schedule)."""
        return cls.from_betas("linear", torch.linspace(beta_start, beta_end, steps, dtype=torch.float64))

    @classmethod
    def cosine(cls, steps: int = 1000, offset: float = 0.008, max_beta: float = 0.999) -> "Schedule":
        """Nichol & Dhariwal's cosine schedule: alpha-bar follows cos^2, so noise is added evenly."""
        s = torch.arange(steps + 1, dtype=torch.float64) / steps
        f = torch.cos((s + offset) / (1 + offset) * math.pi / 2) ** 2
        betas = torch.clamp(1 - f[1:] / f[:-1], max=max_beta)
        return cls.from_betas("cosine", betas)

    @classmethod
    def create(cls, kind: str = "linear", steps: int = 1000, prediction: str = "eps") -> "Schedule":
        """A schedule by name (for configs and the command line)."""
        if kind not in SCHEDULES:
            raise ValueError(f"unknown schedule {kind!r}; expected one of {', '.join(SCHEDULES)}")
        if prediction not in PREDICTIONS:
            raise ValueError(f"unknown prediction {prediction!r}; expected one of {', '.join(PREDICTIONS)}")
        schedule = cls.linear(steps) if kind == "linear" else cls.cosine(steps)
        return replace(schedule, prediction=prediction)

    @property
    def steps(self) -> int:
        return len(self.betas)

    def config(self) -> dict:
        """What rebuilds this schedule (stored in checkpoints)."""
        return {"kind": self.kind, "steps": self.steps, "prediction": self.prediction}

    def to(self, device: torch.device | str) -> "Schedule":
        return Schedule(self.kind, self.betas.to(device), self.alphas.to(device),
                        self.alpha_bars.to(device), self.prediction)

    def alpha_bars_prev(self) -> torch.Tensor:
        """alpha-bar one step earlier, with alpha-bar before step 0 equal to 1 (clean data)."""
        return torch.cat([self.alpha_bars.new_ones(1), self.alpha_bars[:-1]])

    def posterior_variance(self) -> torch.Tensor:
        """beta-tilde_t, the variance of q(x_{t-1} | x_t, x_0); zero at t = 0."""
        return self.betas * (1 - self.alpha_bars_prev()) / (1 - self.alpha_bars)

    def snr(self) -> torch.Tensor:
        """Signal-to-noise ratio of x_t: alpha-bar / (1 - alpha-bar)."""
        return self.alpha_bars / (1 - self.alpha_bars)


def _per_image(values: torch.Tensor, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """values[t], shaped (N, 1, 1, 1) to broadcast over images like ``like``."""
    return values.to(like.device)[t].reshape(-1, *([1] * (like.dim() - 1))).to(like.dtype)


def check_timesteps(schedule: Schedule, x: torch.Tensor, t: torch.Tensor) -> None:
    """t must be a (N,) integer tensor in 0..T-1, one per image."""
    if t.dim() != 1 or t.shape[0] != x.shape[0] or t.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"t must be a (N,) integer tensor with N = {x.shape[0]}, got "
                         f"{tuple(t.shape)} {t.dtype}")
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= schedule.steps):
        raise ValueError(f"t must lie in 0..{schedule.steps - 1}, got {int(t.min())}..{int(t.max())}")


def q_sample(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor, check: bool = True) -> torch.Tensor:
    """Jump straight to step t: x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise.

    ``check`` validates ``t``, which reads its range back from the device (a wait on a GPU); the
    training loss, which draws ``t`` itself, skips it.
    """
    if check:
        check_timesteps(schedule, x0, t)
    abar = _per_image(schedule.alpha_bars, t, x0)
    return abar.sqrt() * x0 + (1 - abar).sqrt() * noise


def noise_step_by_step(schedule: Schedule, x0: torch.Tensor, t: int,
                       generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Reach step t the slow way, x_s = sqrt(alpha_s) x_{s-1} + sqrt(beta_s) noise, s = 0..t.

    Only for teaching and tests: it must give the same distribution as ``q_sample``.
    """
    x = x0
    for s in range(t + 1):
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        x = schedule.alphas[s].sqrt() * x + schedule.betas[s].sqrt() * noise
    return x


def predict_x0(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor,
               noise: torch.Tensor) -> torch.Tensor:
    """Invert the forward jump for x_0, given (predicted) noise."""
    abar = _per_image(schedule.alpha_bars, t, x_t)
    return (x_t - (1 - abar).sqrt() * noise) / abar.sqrt()


def velocity(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """v = sqrt(abar_t) noise - sqrt(1 - abar_t) x_0: mostly noise at small t, mostly -x_0 at large t."""
    abar = _per_image(schedule.alpha_bars, t, x0)
    return abar.sqrt() * noise - (1 - abar).sqrt() * x0


def predicted_noise(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor,
                    output: torch.Tensor) -> torch.Tensor:
    """The noise estimate in a network's output: the output itself, or sqrt(abar) v + sqrt(1 - abar) x_t."""
    if schedule.prediction == "eps":
        return output
    abar = _per_image(schedule.alpha_bars, t, x_t)
    return abar.sqrt() * output + (1 - abar).sqrt() * x_t


def diffusion_loss(model: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], schedule: Schedule,
                   x0: torch.Tensor, generator: Optional[torch.Generator] = None,
                   rows: slice = slice(None)) -> torch.Tensor:
    """The simplified DDPM objective: MSE between the noise added and the noise predicted.

    Each image gets its own random timestep, uniform in 0..T-1, and its own noise. For a
    schedule with ``prediction="v"`` the target is the velocity instead of the noise.
    ``rows`` keeps part of the batch once the draws are made: a rank of a data-parallel job
    draws the timesteps and noise of the whole global batch, exactly as one process would, and
    trains on its share of it.
    """
    t = torch.randint(0, schedule.steps, (x0.shape[0],), generator=generator, device=x0.device)[rows]
    noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)[rows]
    x0 = x0[rows]
    x_t = q_sample(schedule, x0, t, noise, check=False)  # t is in range by construction
    target = noise if schedule.prediction == "eps" else velocity(schedule, x0, t, noise)
    return F.mse_loss(model(x_t, t), target)


def ddpm_step(schedule: Schedule, x_t: torch.Tensor, t: int, predicted_noise: torch.Tensor,
              variance: str = "beta", clip: bool = False,
              generator: Optional[torch.Generator] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One ancestral step x_t -> x_{t-1}; returns (x_{t-1}, the estimate of x_0).

    Mean: (x_t - beta_t / sqrt(1 - abar_t) * noise) / sqrt(alpha_t), the mean of
    q(x_{t-1} | x_t, x_0) with x_0 estimated from the noise. With ``clip`` the estimate of x_0 is
    clamped to [-1, 1] first and the mean recomputed from it. Variance: beta_t (``"beta"``, the
    original's) or beta-tilde_t (``"posterior"``); no noise is added at t = 0.
    """
    if variance not in VARIANCES:
        raise ValueError(f"unknown variance {variance!r}; expected one of {', '.join(VARIANCES)}")
    steps = torch.full((x_t.shape[0],), t, device=x_t.device, dtype=torch.long)
    x0_hat = predict_x0(schedule, x_t, steps, predicted_noise)
    beta, alpha, abar = schedule.betas[t], schedule.alphas[t], schedule.alpha_bars[t]
    if clip:
        x0_hat = x0_hat.clamp(-1.0, 1.0)
        abar_prev = schedule.alpha_bars_prev()[t]
        mean = (abar_prev.sqrt() * beta / (1 - abar)) * x0_hat + \
               (alpha.sqrt() * (1 - abar_prev) / (1 - abar)) * x_t
    else:
        mean = (x_t - beta / (1 - abar).sqrt() * predicted_noise) / alpha.sqrt()
    if t == 0:
        return mean, x0_hat
    sigma2 = beta if variance == "beta" else schedule.posterior_variance()[t]
    noise = torch.randn(x_t.shape, generator=generator, device=x_t.device, dtype=x_t.dtype)
    return mean + sigma2.sqrt() * noise, x0_hat


def _start_noise(shape, device, generator) -> torch.Tensor:
    return torch.randn(shape, generator=generator, device=device)


@torch.no_grad()
def ddpm_sample(model, schedule: Schedule, shape: tuple[int, ...], *, device: torch.device | str = "cpu",
                generator: Optional[torch.Generator] = None, variance: str = "beta",
                clip: bool = False, callback: Optional[StepCallback] = None,
                x_T: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Ancestral sampling over all T steps, from pure noise x_T ~ N(0, I) to x_0."""
    schedule = schedule.to(device)
    x = _start_noise(shape, device, generator) if x_T is None else x_T.to(device)
    for step, t in enumerate(range(schedule.steps - 1, -1, -1)):
        steps = torch.full((shape[0],), t, device=device, dtype=torch.long)
        noise_hat = predicted_noise(schedule, x, steps, model(x, steps))
        x, x0_hat = ddpm_step(schedule, x, t, noise_hat, variance, clip, generator)
        if callback is not None:
            callback(step, t, x, x0_hat)
    return x


def ddim_timesteps(total: int, steps: int) -> list[int]:
    """``steps`` timesteps spread evenly over 0..total-1, descending from T-1 to 0. One step is
    T-1 alone: the samplers' last step returns its x0 estimate, so one step is the network's
    one-jump estimate of the image from pure noise (a step at t = 0 would read the noise as an image)."""
    if not 1 <= steps <= total:
        raise ValueError(f"DDIM steps must lie in 1..{total}, got {steps}")
    if steps == 1:
        return [total - 1]
    return sorted({round(i * (total - 1) / (steps - 1)) for i in range(steps)}, reverse=True)


def quadratic_timesteps(total: int, steps: int) -> list[int]:
    """``steps`` timesteps crowded towards t = 0: t_i = (i / (steps - 1))^2 (T - 1), descending.

    The "quadratic" selection Song et al. (2021) used for DDIM on CIFAR-10 (their released code
    ends near 0.8 T; ours spans the whole schedule): the gaps grow linearly with the step index,
    as sqrt(t), so the steps near the data, where the last details (here: the last pixels of a
    boundary) are decided, are the shortest. Rounded to whole steps and pushed apart where
    rounding makes two equal, so there are always exactly ``steps`` of them, from T-1 to 0 (one
    step: T-1 alone, as DDIM's).
    """
    if not 1 <= steps <= total:
        raise ValueError(f"sampler steps must lie in 1..{total}, got {steps}")
    if steps == 1:
        return [total - 1]
    ascending = [round((i / (steps - 1)) ** 2 * (total - 1)) for i in range(steps)]
    for i in range(1, steps):  # at least one step apart, going up ...
        ascending[i] = max(ascending[i], ascending[i - 1] + 1)
    ascending[-1] = min(ascending[-1], total - 1)
    for i in range(steps - 2, -1, -1):  # ... and below T - 1, going down
        ascending[i] = min(ascending[i], ascending[i + 1] - 1)
    return ascending[::-1]


# How a sampler of fewer steps than the schedule picks its timesteps.
SPACINGS = {"uniform": ddim_timesteps, "quadratic": quadratic_timesteps}


def sampling_timesteps(total: int, steps: int, spacing: str = "uniform") -> list[int]:
    """The timesteps of a ``steps``-step sampler over a ``total``-step schedule, by a SPACINGS name."""
    if spacing not in SPACINGS:
        raise ValueError(f"unknown spacing {spacing!r}; expected one of {', '.join(SPACINGS)}")
    return SPACINGS[spacing](total, steps)


def ddim_sigmas(schedule: Schedule, timesteps: list[int], eta: float) -> torch.Tensor:
    """Noise scale of each DDIM step t -> t_prev: eta * sqrt((1-ab_prev)/(1-ab_t) * (1-ab_t/ab_prev))."""
    abar = schedule.alpha_bars[timesteps]
    abar_prev = torch.cat([schedule.alpha_bars[timesteps[1:]], abar.new_ones(1)])
    return eta * ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev)).sqrt()


@torch.no_grad()
def ddim_sample(model, schedule: Schedule, shape: tuple[int, ...], *, steps: int = 50, eta: float = 0.0,
                device: torch.device | str = "cpu", generator: Optional[torch.Generator] = None,
                clip: bool = False, callback: Optional[StepCallback] = None,
                x_T: Optional[torch.Tensor] = None, spacing: str = "uniform") -> torch.Tensor:
    """DDIM (Song et al. 2021): the same trained network, a shorter and (eta = 0) deterministic path.

    Each step estimates x_0, then moves to the previous chosen timestep along
    x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) noise_hat + sigma z.
    With eta = 1 and all T steps this is DDPM with the posterior variance. ``spacing`` picks the
    timesteps (SPACINGS: evenly spread, or quadratic, crowded near the data).
    """
    schedule = schedule.to(device)
    timesteps = sampling_timesteps(schedule.steps, steps, spacing)
    # the step coefficients as Python floats: branching on a device value would wait for the GPU
    sigmas = ddim_sigmas(schedule.to("cpu"), timesteps, eta).tolist()
    abars = schedule.alpha_bars.cpu().double().tolist()
    x = _start_noise(shape, device, generator) if x_T is None else x_T.to(device)
    for step, t in enumerate(timesteps):
        batch_t = torch.full((shape[0],), t, device=device, dtype=torch.long)
        noise_hat = predicted_noise(schedule, x, batch_t, model(x, batch_t))
        x0_hat = predict_x0(schedule, x, batch_t, noise_hat)
        if clip:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
            noise_hat = (x - math.sqrt(abars[t]) * x0_hat) / math.sqrt(1 - abars[t])
        last = step == len(timesteps) - 1
        abar_prev = 1.0 if last else abars[timesteps[step + 1]]
        sigma = sigmas[step]
        # x_prev = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) noise_hat + sigma z  (DDIM eq. 12)
        x = math.sqrt(abar_prev) * x0_hat + math.sqrt(max(1 - abar_prev - sigma**2, 0.0)) * noise_hat
        if sigma > 0 and not last:
            x = x + sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        if callback is not None:
            callback(step, t, x, x0_hat)
    return x


def log_snr(schedule: Schedule) -> list[float]:
    """lambda_t = log(alpha_t / sigma_t) = 0.5 log(abar_t / (1 - abar_t)) per timestep, as floats."""
    abar = schedule.alpha_bars.detach().cpu().double()
    return (0.5 * (abar.log() - (1 - abar).log())).tolist()


@torch.no_grad()
def dpm_solver_sample(model, schedule: Schedule, shape: tuple[int, ...], *, steps: int = 20, eta: float = 0.0,
                      device: torch.device | str = "cpu", generator: Optional[torch.Generator] = None,
                      clip: bool = False, callback: Optional[StepCallback] = None,
                      x_T: Optional[torch.Tensor] = None, spacing: str = "uniform") -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, arXiv:2211.01095): second-order multistep, good in 10-25 steps.

    Written with alpha_t = sqrt(abar_t), sigma_t = sqrt(1 - abar_t), lambda_t = log(alpha_t /
    sigma_t) and h = lambda_next - lambda_t > 0. The network's clean-image estimate x0_hat
    (clipped with ``clip``) is extrapolated from the last two steps,
        D = x0_hat + (x0_hat - x0_hat_prev) / (2 r),   r = h_prev / h,
    and the step is
        x_next = (sigma_next / sigma_t) e^{-eta h} x_t + alpha_next (1 - e^{-(1 + eta) h}) D
                 + sigma_next sqrt(1 - e^{-2 eta h}) z.
    eta = 0 is the ODE solver (the paper's Algorithm 2: the exact solution for D held fixed over
    the step); eta = 1 its SDE variant, SDE-DPM-Solver++(2M), fresh noise at every step (with D =
    x0_hat it is then DDIM with eta 1). In between, this is the interpolation of k-diffusion's
    ``sample_dpmpp_2m_sde``, not the paper's: its noise variance sigma_next^2 (1 - e^{-2 eta h})
    is not DDIM's eta^2 sigma^2, so only eta = 0 and eta = 1 mean the same in both samplers. First
    order (D = x0_hat) at the first step, which has no history, and into t = 0, whose step in
    lambda is, with uniform spacing of the linear schedule, 3.4 to 4.7 times the one before (50 to
    10 steps; ``log_snr``), so extrapolating over it overshoots (diffusers' ``lower_order_final``).
    The timesteps are DDIM's (``spacing``: SPACINGS); the last one (t = 0; T-1 for one step)
    returns its x0_hat, as DDIM's last step does. ``steps`` network calls in all.
    """
    if not 0 <= eta <= 1:
        raise ValueError(f"eta must be a number from 0 to 1, got {eta!r}")
    schedule = schedule.to(device)
    timesteps = sampling_timesteps(schedule.steps, steps, spacing)
    lam = log_snr(schedule)
    abars = schedule.alpha_bars.cpu().double().tolist()
    x = _start_noise(shape, device, generator) if x_T is None else x_T.to(device)
    x0_prev, h_prev = None, None
    for step, t in enumerate(timesteps):
        batch_t = torch.full((shape[0],), t, device=device, dtype=torch.long)
        x0_hat = predict_x0(schedule, x, batch_t, predicted_noise(schedule, x, batch_t, model(x, batch_t)))
        if clip:
            x0_hat = x0_hat.clamp(-1.0, 1.0)
        if step == len(timesteps) - 1:
            x = x0_hat
        else:
            t_next = timesteps[step + 1]
            h = lam[t_next] - lam[t]
            alpha_next, sigma_next = math.sqrt(abars[t_next]), math.sqrt(1 - abars[t_next])
            second_order = x0_prev is not None and t_next != timesteps[-1]
            d = x0_hat + (x0_hat - x0_prev) * (h / (2 * h_prev)) if second_order else x0_hat
            x = (sigma_next / math.sqrt(1 - abars[t]) * math.exp(-eta * h)) * x \
                - (alpha_next * math.expm1(-(1 + eta) * h)) * d
            if eta > 0:
                z = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
                x = x + (sigma_next * math.sqrt(-math.expm1(-2 * eta * h))) * z
            x0_prev, h_prev = x0_hat, h
        if callback is not None:
            callback(step, t, x, x0_hat)
    return x
