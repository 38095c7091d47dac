"""helpers.sample and the sample command: PNGs, GIFs, the shipped model."""
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

from helpers import ROOT, data, device, sample, train
from helpers.checkpoint import (CheckpointError, export_weights, load_checkpoint, load_model, store_fast_sampler,
                               store_recommended_sampler, weights_digest)
from helpers.diffusion import Schedule
from helpers.sample import Sampler
import helpers.__main__ as cli
from helpers.__main__ import DEFAULT_MODEL, main

CPU = torch.device("cpu")
MET = {"precision": "fp32", "seed": 0, "samples": 200, "dangling_ends": 0.09, "bar_met": True}  # one set that met the bar


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    cfg = train.profile_config("smoke", steps=4, checkpoint_every=4, sample_every=1000)
    train.train(cfg, run, device=CPU, progress=False)
    return export_weights(load_checkpoint(run / "checkpoint.pt"), run / "weights.pt")


def test_exported_weights_are_fp16_and_sample_like_the_checkpoint(weights):
    payload = load_checkpoint(weights)
    assert payload["kind"] == "weights" and "optimizer" not in payload
    assert all(v.dtype == torch.float16 for v in payload["ema"].values() if v.is_floating_point())
    model, schedule, _ = load_model(weights, CPU)
    a = sample.generate(model, schedule, 3, Sampler("ddim", 5), seed=1)
    b = sample.generate(model, schedule, 3, Sampler("ddim", 5), seed=1, batch_size=2)
    assert a.shape == (3, 1, 64, 64) and torch.equal(a[:2], b[:2])
    assert a.min() >= -1.0 and a.max() <= 1.0  # x0 clipped


def test_draw_batch_draws_generates_batch_of_that_number_and_size(weights):
    model, schedule, _ = load_model(weights, CPU)
    batches = [sample.draw_batch(model, schedule, Sampler("ddim", 3, eta=1.0), k, 2, seed=1) for k in range(3)]
    whole = sample.generate(model, schedule, 6, Sampler("ddim", 3, eta=1.0), seed=1, batch_size=2)
    assert torch.equal(torch.cat(batches), whole)


def test_sample_command_writes_pngs_and_a_gif(weights, tmp_path, capsys):
    out, gif = tmp_path / "samples", tmp_path / "reverse.gif"
    assert main(["sample", "--checkpoint", str(weights), "--n", "5", "--sampler", "ddim", "--steps", "8",
                 "--out", str(out), "--gif", str(gif), "--quiet"]) == 0
    assert sorted(p.name for p in out.glob("*.png")) == [f"{i:05d}.png" for i in range(5)]
    assert data.load_uint8(out).shape == (5, 64, 64)
    with Image.open(gif) as image:
        assert image.n_frames == 8  # every DDIM step, the last one held
    assert "wrote 5 samples" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(weights), "--n", "2", "--out", str(out)]) == 2  # not empty


def test_a_model_file_recommends_its_sampler_and_the_command_follows_it(weights, tmp_path, capsys):
    checkpoint = load_checkpoint(weights.parent / "checkpoint.pt")
    # a training checkpoint recommends the sampler its run judged samples with (smoke: DDIM-5, eta 0)
    assert sample.recommended_sampler(checkpoint) == train.profile_config("smoke").sampler() == Sampler("ddim", 5)
    older = {k: v for k, v in checkpoint.items() if k != "sampler"}  # written before checkpoints kept it
    assert sample.recommended_sampler(older) == sample.DEFAULT_SAMPLER == Sampler("ddim", 50, 0.0)
    assert sample.recommended_sampler(load_checkpoint(weights)) == sample.DEFAULT_SAMPLER  # exported without one
    stored = export_weights(checkpoint, tmp_path / "stochastic.pt",
                                  sampler=Sampler("ddim", 3, 1))
    assert sample.recommended_sampler(load_checkpoint(stored)) == Sampler("ddim", 3, 1.0)
    gif = tmp_path / "reverse.gif"
    assert main(["sample", "--checkpoint", str(stored), "--n", "2", "--out", str(tmp_path / "a"),
                 "--gif", str(gif), "--quiet"]) == 0
    with Image.open(gif) as image:
        assert image.n_frames == 3  # the model's 3 steps, not the command's usual 50
    assert "(DDIM-3, eta 1," in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(stored), "--n", "2", "--steps", "4", "--eta", "0",
                 "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert "(DDIM-4, eta 0," in capsys.readouterr().out  # what the command names wins
    with pytest.raises(SystemExit) as refused:  # refused while the arguments are read, before any work
        main(["sample", "--checkpoint", str(stored), "--n", "2", "--eta", "3", "--out", str(tmp_path / "c"), "--quiet"])
    assert refused.value.code == 2 and not (tmp_path / "c").exists()
    assert "argument --eta: expected a number from 0 to 1, got '3'" in capsys.readouterr().err


def test_a_new_recommended_sampler_keeps_the_weights_and_drops_a_fast_sampler_vetted_against_the_old(weights, tmp_path):
    stored = export_weights(load_checkpoint(weights.parent / "checkpoint.pt"), tmp_path / "m.pt", sampler=Sampler("ddim", 4, 1))
    fast = [MET, {**MET, "precision": "bf16", "seed": 1}]
    store_fast_sampler(stored, Sampler("dpm++2m", 2, 1), fast)
    before = load_checkpoint(stored)
    after = store_recommended_sampler(stored, Sampler("dpm++2m", 3, 1))  # unconditional: the bar vetted it, kept
    assert load_checkpoint(stored)["sampler"] == after["sampler"] == {"sampler": "dpm++2m", "steps": 3, "eta": 1.0}
    assert sample.recommended_sampler(after) == Sampler("dpm++2m", 3, 1.0)
    assert sample.fast_sampler(after) == Sampler("dpm++2m", 2, 1.0) and len(after["fast_sampler_measured"]) == 2
    assert all(torch.equal(after["ema"][k], v) for k, v in before["ema"].items()) and after["step"] == before["step"]
    after = store_recommended_sampler(stored, Sampler("ddim", 2, 1))  # the fast one no longer takes fewer calls
    assert "fast_sampler" not in after and "fast_sampler_measured" not in load_checkpoint(stored)
    conditional = dict(before, condition={"names": ["grains"]})  # vetted against the recommended one: dropped
    torch.save(conditional, tmp_path / "conditional.pt")
    after = store_recommended_sampler(tmp_path / "conditional.pt", Sampler("dpm++2m", 5, 1, guidance=1.0))
    assert sample.recommended_sampler(after) == Sampler("dpm++2m", 5, 1.0, guidance=1.0) and "fast_sampler" not in after
    assert "fast_sampler_measured" not in load_checkpoint(tmp_path / "conditional.pt")
    torch.save(dict(conditional, fast_sampler={"sampler": "dpm++2m", "steps": 2, "eta": 1.0}), tmp_path / "same.pt")
    kept = store_recommended_sampler(tmp_path / "same.pt", Sampler("ddim", 4, 1))  # already recommended: no change
    assert kept["fast_sampler"] == {"sampler": "dpm++2m", "steps": 2, "eta": 1.0}
    torch.save(dict(conditional, train_config={**conditional["train_config"], "condition_dropout": 0.0}),
               tmp_path / "no_null.pt")
    with pytest.raises(ValueError, match="guidance 1: .*no_null.pt was trained with condition_dropout 0"):
        store_recommended_sampler(tmp_path / "no_null.pt", Sampler("ddim", 4, 1, guidance=1.0))
    with pytest.raises(ValueError, match="guidance 2 for .*m.pt, an unconditional model; expected 0"):
        store_recommended_sampler(stored, Sampler("ddim", 4, 1, guidance=2.0))
    with pytest.raises(ValueError, match=r"sampler: DDIM steps must lie in 1\.\.\d+, got 5000 for .*m\.pt"):
        store_recommended_sampler(stored, Sampler("ddim", 5000))  # more steps than the schedule has
    with pytest.raises(TypeError, match="expected a sample.Sampler"):
        store_recommended_sampler(stored, {"sampler": "ddim", "steps": 4})
    with pytest.raises(CheckpointError, match="checkpoint.pt is a file of kind 'training', not a weights file"):
        store_recommended_sampler(weights.parent / "checkpoint.pt", Sampler("ddim", 4, 1))
    assert load_checkpoint(stored)["sampler"] == {"sampler": "ddim", "steps": 2, "eta": 1.0}  # the refusals changed nothing


def test_a_recommended_spacing_is_followed_and_can_be_overridden(weights, tmp_path, capsys):
    stored = export_weights(load_checkpoint(weights.parent / "checkpoint.pt"), tmp_path / "quadratic.pt",
                            sampler=Sampler("dpm++2m", 4, 1, spacing="quadratic"))
    assert main(["sample", "--checkpoint", str(stored), "--n", "2", "--out", str(tmp_path / "q"), "--quiet"]) == 0
    assert "(DPM-Solver++(2M)-4, eta 1, quadratic spacing," in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(stored), "--n", "2", "--spacing", "uniform",
                 "--out", str(tmp_path / "u"), "--quiet"]) == 0
    assert "(DPM-Solver++(2M)-4, eta 1," in capsys.readouterr().out
    assert not (data.load_uint8(tmp_path / "q") == data.load_uint8(tmp_path / "u")).all()  # other timesteps


