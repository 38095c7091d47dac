"""tools/gpu_session.py: its dry run on a CPU writes every phase's record and the files it promises."""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import torch

from helpers import train
from helpers.__main__ import main

ROOT = Path(__file__).resolve().parent.parent


def dry_run(out: Path, *flags: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """tools/gpu_session.py --smoke with ``flags``, writing to ``out``, as a CPU dry run calls it."""
    command = [sys.executable, str(ROOT / "tools" / "gpu_session.py"), "--out", str(out), "--smoke", *flags]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "MPLBACKEND": "Agg"})


def _row(name, compile_mode, fmt, rate, compile_seconds=0.0, batch=128, padding="wrap"):
    return {"name": name, "batch_size": batch, "memory_format": fmt, "compile": compile_mode,
            "compile_seconds": compile_seconds, "images_per_second": rate, "padding": padding}


def test_the_train_phase_plans_the_fastest_measured_setting_and_keeps_time_for_compiling(tool):
    plan_training = tool("gpu_session").plan_training
    rows = [{"name": "original", "batch_size": 9, "memory_format": "contiguous", "compile": "eager",
             "compile_seconds": 0.0, "images_per_second": 500.0},
            _row("unet", "eager", "channels_last", 1500.0),
            _row("unet", "compiled (reduce-overhead)", "channels_last", 4689.0, 95.0),
            _row("unet", "compiled (default)", "contiguous", 3000.0, 80.0),
            _row("unet", "compiled (reduce-overhead)", "channels_last", 5200.0, 90.0, padding="torch"),  # F.pad
            _row("unet", "compiled (reduce-overhead)", "channels_last", 6000.0, 90.0, batch=512),
            _row("seed-unet", "compiled (reduce-overhead)", "channels_last", 9000.0, 60.0),
            _row("compact", "compiled (reduce-overhead)", "channels_last", 12000.0, 40.0),
            _row("compact", "eager", "contiguous", 4000.0),
            _row("unet", "eager (torch.compile failed: RuntimeError)", "channels_last", 9999.0),
            {"name": "unet", "batch_size": 128, "error": "OutOfMemoryError"}]
    # measured in this process: compiled again from its caches, so at most 20 s are kept
    plan = plan_training(rows, 128, 400.0)
    assert (plan["compile"], plan["memory_format"], plan["chosen_from"]["images_per_second"]) == \
        ("reduce-overhead", "channels_last", 4689.0)
    assert (plan["compile_reserved"], plan["planned_seconds"]) == (20.0, 380.0)
    # 36.6 steps/s for 380 s, 27 bar checks of ~2 s, 90% of it: 10,748 steps, in hundreds
    assert (plan["steps"], plan["lr_decay_steps"]) == (10700, 3210)
    # a conditional network is new to the caches: its first compile's measured time is kept
    conditional = plan_training(rows, 128, 400.0, conditional=True)
    assert (conditional["compile_reserved"], conditional["planned_seconds"]) == (95.0, 305.0)
    # a setting nothing measured: the first compile's time kept, 1000 img/s unless told the rate
    unmeasured = plan_training(rows, 128, 400.0, compile_mode="default", memory_format="channels_last")
    assert (unmeasured["chosen_from"], unmeasured["compile_reserved"], unmeasured["planned_seconds"]) == \
        ({}, 120.0, 280.0)
    told = plan_training(rows, 128, 400.0, compile_mode="default", memory_format="channels_last", rate=4000.0)
    assert (unmeasured["steps"], told["steps"]) == (1900, 6900)  # 7.8 and 31.25 steps/s
    assert plan_training(rows, 128, 400.0, rate=2000.0)["steps"] == 5000  # a rate told wins over the measured
    # nothing measured and no flags: eager, nothing kept for compiling
    eager = plan_training([], 128, 400.0)
    assert (eager["compile"], eager["memory_format"], eager["compile_reserved"]) == ("none", "contiguous", 0.0)
    assert plan_training(rows, 128, 100.0, conditional=True)["planned_seconds"] == 30.0  # never under 30 s
    # the compact UNet's own rows, never the default UNet's
    compact = plan_training(rows, 128, 400.0, network="compact")
    assert (compact["compile"], compact["chosen_from"]["images_per_second"], compact["compile_reserved"]) == \
        ("reduce-overhead", 12000.0, 20.0)
    # 93.75 steps/s for 380 s, 71 bar checks of ~2 s, 90% of it: 20,081 steps, in hundreds
    assert (compact["steps"], compact["lr_decay_steps"]) == (20000, 6000)
    compact_eager = plan_training(rows, 128, 400.0, compile_mode="none", memory_format="contiguous",
                                  network="compact")
    # eager: 31.25 steps/s for all 400 s, 25 bar checks of ~2 s, 90% of it: 9,843 steps, in hundreds
    assert (compact_eager["chosen_from"]["images_per_second"], compact_eager["steps"]) == (4000.0, 9800)


