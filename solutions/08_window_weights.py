import torch


def window_weights(window):
    """sin^2 along each axis, at pixel centres: ~0 at the window's edges, 1 at its centre."""
    ramp = torch.sin(torch.pi * (torch.arange(window, dtype=torch.float64) + 0.5) / window) ** 2
    return (ramp[:, None] * ramp[None, :]).float()
