"""helpers.grains: label maps from boundary images, checked on images whose true grains are known."""
import csv

import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from helpers import data, grains, metrics


@pytest.mark.parametrize("size, seeds", [(64, data.VORONOI_SEEDS), (256, 16 * data.VORONOI_SEEDS)])
def test_labels_of_voronoi_images_agree_with_their_seeds(size, seeds):
    """The generator's nearest-seed labels are the truth: every grain found, boundaries split."""
    scores = []
    for index in range(4):
        sample = data.make_voronoi_gb(seed=11, index=index, size=size, n_seeds=seeds)
        labels = grains.label_map(sample.image > 127)
        assert labels.dtype == np.int32 and labels.shape == (size, size) and labels.min() == 0
        assert labels.max() + 1 == len(np.unique(sample.labels)) == seeds
        scores.append(adjusted_rand_score(sample.labels.ravel(), labels.ravel()))
    assert min(scores) >= 0.98, scores


def test_a_grain_cut_by_the_edges_is_one_grain_only_when_periodic():
    mask = np.zeros((16, 16), dtype=bool)
    mask[:, 4:6] = True  # two vertical boundaries: grains 0-3 + 14-15 (across the wrap) and 6-13
    mask[:, 13] = True
    periodic = grains.label_map(mask)
    assert periodic.max() + 1 == 2
    assert periodic[0, 0] == periodic[0, 15] != periodic[0, 8]
    flat = grains.label_map(mask, periodic=False)
    assert flat.max() + 1 == 3 and flat[0, 0] != flat[0, 15]


def test_boundary_pixels_go_to_the_nearest_grain_and_slivers_are_not_grains():
    mask = np.zeros((20, 20), dtype=bool)
    mask[:, 8:12] = True  # a 4-px thick boundary: two columns to each side
    mask[:, 18:20] = True
    mask[5, 9:11] = False  # a 2-px hole inside the boundary: a sliver (< 4 px)
    labels = grains.label_map(mask)
    assert labels.max() + 1 == 2
    assert (labels[:, 8:10] == labels[0, 0]).all() and (labels[:, 10:12] == labels[0, 15]).all()
    assert (labels[:, 18] == labels[0, 15]).all() and (labels[:, 19] == labels[0, 0]).all()  # split, with the wrap


def test_an_open_boundary_does_not_split_a_grain():
    mask = np.zeros((32, 32), dtype=bool)
    mask[0:2, :] = True  # a closed band (with the wrap: a horizontal torus boundary)
    mask[8:24, 15:17] = True  # a stray boundary segment with two open ends
    labels = grains.label_map(mask)
    assert labels.max() + 1 == 1 and metrics.skeleton_features(mask).dangling_ends == 2
    with pytest.raises(ValueError, match="all boundary"):
        grains.label_map(np.ones((8, 8), dtype=bool))


def test_the_grain_table(tmp_path):
    labels = np.zeros((10, 10), dtype=int)
    labels[:, 8:] = 1  # grain 1: two columns against the right edge
    labels[:, :1] = 1  # ... and one across the wrap at the left
    labels[4:6, 3:5] = 2  # grain 2: a 2x2 island inside grain 0
    table = grains.grain_table(labels)
    assert [g.area for g in table] == [66, 30, 4] and sum(g.area for g in table) == 100
    assert table[2].equivalent_diameter == pytest.approx(2 * np.sqrt(4 / np.pi))
    assert table[0].neighbours == (1, 2) and table[2].neighbours == (0,)
    assert (table[2].centroid_row, table[2].centroid_col) == pytest.approx((5.0, 4.0))
    # grain 1 spans columns 8, 9 and (across the edge) 0: its centre is on the edge, not at column 5.7;
    # it runs all round the torus along the rows, where no centre is defined: the plain mean
    assert table[1].centroid_col == pytest.approx(9.5) and table[1].centroid_row == pytest.approx(5.0)
    flat = grains.grain_table(labels, periodic=False)
    assert flat[1].centroid_col == pytest.approx((8.5 * 10 + 9.5 * 10 + 0.5 * 10) / 30)
    path = grains.write_grain_table(table, tmp_path / "grains.csv")
    rows = list(csv.DictReader(open(path)))
    assert list(rows[0]) == list(grains.TABLE_COLUMNS)
    assert rows[0]["neighbours"] == "1 2" and rows[2]["area_px"] == "4" and rows[1]["neighbour_count"] == "1"