def test_a_stored_fast_sampler_is_what_sample_fast_draws_with(weights, tmp_path, capsys, monkeypatch):
    stored = export_weights(load_checkpoint(weights.parent / "checkpoint.pt"), tmp_path / "m.pt",
                            sampler=Sampler("ddim", 3, 1))
    out = tmp_path / "none"
    assert main(["sample", "--checkpoint", str(stored), "--n", "1", "--fast", "--out", str(out), "--quiet"]) == 2
    assert f"--fast: {stored} stores no fast sampler" in capsys.readouterr().err and not out.exists()
    conditional = dict(load_checkpoint(stored), condition={"names": ["grains"]})
    with pytest.raises(ValueError, match="stores no fast sampler .*tools/control_fast.py --store-fast"):
        sample.fast_sampler(conditional)  # a conditional model's is vetted by control, not by the bar
    with pytest.raises(ValueError, match="unusable record .*dangling_ends, targets, r2, mae, recommended_r2"):
        sample.fast_sampler_evidence(dict(conditional, fast_sampler_measured=[MET]))  # the bar's record: not control's
    torch.save(conditional, tmp_path / "conditional.pt")
    with pytest.raises(ValueError, match=r"every one within the margins of the recommended sampler under control; got \[None\]"):
        store_fast_sampler(tmp_path / "conditional.pt", Sampler("dpm++2m", 2, 1), [MET])
    with pytest.raises(ValueError, match="every row needs .*recommended_dangling_ends; missing .*r2, targets"):
        store_fast_sampler(tmp_path / "conditional.pt", Sampler("dpm++2m", 2, 1), [{**MET, "as_good": True}])
    before = load_checkpoint(stored)
    for unvetted in ([], [MET, {**MET, "bar_met": False}], [{"bar_met": True, "seed": 0}]):
        with pytest.raises(ValueError, match="measured: "):
            store_fast_sampler(stored, Sampler("dpm++2m", 2, 1), unvetted)
    with pytest.raises(ValueError, match=r"each precision sample --fast may pick \(fp32, bf16\); none in bf16"):
        store_fast_sampler(stored, Sampler("dpm++2m", 2, 1), [MET, {**MET, "seed": 1}])  # two sets, both fp32
    assert "fast_sampler" not in load_checkpoint(stored)
    store_fast_sampler(stored, Sampler("dpm++2m", 2, 1), [MET, {**MET, "precision": "bf16", "seed": 1, "dangling_ends": 0.07}])
    after = load_checkpoint(stored)
    assert after["fast_sampler"] == {"sampler": "dpm++2m", "steps": 2, "eta": 1.0}
    assert after["fast_sampler_measured"] == [{"precision": "fp32", "seed": 0, "samples": 200, "dangling_ends": 0.09},
                                              {"precision": "bf16", "seed": 1, "samples": 200, "dangling_ends": 0.07}]
    assert after["sampler"] == before["sampler"] and all(torch.equal(after["ema"][k], v) for k, v in before["ema"].items())
    assert sample.fast_sampler(after) == Sampler("dpm++2m", 2, 1.0)
    assert sample.recommended_sampler(after) == Sampler("ddim", 3, 1.0)  # unchanged: the published one
    monkeypatch.setattr(device, "cpu_flags", lambda: {"avx512_bf16"})  # a processor with native bf16
    gif = tmp_path / "fast.gif"
    assert main(["sample", "--checkpoint", str(stored), "--n", "2", "--fast", "--out", str(tmp_path / "a"),
                 "--gif", str(gif), "--quiet"]) == 0
    with Image.open(gif) as image:
        assert image.n_frames == 2  # the fast sampler's 2 steps
    said = capsys.readouterr().out
    nhwc = " in NHWC" if device.pick_device().type == "cpu" else ""  # --fast's layout on a CPU (sampling_layout)
    assert f"(DPM-Solver++(2M)-2, eta 1, bf16 weights{nhwc}," in said  # --fast: precision auto
    assert ("the model's fast sampler, DPM-Solver++(2M)-2, eta 1, met the fidelity bar on this model in 2 sets of "
            "200 samples: bf16 seed 1 (0.07 dangling ends per image), fp32 seed 0 (0.09)") in said
    assert main(["sample", "--checkpoint", str(stored), "--n", "1", "--fast", "--steps", "3", "--precision", "fp32",
                 "--out", str(tmp_path / "b"), "--quiet"]) == 0
    said = capsys.readouterr().out
    assert f"(DPM-Solver++(2M)-3, eta 1, fp32 weights{nhwc}," in said  # what the command names wins
    assert "(0.09); drawing DPM-Solver++(2M)-3, eta 1 instead, as the flags ask" in said
    assert main(["sample", "--checkpoint", str(stored), "--n", "1", "--out", str(tmp_path / "c"), "--quiet"]) == 0
    assert "(DDIM-3, eta 1, fp32 weights," in capsys.readouterr().out  # without --fast: as before
    assert main(["sample", "--checkpoint", str(stored), "--n", "1", "--fast", "--memory-format", "contiguous",
                 "--precision", "fp32", "--out", str(tmp_path / "d"), "--quiet"]) == 0
    assert "(DPM-Solver++(2M)-2, eta 1, fp32 weights," in capsys.readouterr().out  # the layout asked for wins
    with pytest.raises(CheckpointError, match="checkpoint.pt is a file of kind 'training', not a weights file"):
        store_fast_sampler(weights.parent / "checkpoint.pt", Sampler("dpm++2m", 2, 1), [MET])
    assert main(["sample", "--checkpoint", str(weights.parent / "checkpoint.pt"), "--n", "1", "--fast",
                 "--out", str(tmp_path / "d"), "--quiet"]) == 2
    assert ("checkpoint.pt cannot use a fast sampler: it is a file of kind 'training', not a weights file (train "
            "--export)" in capsys.readouterr().err)
    payload = load_checkpoint(stored)
    payload["fast_sampler"] = {"sampler": "ddim"}  # edited by hand: no steps, no eta
    torch.save(payload, tmp_path / "edited.pt")
    assert main(["sample", "--checkpoint", str(tmp_path / "edited.pt"), "--n", "1", "--fast",
                 "--out", str(tmp_path / "e"), "--quiet"]) == 2
    assert f"--fast: {tmp_path / 'edited.pt'} holds an unusable fast sampler (sampler settings" in capsys.readouterr().err
    payload = load_checkpoint(stored)
    payload["fast_sampler_measured"] = [{"precision": "fp32", "seed": 0}]  # edited by hand: no samples, no ends
    torch.save(payload, tmp_path / "edited_record.pt")
    assert main(["sample", "--checkpoint", str(tmp_path / "edited_record.pt"), "--n", "1", "--fast",
                 "--out", str(tmp_path / "f"), "--quiet"]) == 2
    assert (f"--fast: {tmp_path / 'edited_record.pt'} holds an unusable record of what vetted its fast sampler "
            "(expected rows of precision, seed, samples, dangling_ends;") in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_sampler_sweep_stores_a_fast_sampler_only_where_every_measurement_met_the_bar(tool, weights, tmp_path,
                                                                                       monkeypatch, capsys):
    """The smoke model's samples are noise, so ``measure`` is stubbed: this tests the decision, not the bar."""
    sweep, model, table = tool("sampler_sweep"), tmp_path / "m.pt", tmp_path / "rows.json"
    model.write_bytes(weights.read_bytes())
    monkeypatch.setattr(sweep.metrics, "describe_set", lambda masks: None)
    met = {"boundary_fraction": 0.2, "grains": 23.0, "dangling_ends": 0.05, "bar_met": True, "open_end_rate": 0.05,
           "gray_background_rate": 0.0}
    monkeypatch.setattr(sweep, "measure", lambda images, reference: dict(met))

    def run(*extra: str) -> int:
        monkeypatch.setattr(sys, "argv", ["sampler_sweep.py", "--model", str(model), "--samplers", "dpm++2m:2:1",
                                          "--json", str(table), *extra])
        return sweep.main()

    words, ours = "DPM-Solver++(2M)-2, eta 1", weights_digest(load_checkpoint(model))
    other_model = {"sampler_words": words, "weights": "0" * 12, "bar_met": True, "precision": "bf16", "seed": 5,
                   "samples": 200, "dangling_ends": 0.01}

    def refused(*extra: str) -> str:  # before anything is drawn: exit 2, and the parser's line
        with pytest.raises(SystemExit) as stopped:
            run(*extra)
        assert stopped.value.code == 2
        return capsys.readouterr().err

    table.write_text(json.dumps({"dpm++2m:2:1:bf16": {"sampler_words": words, "weights": ours, "bar_met": False},
                                 "other": other_model}))
    assert (f"--store-fast: {table} holds no row of DPM-Solver++(2M)-2, eta 1 on this model that met the bar in bf16 "
            f"(sample --fast may use fp32 or bf16); measure it first with --precision bf16 --json {table}, without "
            "--store-fast") in refused("--store-fast")  # its bf16 row failed; another model's does not vouch
    table.write_text(json.dumps({"other": {**other_model, "bar_met": False}}))
    assert "holds no row of" in refused("--store-fast")  # nor does fp32 alone
    monkeypatch.setattr(sys, "argv", ["sampler_sweep.py", "--model", str(model), "--samplers", "dpm++2m:2:1",
                                      "--store-fast"])
    with pytest.raises(SystemExit) as stopped:
        sweep.main()
    assert stopped.value.code == 2 and "and --json with its rows" in capsys.readouterr().err  # nowhere to vet it
    passed_bf16 = {"sampler_words": words, "weights": ours, "bar_met": True, "precision": "bf16", "samples": 200,
                   "dangling_ends": 0.05}
    table.write_text(json.dumps({"dpm++2m:2:1:bf16": passed_bf16, "dpm++2m:2:1:fp32:seed1": {
        "sampler_words": words, "weights": ours, "bar_met": False, "precision": "fp32", "samples": 200}}))
    assert run("--store-fast") == 1  # this run met the bar and so did bf16, but the fp32 seed-1 row did not
    assert "(dpm++2m:2:1:fp32:seed1): not stored" in capsys.readouterr().out
    assert "fast_sampler" not in load_checkpoint(model)
    table.write_text(json.dumps({"other": other_model}))
    assert run("--precision", "bf16") == 0  # the other precision measured first, without --store-fast
    assert "fast_sampler" not in load_checkpoint(model)
    assert run("--store-fast") == 0
    assert load_checkpoint(model)["fast_sampler"] == {"sampler": "dpm++2m", "steps": 2, "eta": 1.0}
    assert json.loads(table.read_text())["dpm++2m:2:1:fp32"]["samples"] == 200
    assert json.loads(table.read_text())["dpm++2m:2:1:fp32"]["images_per_call"] == 8  # the CPU's calls, 64x64
    assert ("it met the fidelity bar on this model in 2 sets of 200 samples: bf16 seed 0 (0.05 dangling ends per "
            "image), fp32 seed 0 (0.05)") in capsys.readouterr().out
    conditional = tmp_path / "conditional.pt"
    torch.save(dict(load_checkpoint(model), condition={"names": ["grains"]}), conditional)
    assert run("--store-fast", "--seed", "1", "--precision", "bf16") == 0  # every row of the sampler that met the bar
    assert [(row["precision"], row["seed"]) for row in load_checkpoint(model)["fast_sampler_measured"]] == [
        ("bf16", 0), ("fp32", 0), ("bf16", 1)]
    for refused, why in ((["--store-fast", "--n", "2"], "on at least 200 samples (--n)"),
                         (["--store-fast", "--samplers", "dpm++2m:2:1", "ddim:2:1"], "expected one sampler"),
                         (["--store-fast", "--model", str(weights.parent / "checkpoint.pt")], "not a weights file"),
                         (["--store-fast", "--model", str(conditional)], "measure its fast sampler with "
                                                                          "tools/control_fast.py"),
                         (["--n", "0"], "--n 0 --seed 0: expected a positive --n"),
                         (["--model", str(tmp_path)], f"--model {tmp_path} is a folder; expected a model file"),
                         (["--json", str(tmp_path / "absent" / "rows.json")], "rows.json: its folder does not exist"),
                         (["--json", str(tmp_path / "list.json")], "list.json: holds a list; expected the rows"),
                         (["--json", str(tmp_path / "flat.json")], "flat.json: holds a value that is not a row")):
        (tmp_path / "list.json").write_text("[1, 2]")
        (tmp_path / "flat.json").write_text('{"dpm++2m:2:1:fp32": 3}')
        with pytest.raises(SystemExit) as stopped:
            run(*refused)
        assert stopped.value.code == 2 and why in capsys.readouterr().err
    monkeypatch.setattr(device, "cpu_flags", lambda: set())  # --precision auto on a processor without bf16: fp32
    assert run("--precision", "auto", "--seed", "3") == 0
    assert json.loads(table.read_text())["dpm++2m:2:1:fp32:seed3"]["precision"] == "fp32"
    assert run("--seed", "3", "--memory-format", "channels_last") == 0  # sample --fast's fp32 layout: a row of its own
    saved = json.loads(table.read_text())
    names = ("dpm++2m:2:1:fp32:seed3", "dpm++2m:2:1:fp32:channels_last:seed3", "dpm++2m:2:1:bf16")
    assert [saved[name]["memory_format"] for name in names] == ["contiguous", "channels_last", "channels_last"]
    assert "| DPM-Solver++(2M)-2, eta 1, fp32, channels_last |" in capsys.readouterr().out
    saved["dpm++2m:2:1:fp32:seed3"]["dangling_ends"] = 0.09  # the same noise drawn in NCHW, measured apart
    table.write_text(json.dumps(saved))
    assert run("--store-fast", "--seed", "3", "--memory-format", "channels_last") == 0
    fp32_seed3 = [row["dangling_ends"] for row in load_checkpoint(model)["fast_sampler_measured"]
                  if (row["precision"], row["seed"]) == ("fp32", 3)]
    assert fp32_seed3 == [0.05]  # one set, counted once, in the layout --fast uses on a CPU
    for _ in range(2):  # timed twice: both runs kept, with the processor they ran on
        assert run("--timing-only") == 0
    timed = json.loads(table.read_text())["dpm++2m:2:1:fp32"]
    assert len(timed["runs_16"]) == 2 and timed["seconds_16"] == timed["runs_16"][-1] > 0
    assert timed["cpu"] == device.cpu_isa() and timed["threads"] == torch.get_num_threads()


