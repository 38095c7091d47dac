"""helpers.viz: grids keep one gray scale for every image."""
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
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


def test_gif_frames_use_one_fixed_clamped_gray_mapping():
    values = torch.tensor([-1.0, 1.0, 0.0, -2.0, 3.0, 0.5]).reshape(6, 1, 1, 1)
    frame = viz.to_frame(values, ncols=6, scale=1, pad=0)
    assert frame.shape == (1, 6, 3) and frame.dtype == np.uint8
    assert (frame[..., 0] == frame[..., 1]).all() and (frame[..., 0] == frame[..., 2]).all()  # gray
    # -1 -> 0, +1 -> 255, 0 -> round(127.5) = 128, outside [-1, 1] clamped, 0.5 -> round(191.25)
    assert frame[0, :, 0].tolist() == [0, 255, 128, 0, 255, 191]
    # no per-image or per-frame stretching: a flat image, or a faint one, keeps its own gray levels
    flat = viz.to_frame(torch.full((1, 1, 4, 4), 0.5), scale=1, pad=0)
    assert np.unique(flat).tolist() == [191]
    faint = viz.to_frame(np.linspace(-0.2, 0.2, 16).reshape(4, 4), scale=1, pad=0)[..., 0]
    assert faint.min() == 102 and faint.max() == 153
    assert viz.to_frame(np.array([[0, 255]], np.uint8), value_range=(0, 255), scale=1, pad=0)[0, :, 0].tolist() == [0, 255]


def test_gif_frames_are_a_padded_grid_scaled_up_with_the_label_underneath():
    images = np.full((3, 4, 4), -1.0)
    frame = viz.to_frame(images, ncols=2, scale=2, pad=1)
    assert frame.shape == (2 * (2 * 5 + 1), 2 * (2 * 5 + 1), 3)  # 2x2 cells of 4 px, 1 px white padding
    gray = frame[..., 0]
    assert (gray[2:10, 2:10] == 0).all() and (gray[:2] == 255).all()  # an image, then the white frame
    assert (gray[12:20, 12:20] == 255).all()  # the fourth cell is empty
    labelled = viz.to_frame(images, ncols=2, scale=2, pad=1, label="t = 999")
    assert labelled.shape == (frame.shape[0] + 14, frame.shape[1], 3)
    np.testing.assert_array_equal(labelled[:frame.shape[0]], frame)
    band = labelled[frame.shape[0]:, ..., 0]
    assert band.min() < 128 and (band == 255).mean() > 0.5  # dark text on a white band


def test_plots_take_their_labels_from_the_metrics_table():
    from helpers import metrics

    stats = metrics.describe_set(np.zeros((2, 16, 16), bool))
    fig = viz.descriptor_histograms({"a": stats}, names=("grains", "lineal_intercept"))
    assert [ax.get_xlabel() for ax in fig.axes] == ["grains per image (>= 4 px)", "mean lineal intercept (px)"]
    fig = viz.ratios_by_size_plot([2, 4], {"a": {"s2": [1.0, 1.0]}}, names=("s2",))
    assert fig.axes[0].get_title() == metrics.descriptor_label("s2") == "S2(r) curve (RMS)"


def test_a_grain_map_gives_every_grain_its_own_colour(tmp_path):
    labels = np.repeat(np.arange(6), 4)[None, :].repeat(5, axis=0)  # six stripes
    fig = viz.grain_map(labels, labels % 2 == 0, title="stripes", path=tmp_path / "map.png")
    shown = fig.axes[1].images[0].get_array()
    assert len(fig.axes) == 2 and shown.shape == (5, 24, 3) and (tmp_path / "map.png").exists()
    assert len(np.unique(shown.reshape(-1, 3), axis=0)) == 6
    plt.close(fig)
