"""Microstructures for simulations: grain label maps written in the field's file formats.

Each format is written by the library its users read it with (an optional extra,
``pip install -r requirements-materials.txt``):

- ``damask``: DAMASK's grid-solver geometry (VTK image data, .vti, cell data ``material`` = the
  grain number) through the ``damask`` package, with a ``material.yaml`` that gives each grain an
  orientation (phase ``Ni``, fcc; the constitutive parameters are yours to add).
- ``ang``: an EBSD map in EDAX/TSL's .ang text format through ``orix`` (Bunge Euler angles in
  radians per pixel, x and y in micrometres, phase Ni with nickel's fcc lattice, the grain number
  as an extra column). The round trip through orix is tested; other readers (MTEX, OIM) may need
  their setting for how the Euler frame sits on x and y.
- ``vtk``: VTK image data (.vti) for ParaView through ``vtk``, spacing in micrometres: cell data
  ``grain``, ``boundary`` (the generated image's mask) and ``euler`` (the grain's Bunge Euler
  angles, degrees).
- ``npy``: the label map as a NumPy int32 array (nothing extra to install).

Frame: x along the image's columns (rightwards), y along its rows (downwards), z into the image,
so ParaView (y up) shows the image upside down. ``damask`` and ``vtk`` both write ``<name>.vti``:
one folder per format.

Orientations are drawn per grain by DAMASK's ``Rotation``: uniformly at random, or about one
variant of a named texture component (``TEXTURES``), each grain misoriented from it by an angle
drawn from |N(0, spread)| about a random axis (``Rotation.from_spherical_component``).
"""
from __future__ import annotations

import contextlib
import importlib
import io as text_io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

from .grains import label_map, grain_table, write_grain_table

REQUIREMENTS = "requirements-materials.txt"
# name -> (file extension, the packages it needs)
FORMATS = {"damask": (".vti", ("damask",)), "ang": (".ang", ("orix", "damask")),
           "vtk": (".vti", ("vtk",)), "npy": (".npy", ())}
# Bunge Euler angles (degrees) of the fcc rolling and recrystallisation texture components
TEXTURES = {"cube": (0.0, 0.0, 0.0), "goss": (0.0, 45.0, 0.0), "brass": (35.26, 45.0, 0.0),
            "copper": (90.0, 35.26, 45.0), "s": (58.98, 36.7, 63.43)}
NICKEL_LATTICE = 3.524  # fcc lattice parameter of nickel, angstrom
GRID_UNIT = 1e-6  # DAMASK's sizes are in metres: one pixel is pixel_size micrometres (VTK, .ang: micrometres)


class MissingPackage(ImportError):
    """A format's library is not installed; the message says how to install it."""


def require(fmt: str) -> None:
    """Import the packages ``fmt`` needs, or raise MissingPackage naming the requirements file."""
    for package in FORMATS[fmt][1]:
        try:
            importlib.import_module(package)
        except ImportError:
            raise MissingPackage(f"--format {fmt} needs the {package!r} package: "
                                 f"pip install -r {REQUIREMENTS}") from None


@dataclass
class Microstructure:
    """A periodic grain map ready to write: labels (rows x columns, grains 0..n-1), the boundary
    mask it came from, one orientation per grain (Bunge Euler angles, radians) and the pixel's
    edge in micrometres."""

    labels: np.ndarray
    boundary: np.ndarray
    euler: np.ndarray
    pixel_size: float = 1.0

    @property
    def grains(self) -> int:
        return int(self.labels.max()) + 1


