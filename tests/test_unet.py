"""helpers.unet: shapes, gradients, parameter counts, periodic padding, configs."""
import pytest
import torch

import torch.nn.functional as F

from helpers.unet import (PeriodicConv2d, SeedUNet, UNet, build_model, count_parameters, gflops_per_image,
                          shape_walk, sinusoidal_embedding, wrap_pad)

SMALL_UNET = dict(widths=(16, 32), blocks=1, attention_at=(8,))


def original_table(n, d):
    """The original tutorial's embedding table, written out as it defined it."""
    table = torch.zeros(n, d)
    wk = torch.tensor([1 / 10_000 ** (2 * j / d) for j in range(d)]).reshape(1, d)
    t = torch.arange(n).reshape(n, 1)
    table[:, ::2] = torch.sin(t * wk[:, ::2])
    table[:, 1::2] = torch.cos(t * wk[:, ::2])
    return table


@pytest.mark.parametrize("size", [28, 32, 64, 128])
@pytest.mark.parametrize("make", [lambda s: SeedUNet(s), lambda s: UNet(s, **SMALL_UNET)], ids=["seed", "unet"])
def test_output_shape_equals_input_shape(make, size):
    torch.manual_seed(0)
    model = make(size)
    x = torch.randn(2, 1, size, size)
    assert model(x, torch.tensor([0, 999])).shape == x.shape


def test_default_unet_at_64():
    model = UNet()
    assert model(torch.randn(1, 1, 64, 64), torch.tensor([3])).shape == (1, 1, 64, 64)
    assert count_parameters(model) == 3_939_393


@pytest.mark.parametrize("make", [lambda: SeedUNet(32), lambda: UNet(32, **SMALL_UNET)], ids=["seed", "unet"])
def test_gradients_reach_every_trainable_parameter(make):
    torch.manual_seed(0)
    model = make()
    x = torch.randn(2, 1, 32, 32)
    model(x, torch.tensor([5, 700])).square().mean().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None or not torch.any(p.grad != 0)]
    assert not missing


def test_seed_unet_count_and_the_originals():
    model = SeedUNet(64)
    assert count_parameters(model) == 1_141_476
    # the original's 1,323,396 also counted its frozen 1000x100 table and an unused LayerNorm((10, 64, 64))
    assert count_parameters(model) + 1000 * 100 + 2 * 10 * 64 * 64 == 1_323_396
    # the original computed its table in float32: sin(999 * w) is off by up to ~5e-5 there
    assert torch.allclose(model.time_table, original_table(1000, 100), atol=1e-4)
    with pytest.raises(ValueError, match="divisible by 4 and >= 16, got 30"):
        SeedUNet(30)


def test_seed_unet_has_the_originals_bottleneck():
    shapes = dict(shape_walk(SeedUNet(64), 64))
    assert shapes["down3"] == (1, 40, 7, 7) and shapes["up1"] == (1, 40, 16, 16)
    assert shapes["conv_out"] == (1, 1, 64, 64)


@pytest.mark.parametrize("shift", [(8, 0), (0, 16), (24, 40)])
def test_periodic_unet_commutes_with_shifts(shift):
    torch.manual_seed(0)
    model = UNet(64, widths=(16, 32, 64), blocks=1, attention_at=(16,), periodic=True).eval()
    x = torch.randn(1, 1, 64, 64)
    t = torch.tensor([10])
    with torch.no_grad():
        rolled_output = torch.roll(model(x, t), shift, dims=(2, 3))
        output_of_rolled = model(torch.roll(x, shift, dims=(2, 3)), t)
    assert torch.allclose(rolled_output, output_of_rolled, atol=1e-5)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("pad", [1, 2])
def test_wrap_pad_is_circular_padding_in_the_inputs_layout(layout, pad):
    x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).reshape(2, 3, 5, 6).contiguous(memory_format=layout)
    padded = wrap_pad(x, pad)
    assert torch.equal(padded, F.pad(x, (pad,) * 4, mode="circular"))
    assert padded.shape == (2, 3, 5 + 2 * pad, 6 + 2 * pad)
    assert padded.is_contiguous(memory_format=layout)
    assert padded[0, 0, 0, 0] == x[0, 0, -pad, -pad]  # a corner comes from the opposite corner
    with pytest.raises(ValueError, match="cannot wrap 6 pixels around a 5x6 image"):
        wrap_pad(x, 6)


