"""helpers.metrics: each descriptor on images whose answer is known."""
import numpy as np
import pytest
import torch

from helpers import data, metrics


def blank(size=64):
    return np.zeros((size, size), dtype=bool)


def cross(size=64):
    """Boundary rows 20-21 and columns 40-41: four grains."""
    mask = blank(size)
    mask[20:22, :] = True
    mask[:, 40:42] = True
    return mask


def test_thresholds_are_zero_for_model_values_and_128_for_bytes():
    np.testing.assert_array_equal(metrics.boundary_masks(np.array([[0.0, 0.01, -1.0]])),
                                  [[False, True, False]])
    np.testing.assert_array_equal(metrics.boundary_masks(np.array([[127, 128, 255]], np.uint8)),
                                  [[False, True, True]])
    assert metrics.boundary_masks(torch.ones(2, 1, 4, 4)).shape == (2, 4, 4)
    with pytest.raises(ValueError, match="one channel"):
        metrics.boundary_masks(np.zeros((2, 3, 4, 4)))


def test_boundary_fraction_and_grains_of_a_cross():
    mask = cross()
    assert metrics.boundary_fraction(mask) == pytest.approx((2 * 64 + 2 * 64 - 4) / 64**2)
    np.testing.assert_array_equal(np.sort(metrics.grain_areas(mask)), [20 * 22, 20 * 40, 42 * 22, 42 * 40])
    assert metrics.grain_count(mask) == 4


def test_small_regions_are_not_grains():
    mask = cross()
    mask[50:55, 50:55] = True
    mask[52, 52] = False  # a 1-px hole inside a blob of boundary
    assert metrics.grain_count(mask) == 4
    assert metrics.grain_count(mask, min_px=1) == 5


def test_equivalent_circle_diameters():
    mask = cross()
    np.testing.assert_allclose(np.sort(metrics.grain_diameters(mask)),
                               2 * np.sqrt(np.array(sorted([440, 800, 924, 1680])) / np.pi))


def test_lineal_intercept_of_stripes():
    mask = blank()
    for start in (7, 23, 39, 55):
        mask[:, start:start + 2] = True  # four boundaries crossed by every row, none by columns
    assert metrics.mean_lineal_intercept(mask) == pytest.approx(2 * 64 * 64 / (64 * 4))


def test_lineal_intercept_counts_half_an_intercept_where_a_line_ends_on_a_boundary():
    mask = blank(8)
    mask[:, 0] = True  # every row starts on a boundary: 8 half intercepts
    mask[:, 4] = True  # and crosses one more: 8 whole ones; columns 0 and 4 lie along them
    assert metrics.mean_lineal_intercept(mask) == pytest.approx(2 * 64 / 12)
    # no boundary met: the intercept is longer than any line, reported as the image side, its lower bound
    assert metrics.mean_lineal_intercept(blank(8)) == 8.0
    assert metrics.mean_lineal_intercept(~blank(8)) == 0.0  # all boundary


def test_a_closed_network_has_junctions_and_no_ends():
    features = metrics.skeleton_features(cross())
    assert features.dangling_ends == 0
    assert features.junctions == 1
    sample = data.make_voronoi_gb(seed=0, index=0).image >= 128
    assert metrics.skeleton_features(sample).dangling_ends == 0


def test_an_open_boundary_has_dangling_ends():
    mask = blank()
    mask[30:32, 10:40] = True  # a free-floating segment: two ends
    assert metrics.skeleton_features(mask).dangling_ends == 2
    mask[10:30, 24:26] = True  # a T: three ends, one junction
    features = metrics.skeleton_features(mask)
    assert (features.dangling_ends, features.junctions) == (3, 1)
    mask = blank()
    mask[30:32, 0:40] = True  # leaves the image on the left: only the right end is a defect
    features = metrics.skeleton_features(mask)
    assert features.dangling_ends == 1 and 36 <= features.ends[0][1] <= 40


def s2_brute_force(mask, r_max):
    """S2 by counting every pair of pixels, binned like helpers.metrics."""
    h, w = mask.shape
    total = np.zeros(r_max + 1)
    count = np.zeros(r_max + 1)
    for dr in range(-h + 1, h):
        for dc in range(-w + 1, w):
            r = int(np.rint(np.hypot(dr, dc)))
            if r > r_max:
                continue
            a = mask[max(dr, 0):h + min(dr, 0), max(dc, 0):w + min(dc, 0)]
            b = mask[max(-dr, 0):h + min(-dr, 0), max(-dc, 0):w + min(-dc, 0)]
            total[r] += np.sum(a & b)
            count[r] += a.size
    return total / count