def orientations(n: int, texture: str = "random", spread: float = 10.0,
                 seed: int | Sequence[int] = 0) -> np.ndarray:
    """``n`` orientations as Bunge Euler angles (n, 3) in radians: uniformly random, or a
    ``TEXTURES`` component with a Gaussian scatter of ``spread`` degrees about it. ``seed`` may be
    a sequence (e.g. (seed, image index): every image its own draw)."""
    import damask

    if texture == "random":
        rotations = damask.Rotation.from_random(n, rng_seed=seed)
    elif texture in TEXTURES:
        centre = damask.Rotation.from_Euler_angles(TEXTURES[texture], degrees=True)
        rotations = damask.Rotation.from_spherical_component(centre, spread, n, degrees=True, rng_seed=seed)
    else:
        raise ValueError(f"unknown texture {texture!r}; expected random or one of {', '.join(TEXTURES)}")
    return np.asarray(rotations.as_Euler_angles()).reshape(n, 3)


def microstructure(boundary: np.ndarray, texture: Optional[str] = "random", spread: float = 10.0,
                   seed: int | Sequence[int] = 0, pixel_size: float = 1.0, periodic: bool = True) -> Microstructure:
    """A boundary mask labelled (``grains.label_map``) and given orientations (``texture`` None:
    all grains at the identity, for formats that keep no orientation)."""
    labels = label_map(boundary, periodic)
    count = int(labels.max()) + 1
    euler = orientations(count, texture, spread, seed) if texture else np.zeros((count, 3))
    return Microstructure(labels, np.asarray(boundary, dtype=bool), euler, pixel_size)


# ---------------------------------------------------------------------------------------------
# Writers and readers, one pair per format; a reader returns the label map it finds
# ---------------------------------------------------------------------------------------------
def write_damask(micro: Microstructure, path: Path) -> list[Path]:
    """DAMASK geometry (x along the image's columns, y along its rows, one cell thick) and its
    material.yaml: material i is grain i, one orientation each."""
    import damask

    rows, cols = micro.labels.shape
    step = micro.pixel_size * GRID_UNIT
    grid = damask.GeomGrid(micro.labels.T[:, :, None], size=[cols * step, rows * step, step],
                           comments="microstructure-ddpm: python -m helpers export")
    grid.save(path)
    material = damask.ConfigMaterial()
    material["homogenization"] = {"SX": {"N_constituents": 1, "mechanical": {"type": "pass"}}}
    material["phase"] = {"Ni": {"lattice": "cF", "mechanical": {"output": ["F", "P"]}}}
    material = material.material_add(O=damask.Rotation.from_Euler_angles(micro.euler), phase="Ni",
                                      homogenization="SX")
    yaml_path = Path(path).with_suffix(".material.yaml")
    material.save(yaml_path)
    return [Path(path), yaml_path]


def read_damask(path: Path) -> np.ndarray:
    import damask

    return damask.GeomGrid.load(path).material[:, :, 0].T


def write_ang(micro: Microstructure, path: Path) -> list[Path]:
    """An EBSD map: one row per pixel (row-major), x along columns, y along rows, in micrometres."""
    from diffpy.structure import Lattice, Structure
    from orix import io
    from orix.crystal_map import CrystalMap, Phase, PhaseList
    from orix.quaternion import Rotation

    rows, cols = np.indices(micro.labels.shape)
    nickel = Phase(name="Ni", space_group=225, structure=Structure(
        lattice=Lattice(*[NICKEL_LATTICE] * 3, 90, 90, 90)))
    flat = micro.labels.ravel()
    xmap = CrystalMap(Rotation.from_euler(micro.euler[flat]), phase_id=np.zeros(flat.size, dtype=int),
                      x=cols.ravel() * micro.pixel_size, y=rows.ravel() * micro.pixel_size,
                      phase_list=PhaseList(nickel), prop={"grain": flat.astype(float)}, scan_unit="um")
    io.save(path, xmap, extra_prop="grain", overwrite=False)
    return [Path(path)]


def read_ang(path: Path) -> np.ndarray:
    from orix import io

    with contextlib.redirect_stdout(text_io.StringIO()):  # orix announces the phase names it makes up
        xmap = io.load(path)
    return np.rint(xmap.prop["grain"]).astype(np.int32).reshape(xmap.shape)


