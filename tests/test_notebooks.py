"""Every lesson notebook: its structure, and that it runs top to bottom on smoke settings."""
import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers import ROOT
from helpers.exercises import EXERCISES
from helpers.notebooks import (badge_markdown, exercise_cells, notebook_paths, notebook_run_time, run_notebook,
                               setup_source)

sys.path.insert(0, str(ROOT / "tools"))
from sync_notebooks import synced_notebook, synced_readme  # noqa: E402

NOTEBOOKS = notebook_paths()
ids = [p.stem for p in NOTEBOOKS]


def test_there_are_lessons():
    assert NOTEBOOKS and NOTEBOOKS[0].name == "01_data_exploration.ipynb"


def test_a_test_run_removes_the_pictures_it_wrote_and_keeps_a_folder_the_user_named(tmp_path):
    """The suite's lessons write their pictures to a temp folder (conftest.py); it goes when the run
    ends, while MDDPM_OUTPUTS set by the user is left as it was."""
    env = {k: v for k, v in os.environ.items() if k != "MDDPM_OUTPUTS"} | {"TMPDIR": str(tmp_path)}

    def pytest_run(environment: dict) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only",
                               "tests/test_structure.py::test_every_module_has_a_layer"], cwd=ROOT, env=environment,
                              capture_output=True, text=True, timeout=120)  # conftest.py alone: 2 s

    assert pytest_run(env).returncode == 0
    assert list(tmp_path.glob("mddpm-test-outputs-*")) == []
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "kept.png").write_bytes(b"a picture of the user's")
    assert pytest_run(env | {"MDDPM_OUTPUTS": str(mine)}).returncode == 0
    assert (mine / "kept.png").read_bytes() == b"a picture of the user's"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_outputs_are_stripped(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, cell.source[:60]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_conventions(path):
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    cells = notebook.cells
    assert cells[0].cell_type == "markdown" and cells[0].source == badge_markdown(path)
    assert f"/blob/main/notebooks/{path.name})" in cells[0].source
    setup = [c for c in cells if "setup" in c.metadata.get("tags", [])]
    assert len(setup) == 1 and setup[0].source == setup_source()
    parameters = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == 1, "exactly one cell tagged 'parameters'"
    tree = ast.parse(parameters[0].source)
    assert all(isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) for node in tree.body), \
        "the parameters cell holds literal assignments only"
    assert "SMOKE" in {t.id for node in tree.body for t in node.targets}
    after = cells[cells.index(parameters[0]) + 1].source
    assert "SMOKE = helpers.smoke_mode(SMOKE)" in after  # one rule for the smoke switch, in helpers
    assert cells.index(setup[0]) < cells.index(parameters[0])
    cpu, gpu = notebook_run_time(path)  # measured times in the title cell, which the README table shows
    assert re.search(r"\d+ (s|min)", cpu) and gpu


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_is_in_sync_with_the_repository_address(path):
    """tools/sync_notebooks.py would change nothing (run it if this fails)."""
    assert nbformat.writes(synced_notebook(path)) + "\n" == path.read_text(encoding="utf-8")


def test_the_readme_gives_the_sum_of_the_lessons_run_times():
    """The lessons' CPU times add up to what the README says the series takes."""
    def seconds(text: str) -> float:
        value, unit = re.fullmatch(r"([\d.]+) (s|min)", text).groups()
        return float(value) * (60 if unit == "min" else 1)

    total = sum(seconds(notebook_run_time(path)[0]) for path in NOTEBOOKS) / 60
    readme = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    assert f"the lessons' times add up to {total:.1f} min" in readme


def test_readme_lists_every_notebook_with_its_badge():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert synced_readme(readme) == readme, "run python tools/sync_notebooks.py"
    for path in NOTEBOOKS:
        assert badge_markdown(path) in readme
    assert re.search(r"^make test$", readme, re.M)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_exercises(path):
    """Two or more per lesson, each a registered exercise of this lesson, each checked by the next cell."""
    notebook = nbformat.read(path, as_version=4)
    cells = exercise_cells(notebook)
    assert len(cells) >= 2, "every lesson has at least two exercises"
    for cell in cells:
        name = cell.metadata.get("exercise")
        assert name in EXERCISES and name.startswith(path.name[:3]), name
        assert f"def {EXERCISES[name].function}(" in cell.source and "NotImplementedError" in cell.source
        after = notebook.cells[notebook.cells.index(cell) + 1]
        assert f'exercises.check("{name}", {EXERCISES[name].function})' in after.source
    names = [c.metadata["exercise"] for c in cells]
    assert len(set(names)) == len(names)


def test_every_exercise_is_in_a_lesson():
    used = [c.metadata["exercise"] for p in NOTEBOOKS for c in exercise_cells(nbformat.read(p, as_version=4))]
    assert sorted(used) == sorted(EXERCISES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=ids)
def test_notebook_runs_in_smoke_mode_with_its_solutions(path, tmp_path):
    """Every cell runs, and with the solutions in place every exercise's check says right.
    (nbval runs the lessons as committed, placeholders and all.)"""
    executed = run_notebook(path, tmp_path, smoke=True, solutions=True)
    notebook = nbformat.read(executed, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), "every cell ran once, in order"
    warned = [o.text for c in code for o in c.outputs
              if o.output_type == "stream" and o.name == "stderr" and "Warning" in o.text]
    assert not warned, f"warnings leaked into the lesson: {warned}"
    assert any(Path(tmp_path, path.stem).glob("*.png")), "the lesson saves its pictures"
    printed = "".join(o.get("text", "") for c in notebook.cells if c.cell_type == "code" for o in c.outputs)
    for cell in exercise_cells(notebook):
        assert f"[exercise {cell.metadata['exercise']}] right: " in printed, cell.metadata["exercise"]


def test_the_tutorial_command_runs_lessons_and_says_how_long_they_took(tmp_path, capsys):
    from helpers.__main__ import main

    assert main(["tutorial", "--only", "02", "--smoke", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "running 02_forward_diffusion.ipynb" in out and re.search(r"1 lesson\(s\) in \d+\.\d min", out)
    assert (tmp_path / "02_forward_diffusion.ipynb").exists()