def test_two_point_correlation_matches_pair_counting():
    mask = np.random.default_rng(1).random((12, 10)) < 0.3
    np.testing.assert_allclose(metrics.two_point_correlation(mask), s2_brute_force(mask, 5), atol=1e-12)


def test_two_point_correlation_limits():
    mask = np.random.default_rng(2).random((64, 64)) < 0.2
    s2 = metrics.two_point_correlation(mask)
    assert s2.shape == (33,)
    assert s2[0] == pytest.approx(mask.mean())
    np.testing.assert_allclose(s2[5:], mask.mean() ** 2, atol=0.006)


def test_seam_ratio_tells_periodic_from_cropped_images():
    masks = metrics.boundary_masks(data.load_uint8("voronoi_gb_64", limit=200))
    assert metrics.seam_ratio(masks) == pytest.approx(1.0, abs=0.1)
    assert metrics.seam_ratio(masks[:, :40, :40]) > 2.0


def test_describe_set_gathers_every_descriptor():
    masks = np.stack([cross(), cross()])
    stats = metrics.describe_set(masks)
    assert set(stats.per_image) == set(metrics.DESCRIPTORS)
    assert stats.per_image["grains"].tolist() == [4.0, 4.0]
    assert stats.diameters.shape == (8,) and stats.s2.shape == (2, 33)
    assert stats.summary()["grains"] == (4.0, 0.0)
    assert stats.subset([1]).size == 1 and stats.subset([1]).diameters.shape == (4,)


def test_a_ratio_grows_with_m_for_a_real_difference_and_not_for_real_data():
    """The ratio is a test statistic: thicker boundaries (a real difference) score higher with more
    images; held-out real images stay near 1 at every m."""
    from scipy import ndimage

    real = metrics.describe_set(np.stack([data.make_voronoi_gb(seed=0, index=i).image for i in range(400)]) >= 128)
    heldout_masks = np.stack([data.make_voronoi_gb(seed=1, index=i).image for i in range(100)]) >= 128
    thick = np.stack([m | ndimage.binary_dilation(m) & (np.random.default_rng(i).random(m.shape) < 0.05)
                      for i, m in enumerate(heldout_masks)])
    sizes = [10, 25, 100]
    real_ratios = metrics.ratios_by_size(metrics.describe_set(heldout_masks), real, sizes)
    thick_ratios = metrics.ratios_by_size(metrics.describe_set(thick), real, sizes)
    assert max(real_ratios["boundary_fraction"]) < 2.5
    grows = thick_ratios["boundary_fraction"]
    assert grows[0] < grows[1] < grows[2] and grows[2] > 4
    with pytest.raises(ValueError, match="m = 300: needs 2 <= m <= 100"):
        metrics.ratios_by_size(metrics.describe_set(thick), real, [300])


def test_bootstrap_intervals_of_means_have_the_width_theory_gives():
    stats = metrics.describe_set(np.stack([data.make_voronoi_gb(seed=2, index=i).image for i in range(200)]) >= 128)
    intervals = metrics.bootstrap_means(stats, level=0.9)
    for name in ("boundary_fraction", "grains", "lineal_intercept"):
        values = stats.per_image[name]
        mean, low, high = intervals[name]
        half = 1.645 * values.std() / np.sqrt(len(values))  # the normal approximation for a mean
        assert low < mean < high and mean == pytest.approx(values.mean())
        assert (high - low) / (2 * half) == pytest.approx(1.0, abs=0.15)
    assert intervals["dangling_ends"] == (0.0, 0.0, 0.0)  # real images have none, in every resample
    with pytest.raises(ValueError, match="level must lie between 0 and 1"):
        metrics.bootstrap_means(stats, level=1.5)


def test_real_sets_set_the_null_and_a_real_difference_gets_a_small_p_value():
    real = metrics.describe_set(np.stack([data.make_voronoi_gb(seed=0, index=i).image for i in range(400)]) >= 128)
    sets = [metrics.describe_set(np.stack([data.make_voronoi_gb(seed=10 + k, index=i).image for i in range(40)]) >= 128)
            for k in range(19)]
    null = metrics.null_ratios(sets, real)
    for i in (0, 7):  # every set scored as the generated set is: the same seed, the same reference halves
        assert null["grains"][i] == metrics.compare_sets(sets[i], real).ratio("grains")
    low, high = metrics.null_band(null["boundary_fraction"])
    assert 0 < low < 1 < high < 3
    other = metrics.describe_set(np.stack([data.make_voronoi_gb(seed=99, index=i, n_seeds=20).image
                                           for i in range(40)]) >= 128)  # smaller grains: a real difference
    assert metrics.p_value(metrics.compare_sets(other, real).ratio("grains"), null["grains"]) == 1 / 20  # the smallest
    fresh = metrics.describe_set(np.stack([data.make_voronoi_gb(seed=98, index=i).image for i in range(40)]) >= 128)
    assert metrics.p_value(metrics.compare_sets(fresh, real).ratio("grains"), null["grains"]) > 0.1
    assert metrics.p_value(0.0, null["grains"], above=False) == 1 / 20
    with pytest.raises(ValueError, match="at least 2 real sets"):
        metrics.null_ratios(sets[:1], real)