@pytest.mark.parametrize("stride", [1, 2])
def test_periodic_conv_matches_torchs_circular_conv_with_its_gradients(stride):
    torch.manual_seed(0)
    ours = PeriodicConv2d(4, 6, 3, stride=stride, padding=1, padding_mode="circular")
    torchs = torch.nn.Conv2d(4, 6, 3, stride=stride, padding=1, padding_mode="circular")
    torchs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    y_ours, y_torch = ours(x), torchs(x)
    torch.testing.assert_close(y_ours, y_torch)
    grad_ours = torch.autograd.grad(y_ours.square().sum(), [x, ours.weight])
    grad_torch = torch.autograd.grad(y_torch.square().sum(), [x, torchs.weight])
    for a, b in zip(grad_ours, grad_torch):
        torch.testing.assert_close(a, b)


def test_periodic_conv_refuses_padding_it_cannot_wrap():
    for settings in (dict(padding=(1, 2), padding_mode="circular"), dict(padding=1, padding_mode="zeros"),
                     dict(padding="same", padding_mode="circular")):
        with pytest.raises(ValueError, match="PeriodicConv2d pads circularly by the same whole number"):
            PeriodicConv2d(2, 2, 3, **settings)


def test_zero_padded_unet_does_not_commute_with_shifts():
    torch.manual_seed(0)
    model = UNet(32, **SMALL_UNET, periodic=False).eval()
    x = torch.randn(1, 1, 32, 32)
    t = torch.tensor([10])
    with torch.no_grad():
        assert not torch.allclose(torch.roll(model(x, t), 8, dims=3), model(torch.roll(x, 8, dims=3), t), atol=1e-3)


def test_configs_rebuild_the_same_network():
    for model in (SeedUNet(32), UNet(32, **SMALL_UNET)):
        copy = build_model(model.config())
        copy.load_state_dict(model.state_dict())
        x, t = torch.randn(1, 1, 32, 32), torch.tensor([3])
        assert torch.equal(copy(x, t), model(x, t))
    with pytest.raises(ValueError, match="unknown model 'vit'"):
        build_model({"name": "vit"})


def test_embedding_and_compute():
    emb = sinusoidal_embedding(torch.tensor([0, 1, 500]), 8)
    assert emb.shape == (3, 8)
    assert torch.equal(emb[0], torch.tensor([0.0, 1.0] * 4))
    assert gflops_per_image(SeedUNet(64), 64) == pytest.approx(0.264, abs=0.001)
    assert gflops_per_image(UNet(), 64) == pytest.approx(4.46, abs=0.01)
    with pytest.raises(ValueError, match="image size 30 must be divisible by 4"):
        UNet(30)


@pytest.mark.parametrize("name", ["unet", "seed-unet"])
def test_networks_run_with_bf16_weights_and_sample_in_float32(name):
    """Sampling can run the network in bf16 (half the memory traffic); the sampler stays float32."""
    from helpers.diffusion import Schedule
    from helpers.sample import Sampler, generate

    config = {"name": "unet", "size": 16, "widths": [8, 16], "blocks": 1, "attention_at": [8]} \
        if name == "unet" else {"name": "seed-unet", "size": 16}
    torch.manual_seed(0)
    model = build_model(config).eval()
    x, t = torch.randn(2, 1, 16, 16), torch.tensor([3, 900])
    with torch.no_grad():
        full, half = model(x, t), model.to(torch.bfloat16)(x.bfloat16(), t)
    assert half.dtype == torch.bfloat16 and torch.allclose(half.float(), full, atol=0.05, rtol=0.05)
    images = generate(model, Schedule.linear(), 3, Sampler("ddim", 4, 1.0))
    assert images.dtype == torch.float32 and images.shape == (3, 1, 16, 16)
