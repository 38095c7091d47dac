"""Executing the lesson notebooks with papermill (used by `make tutorial` and the tests)."""
from __future__ import annotations

import os
import re
from pathlib import Path

from . import BRANCH, REPO, REPO_URL, ROOT

NOTEBOOK_DIR = ROOT / "notebooks"


def notebook_paths(prefixes: list[str] | None = None) -> list[Path]:
    """The numbered lesson notebooks in order, optionally only those whose names start with a prefix."""
    paths = sorted(NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    if prefixes:
        paths = [p for p in paths if any(p.name.startswith(prefix) for prefix in prefixes)]
        if not paths:
            raise FileNotFoundError(f"no notebook in {NOTEBOOK_DIR} starts with {' or '.join(prefixes)}")
    return paths


def exercise_cells(notebook) -> list:
    """The notebook's exercise cells (tag ``exercise``), each naming its exercise in metadata."""
    return [c for c in notebook.cells if "exercise" in c.metadata.get("tags", [])]


def with_solutions(path: Path, out: Path) -> Path:
    """A copy of a lesson at ``out`` whose exercise cells hold their solutions (solutions/<name>.py)."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    for cell in exercise_cells(notebook):
        name = cell.metadata.get("exercise")
        solution = ROOT / "solutions" / f"{name}.py"
        if not solution.is_file():
            raise FileNotFoundError(f"{path.name}: exercise cell names {name!r}, but {solution} does not exist")
        cell.source = solution.read_text(encoding="utf-8").rstrip("\n")
    nbformat.write(notebook, out)
    return out


def run_notebook(path: Path, out_dir: Path, smoke: bool = False, timeout_s: int = 3600,
                 solutions: bool = False) -> Path:
    """Execute one notebook into ``out_dir`` (kernel python3, working directory notebooks/).

    The pictures it writes go to ``out_dir/<notebook name>/`` (through $MDDPM_OUTPUTS). With
    ``solutions`` the exercise cells run their solutions instead of the student's placeholders.
    Returns the executed copy's path; a failing cell raises papermill's error naming the cell.
    """
    import papermill

    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    executed = out_dir / path.name
    source = with_solutions(path, out_dir / f"solved_{path.name}") if solutions else path
    previous = os.environ.get("MDDPM_OUTPUTS")
    os.environ["MDDPM_OUTPUTS"] = str(out_dir)
    try:
        papermill.execute_notebook(str(source), str(executed), parameters={"SMOKE": smoke},
                                   kernel_name="python3", cwd=str(path.parent),
                                   progress_bar=False, execution_timeout=timeout_s)
    finally:
        if previous is None:
            os.environ.pop("MDDPM_OUTPUTS", None)
        else:
            os.environ["MDDPM_OUTPUTS"] = previous
    return executed


# ---- the cells every lesson shares, generated from helpers.REPO (tools/sync_notebooks.py) ----
def colab_url(path: Path) -> str:
    """Colab's address for a notebook of this repository."""
    return (f"https://colab.research.google.com/github/{REPO}/blob/{BRANCH}/"
            f"{Path(path).resolve().relative_to(ROOT).as_posix()}")


def badge_markdown(path: Path) -> str:
    """The Open-in-Colab badge of a notebook, as markdown."""
    return ("[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
            f"({colab_url(path)})")


def setup_source() -> str:
    """The setup cell: in Colab clone the repository; everywhere put its root on sys.path."""
    folder = REPO.split("/")[-1]
    return f'''# Setup: find the repository (in Colab, clone it first) and put its root on sys.path.
import os, subprocess, sys
from pathlib import Path

REPO_URL = "{REPO_URL}"
if "google.colab" in sys.modules and not Path("{folder}").exists():
    subprocess.run(["git", "clone", "--depth", "1", REPO_URL], check=True)
candidates = [Path.cwd(), *Path.cwd().parents, Path.cwd() / "{folder}"]
ROOT = next(p for p in candidates if (p / "helpers" / "__init__.py").exists())
sys.path.insert(0, str(ROOT))'''


def notebook_title(path: Path) -> tuple[str, str]:
    """A notebook's title (its first level-1 heading) and summary (the *italic* line under it)."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        lines = [line.strip() for line in cell.source.splitlines() if line.strip()]
        if cell.cell_type == "markdown" and lines and lines[0].startswith("# "):
            summary = lines[1] if len(lines) > 1 else ""
            if not (len(summary) > 2 and summary[0] == summary[-1] == "*" and summary[1] != "*"):
                raise ValueError(f"{path}: the line under the title should be an *italic* summary")
            return lines[0][2:].strip(), summary[1:-1]
    raise ValueError(f"{path} has no '# ' title in a markdown cell")


# The run-time line of a lesson's title cell, e.g. "**Run time**, full settings: 25 s on the 2-core
# CPU machine ...; on a GPU: ...". The README's lesson table shows the CPU time it names.
RUN_TIME = re.compile(r"^\*\*Run time\*\*, full settings: (?P<cpu>[^;]+?) on the 2-core CPU machine[^;]*; "
                      r"on a GPU: (?P<gpu>.+)$", re.M)


def notebook_run_time(path: Path) -> tuple[str, str]:
    """The lesson's measured run times as its title cell states them: (2-core CPU, GPU)."""
    import nbformat

    notebook = nbformat.read(path, as_version=4)
    title_cell = next(c for c in notebook.cells if c.cell_type == "markdown" and c.source.startswith("# "))
    match = RUN_TIME.search(title_cell.source)
    if not match:
        raise ValueError(f"{path}: the title cell needs a line '**Run time**, full settings: <time> on the "
                         "2-core CPU machine ...; on a GPU: <time or 'not measured yet'>'")
    return match["cpu"], match["gpu"].rstrip(".")


def readme_table() -> str:
    """The README's notebook table (between its notebooks markers)."""
    rows = ["| # | notebook | what it teaches | run time, 2-core CPU | open |", "|---|---|---|---|---|"]
    for path in notebook_paths():
        title, summary = notebook_title(path)
        rows.append(f"| {path.name[:2]} | [{title}](notebooks/{path.name}) | {summary} "
                    f"| {notebook_run_time(path)[0]} | {badge_markdown(path)} |")
    return "\n".join(rows)
