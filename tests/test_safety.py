"""Nothing a user made is overwritten, and bad numbers are refused in one line before any work."""
import pytest

from helpers import sample, train
from helpers.diffusion import Schedule
from helpers.__main__ import main


def test_train_refuses_a_folder_holding_a_users_files(tmp_path, capsys):
    out = tmp_path / "analysis"
    out.mkdir()
    (out / "loss.csv").write_text("my own numbers\n")
    assert main(["train", "--profile", "smoke", "--steps", "2", "--out", str(out), "--quiet"]) == 2
    assert "is not empty and holds no run (checkpoint.pt)" in capsys.readouterr().err
    assert (out / "loss.csv").read_text() == "my own numbers\n" and sorted(p.name for p in out.iterdir()) == ["loss.csv"]


def test_train_refuses_a_file_as_its_folder(tmp_path, capsys):
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    assert main(["train", "--profile", "smoke", "--steps", "2", "--out", str(target), "--quiet"]) == 2
    assert "is a file; expected a folder" in capsys.readouterr().err and target.read_text() == "mine"


@pytest.mark.parametrize("existing", ["file", "folder"])
def test_evaluate_refuses_to_replace_a_json_file_or_write_into_a_folder_before_working(tmp_path, capsys, existing):
    target = tmp_path / "report.json"
    if existing == "file":
        target.write_text('{"mine": 1}')
    else:
        target.mkdir()
    assert main(["evaluate", "--generated", "no/such/folder", "--reference", "voronoi_gb_64",
                 "--json", str(target)]) == 2  # refused before the missing folder is even read
    err = capsys.readouterr().err
    assert ("exists; choose another --json path" in err) if existing == "file" else ("is a folder" in err)
    if existing == "file":
        assert target.read_text() == '{"mine": 1}'


@pytest.mark.parametrize("argv, flag", [
    (["train", "--steps", "0"], "--steps"), (["train", "--steps", "-5"], "--steps"),
    (["train", "--batch-size", "0"], "--batch-size"), (["train", "--lr", "-1"], "--lr"),
    (["train", "--seed", "-1"], "--seed"), (["sample", "--batch-size", "0"], "--batch-size"),
    (["sample", "--n", "0"], "--n"), (["evaluate", "--splits", "0", "--generated", "x"], "--splits")])
def test_bad_numbers_are_refused_in_one_line_naming_the_flag(tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--out", str(tmp_path / "never")] if argv[0] != "evaluate" else argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"argument {flag}" in err
    assert not (tmp_path / "never").exists()


@pytest.mark.parametrize("setting, message", [
    ({"steps": 0}, "--steps must be a positive whole number, got 0"),
    ({"batch_size": -1}, "--batch-size must be a positive whole number, got -1"),
    ({"lr": 0.0}, "--lr must be a number above 0, got 0.0"),
    ({"seed": -3}, "--seed must be a whole number of 0 or more, got -3")])
def test_the_training_config_itself_refuses_bad_numbers(setting, message):
    with pytest.raises(train.TrainingError, match=message):
        train.profile_config("smoke", **setting)


def test_generate_refuses_a_batch_of_zero():
    from helpers.unet import UNet

    net = UNet(widths=(8, 16, 16), blocks=1, attention_at=()).eval()
    with pytest.raises(ValueError, match="--batch-size must be a positive whole number, got 0"):
        sample.generate(net, Schedule.linear(10), 2, "ddim", 2, batch_size=0)
