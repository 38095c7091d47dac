"""tools/precision_speed.py: each instruction-set cap takes effect in its own process, rows merge into the JSON."""
import json
import platform
import subprocess
import sys

import pytest

from helpers import ROOT

TOOL = [sys.executable, str(ROOT / "tools" / "precision_speed.py"), "--n", "2", "--sampler", "ddim:2:1",
        "--repeats", "1", "--images-per-call", "1"]  # 1 of 2, passed on to each instruction set's process


@pytest.mark.skipif(platform.machine().lower() not in ("x86_64", "amd64"), reason="the caps are x86 instruction sets")
def test_the_avx2_cap_takes_bf16_away_from_onednn_and_rows_merge(tmp_path):
    path = tmp_path / "precision.json"
    path.write_text(json.dumps({"earlier": {"kept": True}}))
    result = subprocess.run(TOOL + ["--isa", "native", "avx2", "--json", str(path)], check=True,
                            capture_output=True, text=True)
    rows = json.loads(path.read_text())
    assert sorted(rows) == ["avx2:ddim:2:1:n2", "earlier", "native:ddim:2:1:n2"] and rows["earlier"] == {"kept": True}
    capped, native = rows["avx2:ddim:2:1:n2"], rows["native:ddim:2:1:n2"]
    assert capped["env"] == {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
    assert capped["aten_capability"] == "AVX2" and capped["onednn_bf16"] is False  # the caps took effect
    for row in native, capped:
        assert row["n"] == 2 and row["images_per_call"] == 1 and row["sampler"] == "DDIM-2, eta 1"
        assert len(row["runs"]["fp32"]) == len(row["runs"]["bf16"]) == 1
        assert row["ratio"] == row["seconds"]["bf16"] / row["seconds"]["fp32"] > 0
    assert "| avx2 | AVX2 | no |" in result.stdout


def test_nonsense_counts_are_refused_before_any_work():
    result = subprocess.run(TOOL + ["--repeats", "0"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().endswith("--repeats 0: expected a positive whole number")
    result = subprocess.run(TOOL + ["--images-per-call", "0"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip().endswith(
        "--images-per-call 0: expected a positive whole number")
