"""helpers.data: generators, shipped datasets, dataset folders and the loader."""
import csv
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import data, metrics
from helpers.__main__ import main

VORONOI = data.DATA_ROOT / "voronoi_gb_64"
GROWTH = data.DATA_ROOT / "grain_growth_64"


# ---- generators ------------------------------------------------------------------------------
def test_voronoi_labels_are_nearest_seed_under_periodic_distance():
    sample = data.make_voronoi_gb(seed=3, index=7, size=32)
    centres = np.arange(32) + 0.5
    rows, cols = np.meshgrid(centres, centres, indexing="ij")
    best = np.full((32, 32), np.inf)
    expected = np.zeros((32, 32), dtype=int)
    for k, (r, c) in enumerate(sample.seeds):
        dr = np.minimum(abs(rows - r), 32 - abs(rows - r))
        dc = np.minimum(abs(cols - c), 32 - abs(cols - c))
        closer = dr**2 + dc**2 < best
        best[closer] = (dr**2 + dc**2)[closer]
        expected[closer] = k
    assert sample.seeds.shape == (15, 2)
    np.testing.assert_array_equal(sample.labels, expected)


def test_boundary_rule_marks_both_sides_and_wraps():
    labels = np.zeros((8, 8), dtype=int)
    labels[:, 4:] = 1  # interfaces between columns 3|4 and, across the wrap, 7|0
    mask = data.boundary_from_labels(labels)
    assert mask[:, [0, 3, 4, 7]].all() and not mask[:, [1, 2, 5, 6]].any()
    image = data.boundary_image(labels)
    assert image.dtype == np.uint8 and set(np.unique(image)) == {0, 255}


def test_voronoi_images_tile_periodically():
    sample = data.make_voronoi_gb(seed=0, index=4)
    tiled = np.tile(sample.labels, (3, 3))
    inner = np.zeros_like(tiled, dtype=bool)  # boundary rule without wrap-around, on a 3x3 tiling
    inner[1:] |= tiled[1:] != tiled[:-1]
    inner[:-1] |= tiled[:-1] != tiled[1:]
    inner[:, 1:] |= tiled[:, 1:] != tiled[:, :-1]
    inner[:, :-1] |= tiled[:, :-1] != tiled[:, 1:]
    np.testing.assert_array_equal(inner[64:128, 64:128], sample.image == 255)


def test_each_image_has_its_own_generator():
    again = data.make_voronoi_gb(seed=0, index=5).image
    np.testing.assert_array_equal(again, data.make_voronoi_gb(seed=0, index=5).image)
    assert not np.array_equal(again, data.make_voronoi_gb(seed=0, index=6).image)
    assert not np.array_equal(again, data.make_voronoi_gb(seed=1, index=5).image)


def test_grain_growth_sample_is_consistent():
    sample = data.make_grain_growth(seed=0, index=3)
    n = int(sample.labels.max()) + 1
    assert data.GROWTH_TARGET_GRAINS[0] - 3 <= n <= sample.target_grains <= 24
    assert len(np.unique(sample.initial_labels)) == 120
    # every grain connected across the wrap-around, numbered in order of appearance
    np.testing.assert_array_equal(data.periodic_components(sample.labels), sample.labels)
    np.testing.assert_array_equal(sample.boundary, data.boundary_image(sample.labels))
    # one flat gray level per grain, neighbours >= 0.15 of full scale apart
    levels = np.array([np.unique(sample.gray[sample.labels == g]) for g in range(n)])
    assert levels.shape == (n, 1)
    for g, neighbours in enumerate(data.grain_neighbours(sample.labels)):
        for other in neighbours:
            assert abs(int(levels[g, 0]) - int(levels[other, 0])) / 255 >= 0.15


def test_periodic_components_splits_and_joins_across_the_wrap():
    labels = np.zeros((6, 6), dtype=int)
    labels[:, 2:4] = 1  # label 0 sits in columns 0-1 and 4-5: one grain across the wrap
    labels[0, 0] = 2
    labels[3, 0] = 2  # label 2 in two separate places: two grains
    out = data.periodic_components(labels)
    assert out.max() + 1 == 4
    assert out[1, 0] == out[1, 5]
    assert out[0, 0] != out[3, 0]


