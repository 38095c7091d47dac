"""helpers.export: each format written by, and read back with, its own library."""
import numpy as np
import pytest

from helpers import data, export


@pytest.fixture(scope="module")
def micro():
    sample = data.make_voronoi_gb(seed=5, index=0, size=48, n_seeds=12)
    return export.microstructure(sample.image > 127, texture="random", seed=3, pixel_size=0.5)


@pytest.mark.parametrize("fmt", list(export.FORMATS))
def test_each_format_round_trips_through_its_library(micro, fmt, tmp_path):
    files = export.export(micro, fmt, tmp_path / "sample")
    assert files == export.export_targets(fmt, tmp_path / "sample")
    assert files[0].suffix == export.FORMATS[fmt][0] and files[-1].name == "sample_grains.csv"
    labels = export.read_labels(files[0])
    assert labels.shape == micro.labels.shape and np.array_equal(labels, micro.labels)
    with pytest.raises(FileExistsError, match="already exists"):
        export.export(micro, fmt, tmp_path / "sample")


def test_damask_geometry_has_the_size_and_one_orientation_per_grain(micro, tmp_path):
    import damask

    geometry, material, _ = export.export(micro, "damask", tmp_path / "g")
    grid = damask.GeomGrid.load(geometry)
    assert tuple(grid.cells) == (48, 48, 1) and np.allclose(grid.size, [24e-6, 24e-6, 0.5e-6])
    config = damask.ConfigMaterial.load(material)
    assert len(config["material"]) == micro.grains
    stored = damask.Rotation(np.array([m["constituents"][0]["O"] for m in config["material"]]))
    assert np.allclose(stored.as_Euler_angles(), micro.euler, atol=1e-6)


def test_ang_pixels_carry_their_grains_orientation(micro, tmp_path):
    from orix import io

    path = export.export(micro, "ang", tmp_path / "e")[0]
    xmap = io.load(path)
    assert xmap.shape == (48, 48) and xmap.phases.names == ["Ni"]
    assert np.allclose(xmap.dy, 0.5) and np.allclose(xmap.dx, 0.5)
    euler = xmap.rotations.to_euler().reshape(48, 48, 3)
    assert np.allclose(euler, micro.euler[micro.labels], atol=1e-4)  # the file keeps 5 decimals


def test_textures_scatter_about_their_component():
    import damask

    goss = export.orientations(500, "goss", spread=5.0, seed=0)
    centre = damask.Orientation.from_Euler_angles(export.TEXTURES["goss"], degrees=True, lattice="cF")
    drawn = damask.Orientation.from_Euler_angles(goss, lattice="cF")
    angles = np.degrees(drawn.disorientation(centre).as_axis_angle()[..., 3])
    assert 2.0 < np.median(angles) < 10.0 and np.quantile(angles, 0.99) < 25.0
    uniform = damask.Orientation.from_Euler_angles(export.orientations(500, seed=0), lattice="cF")
    assert np.median(np.degrees(uniform.disorientation(centre).as_axis_angle()[..., 3])) > 35.0
    assert np.array_equal(export.orientations(5, seed=1), export.orientations(5, seed=1))
    with pytest.raises(ValueError, match="unknown texture 'fibre'"):
        export.orientations(5, "fibre")


def test_a_missing_library_is_named_with_the_requirements_file(monkeypatch):
    real = export.importlib.import_module

    def without_orix(name):
        if name == "orix":
            raise ImportError(name)
        return real(name)

    monkeypatch.setattr(export.importlib, "import_module", without_orix)
    with pytest.raises(export.MissingPackage, match="needs the 'orix' package: pip install -r requirements-materials.txt"):
        export.require("ang")
    export.require("npy")


def test_the_export_command_labels_a_folder_and_never_replaces_a_file(tmp_path, capsys):
    from helpers import grains, metrics
    from helpers.__main__ import main

    folder = data.make_dataset("voronoi-gb", 3, 48, seed=2, out=tmp_path / "images")
    out = tmp_path / "sim"
    assert main(["export", "--in", str(folder), "--format", "damask", "--texture", "cube", "--out", str(out),
                 "--quiet"]) == 0
    assert "exported 3 microstructures" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"{i:05d}{end}" for i in range(3) for end in (".vti", ".material.yaml", "_grains.csv"))
    masks = metrics.boundary_masks(data.load_uint8(folder))
    for i, mask in enumerate(masks):
        assert np.array_equal(export.read_labels(out / f"{i:05d}.vti"), grains.label_map(mask))
    before = {p: p.read_bytes() for p in out.iterdir()}
    assert main(["export", "--in", str(folder), "--format", "damask", "--out", str(out), "--quiet"]) == 2
    assert "00000.vti: already exists; nothing was written" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.iterdir()} == before
    assert main(["export", "--in", str(folder), "--format", "npy", "--out", str(out), "--quiet"]) == 2  # the tables
    assert "00000_grains.csv: already exists" in capsys.readouterr().err
    assert main(["export", "--in", str(tmp_path / "nowhere"), "--format", "npy", "--out", str(out)]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_axes_are_columns_then_rows_in_every_format(tmp_path):
    """A map that is not square: a swap of x and y cannot pass."""
    labels = (np.arange(48 * 32).reshape(48, 32) // 5 % 7).astype(np.int32)  # 48 rows, 32 columns
    micro = export.Microstructure(labels, labels == 0, export.orientations(7, seed=1), pixel_size=2.0)
    import damask
    from orix import io

    grid = damask.GeomGrid.load(export.export(micro, "damask", tmp_path / "d")[0])
    assert tuple(grid.cells) == (32, 48, 1) and grid.material[5, 7, 0] == labels[7, 5]
    assert np.array_equal(export.read_labels(export.export(micro, "vtk", tmp_path / "v")[0]), labels)
    xmap = io.load(export.export(micro, "ang", tmp_path / "a")[0])
    assert xmap.shape == (48, 32) and np.allclose(xmap.x.reshape(48, 32)[7, 5], 10.0)
    assert np.allclose(xmap.y.reshape(48, 32)[7, 5], 14.0)