def test_sampler_settings_are_checked_and_described():
    for bad, message in (({"sampler": "ddim", "steps": 50}, "expected the keys sampler, steps, eta"),
                         ({"sampler": "ddim", "steps": 50, "eta": 0, "order": 2}, "expected the keys"),
                         ({"sampler": "euler", "steps": 50, "eta": 0}, "unknown sampler 'euler'"),
                         ({"sampler": "ddim", "steps": 0, "eta": 0}, "positive whole number, got 0"),
                         ({"sampler": "ddim", "steps": 50, "eta": -0.5}, "from 0 to 1, got -0.5"),
                         ({"sampler": "ddpm", "steps": 1, "eta": 0, "variance": "big"}, "unknown variance 'big'")):
        with pytest.raises(ValueError, match=message):
            Sampler.from_stored(bad)
    assert Sampler("ddim", 100, 0.5).describe() == "DDIM-100, eta 0.5"
    assert Sampler("ddpm", variance="posterior", clip=False).describe() == "DDPM (every step, posterior variance), no clipping"
    # what a model file keeps: the three keys when the rest are defaults, and it reads back equal
    assert Sampler("ddim", 20, 1).stored() == {"sampler": "ddim", "steps": 20, "eta": 1.0}
    for value in (Sampler("ddim", 20, 1), Sampler("ddpm", variance="posterior", clip=False)):
        assert Sampler.from_stored(value.stored()) == value
    assert Sampler("dpm++2m", 15, 1).replace(steps=None, eta=0) == Sampler("dpm++2m", 15, 0.0)
    quadratic = Sampler("dpm++2m", 25, 1, spacing="quadratic")
    assert quadratic.describe() == "DPM-Solver++(2M)-25, eta 1, quadratic spacing"
    assert quadratic.stored() == {"sampler": "dpm++2m", "steps": 25, "eta": 1.0, "spacing": "quadratic"}
    assert Sampler.from_stored(quadratic.stored()) == quadratic
    assert quadratic.timesteps(Schedule.linear())[-4:] == [16, 7, 2, 0]
    assert Sampler("ddpm", spacing="quadratic") == Sampler("ddpm")  # every step: nothing to space
    with pytest.raises(ValueError, match="unknown spacing 'cubic'"):
        Sampler.from_stored({"sampler": "ddim", "steps": 5, "eta": 0, "spacing": "cubic"})


