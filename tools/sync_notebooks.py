"""Bring the notebooks and README in line with helpers.REPO, and strip notebook outputs.

Run after changing the repository address in helpers/__init__.py, after adding a notebook, and
before committing a notebook you ran: `python tools/sync_notebooks.py`. The tests check that
nothing here would change.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import nbformat  # noqa: E402

from helpers import ROOT  # noqa: E402
from helpers.notebooks import badge_markdown, notebook_paths, readme_table, setup_source  # noqa: E402

TABLE = re.compile(r"(<!-- notebooks:start -->\n)(?:.*?\n)?(<!-- notebooks:end -->)", re.S)


def synced_notebook(path: Path) -> nbformat.NotebookNode:
    """The notebook with outputs stripped and its badge and setup cells regenerated."""
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        tags = cell.metadata.get("tags", [])
        if cell.cell_type == "code":
            cell.outputs = []
            cell.execution_count = None
            if "setup" in tags:
                cell.source = setup_source()
        elif "badge" in tags:
            cell.source = badge_markdown(path)
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    notebook.metadata.pop("papermill", None)
    return notebook


def synced_readme(text: str) -> str:
    """README text with the notebook table regenerated."""
    return TABLE.sub(lambda m: m.group(1) + readme_table() + "\n" + m.group(2), text)


def main() -> int:
    changed = []
    for path in notebook_paths():
        new = nbformat.writes(synced_notebook(path)) + "\n"
        if path.read_text(encoding="utf-8") != new:
            path.write_text(new, encoding="utf-8")
            changed.append(path.name)
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if synced_readme(text) != text:
        readme.write_text(synced_readme(text), encoding="utf-8")
        changed.append("README.md")
    print("updated: " + ", ".join(changed) if changed else "everything already in sync")
    return 0


if __name__ == "__main__":
    sys.exit(main())