def write_vtk(micro: Microstructure, path: Path) -> list[Path]:
    """VTK image data with cell data ``grain``, ``boundary`` and ``euler`` (x along columns, y along rows)."""
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    rows, cols = micro.labels.shape
    image = vtk.vtkImageData()
    image.SetDimensions(cols + 1, rows + 1, 2)  # points: one more than cells along each axis
    image.SetSpacing(micro.pixel_size, micro.pixel_size, micro.pixel_size)
    cells = (("grain", micro.labels.astype(np.int32).ravel()), ("boundary", micro.boundary.astype(np.uint8).ravel()),
             ("euler", np.degrees(micro.euler[micro.labels.ravel()])))
    for name, values in cells:
        array = numpy_to_vtk(np.ascontiguousarray(values), deep=True)  # x fastest: row-major
        array.SetName(name)
        image.GetCellData().AddArray(array)
    writer = vtk.vtkXMLImageDataWriter()
    writer.SetFileName(str(path))
    writer.SetInputData(image)
    if not writer.Write():
        raise OSError(f"{path}: VTK could not write it")
    return [Path(path)]


def read_vtk(path: Path) -> np.ndarray:
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    reader = vtk.vtkXMLImageDataReader()
    reader.SetFileName(str(path))
    reader.Update()
    image = reader.GetOutput()
    cols, rows, _ = (d - 1 for d in image.GetDimensions())
    return vtk_to_numpy(image.GetCellData().GetArray("grain")).reshape(rows, cols)


def write_npy(micro: Microstructure, path: Path) -> list[Path]:
    np.save(path, micro.labels.astype(np.int32))
    return [Path(path)]


def read_npy(path: Path) -> np.ndarray:
    return np.load(path)


WRITERS: dict[str, Callable[[Microstructure, Path], list[Path]]] = {
    "damask": write_damask, "ang": write_ang, "vtk": write_vtk, "npy": write_npy}
READERS: dict[str, Callable[[Path], np.ndarray]] = {
    "damask": read_damask, "ang": read_ang, "vtk": read_vtk, "npy": read_npy}


def export_targets(fmt: str, path: Path) -> list[Path]:
    """The files ``export`` writes for ``path`` in ``fmt``: the format's file(s), then the grain table."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
    path = Path(path).with_suffix(FORMATS[fmt][0])
    extra = [path.with_suffix(".material.yaml")] if fmt == "damask" else []
    return [path, *extra, path.with_name(path.stem + "_grains.csv")]


def export(micro: Microstructure, fmt: str, path: Path, periodic: bool = True) -> list[Path]:
    """Write ``micro`` as ``fmt`` to ``path`` (its extension is the format's), and beside it the
    grain table (``<stem>_grains.csv``; neighbours across the edges when ``periodic``). Refuses
    to replace an existing file."""
    targets = export_targets(fmt, path)
    require(fmt)
    for target in targets:
        if target.exists():
            raise FileExistsError(f"{target}: already exists; not replacing it")
    written = WRITERS[fmt](micro, targets[0])
    written.append(write_grain_table(grain_table(micro.labels, periodic), targets[-1]))
    return written


def read_labels(path: Path, fmt: Optional[str] = None) -> np.ndarray:
    """The label map in a file written by ``export`` (the format from the extension unless given;
    .vti is read as VTK image data with a ``grain`` or ``material`` array)."""
    path = Path(path)
    if fmt is None:
        fmt = {".npy": "npy", ".ang": "ang"}.get(path.suffix)
        if fmt is None and path.suffix == ".vti":
            fmt = "damask" if path.with_suffix(".material.yaml").exists() else "vtk"
    if fmt not in READERS:
        raise ValueError(f"{path}: cannot tell its format; expected one of {', '.join(FORMATS)}")
    require(fmt)
    return READERS[fmt](path)
