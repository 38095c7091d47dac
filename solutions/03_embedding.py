import torch


def embedding(t, dim):
    """(N,) timesteps -> (N, dim): sin and cos of t at frequencies 10000^(-i / (dim/2)), interleaved."""
    i = torch.arange(dim // 2, dtype=torch.float64)
    angles = t.double()[:, None] * 10_000.0 ** (-i / (dim // 2))[None, :]
    out = torch.empty(len(t), dim, dtype=torch.float64)
    out[:, 0::2], out[:, 1::2] = angles.sin(), angles.cos()
    return out.float()