def test_the_gif_uses_the_requested_eta(weights, tmp_path):
    model, schedule, _ = load_model(weights, CPU)
    noisy, _ = sample.reverse_process_gif(model, schedule, 2, tmp_path / "a.gif", Sampler("ddim", 4, 1.0), seed=0)
    plain, _ = sample.reverse_process_gif(model, schedule, 2, tmp_path / "b.gif", Sampler("ddim", 4), seed=0)
    assert torch.equal(noisy, sample.generate(model, schedule, 2, Sampler("ddim", 4, 1.0), seed=0))
    assert not torch.equal(noisy, plain)


def test_gif_frames_are_crowded_near_the_end_of_sampling():
    schedule = sample.Schedule.linear()
    frames = sample.gif_timesteps(Sampler("ddpm").timesteps(schedule), 60)
    assert len(frames) == 60 and frames[0] == 999 and frames[-1] == 0
    assert sum(t < 100 for t in frames) > 15  # the last 10 % of steps get over a quarter of the frames
    assert sample.gif_timesteps([9, 5, 0], 60) == [9, 5, 0]


def test_bad_sampling_requests(weights):
    model, schedule, _ = load_model(weights, CPU)
    with pytest.raises(ValueError, match="--n must be a positive whole number, got 0"):
        sample.generate(model, schedule, 0)
    with pytest.raises(ValueError, match="unknown sampler 'euler'"):
        sample.generate(model, schedule, 1, Sampler("euler"))


def test_the_shipped_model_samples_on_cpu():
    model, schedule, payload = load_model(DEFAULT_MODEL, CPU)
    fast, recommended = sample.fast_sampler(payload), sample.recommended_sampler(payload)
    assert fast == Sampler("dpm++2m", 30, 1.0) and recommended == Sampler("ddim", 50, 1.0)  # as the README says
    assert len(fast.timesteps(schedule)) < len(recommended.timesteps(schedule))
    vetted = payload["fast_sampler_measured"]  # both precisions --fast may pick, the seeds the README lists
    assert sorted((row["precision"], row["seed"]) for row in vetted) == [("bf16", seed) for seed in range(6)] + [
        ("fp32", 0), ("fp32", 1)]
    assert all(row["samples"] >= 200 and row["dangling_ends"] <= 0.1 for row in vetted)
    assert DEFAULT_MODEL.stat().st_size < 20 * 2**20
    images = sample.generate(model, schedule, 4, Sampler("ddim", 10), seed=0)
    assert images.shape == (4, 1, 64, 64) and torch.isfinite(images).all()
    fraction = (images > 0).float().mean().item()
    assert 0.05 < fraction < 0.5  # some boundary, mostly grain: not blank, not noise


