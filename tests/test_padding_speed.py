"""tools/padding_speed.py: both paddings give the same images, and the rows merge into the JSON."""
import json
import subprocess
import sys

from helpers import ROOT

TOOL = [sys.executable, str(ROOT / "tools" / "padding_speed.py"), "--n", "2", "--sampler", "ddim:2:1",
        "--repeats", "1", "--images-per-call", "1"]  # 1 of 2: not what the CPU's default would record


def test_rows_per_precision_and_layout_merge_into_the_json(tmp_path):
    path = tmp_path / "padding.json"
    path.write_text(json.dumps({"earlier": {"kept": True}}))
    result = subprocess.run(TOOL + ["--json", str(path)], check=True, capture_output=True, text=True)
    rows = json.loads(path.read_text())
    assert sorted(rows) == ["bf16:channels_last", "earlier", "fp32:channels_last", "fp32:contiguous"]
    assert rows["earlier"] == {"kept": True}
    for key in ("fp32:contiguous", "fp32:channels_last", "bf16:channels_last"):
        row = rows[key]
        assert row["n"] == 2 and row["images_per_call"] == 1 and row["sampler"] == "DDIM-2, eta 1"
        assert row["ratio"] == row["seconds"]["F.pad"] / row["seconds"]["wrap_pad"] > 0
        assert len(row["runs"]["wrap_pad"]) == len(row["runs"]["F.pad"]) == 1
    assert "| bf16 | channels_last |" in result.stdout


def test_a_count_below_one_is_refused_in_one_line():
    for flag in "--images-per-call", "--n", "--repeats":
        result = subprocess.run(TOOL + [flag, "0"], capture_output=True, text=True)
        assert result.returncode == 2 and result.stderr.strip().endswith(f"{flag} 0: expected a positive whole number")
