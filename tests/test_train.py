"""helpers.train: the loop learns, checkpoints resume exactly, bad files and diverged runs stop cleanly."""
import time

import pytest
import torch

from helpers import device, sample, train
from helpers.__main__ import main
from helpers.checkpoint import CheckpointError, load_checkpoint
from helpers.sample import Sampler

CPU = torch.device("cpu")


def smoke(**overrides):
    return train.profile_config("smoke", **{"sample_every": 1000, **overrides})


def test_loss_falls_on_a_tiny_dataset(tmp_path):
    result = train.train(smoke(steps=40, lr=1e-3, limit=16), tmp_path / "run", device=CPU, progress=False)
    history = train.read_loss_history(tmp_path / "run")
    assert [row["step"] for row in history] == [5, 10, 15, 20, 25, 30, 35, 40]
    assert history[-1]["loss"] < 0.6 * history[0]["loss"]
    assert result.step == 40 and (tmp_path / "run" / "loss.png").exists()
    assert (tmp_path / "run" / "samples" / "step_000040.png").exists()


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_resume_after_an_interruption_ends_where_an_uninterrupted_run_ends(tmp_path, prediction):
    cfg = smoke(steps=12, checkpoint_every=4, prediction=prediction)
    train.train(cfg, tmp_path / "straight", device=CPU, progress=False)
    train.train(cfg, tmp_path / "broken", device=CPU, progress=False, stop_after=7)
    assert load_checkpoint(tmp_path / "broken" / "checkpoint.pt")["step"] == 7
    train.train(cfg, tmp_path / "broken", device=CPU, progress=False, resume=True)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "broken" / "checkpoint.pt")
    for part in ("model", "ema"):
        assert all(torch.equal(a[part][k], b[part][k]) for k in a[part])
    strip = lambda rows: [(r["step"], r["loss"]) for r in rows]  # noqa: E731
    assert strip(train.read_loss_history(tmp_path / "straight")) == strip(train.read_loss_history(tmp_path / "broken"))


def test_fidelity_bar_checks_are_logged_and_survive_a_resume(tmp_path, capsys):
    cfg = smoke(steps=12, checkpoint_every=4, bar_every=4, bar_samples=3, limit=16)
    train.train(cfg, tmp_path / "straight", device=CPU, progress=False)
    train.train(cfg, tmp_path / "broken", device=CPU, progress=False, stop_after=6)
    assert [row["step"] for row in train.read_bar_history(tmp_path / "broken")] == [4]
    train.train(cfg, tmp_path / "broken", device=CPU, progress=False, resume=True)
    straight, broken = (train.read_bar_history(tmp_path / name) for name in ("straight", "broken"))
    assert [row["step"] for row in straight] == [4, 8, 12]
    measured = ("boundary_fraction", "grains", "dangling_ends", "met")
    assert [[row[k] for k in measured] for row in straight] == [[row[k] for k in measured] for row in broken]
    assert 0 < straight[0]["seconds"] < straight[1]["seconds"] < straight[2]["seconds"]
    assert all(0 <= row["boundary_fraction"] <= 1 and row["met"] == 0 for row in straight)  # 12 steps: noise
    assert "step 12: boundary fraction" in capsys.readouterr().out


def test_a_finished_run_can_be_extended(tmp_path):
    train.train(smoke(steps=6, checkpoint_every=3), tmp_path / "run", device=CPU, progress=False)
    result = train.train(None, tmp_path / "run", device=CPU, progress=False, resume=True, extend_to=9)
    assert result.step == 9
    with pytest.raises(train.TrainingError, match="below the checkpoint's step 9"):
        train.train(None, tmp_path / "run", device=CPU, progress=False, resume=True, extend_to=5)


def test_checkpoint_holds_everything_to_resume(tmp_path):
    train.train(smoke(steps=4, checkpoint_every=4), tmp_path / "run", device=CPU, progress=False)
    state = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert {"model", "ema", "optimizer", "scaler", "step", "rng", "model_config", "schedule",
            "train_config"} <= set(state)
    assert state["model_config"]["name"] == "unet" and state["schedule"] == {"kind": "linear", "steps": 1000, "prediction": "v"}
    assert not any(p.name.startswith(".") for p in (tmp_path / "run").iterdir())  # no temp files left