def test_every_report_names_descriptors_from_the_one_table(tmp_path, monkeypatch):
    assert set(metrics.DESCRIPTOR_TABLE) == set(metrics.SET_DISTANCES)
    assert metrics.DESCRIPTORS == tuple(n for n, d in metrics.DESCRIPTOR_TABLE.items() if d.per_image)
    monkeypatch.setitem(metrics.DESCRIPTOR_TABLE, "grains",
                        metrics.Descriptor("grain count", "count", rule="at least 4 px"))
    masks = np.stack([data.make_voronoi_gb(seed=0, index=i, size=32).image for i in range(8)]) >= 128
    stats = metrics.describe_set(masks)
    assert metrics.fidelity_bar(stats, stats)[1].name == "grain count"
    report = metrics.format_report(metrics.evaluation_report(masks[:4], masks, splits=2))
    assert "grain count (at least 4 px)" in report and "grains per image" not in report
    data.make_dataset("voronoi-gb", n=2, size=16, seed=0, out=tmp_path / "set")
    readme = (tmp_path / "set" / "README.md").read_text()
    assert "| grain count (at least 4 px) |" in readme and "| grain count (every component) |" in readme
    assert "grains per image" not in readme


def test_nearest_iou_in_blocks_finds_what_one_block_finds(monkeypatch):
    masks = np.random.default_rng(0).random((23, 8, 8)) < 0.3
    library = np.concatenate([masks[:5], np.random.default_rng(1).random((12, 8, 8)) < 0.3])
    whole = metrics.nearest_iou(masks, library), metrics.nearest_iou(library, library, exclude_self=True)
    monkeypatch.setattr(metrics, "NEAREST_BLOCK", 3 * len(library))  # blocks of 3 queries, the last of 2
    blocks = metrics.nearest_iou(masks, library), metrics.nearest_iou(library, library, exclude_self=True)
    for (iou, index), (block_iou, block_index) in zip(whole, blocks):
        assert np.array_equal(index, block_index) and np.array_equal(iou, block_iou)
    assert np.array_equal(whole[0][1][:5], np.arange(5)) and np.all(whole[0][0][:5] == 1.0)  # copies find themselves
    assert np.all(whole[1][1] != np.arange(len(library)))  # no image is its own neighbour


# ---- large canvases ----------------------------------------------------------------------------
def test_crops_cut_each_canvas_row_by_row():
    masks = np.arange(2 * 4 * 6).reshape(2, 4, 6) % 5 == 0
    pieces = metrics.crops(masks, 2)
    assert pieces.shape == (12, 2, 2)
    assert np.array_equal(pieces[0], masks[0, :2, :2]) and np.array_equal(pieces[4], masks[0, 2:, 2:4])
    assert np.array_equal(pieces[11], masks[1, 2:, 4:])
    with pytest.raises(ValueError, match="4x6 images do not split into 4x4 crops"):
        metrics.crops(masks, 4)


def test_real_canvases_tile_and_match_the_training_density():
    assert data.voronoi_seeds(64) == data.VORONOI_SEEDS and data.voronoi_seeds(256) == 240
    real = np.stack([data.make_voronoi_gb(1, i, 128, data.voronoi_seeds(128)).image > 127 for i in range(8)])
    ratio, error = metrics.seam_band(real)
    assert abs(ratio - 1) < 3 * error and 0 < error < 0.2  # 8 canvases: 2,048 seam pairs, a noisy ratio
    shifted = np.roll(real, 7, axis=2)[:, :, :-3]  # cut a strip: the seam is now a jump
    assert metrics.seam_band(shifted)[0] > 1.5
    report = metrics.canvas_report(real[:4], real[4:], window=64, splits=4)
    assert report["size"] == 128 and report["generated"] == 4 and report["crop_subset_size"] == 8
    assert report["means"]["grains"][0] == pytest.approx(metrics.describe_set(real[:4]).summary()["grains"][0])
    assert set(report["ratios"]) == set(report["crop_ratios"]) == set(metrics.SET_DISTANCES)
    blank = np.zeros_like(real[:4])
    assert metrics.canvas_report(blank, real[4:], window=64, splits=4)["crop_ratios"]["boundary_fraction"] > 5
