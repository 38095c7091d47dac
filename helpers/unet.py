"""The denoisers: ``SeedUNet`` (the original tutorial's network) and ``UNet`` (our default).

Both map a noisy batch ``x_t`` (N, 1, H, W) and its timesteps ``t`` (N,) to predicted noise of
the same shape as ``x_t``. ``build_model(config)`` rebuilds either from the plain dict that
``model.config()`` returns, which is how checkpoints store them.
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Fixed sinusoidal features of timesteps: (N,) -> (N, dim), interleaved sin/cos pairs.

    Pair i uses the frequency max_period^(-i / (dim/2)): from one radian per step down to
    1/max_period. Nearby timesteps get similar vectors, distant ones different ones, and no
    parameter is learned (Vaswani et al.'s position encoding, applied to time).
    """
    if dim % 2:
        raise ValueError(f"embedding dimension must be even, got {dim}")
    frequencies = max_period ** (-torch.arange(dim // 2, dtype=torch.float64, device=t.device) / (dim // 2))
    angles = t.to(torch.float64)[:, None] * frequencies[None, :]
    return torch.stack([angles.sin(), angles.cos()], dim=-1).reshape(len(t), dim).float()


# ---------------------------------------------------------------------------------------------
# SeedUNet: the original network, for any size
# ---------------------------------------------------------------------------------------------
class SeedBlock(nn.Module):
    """The original's block: LayerNorm over (C, H, W), then two 3x3 convolutions, each + SiLU."""

    def __init__(self, shape: tuple[int, int, int], in_channels: int, out_channels: int,
                 normalize: bool = True):
        super().__init__()
        # The original created this LayerNorm even when normalize was False and then never used
        # it (81,920 parameters at 64x64 that no gradient reached); we only create it when used.
        self.norm = nn.LayerNorm(shape) if normalize else nn.Identity()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.conv2(F.silu(self.conv1(self.norm(x)))))


def _seed_level(shape_hw: int, channels: Sequence[int], last_unnormalized: bool = False) -> nn.Sequential:
    """Three SeedBlocks, channels[0] -> channels[1] -> channels[2] -> channels[3]."""
    blocks = []
    for i in range(3):
        normalize = not (last_unnormalized and i == 2)
        blocks.append(SeedBlock((channels[i], shape_hw, shape_hw), channels[i], channels[i + 1], normalize))
    return nn.Sequential(*blocks)


def _time_mlp(dim_in: int, dim_out: int) -> nn.Sequential:
    """The original's per-level map of the time embedding to channel offsets."""
    return nn.Sequential(nn.Linear(dim_in, dim_out), nn.SiLU(), nn.Linear(dim_out, dim_out))


class SeedUNet(nn.Module):
    """The original tutorial's UNet, rebuilt for any square size divisible by 4 (>= 16).

    Three levels of three LayerNorm blocks (10, 20, 40 channels), a bottleneck, and three levels
    back up with skip concatenation. A fixed 100-d sinusoidal embedding of t is mapped by a small
    MLP per level and added channel-wise to that level's input. The original hard-coded its
    LayerNorm shapes for one image size; here they follow ``size``. At 64x64 the bottleneck is
    7x7, as in the original (a 2x2 conv then a strided conv: 16 -> 15 -> 7, and back 7 -> 14 -> 16).
    """

    def __init__(self, size: int = 64, steps: int = 1000, time_dim: int = 100):
        super().__init__()
        if size % 4 or size < 16:
            raise ValueError(f"SeedUNet needs an image size divisible by 4 and >= 16, got {size}")
        self.size, self.steps, self.time_dim = size, steps, time_dim
        s1, s2, s3 = size, size // 2, size // 4
        mid = (s3 - 1 - 2) // 2 + 1  # after the 2x2 conv and the stride-2 conv
        # The original's table: frequencies 10000^(-4j/d), i.e. max_period 1e8 in our formula.
        # A buffer, not a parameter: it is fixed (the original counted it as 100,000 parameters).
        self.register_buffer("time_table", sinusoidal_embedding(torch.arange(steps), time_dim, 1e8),
                             persistent=False)
        self.te1, self.b1 = _time_mlp(time_dim, 1), _seed_level(s1, (1, 10, 10, 10))
        self.down1 = nn.Conv2d(10, 10, 4, 2, 1)
        self.te2, self.b2 = _time_mlp(time_dim, 10), _seed_level(s2, (10, 20, 20, 20))
        self.down2 = nn.Conv2d(20, 20, 4, 2, 1)
        self.te3, self.b3 = _time_mlp(time_dim, 20), _seed_level(s3, (20, 40, 40, 40))
        self.down3 = nn.Sequential(nn.Conv2d(40, 40, 2, 1), nn.SiLU(), nn.Conv2d(40, 40, 4, 2, 1))
        self.te_mid, self.b_mid = _time_mlp(time_dim, 40), _seed_level(mid, (40, 20, 20, 40))
        self.up1 = nn.Sequential(nn.ConvTranspose2d(40, 40, 4, 2, 1), nn.SiLU(),
                                 nn.ConvTranspose2d(40, 40, s3 - 2 * mid + 1, 1))
        self.te4, self.b4 = _time_mlp(time_dim, 80), _seed_level(s3, (80, 40, 20, 20))
        self.up2 = nn.ConvTranspose2d(20, 20, 4, 2, 1)
        self.te5, self.b5 = _time_mlp(time_dim, 40), _seed_level(s2, (40, 20, 10, 10))
        self.up3 = nn.ConvTranspose2d(10, 10, 4, 2, 1)
        self.te_out, self.b_out = _time_mlp(time_dim, 20), _seed_level(s1, (20, 10, 10, 10), True)
        self.conv_out = nn.Conv2d(10, 1, 3, 1, 1)

    def config(self) -> dict:
        return {"name": "seed-unet", "size": self.size, "steps": self.steps, "time_dim": self.time_dim}

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[-2:] != (self.size, self.size):
            raise ValueError(f"SeedUNet was built for {self.size}x{self.size}, got {tuple(x.shape[-2:])}")
        emb = self.time_table[t]
        n = len(x)

        def add_time(h, mlp):
            return h + mlp(emb).reshape(n, -1, 1, 1)

        out1 = self.b1(add_time(x, self.te1))
        out2 = self.b2(add_time(self.down1(out1), self.te2))
        out3 = self.b3(add_time(self.down2(out2), self.te3))
        mid = self.b_mid(add_time(self.down3(out3), self.te_mid))
        out4 = self.b4(add_time(torch.cat([out3, self.up1(mid)], dim=1), self.te4))
        out5 = self.b5(add_time(torch.cat([out2, self.up2(out4)], dim=1), self.te5))
        out = self.b_out(add_time(torch.cat([out1, self.up3(out5)], dim=1), self.te_out))
        return self.conv_out(out)


# ---------------------------------------------------------------------------------------------
# UNet: residual GroupNorm blocks, time in every block, attention, optional periodic padding
# ---------------------------------------------------------------------------------------------
def wrap_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """Pad the last two dimensions by ``pad`` pixels on each side with the opposite edge's pixels.

    The same values as ``F.pad(x, (pad,) * 4, mode="circular")``, written as five copies into one
    tensor of the input's memory layout: ``F.pad`` returns a channels-first tensor for a
    channels-last input, which the next convolution then converts back (without those conversions
    bf16 NHWC sampling on a 2-core CPU ran 1.18x faster: tools/padding_speed.py; benchmarks/README.md).
    """
    if pad == 0:
        return x
    n, c, h, w = x.shape
    if pad > h or pad > w:
        raise ValueError(f"cannot wrap {pad} pixels around a {h}x{w} image")
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    out = torch.empty((n, c, h + 2 * pad, w + 2 * pad), dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    out[..., pad:-pad, pad:-pad] = x
    out[..., :pad, pad:-pad] = x[..., -pad:, :]   # the bottom rows above the top
    out[..., -pad:, pad:-pad] = x[..., :pad, :]   # the top rows below the bottom
    out[..., :, :pad] = out[..., :, -2 * pad:-pad]  # then whole columns, corners included
    out[..., :, -pad:] = out[..., :, pad:2 * pad]
    return out


class PeriodicConv2d(nn.Conv2d):
    """A convolution with circular padding (``padding_mode="circular"``) done by ``wrap_pad``,
    which keeps the input's memory layout; the weights and their names are nn.Conv2d's."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.padding_mode != "circular" or isinstance(self.padding, str) or len(set(self.padding)) != 1:
            raise ValueError(f"PeriodicConv2d pads circularly by the same whole number of pixels on every side; "
                             f"got padding {self.padding!r}, padding_mode {self.padding_mode!r}")

    def _conv_forward(self, x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        return F.conv2d(wrap_pad(x, self.padding[0]), weight, bias, self.stride, 0, self.dilation, self.groups)


def _conv3(in_channels: int, out_channels: int, padding_mode: str, stride: int = 1) -> nn.Conv2d:
    if padding_mode == "circular":
        return PeriodicConv2d(in_channels, out_channels, 3, stride=stride, padding=1, padding_mode="circular")
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, padding_mode=padding_mode)


class ResBlock(nn.Module):
    """GroupNorm, SiLU, conv; add the time embedding; GroupNorm, SiLU, conv; plus a skip path."""

    def __init__(self, in_channels: int, out_channels: int, time_dim: int, padding_mode: str,
                 groups: int = 8, dropout: float = 0.0):
        super().__init__()
        self.norm1 = nn.GroupNorm(min(groups, in_channels), in_channels)
        self.conv1 = _conv3(in_channels, out_channels, padding_mode)
        self.time = nn.Linear(time_dim, out_channels)
        self.norm2 = nn.GroupNorm(min(groups, out_channels), out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _conv3(out_channels, out_channels, padding_mode)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class SelfAttention(nn.Module):
    """Multi-head self-attention over all pixels, with a residual connection.

    Lets every pixel see the whole image in one step: useful for a boundary network, whose
    pieces must join up across the image. No positional encoding, so it commutes with shifts.
    """

    def __init__(self, channels: int, heads: int = 4, groups: int = 8):
        super().__init__()
        if channels % heads:
            raise ValueError(f"{channels} channels do not split into {heads} heads")
        self.heads = heads
        self.norm = nn.GroupNorm(min(groups, channels), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(n, 3, self.heads, c // self.heads, h * w).unbind(1)
        attended = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2),
                                                  v.transpose(-1, -2))
        return x + self.out(attended.transpose(-1, -2).reshape(n, c, h, w))


class Level(nn.Module):
    """Residual blocks at one resolution, each optionally followed by attention."""

    def __init__(self, in_channels: Sequence[int], out_channels: int, time_dim: int,
                 padding_mode: str, attention: bool, dropout: float):
        super().__init__()
        self.blocks = nn.ModuleList(ResBlock(c, out_channels, time_dim, padding_mode, dropout=dropout)
                                    for c in in_channels)
        self.attention = nn.ModuleList(SelfAttention(out_channels) if attention else nn.Identity()
                                       for _ in in_channels)


class UNet(nn.Module):
    """Our default denoiser: a compact DDPM UNet (Ho et al.; Nichol & Dhariwal), one channel in.

    ``widths`` gives the channels of each resolution level (each level after the first halves
    the size), ``blocks`` the residual blocks per level on the way down (one more on the way up),
    ``attention_at`` the image sizes at which self-attention follows each block (and always in
    the middle). ``periodic`` pads every convolution circularly, so the network sees the image
    as a torus, like the training data: a shifted input gives a shifted output, and samples tile.
    ``conditions`` > 0 adds a condition vector of that length (normalised descriptors): a small
    MLP embeds it and adds it to the time embedding, and a learned *null* embedding stands in for
    a missing condition (a row of NaN), so one network is both conditional and unconditional
    (classifier-free guidance, Ho & Salimans 2022).
    """

    def __init__(self, size: int = 64, widths: Sequence[int] = (32, 64, 128), blocks: int = 2,
                 attention_at: Sequence[int] = (16,), periodic: bool = True, dropout: float = 0.0,
                 conditions: int = 0):
        super().__init__()
        if size % 2 ** (len(widths) - 1):
            raise ValueError(f"image size {size} must be divisible by {2 ** (len(widths) - 1)} "
                             f"for {len(widths)} levels")
        self.settings = {"size": size, "widths": list(widths), "blocks": blocks,
                         "attention_at": list(attention_at), "periodic": periodic, "dropout": dropout}
        if conditions:  # unconditional networks keep the config (and weights) they always had
            self.settings["conditions"] = conditions
        padding = "circular" if periodic else "zeros"
        self.embed_dim = widths[0]
        time_dim = 4 * widths[0]
        self.time_mlp = nn.Sequential(nn.Linear(self.embed_dim, time_dim), nn.SiLU(),
                                      nn.Linear(time_dim, time_dim))
        if conditions:
            self.condition_mlp = nn.Sequential(nn.Linear(conditions, time_dim), nn.SiLU(),
                                               nn.Linear(time_dim, time_dim))
            self.null_condition = nn.Parameter(torch.zeros(time_dim))
        self.stem = _conv3(1, widths[0], padding)

        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips = [widths[0]]
        channels, resolution = widths[0], size
        for i, width in enumerate(widths):
            ins = [channels] + [width] * (blocks - 1)
            self.down.append(Level(ins, width, time_dim, padding, resolution in attention_at, dropout))
            skips += [width] * blocks
            channels = width
            if i < len(widths) - 1:
                self.downsample.append(_conv3(width, width, padding, stride=2))
                skips.append(width)
                resolution //= 2
        self.mid1 = ResBlock(channels, channels, time_dim, padding, dropout=dropout)
        self.mid_attention = SelfAttention(channels)
        self.mid2 = ResBlock(channels, channels, time_dim, padding, dropout=dropout)

        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, width in reversed(list(enumerate(widths))):
            ins = []
            for _ in range(blocks + 1):
                ins.append(channels + skips.pop())
                channels = width
            self.up.append(Level(ins, width, time_dim, padding, resolution in attention_at, dropout))
            if i > 0:
                self.upsample.append(_conv3(width, width, padding))
                resolution *= 2
        self.head = nn.Sequential(nn.GroupNorm(min(8, channels), channels), nn.SiLU(),
                                  _conv3(channels, 1, padding))

    def config(self) -> dict:
        return {"name": "unet", **self.settings}

    @torch.no_grad()
    def silence_condition(self) -> None:
        """Zero the condition MLP's last layer, so that every condition embeds as the null one
        does at first (zeros): given an unconditional model's weights, the network then starts as
        exactly that model for every condition, and training moves it from there."""
        last = self.condition_mlp[-1]
        last.weight.zero_()
        last.bias.zero_()
        self.null_condition.zero_()

    def embed_condition(self, condition: Optional[torch.Tensor], n: int, dtype: torch.dtype) -> torch.Tensor:
        """The condition's embedding per image: the MLP's, or the null embedding for a missing
        condition (``None``, or a row holding NaN)."""
        if condition is None:
            return self.null_condition.to(dtype).expand(n, -1)
        missing = torch.isnan(condition).any(dim=1, keepdim=True)
        embedded = self.condition_mlp(torch.nan_to_num(condition).to(dtype))
        return torch.where(missing, self.null_condition.to(dtype), embedded)

    def forward(self, x: torch.Tensor, t: torch.Tensor, condition: Optional[torch.Tensor] = None) -> torch.Tensor:
        # in the input's type, so the network also runs with bf16 or fp16 weights (sampling)
        emb = self.time_mlp(sinusoidal_embedding(t, self.embed_dim).to(x.dtype))
        if "conditions" in self.settings:
            emb = emb + self.embed_condition(condition, len(x), emb.dtype)
        elif condition is not None:
            raise ValueError("this network was trained without a condition")
        h = self.stem(x)
        skips = [h]
        for i, level in enumerate(self.down):
            for block, attention in zip(level.blocks, level.attention):
                h = attention(block(h, emb))
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        h = self.mid2(self.mid_attention(self.mid1(h, emb)), emb)
        for i, level in enumerate(self.up):
            for block, attention in zip(level.blocks, level.attention):
                h = attention(block(torch.cat([h, skips.pop()], dim=1), emb))
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2, mode="nearest"))
        return self.head(h)


MODELS = {"unet": UNet, "seed-unet": SeedUNet}


def build_model(config: dict) -> nn.Module:
    """A network from its ``config()`` dict."""
    settings = dict(config)
    name = settings.pop("name", None)
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    return MODELS[name](**settings)


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters (fixed tables and buffers are not counted)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def time_entry_points(model: nn.Module) -> int:
    """How many times the time embedding enters the network: SeedUNet's per-level MLPs, or
    UNet's residual blocks."""
    if isinstance(model, SeedUNet):
        return sum(name.startswith("te") for name, _ in model.named_children())
    return sum(isinstance(module, ResBlock) for module in model.modules())


def gflops_per_image(model: nn.Module, size: int) -> float:
    """Forward-pass GFLOP for one image, counted by PyTorch (2 FLOP per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros(1, 1, size, size, device=device)
    t = torch.zeros(1, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(x, t)
    return counter.get_total_flops() / 1e9


def shape_walk(model: nn.Module, size: int) -> list[tuple[str, tuple[int, ...]]]:
    """Output shape of every top-level stage of a forward pass on one image (for lesson 03)."""
    records: list[tuple[str, tuple[int, ...]]] = []
    hooks = []
    for name, module in model.named_children():
        if isinstance(module, nn.ModuleList):
            for i, child in enumerate(module):
                targets = [(f"{name}[{i}]", child)] if not isinstance(child, Level) else \
                    [(f"{name}[{i}].block{j}", b) for j, b in enumerate(child.blocks)]
                for label, target in targets:
                    hooks.append(target.register_forward_hook(
                        lambda m, i, o, label=label: records.append((label, tuple(o.shape)))))
        elif name != "time_mlp" and not name.startswith("te"):
            hooks.append(module.register_forward_hook(
                lambda m, i, o, label=name: records.append((label, tuple(o.shape)))))
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, 1, size, size, device=device), torch.zeros(1, dtype=torch.long, device=device))
    finally:
        for hook in hooks:
            hook.remove()
    return records