def test_an_existing_run_is_not_overwritten(tmp_path):
    train.train(smoke(steps=2, checkpoint_every=2), tmp_path / "run", device=CPU, progress=False)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    with pytest.raises(train.TrainingError, match="already holds a run.*--resume"):
        train.train(smoke(steps=2), tmp_path / "run", device=CPU, progress=False)
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_a_diverged_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real_loss = train.diffusion_loss
    calls = []

    def loss_that_explodes(*args, **kwargs):
        calls.append(1)
        return real_loss(*args, **kwargs) * (float("nan") if len(calls) > 5 else 1.0)

    monkeypatch.setattr(train, "diffusion_loss", loss_that_explodes)
    with pytest.raises(train.TrainingError, match=r"loss became nan at step 6; stopped.*step 4"):
        train.train(smoke(steps=10, checkpoint_every=2), tmp_path / "run", device=CPU, progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 4


@pytest.mark.parametrize("content, message", [
    (b"", r"not a readable checkpoint \(the file is empty\)"),
    (b"PK\x03\x04 truncated zip", r"not a readable checkpoint \(the file is damaged or cut short"),
    (bytes(range(256)) * 20, r"not a readable checkpoint \(it is not a PyTorch file\)"),
])
def test_unreadable_checkpoints_give_a_one_line_error(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message) as caught:
        load_checkpoint(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)


def test_truncated_and_foreign_checkpoints(tmp_path, capsys):
    train.train(smoke(steps=2, checkpoint_every=2), tmp_path / "run", device=CPU, progress=False)
    whole = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(CheckpointError, match="cut.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="foreign.pt: not a microstructure-ddpm checkpoint"):
        load_checkpoint(tmp_path / "foreign.pt")
    assert main(["sample", "--checkpoint", str(tmp_path / "cut.pt"), "--out", str(tmp_path / "s")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_each_profile_sizes_its_unet_and_a_named_model_or_prediction_wins():
    assert train.profile_config("gpu").model_options == {}
    assert train.profile_config("cpu").model_options["widths"] == [16, 32, 64]
    assert train.profile_config("cpu", model="seed-unet").model_options == {}
    assert {train.profile_config(p).prediction for p in train.PROFILES} == {"v"}
    assert train.profile_config("cpu", prediction="eps").prediction == "eps" == train.TrainConfig().prediction
    assert [train.default_profile(torch.device(kind)) for kind in ("cpu", "cuda", "mps")] == ["cpu", "gpu", "cpu"]


@pytest.mark.parametrize("settings, message", [
    (dict(profile="huge"), "unknown profile 'huge'"), (dict(model="resnet"), "--model 'resnet': expected one of"),
    (dict(prediction="x0"), "--prediction 'x0': expected one of eps, v"), (dict(lr_decay_steps=-1), "--lr-decay"),
    (dict(compile="max"), "unknown compile mode 'max'"), (dict(sample_eta=1.5), "eta must be a number from 0 to 1")])
def test_bad_settings_are_refused_by_name(settings, message):
    with pytest.raises(train.TrainingError, match=message):
        train.profile_config(settings.pop("profile", "smoke"), **settings)


def test_learning_rate_warms_up_then_decays_to_zero_over_the_last_steps():
    assert [round(train.learning_rate(train.TrainConfig(lr=1.0, warmup=4), s), 2) for s in range(6)] == \
        [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    annealed = train.TrainConfig(lr=1.0, warmup=1, steps=10, lr_decay_steps=4)
    assert [train.learning_rate(annealed, s) for s in range(10)] == [1.0] * 7 + [0.75, 0.5, 0.25]


def test_compile_falls_back_to_eager_when_it_cannot(tmp_path, monkeypatch):
    from helpers import device

    def broken_compile(model, **options):
        def fail(*args):
            raise RuntimeError("no compiler here")
        return fail

    monkeypatch.setattr(device.torch, "compile", broken_compile)
    model = torch.nn.Conv2d(1, 1, 3, padding=1)
    same, mode, seconds = device.compile_network(model, "default", lambda net: net(torch.zeros(1, 1, 8, 8)))
    assert same is model and mode == "eager (torch.compile failed: RuntimeError no compiler here)"
    assert seconds == 0.0
    result = train.train(smoke(steps=2, checkpoint_every=2, compile="reduce-overhead"), tmp_path / "run",
                         device=CPU, progress=False)
    assert result.step == 2
    with pytest.raises(train.TrainingError, match="unknown compile mode 'fast'"):
        train.TrainConfig(compile="fast")
    assert train.TrainConfig(compile=True).compile == "default"  # older checkpoints stored a bool
    assert train.TrainConfig(compile=False).compile == "none"


def test_a_training_step_never_waits_for_the_device():
    """No host read of a device value in a step (aten::_local_scalar_dense is what .item(),
    int(tensor) and `if tensor` call): on a GPU each would stall the host until the queue drains."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountReads(TorchDispatchMode):
        reads = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                CountReads.reads += 1
            return func(*args, **(kwargs or {}))

    from helpers import data

    trainer = train.Trainer(smoke(), data.load_images("voronoi_gb_64", limit=16), CPU)
    trainer.step(0)  # the optimiser creates its state on the first step
    with CountReads():
        loss = trainer.step(1)
    assert CountReads.reads == 0 and loss.shape == () and torch.isfinite(loss)
    # the check itself works: reading the loss is one such read
    with CountReads():
        loss.item()
    assert CountReads.reads == 1


def test_ema_update_equals_the_per_parameter_formula():
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(3, 4), torch.nn.Linear(3, 4)
    expected = [e.detach() * 0.9 + p.detach() * 0.1 for e, p in zip(ema.parameters(), model.parameters())]
    train.update_ema(ema, model, 0.9)
    assert all(torch.allclose(e, x, atol=1e-7) for e, x in zip(ema.parameters(), expected))
    assert [train.ema_decay(train.TrainConfig(ema_decay=0.999), s) for s in (0, 10, 100000)] == \
        [0.1, 0.55, 0.999]


def test_a_time_budget_ends_the_session_with_a_checkpoint(tmp_path):
    result = train.train(smoke(steps=1000, checkpoint_every=500), tmp_path / "run", device=CPU,
                         progress=False, max_seconds=0.0)
    assert result.step == 1
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 1


def test_a_wall_clock_limit_counts_the_set_up_too(tmp_path):
    # the limit passes during set-up: one step, a checkpoint, though max_seconds alone allows an hour
    result = train.train(smoke(steps=1000, checkpoint_every=500), tmp_path / "run", device=CPU,
                         progress=False, max_seconds=3600.0, ends_by=time.perf_counter())
    assert result.step == 1
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 1
    # a limit an hour away lets the run finish its steps
    assert train.train(smoke(steps=3), tmp_path / "later", device=CPU, progress=False,
                       ends_by=time.perf_counter() + 3600.0).step == 3


def test_samples_are_judged_with_the_runs_sampler(tmp_path, monkeypatch):
    real_draw, used = sample.Sampler.draw, []

    def recording_draw(self, *args, **kwargs):
        used.append(self)
        return real_draw(self, *args, **kwargs)

    monkeypatch.setattr(sample.Sampler, "draw", recording_draw)
    cfg = smoke(steps=4, checkpoint_every=4, sample_every=4, bar_every=4, bar_samples=2, sample_eta=1.0)
    train.train(cfg, tmp_path / "run", device=CPU, progress=False)
    assert used == [Sampler("ddim", 5, 1.0)] * 2  # the step-4 grid and the step-4 fidelity-bar check
    assert cfg.sampler() == Sampler("ddim", 5, 1.0)
    assert [train.profile_config(p).sample_eta for p in ("smoke", "cpu", "gpu")] == [0.0, 1.0, 1.0]


def test_train_command_exports_weights_that_recommend_the_runs_sampler(tmp_path, capsys):
    run, weights = tmp_path / "run", tmp_path / "model.pt"
    assert main(["train", "--profile", "smoke", "--steps", "2", "--eta", "0.5", "--out", str(run),
                 "--export", str(weights), "--quiet"]) == 0
    assert sample.recommended_sampler(load_checkpoint(weights)) == Sampler("ddim", 5, 0.5)
    assert "recommending DDIM-5, eta 0.5" in capsys.readouterr().out


def test_a_resumed_run_refuses_flags_that_would_change_its_recipe(tmp_path, capsys):
    train.train(smoke(steps=2, checkpoint_every=2), tmp_path / "run", device=CPU, progress=False)
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    assert main(["train", "--out", str(tmp_path / "run"), "--resume", "--lr", "0.1", "--eta", "1",
                 "--steps", "4"]) == 2
    err = capsys.readouterr().err
    assert "--lr, --eta: a resumed run keeps the settings in its checkpoint" in err and err.count("\n") == 1
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before


def test_a_run_carried_on_with_a_decaying_rate_ends_where_one_annealed_from_the_start_ends(tmp_path):
    annealed = smoke(steps=10, checkpoint_every=5, lr_decay_steps=4)
    train.train(annealed, tmp_path / "straight", device=CPU, progress=False)
    train.train(smoke(steps=6, checkpoint_every=3), tmp_path / "carried", device=CPU, progress=False)
    train.train(None, tmp_path / "carried", device=CPU, progress=False, resume=True, extend_to=10,
                lr_decay_steps=4)
    a = load_checkpoint(tmp_path / "straight" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "carried" / "checkpoint.pt")
    assert b["train_config"]["lr_decay_steps"] == 4 and b["step"] == 10
    assert all(torch.equal(a["ema"][k], b["ema"][k]) for k in a["ema"])
    rates = {row["step"]: row["lr"] for row in train.read_loss_history(tmp_path / "carried")}
    assert rates[5] == pytest.approx(2e-4) and rates[10] == pytest.approx(0.5e-4)  # smoke lr 2e-4
    with pytest.raises(train.TrainingError, match="--lr-decay must be 0 .* got -1"):
        train.train(None, tmp_path / "carried", device=CPU, progress=False, resume=True, lr_decay_steps=-1)


@pytest.mark.parametrize("capability, expected", [((9, 0), torch.bfloat16), ((8, 0), torch.bfloat16),
                                                  ((7, 5), torch.float16), ((7, 0), torch.float16)])
def test_auto_precision_follows_the_gpu(monkeypatch, capability, expected):
    """bf16 where the GPU computes it natively (Ampere on), fp16 + GradScaler on a T4 or V100;
    the capability query is stubbed, as CI has no GPU."""
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert device.autocast_dtype("auto", torch.device("cuda")) is expected
    assert device.autocast_dtype("bf16", torch.device("cuda")) is torch.bfloat16  # asked for, given


@pytest.mark.parametrize("kind", ["cpu", "mps"])
def test_auto_precision_is_fp32_off_cuda(kind):
    assert device.autocast_dtype("auto", torch.device(kind)) is None
    with pytest.raises(ValueError, match="fp16 with a GradScaler needs a CUDA device"):
        device.autocast_dtype("fp16", torch.device(kind))
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        device.autocast_dtype("fp8", torch.device(kind))


def test_a_run_saves_and_restores_its_whole_state_without_training(tmp_path):
    run = train.Run.start(smoke(steps=10), tmp_path / "run", CPU)
    with torch.no_grad():  # weights, a generator and logs that a freshly built run would not have
        for p in run.trainer.model.parameters():
            p.add_(0.5)
    torch.randn(3, generator=run.trainer.generators["noise"])
    run.step, run.window = 7, [torch.tensor(0.25), torch.tensor(0.75)]
    run.history = [{"step": 5, "loss": 0.5, "lr": 1e-4, "seconds": 1.0}]
    run.dir.mkdir()
    run.save()
    assert (run.dir / "loss.csv").read_text().splitlines() == ["step,loss,lr,seconds", "5,0.500000,1.000e-04,1.00"]
    again = train.Run.resume(run.dir, CPU)
    assert again.step == 7 and again.history == run.history and [float(v) for v in again.window] == [0.25, 0.75]
    for mine, theirs in ((run.trainer.model, again.trainer.model), (run.trainer.ema, again.trainer.ema)):
        assert all(torch.equal(a, b) for a, b in zip(mine.state_dict().values(), theirs.state_dict().values()))
    for name in ("data", "noise"):
        assert torch.equal(torch.randn(3, generator=run.trainer.generators[name]),
                           torch.randn(3, generator=again.trainer.generators[name]))


def test_what_a_step_is_due_to_do_is_worked_out_in_one_place(tmp_path):
    run = train.Run(smoke(steps=30, log_every=5, checkpoint_every=15, sample_every=30, bar_every=10), tmp_path, CPU)

    def due(step, end=30, max_seconds=None):
        run.step = step
        flags = run.due(end, max_seconds)
        return {name for name in ("check", "log", "samples", "bar", "save", "stop") if getattr(flags, name)}

    assert due(3) == set()
    assert due(5) == {"check", "log"}
    assert due(10) == {"check", "log", "bar"}
    assert due(15) == {"check", "log", "save"}
    assert due(12, end=12) == {"check", "save", "stop"}  # stopped early (--stop-after): a checkpoint, no log line
    assert due(3, max_seconds=0.0) == {"check", "bar", "save", "stop"}  # out of time: check, save and stop
    assert due(30) == {"check", "log", "samples", "bar", "save", "stop"}