def test_the_compact_model_for_cpus_without_bf16_samples_on_cpu():
    from helpers.__main__ import COMPACT_MODEL

    model, schedule, payload = load_model(COMPACT_MODEL, CPU)
    assert sample.recommended_sampler(payload) == Sampler("dpm++2m", 50, 1.0)  # as its README says
    with pytest.raises(ValueError, match="stores no fast sampler"):  # the recommended one is the fast route
        sample.fast_sampler(payload)
    assert model.config()["widths"] == [16, 32, 64] and payload["step"] == 15000
    assert COMPACT_MODEL.stat().st_size < 2 * 2**20
    images = sample.generate(model, schedule, 4, Sampler("dpm++2m", 10, 1.0), seed=0)
    assert images.shape == (4, 1, 64, 64) and torch.isfinite(images).all()
    assert 0.05 < (images > 0).float().mean().item() < 0.5  # some boundary, mostly grain: not blank, not noise


def test_an_existing_gif_is_not_replaced_silently(weights, tmp_path, capsys):
    gif = tmp_path / "mine.gif"
    gif.write_bytes(b"a user's file")
    assert main(["sample", "--checkpoint", str(weights), "--n", "1", "--steps", "2", "--out",
                 str(tmp_path / "s"), "--gif", str(gif), "--quiet"]) == 2
    assert gif.read_bytes() == b"a user's file"
    model = tmp_path / "model.pt"
    model.write_bytes(weights.read_bytes())
    assert main(["sample", "--checkpoint", str(weights), "--n", "1", "--steps", "2", "--out", str(tmp_path / "t"),
                 "--gif", str(model), "--force", "--quiet"]) == 2  # a slip of the tab key: --force replaces GIFs only
    assert model.read_bytes() == weights.read_bytes() and not (tmp_path / "t").exists()
    assert f"--gif {model} exists and is not a GIF; --force replaces only a GIF" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(weights), "--n", "1", "--steps", "2", "--out", str(tmp_path / "t"),
                 "--gif", str(model / "runs" / "a.gif"), "--quiet"]) == 2  # under a file: said before sampling
    assert f"--gif {model / 'runs' / 'a.gif'}: {model} is a file, not a folder" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
    gif.write_bytes(b"GIF89a and the rest of an earlier run's GIF")
    assert main(["sample", "--checkpoint", str(weights), "--n", "1", "--steps", "2", "--out", str(tmp_path / "u"),
                 "--gif", str(gif), "--force", "--quiet"]) == 0
    with Image.open(gif) as image:
        assert image.n_frames == 2  # replaced by this run's


