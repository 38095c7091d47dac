"""python -m helpers bench --quick: runs on the CPU in well under a minute and reports every figure."""
import json

from helpers.__main__ import main


def test_bench_quick(tmp_path, capsys):
    assert main(["bench", "--quick", "--quiet", "--json", str(tmp_path / "bench.json")]) == 0
    report = json.loads((tmp_path / "bench.json").read_text())
    training = report["training"]
    assert set(training) == {"original", "seed_unet_fast", "unet_fast"}
    assert training["original"]["batch_size"] == 9 and training["original"]["ratio_to_original"] == 1.0
    assert all(row["images_per_second"] > 0 for row in training.values())
    assert training["seed_unet_fast"]["parameters"] == 1_141_476
    assert round(training["unet_fast"]["gflop_per_image"], 2) == 4.46
    sampling = report["sampling"]
    assert sampling["ddim50_seconds"] > 0 and round(sampling["ddpm_over_ddim"]) == 20
    out = capsys.readouterr().out
    assert "(a) original recipe" in out and "DDIM-50" in out
