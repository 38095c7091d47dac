"""Nothing a user made is overwritten, and bad numbers are refused in one line before any work."""
import pytest
import torch

from helpers import ROOT, sample, train
from helpers.diffusion import Schedule
from helpers.__main__ import main
from helpers.checkpoint import CheckpointError, load_checkpoint, load_model


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
    (["sample", "--n", "0"], "--n"), (["evaluate", "--splits", "0", "--generated", "x"], "--splits"),
    (["sample", "--steps", "0"], "--steps"), (["sample", "--eta", "2"], "--eta"),
    (["train", "--max-minutes", "0"], "--max-minutes"), (["train", "--eta", "-0.5"], "--eta")])
def test_bad_numbers_are_refused_in_one_line_naming_the_flag(tmp_path, capsys, argv, flag):
    with pytest.raises(SystemExit) as exit_info:
        main(argv + ["--out", str(tmp_path / "never")] if argv[0] != "evaluate" else argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"argument {flag}" in err[0] and "--help" in err[0]  # one line, no usage block
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
        sample.generate(net, Schedule.linear(10), 2, sample.Sampler("ddim", 2), batch_size=0)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never print",))


@pytest.fixture(scope="module")
def shipped():
    return torch.load(ROOT / "data" / "pretrained" / "model.pt", weights_only=True)


def test_a_checkpoint_that_would_run_code_is_refused_with_the_reason(tmp_path, capsys):
    torch.save({"format": "microstructure-ddpm", "x": _RunsCode()}, tmp_path / "code.pt")
    with pytest.raises(CheckpointError, match="holds Python objects besides tensors and plain values"):
        load_checkpoint(tmp_path / "code.pt")
    assert "this must never print" not in capsys.readouterr().out


def test_a_checkpoint_without_its_config_is_one_line_not_a_key_error(tmp_path, shipped):
    damaged = {k: v for k, v in shipped.items() if k != "model_config"}
    torch.save(damaged, tmp_path / "no_config.pt")
    with pytest.raises(CheckpointError, match="no_config.pt: has no model_config; the file is damaged"):
        load_model(tmp_path / "no_config.pt", torch.device("cpu"))


@pytest.mark.parametrize("edit, words", [
    (lambda ema: ema.pop(next(iter(ema))), "1 missing"),
    (lambda ema: ema.update(extra=torch.zeros(3)), "1 unexpected (first: extra)"),
    (lambda ema: ema.update({next(iter(ema)): torch.zeros(1)}), "1 of another shape")])
def test_weights_that_do_not_fit_their_network_are_one_line(tmp_path, capsys, shipped, edit, words):
    damaged = dict(shipped, ema=dict(shipped["ema"]))
    edit(damaged["ema"])
    torch.save(damaged, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="do not fit the network its config describes") as caught:
        load_model(tmp_path / "edited.pt", torch.device("cpu"))
    assert words in str(caught.value) and len(str(caught.value)) < 400
    assert main(["sample", "--checkpoint", str(tmp_path / "edited.pt"), "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_a_config_that_builds_no_network_is_one_line(tmp_path, shipped):
    torch.save(dict(shipped, model_config={"name": "transformer"}), tmp_path / "odd.pt")
    with pytest.raises(CheckpointError, match="odd.pt: its network config .* builds no network"):
        load_model(tmp_path / "odd.pt", torch.device("cpu"))


def _reject_constant(name):
    raise ValueError(f"{name} is not valid JSON")


@pytest.mark.parametrize("fill", [0, 255])
def test_evaluate_on_a_degenerate_set_warns_and_writes_valid_json_without_numpy_warnings(tmp_path, capsys, fill):
    import json
    import warnings

    import numpy as np

    from helpers import data, metrics

    folder = tmp_path / "generated"
    folder.mkdir()
    image = np.full((64, 64), fill, np.uint8)
    for i in range(6):
        data.save_png(image, folder / f"{i}.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy or scikit-image warning may leak
        assert main(["evaluate", "--generated", str(folder), "--reference", "voronoi_gb_64",
                     "--json", str(tmp_path / "report.json")]) == 0
    report = json.loads((tmp_path / "report.json").read_text(), parse_constant=_reject_constant)
    assert report["warnings"] == ["6 of 6 generated images are all grain or all boundary (no boundary network)"]
    assert "warning: 6 of 6 generated images" in capsys.readouterr().out
    one = metrics.describe(image >= 128)
    # all grain: no line meets a boundary, so the intercept is at least the image side (not 2 x 64 x 64)
    assert one["lineal_intercept"] == (64.0 if fill == 0 else 0.0)
    assert one["dangling_ends"] == 0 and one["junctions"] == 0


def _smoke_run(tmp_path):
    run = tmp_path / "run"
    train.train(train.profile_config("smoke", steps=2, checkpoint_every=2, sample_every=1000), run,
                device=torch.device("cpu"), progress=False)
    return run


def test_a_run_folder_another_live_process_trains_in_is_refused(tmp_path):
    import subprocess
    import sys

    run = _smoke_run(tmp_path)
    assert not (run / train.LOCK).exists()  # a finished run leaves no lock
    before = (run / "checkpoint.pt").read_bytes()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / train.LOCK).write_text(f"{other.pid}\n")
        with pytest.raises(train.TrainingError, match=rf"in use by another training process \(pid {other.pid}\)"):
            train.train(None, run, device=torch.device("cpu"), resume=True, extend_to=4, progress=False)
        assert (run / "checkpoint.pt").read_bytes() == before  # nothing of the other run's was touched
    finally:
        other.kill()
        other.wait()


def test_a_lock_left_by_a_killed_run_is_taken_over(tmp_path):
    import subprocess
    import sys

    run = _smoke_run(tmp_path)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / train.LOCK).write_text(gone.stdout)  # that process has exited
    result = train.train(None, run, device=torch.device("cpu"), resume=True, extend_to=4, progress=False)
    assert result.step == 4 and not (run / train.LOCK).exists()


def test_a_run_killed_before_its_first_checkpoint_can_be_started_again(tmp_path):
    import subprocess
    import sys

    run = tmp_path / "run"
    (run / "samples").mkdir(parents=True)  # what such a run leaves: an empty samples/ and its lock
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (run / train.LOCK).write_text(gone.stdout)
    result = train.train(train.profile_config("smoke", steps=2, checkpoint_every=2, sample_every=1000), run,
                         device=torch.device("cpu"), progress=False)
    assert result.step == 2 and (run / "checkpoint.pt").exists() and not (run / train.LOCK).exists()