def test_a_gif_that_cannot_be_read_is_refused_in_one_line(weights, tmp_path, capsys, monkeypatch):
    gif = tmp_path / "locked.gif"
    gif.write_bytes(b"GIF89a")

    def locked(path, *args, **kwargs):  # what open() does to a file without read permission (root reads all)
        raise PermissionError(13, "Permission denied", str(path))
    monkeypatch.setattr(cli, "open", locked, raising=False)
    assert main(["sample", "--checkpoint", str(weights), "--n", "1", "--steps", "2", "--out", str(tmp_path / "s"),
                 "--gif", str(gif), "--force", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"--gif {gif}: cannot be checked (Permission denied: {gif})" in err and err.count("\n") == 1
    assert gif.read_bytes() == b"GIF89a" and not (tmp_path / "s").exists()


def test_pretrained_report_writes_the_model_readme_and_comparison(weights, tmp_path):
    import json
    import subprocess
    import sys

    from helpers import ROOT

    run, out = weights.parent, tmp_path / "pretrained"
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "pretrained_report.py"), "--run", str(run),
                           "--out", str(out), "--n", "4", "--machine", "the test machine",
                           "--command", "python -m helpers train --profile smoke", "--compare", str(run),
                           "--steps", "5", "--eta", "1", "--spacing", "quadratic", "--also", "ddim:5:0", "ddpm"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert {p.name for p in out.iterdir()} == {"model.pt", "samples.png", "README.md", "comparison.json",
                                               "samplers.json"}
    readme = (out / "README.md").read_text()
    assert "| machine | the test machine |" in readme and "predicts the velocity v" in readme
    assert ("| optimiser | AdamW, lr 0.0002, warm-up 5 steps, clip 1, EMA 0.9 (warming up as (1 + s) / (10 + s) at "
            "step s: 0.3077 at the last step) |") in readme  # no decay; the EMA's last update, at step 3: 4 / 13
    assert "Fidelity bar not met" in readme  # four steps of a tiny network: noise
    assert "recommended sampler (DDIM-5, eta 1, quadratic spacing, x0 clipped" in readme
    assert "--steps 5 --eta 1 --spacing quadratic --machine" in readme  # the rebuild command keeps the spacing
    others = json.loads((out / "samplers.json").read_text())
    assert [(r["sampler_words"], r["network_calls"]) for r in others] == [
        ("DDIM-5, eta 1, quadratic spacing", 5), ("DDIM-5, eta 0", 5), ("DDPM (every step)", 1000)]
    assert "| DDIM-5, eta 0 | 5 |" in readme
    rows = json.loads((out / "comparison.json").read_text())
    assert len(rows) == 2 and rows[0]["step"] == rows[1]["step"] == 4 and rows[0]["prediction"] == "v"
    assert rows[0] == rows[1]  # the same run measured twice gives the same numbers
    _, schedule, payload = load_model(out / "model.pt", CPU)
    assert schedule.prediction == "v"
    assert payload["sampler"] == {"sampler": "ddim", "steps": 5, "eta": 1.0, "spacing": "quadratic"}


def test_pretrained_report_stores_a_fast_sampler_only_if_its_samples_met_the_bar(tool, weights, tmp_path):
    report, model = tool("pretrained_report"), tmp_path / "model.pt"
    model.write_bytes(weights.read_bytes())
    fast = Sampler("dpm++2m", 30, 1.0)
    met = {"network_calls": 30, "samples": 200, "bar_met": True, "dangling_ends": 0.09, "precision": "fp32"}
    rows = [met, {**met, "bar_met": False, "precision": "bf16"}]  # met with fp32 weights, not with bf16
    assert report.store_fast(model, fast, rows) == ("Fast sampler (`sample --fast`): none stored; DPM-Solver++(2M)-30, "
                                                    "eta 1, 30 network calls an image did not meet the bar with bf16 "
                                                    "weights (the samplers table).")
    assert "fast_sampler" not in load_checkpoint(model)
    rows[1] = {**met, "precision": "bf16", "dangling_ends": 0.07}
    assert ("stored in `model.pt`: its 200 samples (seed 0) met the bar with fp32 and with bf16 weights"
            in report.store_fast(model, fast, rows))
    assert sample.fast_sampler(load_checkpoint(model)) == fast
    assert load_checkpoint(model)["fast_sampler_measured"] == [
        {"precision": "fp32", "seed": 0, "samples": 200, "dangling_ends": 0.09},
        {"precision": "bf16", "seed": 0, "samples": 200, "dangling_ends": 0.07}]
    for sampler in (fast, Sampler("ddim", 25, 0.5, spacing="quadratic")):
        assert report.parse_sampler(report.spec(sampler)) == sampler  # the rebuild command's spelling reads back
    assert report.spec(Sampler("ddpm")) == "ddpm"  # every step: nothing else to say
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "pretrained_report.py"), "--run", str(weights.parent),
                           "--out", str(tmp_path / "out"), "--n", "4", "--machine", "m", "--command", "c",
                           "--fast", "dpm++2m:30:1"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--fast with --n 4: expected at least 200 samples" in done.stderr
    assert not (tmp_path / "out").exists()  # refused before any work
    done = subprocess.run([sys.executable, str(ROOT / "tools" / "pretrained_report.py"), "--run", str(weights.parent),
                           "--out", str(tmp_path / "out"), "--machine", "m", "--command", "c", "--sampler", "ddim",
                           "--steps", "30", "--eta", "1", "--fast", "ddim:30:1"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2 and not (tmp_path / "out").exists()
    assert "--fast ddim:30:1: the recommended sampler itself; expected one with fewer network calls" in done.stderr


def test_pretrained_report_draws_the_fast_sampler_again_with_bf16_weights(tool, weights, tmp_path, monkeypatch):
    """The smoke model's samples are noise, so ``measure`` is stubbed and the bar's size lowered: this
    tests which sets are drawn and stored, not the bar."""
    report, out = tool("pretrained_report"), tmp_path / "out"
    monkeypatch.setattr(report.train.TrainConfig, "bar_samples", 4)
    drawn = []

    def measure(images, reference):
        drawn.append(images.shape[0])
        return {"boundary_fraction": 0.2, "grains": 23.0, "dangling_ends": 0.05, "bar_met": True,
                "open_end_rate": 0.05, "gray_background_rate": 0.0}
    monkeypatch.setattr(report, "measure", measure)
    monkeypatch.setattr(sys, "argv", ["pretrained_report.py", "--run", str(weights.parent), "--out", str(out),
                                      "--n", "4", "--steps", "3", "--machine", "m", "--command", "c",
                                      "--fast", "dpm++2m:2:1"])
    assert report.main() == 0
    rows = json.loads((out / "samplers.json").read_text())
    assert [(row["sampler_words"], row["precision"]) for row in rows] == [
        ("DDIM-3, eta 0", "fp32"), ("DPM-Solver++(2M)-2, eta 1", "fp32"), ("DPM-Solver++(2M)-2, eta 1", "bf16")]
    assert drawn == [4, 4, 4]  # the recommended sampler once; the fast one with fp32, then with bf16 weights
    assert [row["precision"] for row in load_checkpoint(out / "model.pt")["fast_sampler_measured"]] == ["fp32", "bf16"]
    readme = (out / "README.md").read_text()
    # the fast sampler as sample --fast draws it on a CPU: fp32 in NHWC, and bf16 (in NHWC too)
    assert [row["memory_format"] for row in rows] == ["contiguous", "channels_last", "channels_last"]
    assert "| DPM-Solver++(2M)-2, eta 1, bf16 weights in NHWC | 2 |" in readme
    assert "| DPM-Solver++(2M)-2, eta 1, fp32 weights in NHWC | 2 |" in readme and "| DDIM-3, eta 0 | 3 |" in readme


def test_pretrained_report_refuses_a_fast_sampler_for_a_conditional_model_before_sampling(tool, weights, tmp_path,
                                                                                         monkeypatch, capsys):
    report, run = tool("pretrained_report"), tmp_path / "conditional_run"
    run.mkdir()
    torch.save(dict(load_checkpoint(weights), condition={"names": ["grains"]}), run / "model.pt")
    monkeypatch.setattr(report, "median_seconds", lambda *args: pytest.fail("sampled before refusing"))
    monkeypatch.setattr(sys, "argv", ["pretrained_report.py", "--run", str(run), "--out", str(tmp_path / "out"),
                                      "--n", "200", "--fast", "dpm++2m:2:1", "--machine", "m", "--command", "c"])
    with pytest.raises(SystemExit) as stopped:
        report.main()
    assert stopped.value.code == 2
    assert f"--fast: {run} holds a conditional model" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_pretrained_report_reads_a_run_from_its_exported_weights(tool, weights, tmp_path):
    import shutil

    report = tool("pretrained_report")
    run = tmp_path / "gpu_run"  # what a GPU session brings back: model.pt and loss.csv
    run.mkdir()
    shutil.copy(weights, run / "model.pt")
    shutil.copy(weights.parent / "loss.csv", run / "loss.csv")
    checkpoint = report.load_run(run)
    history = train.read_loss_history(run)
    assert checkpoint["kind"] == "weights" and checkpoint["step"] == 4 and history[-1]["step"] == 4
    assert report.wall_minutes(checkpoint, history) == history[-1]["seconds"] / 60
    full = report.load_run(weights.parent)  # a checkpoint.pt, where there is one, is read first
    assert full["kind"] == "training" and report.wall_minutes(full, history) == full["seconds"] / 60
    with pytest.raises(SystemExit, match="neither checkpoint.pt nor model.pt"):
        report.load_run(tmp_path)


def test_pretrained_report_keeps_the_hand_written_notes_when_it_rebuilds_the_readme(tool, tmp_path):
    report = tool("pretrained_report")
    readme = tmp_path / "README.md"
    assert report.earlier_notes(readme) == []  # no README yet
    readme.write_text("# The shipped model\n\n## Compared\n\n| a |\n\n## Notes from earlier runs\n\nThe first model "
                      "had gray backgrounds.\n\nRebuild this README with:\n")
    assert report.earlier_notes(readme) == ["## Notes from earlier runs", "", "The first model had gray backgrounds.", ""]


def test_pretrained_report_names_a_learning_rate_decay(tool):
    report = tool("pretrained_report")
    assert report.decay_words({"steps": 16500, "lr_decay_steps": 4000}) == \
        ", then linearly to 0 over the last 4000 steps (from step 12500)"
    assert report.decay_words({"steps": 10000}) == report.decay_words({"steps": 10000, "lr_decay_steps": 0}) == ""


def test_bf16_weights_and_the_dpm_solver_through_the_command(weights, tmp_path, capsys):
    """sample --precision bf16 --sampler dpm++2m: bf16 NHWC weights on the CPU, float32 images,
    and a progress bar that counts denoising steps (2 batches x 4 steps), not batches."""
    model, schedule, _ = load_model(weights, CPU, "bf16")
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels > 1)
    assert conv.weight.dtype == torch.bfloat16 and conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = sample.generate(model, schedule, 3, Sampler("dpm++2m", 4, 1.0), batch_size=2, progress=True)
    assert images.dtype == torch.float32 and images.shape == (3, 1, 64, 64)
    assert "8/8" in capsys.readouterr().err
    assert Sampler("dpm++2m", 15, 1.0).describe() == "DPM-Solver++(2M)-15, eta 1"
    assert main(["sample", "--checkpoint", str(weights), "--n", "2", "--sampler", "dpm++2m", "--steps", "3",
                 "--precision", "bf16", "--out", str(tmp_path / "s"), "--quiet"]) == 0
    assert "DPM-Solver++(2M)-3, eta 0, bf16" in capsys.readouterr().out
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        load_model(weights, CPU, "int8")


@pytest.mark.parametrize("kind, flags, capability, expected", [
    ("cpu", {"avx512f", "avx512_bf16"}, None, "bf16"), ("cpu", {"amx_bf16"}, None, "bf16"),
    ("cpu", {"avx512f", "avx2"}, None, "fp32"), ("cpu", set(), None, "fp32"),
    ("cuda", set(), (8, 0), "bf16"), ("cuda", set(), (7, 5), "fp32"), ("mps", {"avx512_bf16"}, None, "fp32")])
def test_auto_sampling_precision_is_bf16_only_where_it_is_native(monkeypatch, kind, flags, capability, expected):
    """The CPU flags and the GPU capability are stubbed: CI has neither a T4 nor an H100."""
    monkeypatch.setattr(device, "cpu_flags", lambda: flags)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert device.resolve_precision("auto", torch.device(kind)) == expected
    assert device.resolve_precision("fp32", torch.device(kind)) == "fp32"  # asked for, given
    with pytest.raises(ValueError, match="unknown precision 'fp16'; expected one of auto, fp32, bf16"):
        device.resolve_precision("fp16", torch.device(kind))


def test_at_precision_copies_into_bf16_and_leaves_the_fp32_network_alone(weights):
    model, schedule, _ = load_model(weights, CPU)
    assert device.at_precision(model, "fp32", CPU) is model
    fast = device.at_precision(model, "bf16", CPU)
    assert next(fast.parameters()).dtype == torch.bfloat16 and next(model.parameters()).dtype == torch.float32
    plain = sample.generate(model, schedule, 2, Sampler("ddim", 4), seed=0)
    rounded = sample.generate(fast, schedule, 2, Sampler("ddim", 4), seed=0)
    assert 0 < (plain - rounded).abs().max() < 0.2  # the same network, rounded weights


@pytest.mark.parametrize("precision, kind, fast, expected", [
    ("fp32", "cpu", False, "contiguous"), ("fp32", "cpu", True, "channels_last"),
    ("bf16", "cpu", False, "channels_last"), ("fp32", "cuda", True, "contiguous"), ("bf16", "cuda", False, "contiguous")])
def test_sampling_layout_is_nhwc_on_a_cpu_for_bf16_or_speed_and_nchw_otherwise(precision, kind, fast, expected):
    assert device.sampling_layout(precision, torch.device(kind), fast=fast) == expected


@pytest.mark.parametrize("flags, expected", [({"avx2", "avx512f", "avx512_bf16"}, "avx512_bf16"),
                                              ({"avx2", "avx512f"}, "avx512f"), ({"sse4_2", "avx2"}, "avx2"),
                                              ({"sse4_2"}, "older"), (set(), "unknown")])
def test_cpu_isa_names_the_widest_vector_instructions(flags, expected, monkeypatch):
    monkeypatch.setattr(device, "cpu_flags", lambda: flags)
    assert device.cpu_isa() == expected


def test_fp32_weights_in_nhwc_draw_the_same_images_up_to_rounding(weights):
    model, schedule, _ = load_model(weights, CPU)
    nhwc = device.at_precision(model, "fp32", CPU, "channels_last")
    kernels = [(p, q) for p, q in zip(model.parameters(), nhwc.parameters()) if p.dim() == 4 and min(p.shape[1:]) > 1]
    assert kernels and all(q.is_contiguous(memory_format=torch.channels_last) and not q.is_contiguous()
                           and p.is_contiguous() for p, q in kernels)  # a copy: the network is left as it was
    plain = sample.generate(model, schedule, 2, Sampler("dpm++2m", 4, 1.0), seed=0)
    fast = sample.generate(nhwc, schedule, 2, Sampler("dpm++2m", 4, 1.0), seed=0)
    assert plain.dtype == fast.dtype == torch.float32 and (plain - fast).abs().max() < 1e-3


def test_gif_frames_show_the_x0_estimate_beside_the_images(weights, tmp_path):
    model, schedule, _ = load_model(weights, CPU)
    widths = {}
    for show in (True, False):
        images, gif = sample.reverse_process_gif(model, schedule, 4, tmp_path / f"{show}.gif", Sampler("ddim", 3),
                                                 seed=0, show_x0=show)
        with Image.open(gif) as image:
            widths[show] = image.size[0]
            assert image.n_frames == 3
    assert widths[True] == 2 * widths[False]


# ---- larger canvases ---------------------------------------------------------------------------
def test_windows_half_a_window_apart_weigh_every_pixel_once():
    weights = sample.window_weights(8)
    canvas = torch.zeros(24, 24)
    for r in range(0, 24, 4):
        for c in range(0, 24, 4):
            canvas += torch.roll(torch.nn.functional.pad(weights, (0, 16, 0, 16)), (r, c), dims=(0, 1))
    assert torch.allclose(canvas, torch.ones(24, 24), atol=1e-6)
    wide = sample.window_weights(64)
    assert wide[0].max() < 1e-3 and wide[28:36, 28:36].min() > 0.9  # edges hidden, centre kept


def test_blending_windows_changes_nothing_for_a_network_that_sees_one_pixel():
    x, t = torch.randn(2, 1, 24, 32), torch.tensor([5, 9])
    pointwise = lambda x, t: 3 * x + t[:, None, None, None]  # noqa: E731
    assert torch.allclose(sample.windowed(pointwise, 8)(x, t), pointwise(x, t), atol=1e-5)
    with pytest.raises(ValueError, match="does not split into 8-pixel windows every 4 pixels"):
        sample.windowed(pointwise, 8)(torch.randn(1, 1, 20, 6), t[:1])


def test_a_network_in_pieces_sees_at_most_that_many_images_and_gives_the_same_output():
    seen = []

    def network(x, t, c):
        seen.append(len(x))
        return 3 * x + t[:, None, None, None] + c[:, :1, None, None].nan_to_num(-1.0)  # NaN: the null condition

    x, t, c = torch.randn(11, 1, 4, 4), torch.arange(11), torch.randn(11, 2)
    assert torch.equal(sample.in_pieces(network, 4)(x, t, c), network(x, t, c))
    assert seen == [4, 4, 3, 11]
    seen.clear()
    sample.in_pieces(network, 16)(x, t, c)
    assert seen == [11]  # a call that fits is passed through whole
    seen.clear()  # guidance doubles the batch (conditional and null rows) before the pieces
    c1 = torch.tensor([0.5])
    together = sample.guided(network, c1, 2.0)(x[:5], t[:5])
    assert torch.equal(sample.guided(sample.in_pieces(network, 3), c1, 2.0)(x[:5], t[:5]), together)
    assert seen == [10, 3, 3, 3, 1]
    with pytest.raises(ValueError, match="network inputs of 11, 7, 11 rows; expected one per image in each"):
        sample.in_pieces(network, 4)(x, t[:7], c)


def test_a_call_holds_8_images_of_64x64_on_a_cpu_and_the_whole_batch_elsewhere():
    assert [sample.call_size(CPU, side) for side in (32, 64, 128, 256)] == [32, 8, 2, 1]
    assert sample.call_size("cpu", 64, asked=64) == 64 and sample.call_size(torch.device("cuda"), 64) is None
    # what a call of a given batch really takes: never more than the batch
    assert [sample.call_size(CPU, 64, batch=b) for b in (3, 8, 16)] == [3, 8, 8]
    assert sample.call_size("cpu", 64, asked=32, batch=16) == 16 and sample.call_size("cuda", 64, batch=128) == 128
    for bad in (0, -1, True, 8.0):
        with pytest.raises(ValueError, match=f"--images-per-call must be a positive whole number, got {bad!r}"):
            sample.call_size(CPU, 64, asked=bad)


def test_the_shipped_model_gives_the_same_predictions_bit_for_bit_in_pieces():
    model, _, _ = load_model(DEFAULT_MODEL, CPU)  # fp32, NCHW: what sample draws with by default
    generator = torch.Generator().manual_seed(0)
    x, t = torch.randn(16, 1, 64, 64, generator=generator), torch.randint(0, 1000, (16,), generator=generator)
    with torch.no_grad():
        assert torch.equal(sample.in_pieces(model, 8)(x, t), model(x, t))


def test_sampling_on_the_cpu_calls_the_network_in_pieces_and_draws_the_same_images(weights, monkeypatch):
    model, schedule, _ = load_model(weights, CPU)
    calls = []
    hook = model.register_forward_pre_hook(lambda module, args: calls.append(len(args[0])))
    whole = sample.generate(model, schedule, 7, Sampler("ddim", 3, 1.0), seed=2)
    assert calls == [7] * 3  # 7 images of 64x64: one call per step
    monkeypatch.setattr(sample, "CPU_PIXELS_PER_CALL", 3 * 64 * 64)
    calls.clear()
    pieces = sample.generate(model, schedule, 7, Sampler("ddim", 3, 1.0), seed=2)
    # the same images up to rounding (a convolution may sum in another order for another batch)
    assert calls == [3, 3, 1] * 3 and torch.allclose(pieces, whole, atol=1e-4)
    calls.clear()
    sample.generate(model, schedule, 7, Sampler("ddim", 3, 1.0), seed=2, images_per_call=4)
    assert calls == [4, 3] * 3  # asked for: the caller's cap wins
    hook.remove()
    with pytest.raises(ValueError, match="--images-per-call must be a positive whole number, got 0"):
        sample.generate(model, schedule, 7, Sampler("ddim", 3, 1.0), images_per_call=0)


def test_a_periodic_unet_draws_a_larger_canvas_that_tiles(weights):
    model, schedule, _ = load_model(weights, CPU)
    x, t = torch.randn(1, 1, 128, 128), torch.tensor([500])
    with torch.no_grad():  # every layer wraps: shifting the torus (by whole strides) shifts the prediction
        shifted = model(torch.roll(x, (36, 88), dims=(2, 3)), t)
        assert torch.allclose(shifted, torch.roll(model(x, t), (36, 88), dims=(2, 3)), atol=1e-4)
    images = sample.generate(model, schedule, 2, Sampler("ddim", 3), size=128, windows=True)
    assert images.shape == (2, 1, 128, 128) and torch.isfinite(images).all()
    assert sample.canvas_size(model) == 64 and sample.canvas_size(model, 96) == 96
    with pytest.raises(ValueError, match="--windows needs a canvas that 32-pixel steps divide, of at least 64, got 80"):
        sample.generate(model, schedule, 1, Sampler("ddim", 2), size=80, windows=True)
    with pytest.raises(ValueError, match="--size must be a multiple of 4"):
        sample.canvas_size(model, 98)
    seed = torch.nn.Module()
    seed.config = lambda: {"name": "seed-unet", "size": 64}
    with pytest.raises(ValueError, match="a seed-unet draws only the 64x64 images it was built for, not 128x128"):
        sample.canvas_size(seed, 128)


def test_the_sample_command_draws_a_large_canvas(weights, tmp_path, capsys):
    out = tmp_path / "large"
    assert main(["sample", "--checkpoint", str(weights), "--n", "3", "--steps", "2", "--size", "96",
                 "--out", str(out), "--quiet"]) == 0
    assert data.load_uint8(out).shape == (3, 96, 96) and "96x96" in capsys.readouterr().out
    assert main(["sample", "--checkpoint", str(weights), "--n", "1", "--steps", "2", "--size", "98",
                 "--out", str(tmp_path / "b")]) == 2
    assert "--size: --size must be a multiple of 4" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(weights), "--n", "1", "--windows", "--out", str(tmp_path / "c")]) == 2
    assert "--windows draws a canvas larger than the 64x64" in capsys.readouterr().err
    assert main(["sample", "--checkpoint", str(weights), "--n", "1", "--size", "80", "--windows", "--out",
                 str(tmp_path / "d")]) == 2
    assert "--size 80 with --windows: expected a multiple of 32" in capsys.readouterr().err
    assert not any((tmp_path / name).exists() for name in "bcd")