def test_the_train_phase_runs_the_gpu_recipe_on_the_network_and_batch_asked_for(tool):
    gpu_session = tool("gpu_session")
    plan = {"steps": 9800, "lr_decay_steps": 2940, "compile": "reduce-overhead", "memory_format": "channels_last"}

    def config(network, batch=128, smoke=False):
        args = argparse.Namespace(bar_every=2000, train_network=network, data="voronoi_gb_64", condition=[],
                                  init_from=None)
        return gpu_session.training_config(args, plan, batch, smoke)

    default, compact = config("unet", 512), config("compact")
    gpu = train.PROFILES["gpu"]
    for cfg, batch in ((default, 512), (compact, 128)):  # the gpu recipe, the plan's length and setting
        assert (cfg.lr, cfg.ema_decay, cfg.warmup, cfg.prediction) == (gpu["lr"], gpu["ema_decay"], gpu["warmup"], "v")
        assert (cfg.steps, cfg.lr_decay_steps, cfg.batch_size, cfg.compile, cfg.memory_format, cfg.bar_every) == \
            (9800, 2940, batch, "reduce-overhead", "channels_last", 2000)
    assert (default.model, default.model_options) == ("unet", {})  # the default UNet
    assert (compact.model, compact.model_options) == ("unet", train.COMPACT_UNET)
    smoke_default, smoke_compact = config("unet", smoke=True), config("compact", smoke=True)
    assert (smoke_default.steps, smoke_default.batch_size, smoke_default.model_options) == (20, 8, train.TINY_UNET)
    assert (smoke_compact.steps, smoke_compact.model_options) == (20, train.COMPACT_UNET)


def test_a_session_refuses_to_train_a_network_it_does_not_measure(tmp_path):
    done = dry_run(tmp_path / "out", "--phases", "eager", "train", "--models", "unet", "--train-network", "compact",
                   timeout=120)
    assert done.returncode == 2 and not (tmp_path / "out").exists()
    assert done.stderr.splitlines() == ["error: tools/gpu_session.py: --train-network compact: the measuring phases "
                                        "(eager) time --models unet only; add compact to --models, or give "
                                        "--train-rate (see tools/gpu_session.py --help)"]


