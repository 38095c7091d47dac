"""Set-against-set evaluation: noise floor, ratios, defects, memorisation, the evaluate command."""
import json

import numpy as np
import pytest
from scipy import ndimage

from helpers import data, metrics
from helpers.__main__ import main


@pytest.fixture(scope="module")
def reference():
    return metrics.boundary_masks(data.load_uint8("voronoi_gb_64", limit=400))


def fresh_voronoi(n, seeds=15, seed=11):
    return np.stack([data.make_voronoi_gb(seed, i, n_seeds=seeds).image for i in range(n)]) >= 128


def test_real_against_real_gives_ratios_near_one(reference):
    report = metrics.evaluation_report(fresh_voronoi(100), reference, splits=10)
    ratios = {k: v["ratio"] for k, v in report["descriptors"].items()}
    for name in ("boundary_fraction", "grains", "lineal_intercept", "junctions", "grain_diameters", "s2"):
        assert 0.2 < ratios[name] < 3.0, (name, ratios[name])
    assert ratios["dangling_ends"] == 1.0  # no defects on either side
    assert report["defect_rate"] == {"generated": 0.0, "reference": 0.0}
    assert report["torus_dangling_ends"] == {"generated": 0.0, "reference": 0.0}  # the images tile: no seam open
    assert report["memorisation"]["flagged"] == []


def test_a_boundary_left_open_at_the_seam_is_seen_only_on_the_torus():
    """A band that runs to the left edge with no partner at the right edge: cut out of a larger
    image it runs on (no end); tiled, it stops at the seam (one end). Across the whole width it
    closes on itself either way."""
    open_band = np.zeros((64, 64), bool)
    open_band[:, 50:52] = True  # a vertical boundary, closed through the top and bottom edges
    open_band[30:32, :52] = True  # from it to the left edge, where nothing meets it on the right
    closed_band = open_band.copy()
    closed_band[30:32, :] = True
    assert metrics.skeleton_features(open_band).dangling_ends == 0  # skipped at the border
    assert metrics.torus_dangling_ends(open_band) == 1
    assert metrics.torus_dangling_ends(closed_band) == metrics.skeleton_features(closed_band).dangling_ends == 0
    report = metrics.evaluation_report(np.stack([open_band, closed_band]), fresh_voronoi(8), splits=2)
    assert report["torus_dangling_ends"] == {"generated": 0.5, "reference": 0.0}
    # the count is the whole tiling's, read in its middle tile: random masks with many ends, and 1-pixel masks
    rng = np.random.default_rng(0)
    for mask in [*(rng.random((4, 64, 64)) < 0.3), *(rng.random((3, 5, 7)) < 0.5), open_band, np.ones((1, 1), bool)]:
        counts = metrics.skeleton_neighbours(metrics.skeleton(np.tile(mask, (3, 3)), pad=0))
        n, m = mask.shape
        whole = 0 if mask.all() else int((counts[n:2 * n, m:2 * m] == 1).sum())
        assert metrics.torus_dangling_ends(mask) == whole
    assert "if the images tile (counted on the torus, the border too): generated 0.500, reference 0.000" in \
        metrics.format_report(report)


def test_thirty_grains_per_image_is_far_from_real(reference):
    report = metrics.evaluation_report(fresh_voronoi(100, seeds=30), reference, splits=10)
    ratios = {k: v["ratio"] for k, v in report["descriptors"].items()}
    for name in ("boundary_fraction", "grains", "lineal_intercept", "junctions", "grain_diameters", "s2"):
        assert ratios[name] > 10, (name, ratios[name])


def test_thinned_boundaries_move_fraction_and_s2_but_not_grains(reference):
    thin = np.stack([ndimage.binary_erosion(m, structure=np.ones((2, 2)), border_value=1) for m in reference[200:300]])
    report = metrics.evaluation_report(thin, reference[:200], splits=10)
    ratios = {k: v["ratio"] for k, v in report["descriptors"].items()}
    assert ratios["boundary_fraction"] > 10 and ratios["s2"] > 10
    assert report["descriptors"]["boundary_fraction"]["generated_mean"] < 0.15


