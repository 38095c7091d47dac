"""Data-parallel training and sharded sampling: torchrun with gloo, two CPU processes, seconds each.

The rule under test: N ranks together take the step one process takes (every rank draws the
whole global batch and trains on its rows), only rank 0 writes, and a rank that fails stops the
whole job with one line.
"""
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

from helpers import ROOT
from helpers.__main__ import main
from helpers.distributed import World
from helpers.sample import batch_seed, generate, png_name
from helpers.train import Trainer, profile_config
from helpers.unet import build_model
from helpers.diffusion import Schedule

DATA = ROOT / "data" / "voronoi_gb_64"
# a tiny run: 8 steps of 8 images, checkpoints at 4 and 8
SMOKE_RUN = ["--data", str(DATA), "--profile", "smoke", "--limit", "16", "--steps", "8", "--batch-size", "8",
             "--quiet"]


def environment(**extra) -> dict:
    """The test's environment for a child process: one thread each (two share the two cores)."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def torchrun(nproc: int, *args, cwd=ROOT, timeout=180) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "-m", "helpers", *map(str, args)]
    return subprocess.run(command, cwd=cwd, env=environment(), capture_output=True, text=True, timeout=timeout)


def helpers_cli(*args, timeout=180) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helpers", *map(str, args)], cwd=ROOT, env=environment(),
                          capture_output=True, text=True, timeout=timeout)


def tensors(path) -> dict:
    state = torch.load(path, weights_only=True)
    return {f"{part}.{name}": value for part in ("model", "ema") for name, value in state[part].items()}


def largest_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


def denoiser_gap(config: dict, a: dict, b: dict) -> float:
    """The largest difference between two sets of weights' predictions on one fixed batch.

    This, not the weights alone, is what "the same to rounding" means after Adam steps: some weights
    have a gradient that is exactly zero by symmetry (a bias before a one-channel GroupNorm group, an
    attention key's bias), so the network's output does not depend on them, and Adam turns their
    rounding noise into steps of the size of the learning rate."""
    size, rows = config["size"], torch.Generator().manual_seed(1)
    x = torch.randn(8, 1, size, size, generator=rows)
    t = torch.randint(0, 1000, (8,), generator=rows)
    condition = torch.randn(8, config["conditions"], generator=rows) if "conditions" in config else None
    outputs = []
    for weights in (a, b):
        network = build_model(config).eval()
        network.load_state_dict(weights)
        with torch.no_grad():
            outputs.append(network(x, t, condition) if condition is not None else network(x, t))
    return (outputs[0] - outputs[1]).abs().max().item()


# ---------------------------------------------------------------------------------------------
# The rules, in one process
# ---------------------------------------------------------------------------------------------
def test_ranks_share_a_global_batch_in_rank_order():
    assert [World(r, 4).rows(32) for r in range(4)] == [slice(0, 8), slice(8, 16), slice(16, 24), slice(24, 32)]
    assert World().rows(30) == slice(0, 30)
    with pytest.raises(ValueError, match=r"--batch-size 30 does not split over 4 processes; expected a multiple of 4"):
        World(1, 4).rows(30)
    shares = [list(World(r, 3).batches(8)) for r in range(3)]
    assert shares == [[0, 3, 6], [1, 4, 7], [2, 5]]


def test_image_i_is_the_same_whichever_batches_are_drawn():
    torch.manual_seed(0)
    model = build_model({"name": "unet", "size": 16, "widths": [8, 16], "blocks": 1, "attention_at": []}).eval()
    schedule = Schedule.create("cosine", 20, "v")
    from helpers.sample import Sampler
    sampler = Sampler("ddim", steps=3, eta=1.0)
    everything = generate(model, schedule, 5, sampler, seed=7, batch_size=2)
    rank1 = generate(model, schedule, 5, sampler, seed=7, batch_size=2, batches=World(1, 2).batches(3))
    assert torch.equal(rank1, everything[2:4])
    # the first batch keeps the seed: a set that fits in one batch is the one it always was
    assert batch_seed(7, 0) == 7 and len({batch_seed(7, b) for b in range(100)}) == 100
    assert generate(model, schedule, 2, sampler, seed=7, batch_size=256).equal(everything[:2])


def test_file_names_sort_in_order_for_any_count():
    assert png_name(7, 10) == "00007.png"
    assert png_name(99_999, 100_000) == "99999.png" and png_name(0, 100_001) == "000000.png"


def test_torchrun_runs_train_and_sample_only(monkeypatch, capsys):
    for name, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost",
                        "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(name, value)
    assert main(["evaluate", "--generated", "x", "--reference", "y"]) == 2
    assert capsys.readouterr().err.strip() == ("error: evaluate runs in one process; start it with python -m "
                                               "helpers, not torchrun (torchrun runs train and sample)")


def test_a_rank_ends_at_once_with_its_code_and_its_output_flushed():
    # a launched rank skips the interpreter's teardown (where gloo's threads can abort a finished
    # job), so what it printed must be flushed first; a plain process exits as usual
    script = "from helpers import distributed; print('done', end=''); distributed.end_process(3)"
    launched = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "localhost", "MASTER_PORT": "1"}
    plain = {k: v for k, v in environment().items() if k not in launched}
    for env in (environment(**launched), plain):
        done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=60)
        assert (done.returncode, done.stdout) == (3, "done"), done.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# Two ranks against one process
# ---------------------------------------------------------------------------------------------
TRAINER_SCRIPT = textwrap.dedent("""
    import sys, torch, torch.distributed as dist
    sys.path.insert(0, {root!r})
    from helpers import distributed
    from tests.test_distributed import conditional_trainer
    world, device = distributed.join()
    trainer = conditional_trainer(world)
    losses = [float(trainer.step(step)) for step in range(5)]
    torch.save({{"model": trainer.model.state_dict(), "ema": trainer.ema.state_dict(), "losses": losses,
                "rng": trainer.generators["data"].get_state(), "rows": (trainer.rows.start, trainer.rows.stop)}},
               {out!r} + f"/rank{{world.rank}}.pt")
    distributed.leave()
""")


def conditional_trainer(world: World = World()) -> Trainer:
    """A small conditional run (condition dropout draws too) on 16 random images."""
    # no weight whose gradient is zero by symmetry, which Adam would turn from rounding noise into a
    # full step: 16 channels in groups of 2 (one channel a group cancels the bias before it), no
    # attention (a key's bias shifts every score alike)
    cfg = profile_config("smoke", data="unused", batch_size=8, condition=["grains"], lr=1e-3, warmup=1,
                         model_options={"widths": [16, 32], "blocks": 1, "attention_at": []})
    images = torch.rand(16, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    conditions = torch.linspace(-1, 1, 16)[:, None]
    return Trainer(cfg, images, torch.device("cpu"), conditions, world)


def test_two_ranks_take_the_step_one_process_takes(tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(TRAINER_SCRIPT.format(root=str(ROOT), out=str(tmp_path)))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(script)], env=environment(), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each rank ran: the same kernels, the same rounding
    try:
        alone = conditional_trainer()
        losses = [float(alone.step(step)) for step in range(5)]
    finally:
        torch.set_num_threads(threads)
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # each rank trains on its half of the batch: its losses are its own, their mean the whole batch's
    assert (rank0["rows"], rank1["rows"]) == ((0, 4), (4, 8))
    assert all(abs(a - b) > 1e-4 for a, b in zip(rank0["losses"], rank1["losses"]))
    assert [(a + b) / 2 for a, b in zip(rank0["losses"], rank1["losses"])] == pytest.approx(losses, rel=1e-5)
    single = {"model": alone.model.state_dict(), "ema": alone.ema.state_dict()}
    for part in ("model", "ema"):
        for name, value in rank0[part].items():
            assert torch.equal(value, rank1[part][name]), f"{part}.{name} differs between the ranks"
            # 5 Adam steps of at most 1e-3 each. Adam divides by sqrt(v), so where a gradient is near 0
            # its rounding moves a weight by a visible share of a step (1.2e-5 on an EPYC with AVX2
            # only): no weight by a tenth of one, and the denoiser's predictions agree (below)
            assert torch.allclose(value, single[part][name], atol=1e-4, rtol=0), f"{part}.{name}"
        assert denoiser_gap(alone.model.config(), rank0[part], single[part]) < 1e-5
    # every rank drew what the single process drew: their generators are where its generator is
    assert torch.equal(rank0["rng"], alone.generators["data"].get_state())
    assert torch.equal(rank1["rng"], alone.generators["data"].get_state())


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    """An uninterrupted 2-rank smoke run (8 steps of 8 images)."""
    out = tmp_path_factory.mktemp("ddp") / "whole"
    done = torchrun(2, "train", *SMOKE_RUN, "--out", out)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def test_two_ranks_equal_one_process_through_the_cli(two_rank_run, tmp_path):
    done = helpers_cli("train", *SMOKE_RUN, "--out", tmp_path / "one")
    assert done.returncode == 0, done.stderr[-3000:]
    two, one = (torch.load(p / "checkpoint.pt", weights_only=True) for p in (two_rank_run, tmp_path / "one"))
    for part in ("model", "ema"):
        assert denoiser_gap(two["model_config"], two[part], one[part]) < 1e-5, part
    assert (two["world_size"], one["world_size"]) == (2, 1)
    assert [row["step"] for row in two["history"]] == [5, 8]
    assert [r["loss"] for r in two["history"]] == pytest.approx([r["loss"] for r in one["history"]], rel=1e-5)
    # rank 0 alone wrote the folder: one loss log, one grid, no lock left
    assert sorted(p.name for p in two_rank_run.iterdir()) == ["checkpoint.pt", "loss.csv", "loss.png", "samples"]
    assert [p.name for p in (two_rank_run / "samples").iterdir()] == ["step_000008.png"]


def test_a_two_rank_run_stopped_and_resumed_equals_the_whole_run(two_rank_run, tmp_path):
    part = tmp_path / "part"
    done = torchrun(2, "train", *SMOKE_RUN, "--out", part, "--stop-after", "4")
    assert done.returncode == 0, done.stderr[-3000:]
    assert torch.load(part / "checkpoint.pt", weights_only=True)["step"] == 4
    shutil.copytree(part, tmp_path / "part_alone")
    done = torchrun(2, "train", "--out", part, "--resume", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    whole = torch.load(two_rank_run / "checkpoint.pt", weights_only=True)
    assert largest_difference(tensors(part / "checkpoint.pt"), tensors(two_rank_run / "checkpoint.pt")) == 0.0

    def logged(run):  # step, loss and learning rate of each loss.csv row (not the wall time)
        return [line.split(",")[:3] for line in (run / "loss.csv").read_text().splitlines()]
    assert logged(part) == logged(two_rank_run)
    # every rank draws the global batch, so the random states do not depend on the world size:
    # one process carries a 2-rank run on as the 2 ranks would have
    done = helpers_cli("train", "--out", tmp_path / "part_alone", "--resume", "--quiet")
    assert done.returncode == 0, done.stderr[-3000:]
    alone = torch.load(tmp_path / "part_alone" / "checkpoint.pt", weights_only=True)
    for weights in ("model", "ema"):
        assert denoiser_gap(whole["model_config"], alone[weights], whole[weights]) < 1e-5, weights


def test_sharded_sampling_writes_the_images_one_process_writes(two_rank_run, tmp_path):
    args = ["--checkpoint", two_rank_run / "checkpoint.pt", "--count", "5", "--batch-size", "2", "--steps", "3",
            "--seed", "3", "--quiet"]
    done = torchrun(2, "sample", *args, "--out", tmp_path / "two")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote 5 samples") == 1
    done = helpers_cli("sample", *args, "--out", tmp_path / "one")
    assert done.returncode == 0, done.stderr[-3000:]
    names = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert names == ["00000.png", "00001.png", "00002.png", "00003.png", "00004.png", "manifest.csv"]
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == names
    for name in names:
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name


# ---------------------------------------------------------------------------------------------
# Failures end the whole job with one line
# ---------------------------------------------------------------------------------------------
def test_a_batch_that_does_not_split_is_refused_once(tmp_path):
    done = torchrun(2, "train", *SMOKE_RUN[:-3], "--batch-size", "7", "--out", tmp_path / "run")
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: rank 0 of 2: --batch-size 7 does not split over 2 processes; expected a multiple "
                      "of 2 (it is the global batch)"]
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_rank_that_cannot_read_the_data_ends_the_job_with_one_line(tmp_path):
    """Two processes launched as two nodes would be (the variables torchrun sets), each in its own
    folder: the relative data path exists for rank 0 and not for rank 1."""
    port, out = free_port(), tmp_path / "run"
    procs = []
    for rank, cwd in ((0, ROOT), (1, tmp_path)):
        env = environment(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(port))
        procs.append(subprocess.Popen([sys.executable, "-m", "helpers", "train", "--data", "data/voronoi_gb_64",
                                       "--profile", "smoke", "--out", str(out), "--quiet"], cwd=cwd, env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [2, 2]
    assert "error:" not in results[0][1]
    errors = [line for line in results[1][1].splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: rank 1 of 2: data/voronoi_gb_64"), errors
    assert not out.exists() or not any(out.iterdir())


def test_a_rank_writes_only_its_own_batches(tmp_path):
    """What _sample does on rank 1 of 2 (no process group is needed to run one rank's share)."""
    from argparse import Namespace
    from helpers.__main__ import _write_samples
    from helpers.sample import Sampler
    torch.manual_seed(0)
    model = build_model({"name": "unet", "size": 16, "widths": [8, 16], "blocks": 1, "attention_at": []}).eval()
    schedule, sampler = Schedule.create("cosine", 20, "v"), Sampler("ddim", steps=3, eta=1.0)
    for out, world in ((tmp_path / "alone", World()), (tmp_path / "rank1", World(1, 2))):
        out.mkdir()
        args = Namespace(n=5, batch_size=2, seed=3, quiet=True, out=out, size=None, windows=False)
        _write_samples(model, schedule, sampler, args, torch.device("cpu"), None, world)
    assert sorted(p.name for p in (tmp_path / "rank1").iterdir()) == ["00002.png", "00003.png"]  # batch 1 of 0-2
    for name in ("00002.png", "00003.png"):
        assert (tmp_path / "rank1" / name).read_bytes() == (tmp_path / "alone" / name).read_bytes()
    assert len(list((tmp_path / "alone").iterdir())) == 6  # five images and the manifest