def test_a_session_refuses_bad_values_and_a_folder_it_would_write_over_before_any_phase(tool, tmp_path, monkeypatch,
                                                                                        capsys):
    gpu_session = tool("gpu_session")
    monkeypatch.delenv("OUT", raising=False)

    def refusal(*flags: str) -> str:
        monkeypatch.setattr(sys, "argv", ["gpu_session.py", "--smoke", *flags])
        try:
            gpu_session.arguments()
        except SystemExit as exit:
            assert exit.code == 2
            lines = capsys.readouterr().err.splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: tools/gpu_session.py: "), lines
            return lines[0][len("error: tools/gpu_session.py: "):].removesuffix(" (see tools/gpu_session.py --help)")
        raise AssertionError(f"{flags} accepted")

    user = tmp_path / "user"
    user.mkdir()
    (user / "model.pt").write_text("the user's model")
    (user / "notes.txt").write_text("the user's notes")
    assert refusal("--phases", "env") == "--out: expected a new or empty folder for the session's files (or set OUT)"
    monkeypatch.setenv("OUT", "")  # OUT= with nothing after it: not the current folder
    assert refusal("--phases", "env") == "--out: expected a new or empty folder for the session's files (or set OUT)"
    assert refusal("--out", "") == "argument --out: expected the path of a folder, got ''"
    notes = user / "notes.txt"
    assert refusal("--out", str(notes)) == f"--out {notes}: {notes} is a file; expected a folder"
    assert refusal("--out", str(notes / "sub")) == f"--out {notes / 'sub'}: {notes} is a file; expected a folder"
    assert refusal("--out", str(user), "--phases", "train") == f"--out {user}: already holds model.pt; expected a " \
                                                                "folder without the files the session writes (nothing " \
                                                                "was replaced)"
    empty = tmp_path / "empty"
    assert refusal("--out", str(empty), "--phases", "samples") == f"--out {empty}: holds no model.pt for the samples " \
                                                                  "phase; add train to --phases, or put the model there"
    assert refusal("--out", str(user), "--phases", "samples").startswith(f"{user / 'model.pt'}: not a readable")
    assert (user / "model.pt").read_text() == "the user's model"
    assert refusal("--out", str(user), "--phases", "control").startswith("--phases control: draws a conditional model")
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    shutil.copy(ROOT / "data" / "pretrained_compact" / "model.pt", shipped / "model.pt")
    assert refusal("--out", str(shipped), "--phases", "control", "--condition", "grains") == \
        f"--phases control: {shipped / 'model.pt'} is conditioned on nothing; expected --condition grains to match it"
    pngs = tmp_path / "pngs"  # images but no manifest: nothing to condition on
    pngs.mkdir()
    shutil.copy(ROOT / "data" / "voronoi_gb_64" / "00000.png", pngs / "00000.png")
    assert refusal("--out", str(empty), "--phases", "train", "--data", str(pngs), "--condition", "grains") == \
        f"{pngs}: no manifest.csv; the columns a model is conditioned on are read from it"
    assert refusal("--out", str(empty), "--phases", "train", "--data", str(empty.parent / "user")) == \
        f"{user} holds no PNG images (and no manifest.csv)"
    assert refusal("--out", str(empty), "--phases", "train", "--init-from", str(ROOT / "data" / "pretrained" /
                   "model.pt")).endswith("(--smoke trains the smoke profile's tiny network: dry-run --init-from with a "
                                         "model of that network, from train --profile smoke)")
    assert refusal("--out", str(empty), "--phases", "train", "--data", "no_such_set").startswith(
        "no_such_set: no such folder or shipped dataset (shipped: ")
    assert refusal("--out", str(empty), "--phases", "train", "--data", "voronoi_gb_range_64", "--condition",
                   "no_such_column").endswith("has no column 'no_such_column'; its numeric columns: grains, "
                                              "lineal_intercept, boundary_fraction")
    assert str(tmp_path / "none.pt") in refusal("--out", str(empty), "--phases", "train", "--init-from",
                                                str(tmp_path / "none.pt"))
    for flag, value, expected in [("--deadline", "0", "a number above 0"), ("--batches", "0", "a positive whole number"),
                                  ("--bar-every", "-1", "a whole number of 0 or more"),
                                  ("--train-rate", "0", "a number above 0"), ("--guidance", "-3", "a number of 0 or more"),
                                  ("--after", "-10", "a number of 0 or more")]:
        assert refusal("--out", str(empty), flag, value) == f"argument {flag}: expected {expected}, got '{value}'"
    assert refusal("--out", str(empty), "--compile-modes", "none").startswith("argument --compile-modes: invalid choice")
    assert not empty.exists() and sorted(p.name for p in user.iterdir()) == ["model.pt", "notes.txt"]
    # the default phases: all but control and ddp; with --condition those of a conditional session
    monkeypatch.setattr(sys, "argv", ["gpu_session.py", "--out", str(empty)])
    assert gpu_session.arguments().phases == ["env", "eager", "compiled", "sampling", "train", "samples"]
    monkeypatch.setattr(sys, "argv", ["gpu_session.py", "--out", str(empty), "--data", "voronoi_gb_range_64",
                                      "--condition", "grains"])
    assert gpu_session.arguments().phases == ["env", "train", "samples", "control"]
    # what a session may find there: the model that samples and control read, and the user's own files
    (shipped / "notes.txt").write_text("the user's notes")
    monkeypatch.setattr(sys, "argv", ["gpu_session.py", "--smoke", "--out", str(shipped), "--phases", "samples"])
    assert gpu_session.arguments().phases == ["samples"]


def test_a_session_whose_phase_fails_records_why_runs_the_others_and_exits_1(tool, tmp_path, monkeypatch):
    gpu_session = tool("gpu_session")

    def broken(self, until, record):
        raise RuntimeError("the card fell over")

    monkeypatch.setattr(gpu_session.Phases, "env", broken)
    monkeypatch.setattr(sys, "argv", ["gpu_session.py", "--smoke", "--out", str(tmp_path / "out"), "--phases", "env",
                                      "ddp", "--deadline", "300"])
    monkeypatch.setattr(gpu_session.Phases, "ddp", lambda self, until, record: record.update(ran=True))
    try:
        gpu_session.main()
    except SystemExit as exit:
        assert exit.code == 1
    else:
        raise AssertionError("a failed phase exited 0")
    phases = json.loads((tmp_path / "out" / "session.json").read_text())["phases"]
    assert phases["env"]["status"] == "failed: RuntimeError: the card fell over"
    assert phases["ddp"] == {"ran": True, "status": "done", "seconds": phases["ddp"]["seconds"]}
    log = (tmp_path / "out" / "session.log").read_text()
    assert "RuntimeError: the card fell over" in log and log.splitlines()[-1].endswith(
        "] done; failed: env (session.log has why)")