def test_grain_growth_at_128_pixels():
    sample = data.make_grain_growth(seed=1, index=0, size=128)
    assert sample.gray.shape == sample.boundary.shape == (128, 128)
    assert int(sample.labels.max()) + 1 <= sample.target_grains


# ---- shipped data ----------------------------------------------------------------------------
@pytest.mark.parametrize("index", [0, 1, 123, 500, 999])
def test_shipped_voronoi_files_regenerate_byte_identical(index):
    expected = (VORONOI / f"{index:05d}.png").read_bytes()
    assert data.png_bytes(data.make_voronoi_gb(seed=0, index=index).image) == expected


@pytest.mark.parametrize("index", [0, 77, 999])
def test_shipped_grain_growth_files_regenerate_byte_identical(index):
    files = data.generate_files("grain-growth", 0, index, 64)
    for column, relative in data.row_paths("grain-growth", index).items():
        assert data.png_bytes(files[column]) == (GROWTH / relative).read_bytes(), relative


def test_shipped_manifests_list_every_image():
    for folder, columns in ((VORONOI, ["file"]), (GROWTH, ["file", "boundary", "labels"])):
        with open(folder / "manifest.csv", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == columns
        assert len(rows) == 1001
        assert rows[1][0] == data.row_paths("voronoi-gb" if folder == VORONOI else "grain-growth", 0)["file"]


def test_shipped_voronoi_statistics_match_the_original_data():
    masks = metrics.boundary_masks(data.load_uint8("voronoi_gb_64"))
    fractions = masks.mean(axis=(1, 2))
    every_component = np.array([metrics.grain_count(m, min_px=1) for m in masks])
    grains = np.array([metrics.grain_count(m) for m in masks])
    intercepts = np.array([metrics.mean_lineal_intercept(m) for m in masks])
    assert len(masks) == 1000
    assert abs(fractions.mean() - 0.2085) < 0.006 and abs(fractions.std() - 0.0059) < 0.002
    assert abs(every_component.mean() - 24.4) < 1.6
    assert abs(grains.mean() - 23.1) < 1.4
    assert 14.5 < intercepts.mean() < 15.1
    assert metrics.seam_ratio(masks) == pytest.approx(1.0, abs=0.05)


def test_shipped_sets_have_no_open_boundary_ends():
    for name, column in (("voronoi_gb_64", "file"), ("grain_growth_64", "boundary")):
        masks = metrics.boundary_masks(data.load_uint8(name, column, limit=250))
        ends = [metrics.skeleton_features(m).dangling_ends for m in masks]
        assert sum(ends) == 0, name


# ---- dataset folders -------------------------------------------------------------------------
def test_make_dataset_writes_pngs_manifest_and_readme(tmp_path):
    out = data.make_dataset("voronoi-gb", n=5, size=32, seed=2, out=tmp_path / "set")
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:05d}.png" for i in range(5)]
    assert (out / "manifest.csv").read_text().splitlines() == ["file"] + [f"{i:05d}.png" for i in range(5)]
    readme = (out / "README.md").read_text()
    assert "--kind voronoi-gb --n 5 --size 32 --seed 2" in readme and "boundary fraction" in readme
    x = data.load_images(out)
    assert x.shape == (5, 1, 32, 32) and x.dtype == torch.float32
    assert set(torch.unique(x).tolist()) == {-1.0, 1.0}


def test_make_grain_growth_dataset_has_three_columns(tmp_path):
    out = data.make_dataset("grain-growth", n=2, size=32, seed=0, out=tmp_path / "gg")
    gray = data.load_uint8(out)
    boundary = data.load_uint8(out, column="boundary")
    labels = data.load_uint8(out, column="labels")
    assert gray.shape == boundary.shape == labels.shape == (2, 32, 32)
    np.testing.assert_array_equal(boundary[1], data.boundary_image(labels[1]))


