import numpy as np


def wasserstein_1d(a, b):
    """Earth mover's distance between two equally large sets of numbers: sort both, pair them up."""
    return float(np.mean(np.abs(np.sort(a) - np.sort(b))))