def test_each_phase_gets_its_budget_when_it_starts(tool):
    """Fixed seconds for the measuring phases (GPU or dry run); the rest of the session for the
    others, less what --after keeps for the phases after training (half of it for samples, with a
    condition, so that control has time)."""
    gpu_session = tool("gpu_session")

    class Clock:  # Session.left(), stopped at 400 s
        def left(self) -> float:
            return 400.0

    def budgets(smoke: bool, condition: list, after: float = 100.0, asked: list = gpu_session.DEFAULT_PHASES) -> dict:
        phases = gpu_session.Phases.__new__(gpu_session.Phases)  # no images loaded: only budget() is used
        phases.args = argparse.Namespace(after=after, condition=condition, phases=asked)
        phases.session, phases.smoke = Clock(), smoke
        return {name: phases.budget(name) for name in gpu_session.PHASES}

    assert budgets(False, []) == {"env": 30, "eager": 75, "compiled": 170, "sampling": 90, "train": 300.0,
                                  "samples": 400.0, "control": 400.0, "ddp": 400.0}
    assert budgets(True, ["grains"]) == {"env": 30, "eager": 150, "compiled": 200, "sampling": 200, "train": 300.0,
                                         "samples": 350.0, "control": 400.0, "ddp": 400.0}
    assert budgets(False, [], after=390.0)["train"] == 30.0  # never less than half a minute
    assert budgets(False, ["grains"], after=800.0)["samples"] == 10.0
    # measuring phases alone: the last one asked for has the time left, never less than its own
    measuring = budgets(False, [], asked=["compiled", "eager", "env"])
    assert (measuring["env"], measuring["eager"], measuring["compiled"]) == (30, 75, 400.0)
    assert budgets(False, [], asked=["env", "eager"])["eager"] == 400.0
    assert budgets(True, [], asked=["env", "compiled"])["compiled"] == 400.0
    assert budgets(False, [], asked=["env", "eager", "ddp"])["eager"] == 75  # ddp comes after it
    assert budgets(False, [], asked=["env", "sampling", "train"])["sampling"] == 90


def test_gpu_session_dry_run_records_each_phase_and_brings_back_its_files(tmp_path):
    out = tmp_path / "out"
    done = dry_run(out, "--phases", "env", "train", "samples", "--deadline", "600")
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads((out / "session.json").read_text())
    assert report["arguments"] == ["--out", str(out), "--smoke", "--phases", "env", "train", "samples",
                                   "--deadline", "600"]  # which call made the report
    assert list(report["phases"]) == ["env", "train", "samples"]
    assert all(phase["status"] == "done" for phase in report["phases"].values()), report["phases"]
    assert report["phases"]["env"]["device"].startswith("cpu")
    assert report["phases"]["train"]["step"] == 20 and len(report["phases"]["train"]["bar"]) == 2
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == \
        ["bar.csv", "loss.csv", "model.pt", "samples.tar.gz", "session.json", "session.log"]
    with tarfile.open(out / "samples.tar.gz") as tar:
        names = tar.getnames()
    assert "./samples/00007.png" in names and "./samples_eta0/manifest.csv" in names
    assert "./samples_dpm30/00007.png" in names  # the fast sampler's first look


def test_the_measuring_phases_take_the_networks_and_memory_formats_asked_for(tmp_path):
    out = tmp_path / "out"
    done = dry_run(out, "--phases", "eager", "compiled", "--models", "seed-unet", "--compile-modes", "default",
                   "--compile-formats", "channels_last", "contiguous", "--deadline", "600")
    assert done.returncode == 0, done.stderr[-2000:]
    phases = json.loads((out / "session.json").read_text())["phases"]
    eager = [(r["name"], r["batch_size"], r["memory_format"]) for r in phases["eager"]["rows"]]
    assert eager == [("original", 9, "contiguous"), ("seed-unet", 8, "contiguous"), ("seed-unet", 8, "channels_last")]
    compiled = [(r["name"], r["memory_format"], r["compile"]) for r in phases["compiled"]["rows"]]
    assert compiled == [("seed-unet", "channels_last", "compiled (default)"), ("seed-unet", "contiguous", "compiled (default)")]
    assert all(r["images_per_second"] > 0 for r in phases["eager"]["rows"] + phases["compiled"]["rows"])