def test_generation_refuses_a_non_empty_folder_unless_forced(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(data.DataError, match="not empty.*--force"):
        data.make_dataset("voronoi-gb", n=2, size=16, seed=0, out=tmp_path)
    data.make_dataset("voronoi-gb", n=2, size=16, seed=0, out=tmp_path, force=True)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("n, size, message", [(0, 64, "--n must be a positive"),
                                              (3, -64, "--size must be a positive"),
                                              (3, 4, "--size must be at least 8")])
def test_bad_counts_and_sizes_are_refused(tmp_path, n, size, message):
    with pytest.raises(data.DataError, match=message):
        data.make_dataset("voronoi-gb", n=n, size=size, seed=0, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_negative_seed_is_refused(tmp_path):
    with pytest.raises(data.DataError, match="--seed must be a whole number of 0 or more, got -1"):
        data.make_dataset("voronoi-gb", n=1, size=16, seed=-1, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("bad", [0, -2, True, 8.0, "8", None])
def test_whole_number_check_refuses_what_is_not_a_positive_whole_number(bad):
    with pytest.raises(data.DataError, match=f"^--n must be a positive whole number, got {re.escape(repr(bad))}$"):
        data.check_whole("--n", bad)


def test_whole_number_check_takes_numpy_integers_and_a_lower_bound():
    number = data.check_whole("--n", np.int64(3))
    assert number == 3 and type(number) is int
    assert data.check_whole("--seed", 0, least=0) == 0
    with pytest.raises(ValueError, match="^--seed must be a whole number of 0 or more, got -1$") as caught:
        data.check_whole("--seed", -1, least=0, error=ValueError)
    assert type(caught.value) is ValueError


def test_cli_exits_non_zero_with_a_one_line_reason(tmp_path, capsys):
    assert main(["data", "make", "--kind", "voronoi-gb", "--n", "0", "--out", str(tmp_path / "x"),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "--n must be a positive whole number, got 0" in err


def test_cli_makes_a_dataset(tmp_path, capsys):
    assert main(["data", "make", "--kind", "grain-growth", "--n", "2", "--size", "32", "--seed", "5",
                 "--out", str(tmp_path / "gg"), "--quiet"]) == 0
    assert "wrote 2 images" in capsys.readouterr().out
    assert len(list((tmp_path / "gg" / "gray").glob("*.png"))) == 2


# ---- loading ---------------------------------------------------------------------------------
def write_pngs(folder, count, size=8, mode="L"):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        pixels = rng.integers(0, 256, (size, size), dtype=np.uint8)
        image = Image.fromarray(pixels, mode="L")
        (image.convert(mode) if mode != "L" else image).save(folder / f"img{i}.png")


def test_loads_a_shipped_set_by_name_in_model_range():
    x = data.load_images("voronoi_gb_64", limit=10)
    assert x.shape == (10, 1, 64, 64) and x.dtype == torch.float32
    assert x.min() == -1.0 and x.max() == 1.0


def test_loads_a_folder_of_pngs_without_manifest(tmp_path):
    write_pngs(tmp_path, 3)
    images = data.load_uint8(tmp_path)
    assert images.shape == (3, 8, 8)
    np.testing.assert_array_equal(images[0], np.asarray(Image.open(tmp_path / "img0.png")))
    np.testing.assert_allclose(data.to_model_range(images), images / 127.5 - 1, atol=1e-6)
    np.testing.assert_array_equal(data.to_uint8(data.to_model_range(images)), images)


def test_original_manifest_with_bom_and_no_header_loads_every_row(tmp_path):
    write_pngs(tmp_path, 3)
    (tmp_path / "manifest.csv").write_bytes("\ufeffimg2.png\nimg0.png\nimg1.png\n".encode("utf-8"))
    images = data.load_uint8(tmp_path)
    assert images.shape[0] == 3
    np.testing.assert_array_equal(images[0], np.asarray(Image.open(tmp_path / "img2.png")))


@pytest.mark.parametrize("setup, message", [
    (lambda d: d.mkdir(), "holds no PNG images"),
    (lambda d: (write_pngs(d, 1), (d / "img0.png").write_bytes(b"not a png")), r"img0.png: not a readable image"),
    (lambda d: (write_pngs(d, 1), write_pngs(d / "big", 1, size=9), (d / "big" / "img0.png").rename(d / "z.png")),
     r"z.png is 9x9 but .*img0.png is 8x8"),
    (lambda d: (write_pngs(d, 1), (d / "manifest.csv").write_text("file\nimg0.png\nmissing.png\n")),
     r"names a missing file: .*missing.png"),
])
def test_bad_folders_give_errors_that_name_the_file(tmp_path, setup, message):
    folder = tmp_path / "set"
    setup(folder)
    with pytest.raises(data.DataError, match=message):
        data.load_uint8(folder)


def test_unknown_name_lists_the_shipped_sets():
    with pytest.raises(data.DataError, match="no such folder or shipped dataset.*voronoi_gb_64"):
        data.load_uint8("no_such_set")


def test_colour_images_are_converted_with_one_warning(tmp_path):
    write_pngs(tmp_path, 3, mode="RGB")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = data.load_uint8(tmp_path)
    assert images.shape == (3, 8, 8) and images.dtype == np.uint8
    assert len(caught) == 1 and "converted 3 non-grayscale" in str(caught[0].message)


# ---- interrupted and failed writes -----------------------------------------------------------
def save_png_failing_after(monkeypatch, count, error):
    """Make data.save_png write ``count`` files, then raise ``error``."""
    real, calls = data.save_png, []

    def save(array, path):
        if len(calls) == count:
            raise error
        calls.append(path)
        real(array, path)

    monkeypatch.setattr(data, "save_png", save)


def test_a_full_disk_stops_data_make_in_one_line_naming_the_file(tmp_path, monkeypatch, capsys):
    import errno

    save_png_failing_after(monkeypatch, 3, OSError(errno.ENOSPC, "No space left on device"))
    out = tmp_path / "set"
    assert main(["data", "make", "--kind", "voronoi-gb", "--n", "6", "--size", "16", "--out", str(out),
                 "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: could not write ")
    assert str(out / "00003.png") in err and "the disk is full" in err
    assert "3 of 6 images were written" in err and "--force" in err
    assert data.load_uint8(out).shape == (3, 16, 16)  # the manifest lists what was written


def test_a_killed_data_make_leaves_a_manifest_of_the_images_written(tmp_path, monkeypatch):
    save_png_failing_after(monkeypatch, 5, KeyboardInterrupt())  # grain-growth: 3 files per image
    out = tmp_path / "gg"
    with pytest.raises(KeyboardInterrupt):
        data.make_dataset("grain-growth", n=4, size=16, seed=0, out=out)
    assert (out / "manifest.csv").read_text().splitlines() == [
        "file,boundary,labels", "gray/00000.png,boundary/00000.png,labels/00000.png"]
    readme = (out / "README.md").read_text()
    assert "unfinished" in readme and "--kind grain-growth --n 4 --size 16 --seed 0" in readme
    assert "--force" in readme
    assert data.load_uint8(out, column="labels").shape == (1, 16, 16)
    monkeypatch.undo()
    data.make_dataset("grain-growth", n=4, size=16, seed=0, out=out, force=True)  # as the README says
    assert "unfinished" not in (out / "README.md").read_text()
    assert len((out / "manifest.csv").read_text().splitlines()) == 5


def test_a_colour_set_warns_once_when_train_reads_it(tmp_path, capsys):
    write_pngs(tmp_path / "colour", 8, size=16, mode="RGB")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["train", "--data", str(tmp_path / "colour"), "--profile", "smoke", "--steps", "1",
                     "--out", str(tmp_path / "run"), "--quiet"]) == 0
    converted = [w for w in caught if "non-grayscale" in str(w.message)]
    assert len(converted) == 1, [str(w.message) for w in converted]
    assert "converted 8 non-grayscale image(s)" in str(converted[0].message)  # the set read once, whole
