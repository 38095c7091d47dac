import numpy as np


def bootstrap_interval(values, statistic, rng, n_boot=2000, level=0.9):
    """The central ``level`` interval of ``statistic`` over resamples of ``values`` (with replacement)."""
    values = np.asarray(values)
    draws = [statistic(values[rng.integers(0, len(values), len(values))]) for _ in range(n_boot)]
    return tuple(np.quantile(draws, [(1 - level) / 2, (1 + level) / 2]))