def test_the_eager_phase_measures_the_default_unet_with_each_padding_asked_for(tmp_path):
    out = tmp_path / "out"
    done = dry_run(out, "--phases", "eager", "--models", "unet", "--batches", "4", "--paddings", "wrap", "torch",
                   "--deadline", "600")
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads((out / "session.json").read_text())["phases"]["eager"]["rows"]
    assert [(r["name"], r["memory_format"], r.get("padding")) for r in rows] == [
        ("original", "contiguous", None), ("unet", "contiguous", "wrap"), ("unet", "contiguous", "torch"),
        ("unet", "channels_last", "wrap"), ("unet", "channels_last", "torch")]
    assert all(r["images_per_second"] > 0 for r in rows)


def test_a_conditional_session_trains_on_the_condition_and_reports_its_control(tmp_path):
    """Fine-tuned from an unconditional model (--init-from), as the GPU lever for issue 16 would be."""
    out, plain = tmp_path / "out", tmp_path / "plain"
    train.train(train.profile_config("smoke", steps=2, checkpoint_every=2, sample_every=1000), plain,
                device=torch.device("cpu"), progress=False)
    done = dry_run(out, "--phases", "train", "control", "--data", "voronoi_gb_range_64", "--condition", "grains",
                   "--init-from", str(plain / "checkpoint.pt"), "--measure-control", "--deadline", "600",
                   "--train-compile", "reduce-overhead")
    assert done.returncode == 0, done.stderr[-2000:]
    phases = json.loads((out / "session.json").read_text())["phases"]
    assert [phases[p]["status"] for p in ("train", "control")] == ["done", "done"], phases
    assert phases["train"]["config"]["condition"] == ["grains"]
    assert phases["train"]["config"]["init_from"] == str(plain / "checkpoint.pt")
    # a compile mode nothing measured: the train phase keeps the first compile's time for it
    assert phases["train"]["compile_reserved"] == 120.0 and phases["train"]["last_log"]["step"] == 20
    # the recommended guidance (--guidance, 1) first, each scale's samples kept in control.npz
    samplers = ["DDIM-5, eta 0, guidance 1", "DDIM-5, eta 0"]
    assert [r["sampler"] for r in phases["control"]["drawn"]] == samplers
    assert [r["sampler"] for r in phases["control"]["reports"]] == samplers
    # by default the control phase only draws (seconds on a GPU): the same samples, measured off the
    # GPU machine, give the report the session measured
    drawn = tmp_path / "drawn"
    drawn.mkdir()
    shutil.copy(out / "model.pt", drawn / "model.pt")
    done = dry_run(drawn, "--phases", "control", "--data", "voronoi_gb_range_64", "--condition", "grains",
                   "--deadline", "240", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    with np.load(out / "control.npz") as first, np.load(drawn / "control.npz") as again:
        assert sorted(first.files) == sorted(again.files)
        assert all(np.array_equal(first[key], again[key]) for key in first.files)  # the same draws
    record = json.loads((drawn / "session.json").read_text())["phases"]["control"]
    assert record["status"] == "done" and record["reports"] == [], record
    assert [r["sampler"] for r in record["drawn"]] == samplers
    assert "--measure control.npz" in (drawn / "session.log").read_text()
    assert main(["control", "--checkpoint", str(drawn / "model.pt"), "--measure", str(drawn / "control.npz"),
                 "--splits", "2", "--json", str(tmp_path / "measured.json")]) == 0
    assert json.loads((tmp_path / "measured.json").read_text())["reports"] == phases["control"]["reports"]


def test_the_ddp_phase_times_torchrun_against_the_plain_loop(tmp_path):
    out = tmp_path / "out"
    done = dry_run(out, "--phases", "ddp", "--deadline", "300", timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((out / "session.json").read_text())["phases"]["ddp"]
    assert record["status"] == "done", record
    plain, ranks = record["median"]["plain"], record["median"]["torchrun x1"]
    assert plain > 0 and ranks > 0 and record["ratio_to_plain"] == ranks / plain
    assert record["settings"]["nproc"] == "1" and record["machine"]["cpu_count"] == os.cpu_count()


def test_the_train_phase_trains_the_compact_unet_when_asked(tmp_path):
    """--train-network compact: the network CPU users sample with, in the gpu profile's recipe."""
    out = tmp_path / "out"
    done = dry_run(out, "--phases", "train", "--train-network", "compact", "--deadline", "600")
    assert done.returncode == 0, done.stderr[-2000:]
    record = json.loads((out / "session.json").read_text())["phases"]["train"]
    assert record["status"] == "done" and record["step"] == 20
    assert "686,769 parameters" in record["network"] and "'widths': [16, 32, 64]" in record["network"]
    exported = torch.load(out / "model.pt", map_location="cpu", weights_only=True)
    assert exported["model_config"]["widths"] == [16, 32, 64]