def test_fidelity_bar_passes_real_data_and_fails_thick_or_open_boundaries(reference):
    truth = metrics.describe_set(reference)
    rows = metrics.fidelity_bar(metrics.describe_set(fresh_voronoi(100)), truth)
    assert [row.name for row in rows[:3]] == ["boundary fraction", "grains per image", "dangling ends per image"]
    assert [row.met for row in rows] == [True, True, True, None, None] and metrics.meets_bar(rows)
    assert rows[0].reference == pytest.approx(0.208, abs=0.005)  # the training set's mean
    thick = np.stack([ndimage.binary_dilation(m) for m in fresh_voronoi(50)])
    rows = metrics.fidelity_bar(metrics.describe_set(thick), truth)
    assert rows[0].generated > 0.3 and not rows[0].met and not metrics.meets_bar(rows)
    opened = fresh_voronoi(50)
    opened[:, 30:34, :] = False  # a horizontal cut leaves boundary ends on both sides
    rows = metrics.fidelity_bar(metrics.describe_set(opened), truth)
    assert rows[2].generated > 1 and rows[2].met is False


def test_gray_background_rate_counts_images_with_a_lifted_background():
    real = data.load_images("voronoi_gb_64", limit=40)
    assert metrics.gray_background_rate(real) == 0.0
    lifted = real.clone()
    lifted[:10] = lifted[:10] * 0.5 + 0.4  # background -1 -> -0.1, boundaries 1 -> 0.9
    assert metrics.gray_background_rate(lifted) == 0.25
    assert metrics.gray_background_rate(lifted.numpy()[:, 0]) == 0.25  # (N, H, W) numpy too


def test_copies_of_training_images_are_flagged(reference):
    copies = reference[:20]
    memo = metrics.memorisation_check(copies, reference, heldout=fresh_voronoi(50))
    assert memo.flagged.tolist() == list(range(20))
    assert np.all(memo.generated_nearest == np.arange(20)) and np.allclose(memo.generated_iou, 1.0)
    assert memo.threshold < 0.5
    half_copy = reference[:5].copy()
    half_copy[:, :, 32:] = fresh_voronoi(5, seed=13)[:, :, 32:]  # left half copied
    assert metrics.memorisation_check(half_copy, reference, heldout=fresh_voronoi(50)).flagged.tolist() == list(range(5))
    honest = metrics.memorisation_check(fresh_voronoi(20, seed=12), reference, heldout=fresh_voronoi(50))
    assert honest.flagged.size == 0


def test_a_defective_set_has_a_defect_rate():
    mask = np.zeros((64, 64), bool)
    mask[30:32, 10:40] = True
    stats = metrics.describe_set(np.stack([mask, np.zeros((64, 64), bool)]))
    assert metrics.defect_rate(stats) == 0.5


def test_evaluate_command_prints_a_table_and_writes_json(tmp_path, capsys):
    generated = tmp_path / "generated"
    data.make_dataset("voronoi-gb", n=30, size=64, seed=5, out=generated)
    assert main(["evaluate", "--generated", str(generated), "--reference", "voronoi_gb_64",
                 "--splits", "4", "--json", str(tmp_path / "report.json")]) == 0
    out = capsys.readouterr().out
    assert "boundary fraction" in out and "ratio" in out and "near-copies" in out
    report = json.loads((tmp_path / "report.json").read_text())
    assert set(report["descriptors"]) == set(metrics.SET_DISTANCES)
    assert all("ratio" in row for row in report["descriptors"].values())
    assert report["n_generated"] == 30 and report["subset_size"] == 30


@pytest.mark.parametrize("make, message", [
    (lambda d: d.mkdir(), "holds no PNG images"),
    (lambda d: (d.mkdir(), (d / "x.png").write_bytes(b"junk")), "x.png: not a readable image"),
])
def test_evaluate_on_an_empty_or_unreadable_folder_fails_in_one_line(tmp_path, capsys, make, message):
    make(tmp_path / "gen")
    assert main(["evaluate", "--generated", str(tmp_path / "gen"), "--reference", "voronoi_gb_64"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err


@pytest.mark.parametrize("fill", [False, True])
def test_a_heldout_set_as_close_as_a_copy_gives_no_threshold_above_one(reference, fill):
    degenerate = np.full((6, 64, 64), fill)  # all grain or all boundary: every IoU between them is 1
    memo = metrics.memorisation_check(reference[:5], degenerate, heldout=degenerate[:3])
    assert memo.threshold is None and memo.flagged.size == 0
    report = metrics.evaluation_report(reference[:10], degenerate, splits=2)  # leave-one-out on the reference
    assert report["memorisation"]["threshold"] is None and report["memorisation"]["flagged"] == []
    assert any("near-copies cannot be told" in w for w in report["warnings"])
    text = metrics.format_report(report)
    assert "near-copies not checked" in text and "1.100" not in text
    # an honest held-out set keeps a threshold below 1
    assert metrics.memorisation_check(reference[:5], reference[5:], heldout=fresh_voronoi(20)).threshold < 1