def test_a_seed_drawn_in_two_layouts_counts_once_in_the_layout_sample_fast_uses(tool):
    one_set_per_seed = tool("pretrained_report").one_set_per_seed
    rows = [{"precision": "fp32", "seed": 0, "samples": 512, "name": "fp32 NCHW, written before layouts were"},
            {"precision": "fp32", "seed": 0, "samples": 512, "memory_format": "channels_last", "name": "fp32 NHWC"},
            {"precision": "fp32", "seed": 1, "samples": 512, "memory_format": "contiguous", "name": "fp32 seed 1"},
            {"precision": "bf16", "seed": 0, "samples": 512, "name": "bf16, NHWC by default"},
            {"precision": "bf16", "seed": 0, "samples": 512, "memory_format": "contiguous", "name": "bf16 NCHW"},
            {"precision": "fp32", "seed": 0, "samples": 1024, "name": "fp32, twice the samples"}]
    assert [row["name"] for row in one_set_per_seed(rows)] == [
        "fp32 NHWC", "fp32 seed 1", "bf16, NHWC by default", "fp32, twice the samples"]


def test_sample_fast_points_to_the_compact_model_where_bf16_is_not_native(weights, tmp_path, capsys, monkeypatch):
    import helpers.__main__ as cli

    shipped = str(cli.DEFAULT_MODEL)
    monkeypatch.setattr(cli, "native_bf16", lambda device: False)
    hint = cli._compact_hint(shipped, "fp32", CPU)
    assert hint.startswith("this processor computes no bf16 natively") and hint.endswith("\n") and hint.count("\n") == 1
    assert f"--checkpoint {cli.COMPACT_MODEL} --memory-format channels_last, without --fast" in hint
    assert cli._compact_hint(str(weights), "fp32", CPU) == ""  # another model: the compact one is no substitute
    assert cli._compact_hint(shipped, "bf16", CPU) == ""  # bf16 asked for: the user's choice
    assert cli._compact_hint(shipped, "fp32", torch.device("cuda")) == ""
    monkeypatch.undo()
    monkeypatch.setattr(cli, "pick_device", lambda *args, **kwargs: CPU)  # the hint is for CPUs, on any test machine
    for flags, said in (({"avx2"}, True), ({"avx2", "avx512_bf16"}, False)):  # plain --fast: precision auto
        monkeypatch.setattr(device, "cpu_flags", lambda: flags)
        assert main(["sample", "--fast", "--steps", "2", "--n", "1", "--out", str(tmp_path / str(said)),
                     "--quiet"]) == 0
        assert (f"--checkpoint {cli.COMPACT_MODEL} " in capsys.readouterr().out) is said
    compact = ["sample", "--checkpoint", str(cli.COMPACT_MODEL), "--n", "1", "--steps", "2", "--quiet"]
    assert main([*compact, "--memory-format", "channels_last", "--out", str(tmp_path / "compact")]) == 0  # as hinted
    assert len(list((tmp_path / "compact").glob("*.png"))) == 1
    assert main([*compact, "--fast", "--out", str(tmp_path / "refused")]) == 2
    assert "stores no fast sampler" in capsys.readouterr().err and not (tmp_path / "refused").exists()
