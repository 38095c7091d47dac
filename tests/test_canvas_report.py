"""tools/canvas_report.py: large canvases against real ones; a larger --n extends a run."""
import json
import subprocess
import sys

from helpers import ROOT

TOOL = [sys.executable, str(ROOT / "tools" / "canvas_report.py"), "--size", "128", "--batch-size", "1",
        "--steps", "2", "--reference-n", "8", "--ways", "whole"]


def test_a_larger_n_draws_only_the_missing_canvases(tmp_path):
    subprocess.run(TOOL + ["--n", "2", "--out", str(tmp_path)], check=True, capture_output=True)
    first = {p.name: p.read_bytes() for p in (tmp_path / "whole").glob("*.png")}
    subprocess.run(TOOL + ["--n", "3", "--out", str(tmp_path)], check=True, capture_output=True)
    after = {p.name: p.read_bytes() for p in (tmp_path / "whole").glob("*.png")}
    assert sorted(after) == ["00000.png", "00001.png", "00002.png"]
    assert all(after[name] == data for name, data in first.items())  # kept, not redrawn
    report = json.loads((tmp_path / "report.json").read_text())["whole"]
    assert report["generated"] == 3 and report["drawn"] == 1 and report["size"] == 128
    assert report["crop_subset_size"] == 12 and set(report["seam"]) == {"generated", "reference"}
    assert "| seam ratio of a 2x2 tiling |" in (tmp_path / "report.md").read_text()
    assert (tmp_path / "tiles.png").stat().st_size > 0
