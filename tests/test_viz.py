"""helpers.viz: grids keep one gray scale for every image."""
import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from helpers import viz  # noqa: E402


def image_limits(fig):
    return [ax.images[0].get_clim() for ax in fig.axes if ax.images]


def test_model_tensors_share_the_minus_one_to_one_scale(tmp_path):
    faint = torch.full((1, 1, 8, 8), -0.2)
    bright = torch.linspace(-0.5, 0.9, 64).reshape(1, 1, 8, 8)
    fig = viz.image_grid(torch.cat([faint, bright]), path=tmp_path / "grid.png")
    assert image_limits(fig) == [(-1.0, 1.0), (-1.0, 1.0)]
    assert (tmp_path / "grid.png").stat().st_size > 0


def test_bytes_use_0_to_255_and_titles_label_each_image():
    images = np.stack([np.full((8, 8), 10, np.uint8), np.full((8, 8), 200, np.uint8), np.zeros((8, 8), np.uint8)])
    fig = viz.image_grid(images, titles=["a", "b", "c"])
    assert image_limits(fig) == [(0.0, 255.0)] * 3
    assert [ax.get_title() for ax in fig.axes if ax.images] == ["a", "b", "c"]
    assert len(fig.axes) == 4  # a 2x2 grid, the last cell left empty


def test_explicit_range_and_bad_input():
    fig = viz.image_grid(np.zeros((2, 4, 4)), value_range=(0, 1))
    assert image_limits(fig) == [(0.0, 1.0)] * 2
    with pytest.raises(ValueError, match="2 titles for 1 images"):
        viz.image_grid(np.zeros((1, 4, 4)), titles=["a", "b"])
    with pytest.raises(ValueError, match="single-channel"):
        viz.image_grid(np.zeros((1, 3, 4, 4)))


def test_lognormal_fit_recovers_its_parameters():
    d = np.random.default_rng(0).lognormal(mean=2.0, sigma=0.5, size=20000)
    mu, sigma = viz.lognormal_fit(d)
    assert mu == pytest.approx(2.0, abs=0.02) and sigma == pytest.approx(0.5, abs=0.02)


def test_the_loss_curve_names_the_target_the_run_trained_on():
    history = [{"step": 10, "loss": 0.9}, {"step": 20, "loss": 0.5}]
    assert viz.loss_curve(history, prediction="v").axes[0].get_ylabel() == "MSE loss (velocity prediction)"
    assert viz.loss_curve(history).axes[0].get_ylabel() == "MSE loss (noise prediction)"
