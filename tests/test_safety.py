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
    captured = capsys.readouterr()
    assert "is not empty and holds no run (checkpoint.pt)" in captured.err
    assert captured.out == ""  # refused before the run is announced ("writing to ...")
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
    ({"seed": -3}, "--seed must be a whole number of 0 or more, got -3"),
    ({"seed": True}, "--seed must be a whole number of 0 or more, got True"),
    ({"steps": 2.0}, "--steps must be a positive whole number, got 2.0")])
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


def _full_disk(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_while_saving_stops_training_in_one_line_and_keeps_the_last_checkpoint(tmp_path, capsys,
                                                                                         monkeypatch):
    run = _smoke_run(tmp_path)  # a checkpoint at step 2
    real_save = torch.save

    def save_then_fail(payload, path):  # half a file, then the disk is full
        real_save({"partial": torch.zeros(1)}, path)
        _full_disk()

    monkeypatch.setattr(torch, "save", save_then_fail)
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "checkpoint.pt: could not be written (the disk is full); the previous " \
        "file is intact (step 2); stopped at step 4: make room, then --resume" in err
    assert load_checkpoint(run / "checkpoint.pt")["step"] == 2
    assert sorted(p.name for p in run.iterdir()) == ["checkpoint.pt", "loss.csv", "loss.png", "samples"]


def test_a_full_disk_while_writing_the_log_names_the_file_and_the_intact_checkpoint(tmp_path, capsys,
                                                                                   monkeypatch):
    run = _smoke_run(tmp_path)

    def write_fails(path, columns, rows):
        import errno

        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(train, "_write_rows", write_fails)
    assert main(["train", "--out", str(run), "--resume", "--steps", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{run / 'loss.csv'}: could not be written (the disk is full); the checkpoint" \
        in err and "(step 4) is intact: make room, then --resume" in err


def test_a_temporary_checkpoint_left_by_a_kill_is_cleared_and_does_not_block_a_new_run(tmp_path):
    run = _smoke_run(tmp_path)
    (run / ".checkpoint.pt.tmp-99999").write_bytes(b"")  # killed in the middle of a save
    train.train(None, run, device=torch.device("cpu"), resume=True, extend_to=4, progress=False)
    assert not list(run.glob(".checkpoint.pt.tmp-*"))
    fresh = tmp_path / "fresh"  # killed during its very first save: a temporary file and nothing else
    fresh.mkdir()
    (fresh / ".checkpoint.pt.tmp-99999").write_bytes(b"")
    result = train.train(train.profile_config("smoke", steps=2, checkpoint_every=2, sample_every=1000), fresh,
                         device=torch.device("cpu"), progress=False)
    assert result.step == 2 and not list(fresh.glob(".checkpoint.pt.tmp-*"))


def test_resuming_a_checkpoint_copied_from_another_run_keeps_the_folders_log(tmp_path, capsys):
    import shutil

    long, short = tmp_path / "long", tmp_path / "short"
    train.train(train.profile_config("smoke", steps=10, checkpoint_every=5, sample_every=1000), long,
                device=torch.device("cpu"), progress=False)
    train.train(train.profile_config("smoke", steps=5, seed=1, sample_every=1000), short,
                device=torch.device("cpu"), progress=False)
    log = (long / "loss.csv").read_text()
    shutil.copy(short / "checkpoint.pt", long / "checkpoint.pt")
    assert main(["train", "--out", str(long), "--resume", "--steps", "10", "--quiet"]) == 2
    assert "loss.csv is not the log of the run in checkpoint.pt (step 5): it would be replaced; move it away" \
        in capsys.readouterr().err
    assert (long / "loss.csv").read_text() == log
    (long / "loss.csv").rename(tmp_path / "long_loss.csv")  # moved away: the copied run carries on, with its own log
    assert main(["train", "--out", str(long), "--resume", "--steps", "10", "--quiet"]) == 0
    assert train.read_loss_history(long)[0] == train.read_loss_history(short)[0]


def test_a_run_stopped_before_its_first_log_line_says_so_instead_of_nan(tmp_path, capsys):
    assert main(["train", "--profile", "smoke", "--steps", "30", "--stop-after", "2", "--out",
                 str(tmp_path / "run"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "step 2: no loss logged yet," in out and "nan" not in out


def test_sample_refuses_steps_beyond_the_schedule_before_making_its_folder(tmp_path, capsys):
    out = tmp_path / "samples"
    assert main(["sample", "--steps", "5000", "--out", str(out), "--quiet"]) == 2
    assert "DDIM steps must lie in 1..1000, got 5000" in capsys.readouterr().err and not out.exists()
    gif = tmp_path / "a_folder.gif"
    gif.mkdir()
    assert main(["sample", "--gif", str(gif), "--out", str(out), "--quiet"]) == 2
    assert "--gif" in capsys.readouterr().err and not out.exists()


def test_a_run_that_finished_while_another_was_setting_up_is_not_replaced(tmp_path):
    folder = tmp_path / "run"
    cfg = train.profile_config("smoke", steps=2, checkpoint_every=2, sample_every=1000)
    late = train.Run.start(cfg, folder, torch.device("cpu"))  # checked the folder: new
    train.train(cfg, folder, device=torch.device("cpu"), progress=False)  # meanwhile another run finished there
    before = (folder / "checkpoint.pt").read_bytes()
    with pytest.raises(train.TrainingError, match="already holds a run"):
        with late.claimed():
            pass
    assert (folder / "checkpoint.pt").read_bytes() == before and not (folder / train.LOCK).exists()


def test_logs_are_written_whole_or_not_at_all_and_a_cut_log_is_named(tmp_path, capsys, monkeypatch):
    import csv

    run = _smoke_run(tmp_path)
    log = (run / "loss.csv").read_text()
    real_writerow, calls = csv.DictWriter.writerow, []

    def full_after_one_row(self, row):
        calls.append(row)
        if len(calls) > 1:
            _full_disk()
        return real_writerow(self, row)

    monkeypatch.setattr(csv.DictWriter, "writerow", full_after_one_row)
    assert main(["train", "--out", str(run), "--resume", "--steps", "6", "--quiet"]) == 2
    monkeypatch.undo()
    assert (run / "loss.csv").read_text() == log and not list(run.glob(".loss.csv.tmp-*"))  # the old log, whole
    (run / "loss.csv").write_text("step,loss,lr,seconds\n2,1.18\n")  # cut mid-row by something else
    assert main(["train", "--out", str(run), "--resume", "--steps", "6", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "loss.csv: a row is cut short or not numbers" in err and "Traceback" not in err


def test_putting_back_an_earlier_checkpoint_of_the_run_keeps_the_later_log_rows(tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    cfg = train.profile_config("smoke", steps=6, checkpoint_every=2, sample_every=1000)
    train.train(cfg, run, device=torch.device("cpu"), progress=False, stop_after=2)
    shutil.copy(run / "checkpoint.pt", tmp_path / "step2.pt")
    train.train(None, run, device=torch.device("cpu"), progress=False, resume=True)  # on to step 6
    rows = (run / "loss.csv").read_text()
    shutil.copy(tmp_path / "step2.pt", run / "checkpoint.pt")  # rewind
    train.train(None, run, device=torch.device("cpu"), progress=False, resume=True)
    assert (run / "loss_to_step_6.csv").read_text() == rows
    assert "went on to step 6, beyond the checkpoint (step 2): kept as loss_to_step_6.csv" in capsys.readouterr().out
    again = [(r["step"], r["loss"]) for r in train.read_loss_history(run)]
    assert again == [(r["step"], r["loss"]) for r in train._read_numeric_csv(run / "loss_to_step_6.csv")]  # exactly as before


@pytest.mark.parametrize("args, message", [
    (["--stop-after", "0"], "argument --stop-after: expected a positive whole number, got '0'"),
    (["--bar-every", "-1"], "argument --bar-every: expected a whole number of 0 or more, got '-1'")])
def test_train_refuses_step_counts_that_would_do_nothing_or_everything(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as refused:
        main(["train", "--profile", "smoke", "--out", str(tmp_path / "run"), "--quiet", *args])
    assert refused.value.code == 2 and message in capsys.readouterr().err and not (tmp_path / "run").exists()


def test_train_refuses_a_folder_under_a_file_before_any_work(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["train", "--profile", "smoke", "--steps", "2", "--out", str(tmp_path / "notes.txt" / "run"),
                 "--quiet"]) == 2
    assert "notes.txt is a file; expected a folder for the run" in capsys.readouterr().err


def test_export_into_a_new_folder_and_a_gif_inside_the_sample_folder(tmp_path):
    assert main(["train", "--profile", "smoke", "--steps", "2", "--out", str(tmp_path / "run"), "--quiet",
                 "--export", str(tmp_path / "new" / "w.pt")]) == 0
    out = tmp_path / "samples"
    assert main(["sample", "--checkpoint", str(tmp_path / "new" / "w.pt"), "--n", "2", "--steps", "2",
                 "--out", str(out), "--gif", str(out / "reverse.gif"), "--quiet"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["00000.png", "00001.png", "manifest.csv", "reverse.gif"]


def test_a_sampler_is_checked_before_it_is_stored():
    from helpers.checkpoint import export_weights

    with pytest.raises(ValueError, match="clip must be true or false, got 'no'"):
        sample.Sampler.from_stored({"sampler": "ddim", "steps": 5, "eta": 0, "clip": "no"})
    with pytest.raises(TypeError, match="expected a sample.Sampler"):
        export_weights({"ema": {}, "model_config": {}, "schedule": {}, "train_config": {}, "step": 0}, "x.pt",
                       sampler={"sampler": "bogus"})
