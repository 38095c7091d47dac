import numpy as np


def r_squared(targets, achieved):
    """How much of the spread of the achieved values the targets account for (1: every image on target)."""
    targets, achieved = np.asarray(targets, dtype=float), np.asarray(achieved, dtype=float)
    return 1 - np.sum((achieved - targets) ** 2) / np.sum((achieved - achieved.mean()) ** 2)
