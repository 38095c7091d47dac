import numpy as np
from scipy import ndimage


def count_grains(mask):
    """Grains in a boundary mask (True = boundary): 4-connected grain regions of at least 4 px."""
    four_connected = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    labels, n = ndimage.label(~mask, structure=four_connected)
    areas = np.bincount(labels.ravel())[1:]  # label 0 is the boundary itself
    return int((areas >= 4).sum())
