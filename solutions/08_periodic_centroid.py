import numpy as np


def periodic_centroid(coordinates, size):
    """Mean position on a circle: each coordinate as an angle, the angles' mean direction back to a position."""
    angles = 2 * np.pi * np.asarray(coordinates) / size
    mean = np.arctan2(np.sin(angles).sum(), np.cos(angles).sum())
    return (mean % (2 * np.pi)) * size / (2 * np.pi)
