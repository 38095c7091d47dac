import torch


def to_model_range(pixels):
    """uint8 images (N, H, W) -> float32 tensor (N, 1, H, W) with 0 -> -1 and 255 -> +1."""
    x = torch.as_tensor(pixels).float() / 127.5 - 1.0
    return x[:, None]  # add the channel axis the network expects
