"""Command line: ``python -m helpers <command> --help`` documents each command."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import matplotlib.pyplot as plt
from matplotlib.backend_bases import FigureCanvasBase
import torch
from tqdm.auto import tqdm

from . import distributed, metrics
from .bench import NETWORKS, format_bench, run_bench
from .checkpoint import CheckpointError, check_guidance, export_weights, load_checkpoint, load_model, weights_digest
from .conditions import ConditionError, parse_targets, target_vector
from .control import (COUNTS, DrawnSamples, Keeping, check_targets, default_targets, format_control, guidance_sweep,
                      measure, measured_condition)
from .data import (DATA_ROOT, KINDS, MANIFEST, DataError, image_size, list_images, load_uint8, make_dataset,
                   manifest_values, prepare_output_dir, read_images, write_failure)
from .device import (COMPILE_MODES, MEMORY_FORMATS, PRECISIONS, SAMPLING_PRECISIONS, native_bf16, pick_device,
                     resolve_precision, sampling_layout, weights_words)
from .diffusion import PREDICTIONS, SPACINGS, VARIANCES
from .distributed import RankError, World
from .export import FORMATS, TEXTURES, MissingPackage, export_targets, microstructure, require
from .export import export as export_microstructure
from .keep import DRAWS_PER_IMAGE, Tally, Wanted, kept_batches, parse_within, samples_tile
from .sample import (CPU_PIXELS_PER_CALL, SAMPLERS, canvas_size, draw_batch, each_batch,
                     fast_sampler, fast_sampler_evidence, generate, png_name, recommended_sampler,
                     reverse_process_gif, write_batch, write_manifest, write_pngs)
from .train import (CHECKPOINT, PROFILES, RUN_FILES, TrainConfig, TrainingError, check_new_run_folder,
                    default_profile, describe_model, profile_config, train)
from .unet import MODELS
from .viz import control_plot

DEFAULT_MODEL = DATA_ROOT / "pretrained" / "model.pt"
COMPACT_MODEL = DATA_ROOT / "pretrained_compact" / "model.pt"  # older, CPU-trained: for CPUs without native bf16


class LessonError(RuntimeError):
    """A notebook failed while the tutorial ran."""


def _data_make(args: argparse.Namespace) -> None:
    start = time.perf_counter()
    bar = tqdm(total=max(args.n, 0), desc=f"{args.kind} {args.size}px", unit="img",
               disable=args.quiet)
    try:
        out = make_dataset(args.kind, args.n, args.size, args.seed, args.out, force=args.force,
                           progress=lambda _: bar.update())
    finally:
        bar.close()
    print(f"wrote {args.n} images to {out} ({time.perf_counter() - start:.1f} s); "
          f"statistics in {out / 'README.md'}")


# train's flags for carrying a run on: the only ones --resume takes
RESUME_FLAGS = ("steps", "lr_decay", "stop_after", "max_minutes", "export", "quiet")
# train's flags that define a run: stored in its checkpoint, so not to be given with --resume
RECIPE_FLAGS = ("data", "model", "profile", "batch_size", "lr", "seed", "precision", "limit",
                "bar_every", "bar_samples", "prediction", "eta", "compile", "memory_format", "condition",
                "init_from")


def _number(convert, accept, expected: str):
    """An argparse type: ``convert`` the text, keep it if ``accept`` says so, else a one-line error."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value

    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive whole number")
_non_negative_int = _number(int, lambda v: v >= 0, "a whole number of 0 or more")  # seeds
_positive_float = _number(float, lambda v: 0 < v < float("inf"), "a number above 0")  # rates, minutes
_fraction = _number(float, lambda v: 0 <= v <= 1, "a number from 0 to 1")  # eta
_non_negative_float = _number(float, lambda v: 0 <= v < float("inf"), "a number of 0 or more")  # guidance


def _new_file(path: Path | None, flag: str, unchanged: str = "nothing was replaced", replace: bool = False) -> None:
    """Refuse, before any work, to write ``flag``'s file into a folder, or over an existing file
    unless ``replace`` (--force) and the file is a GIF, what --force may replace (a mistyped path
    must not cost a model or a data set): every file the CLI writes follows this one rule."""
    if path is None:
        return
    try:
        _check_new_file(Path(path), flag, unchanged, replace)
    except OSError as exc:  # a folder on the way that cannot be entered, a file that cannot be read
        raise DataError(f"{flag} {path}: cannot be checked ({exc.strerror}: {exc.filename}); expected a "
                        f"path this user can write ({unchanged})") from None


def _check_new_file(path: Path, flag: str, unchanged: str, replace: bool) -> None:
    """``_new_file``'s rules, which may raise OSError where the path cannot be looked at."""
    if path.is_dir():
        raise DataError(f"{flag} {path} is a folder; expected the path of a new file")
    above = next(parent for parent in path.absolute().parents if parent.exists())  # the folder it goes in
    if not above.is_dir():
        raise DataError(f"{flag} {path}: {above} is a file, not a folder; expected a path inside a folder")
    if path.exists() and not replace:
        hint = " or pass --force to replace it" if flag == "--gif" else ""
        raise DataError(f"{path} exists; choose another {flag} path{hint} ({unchanged})")
    if path.exists():
        with open(path, "rb") as existing:
            if existing.read(4) != b"GIF8":  # what every GIF begins with
                raise DataError(f"{flag} {path} exists and is not a GIF; --force replaces only a GIF ({unchanged})")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _recipe_flags_given(args: argparse.Namespace) -> list[str]:
    """The run-defining flags given on the command line, as the user typed them."""
    return [_flag(name) for name in RECIPE_FLAGS if getattr(args, name) not in (None, False)]


def _train(args: argparse.Namespace) -> None:
    world, device = distributed.join()  # alone, or one rank of a torchrun job
    say = print if world.main else _silent
    with distributed.together():  # what can fail: refused on every rank, said once
        _new_file(args.export, "--export", "nothing was trained")
        cfg, message = _train_config(args, device)
        if not args.resume:  # a folder train would refuse: said before the run is announced
            check_new_run_folder(Path(args.out))
    say(message + (f"; {world.size} processes share each batch" if world.size > 1 else ""))
    say(f"writing to {args.out}/ ({RUN_FILES}); "
        f"to continue an interrupted run: python -m helpers train --out {args.out} --resume")
    result = train(cfg, args.out, device=device, resume=args.resume, progress=not args.quiet,
                   stop_after=args.stop_after, extend_to=args.steps if args.resume else None,
                   lr_decay_steps=args.lr_decay if args.resume else None,
                   max_seconds=60 * args.max_minutes if args.max_minutes else None)
    loss = "no loss logged yet" if result.final_loss is None else f"loss {result.final_loss:.4f}"
    say(f"step {result.step}: {loss}, {result.seconds:.0f} s in all, "
        f"{result.images_per_second:.0f} images/s this session; checkpoint {result.run_dir / CHECKPOINT}")
    if args.export and world.main:
        checkpoint = load_checkpoint(result.run_dir / CHECKPOINT)
        sampler = TrainConfig(**checkpoint["train_config"]).sampler()
        path = export_weights(checkpoint, args.export, sampler=sampler)
        print(f"EMA weights (fp16) exported to {path}, recommending {sampler.describe()}")


def _silent(*_args, **_kwargs) -> None:
    """What ``print`` is on ranks other than 0: one job, one set of messages."""


def _train_config(args: argparse.Namespace, device: torch.device) -> tuple[TrainConfig | None, str]:
    """The new run's settings (None to resume the one in --out) and the line that announces it."""
    if args.resume:
        recipe = _recipe_flags_given(args)
        if recipe:
            raise TrainingError(f"{', '.join(recipe)}: a resumed run keeps the settings in its "
                                f"checkpoint ({args.out / CHECKPOINT}); with --resume give only "
                                f"{', '.join(_flag(name) for name in RESUME_FLAGS)}")
        return None, f"resuming the run in {args.out} on {device}"
    profile = args.profile or default_profile(device)
    cfg = profile_config(profile, data=args.data, model=args.model, steps=args.steps,
                         batch_size=args.batch_size, lr=args.lr, seed=args.seed,
                         precision=args.precision, limit=args.limit, compile=args.compile,
                         memory_format=args.memory_format,
                         prediction=args.prediction, bar_every=args.bar_every,
                         bar_samples=args.bar_samples, sample_eta=args.eta,
                         lr_decay_steps=args.lr_decay, condition=args.condition,
                         init_from=str(args.init_from) if args.init_from else None)
    size = image_size(cfg.data)  # a missing --data is said as such, before the condition's columns
    if cfg.condition:  # a column the manifest lacks, or not a number, refused before the run is announced
        try:
            manifest_values(cfg.data, cfg.condition, limit=cfg.limit)
        except DataError as exc:
            raise DataError(f"--condition: {exc}") from None
    return cfg, (f"training {describe_model(cfg, size)} on {device}, profile {profile}: "
                 f"{cfg.steps} steps of {cfg.batch_size} images from {cfg.data}"
                 + (f", starting from the weights of {cfg.init_from}" if cfg.init_from else ""))


def _sample(args: argparse.Namespace) -> None:
    world, device = distributed.join()  # alone, or one rank of a torchrun job sharing the images
    with distributed.together():  # what can fail: refused on every rank, said once
        model, schedule, payload, sampler, condition, wanted = _sampling_setup(args, device, world)
    start, tally = time.perf_counter(), None
    if args.gif:  # the GIF follows the first (up to 16) images; the rest are drawn after
        first = min(args.n, 16)
        canvas = dict(condition=condition, size=args.size, windows=args.windows)
        head, gif = reverse_process_gif(model, schedule, first, args.gif, sampler, seed=args.seed, device=device,
                                        **canvas)
        print(f"reverse-process GIF of {first} images: {gif}")
        rest = generate(model, schedule, args.n - first, sampler, seed=args.seed + 1, batch_size=args.batch_size,
                        device=device, progress=not args.quiet, **canvas) if args.n > first else head[:0]
        write_pngs(torch.cat([head, rest]), Path(args.out), force=True)  # checked before sampling (the GIF may be in it)
    elif wanted:
        tally = _write_kept(model, schedule, sampler, args, device, condition, wanted)
    else:
        _write_samples(model, schedule, sampler, args, device, condition, world)
    seconds = time.perf_counter() - start
    asked = f", {' '.join(args.condition)}" if args.condition else ""
    asked += f", {args.size}x{args.size}{' in windows' if args.windows else ''}" if args.size else ""
    shared = f", {world.size} processes" if world.size > 1 else ""
    kept = f"; kept: {wanted.describe()}, {tally.describe()}" if tally else ""
    if world.main:
        print(f"wrote {args.n} samples to {args.out} ({sampler.describe()}{asked}, "
              f"{weights_words(resolve_precision(args.precision, device), args.memory_format)}, "
              f"{seconds:.1f} s on {device}{shared}, model from step {payload['step']}){kept}")


def _write_samples(model, schedule, sampler, args: argparse.Namespace, device: torch.device,
                   condition: torch.Tensor | None, world: World) -> None:
    """Draw ``args.n`` samples in batches and write each as it comes, then the manifest. Under
    torchrun the batches go round the ranks, which compare notes after every round: a rank that
    cannot write stops the job at once, and rank 0's bar counts every rank's images."""
    count, out = -(-args.n // args.batch_size), Path(args.out)
    common = dict(seed=args.seed, batch_size=args.batch_size, device=device, condition=condition, size=args.size,
                  windows=args.windows)
    try:
        if world.size == 1:  # one process: a bar that counts denoising steps, so one batch shows progress too
            for first, images in each_batch(model, schedule, args.n, sampler, progress=not args.quiet, **common):
                write_batch(images, out, first, args.n)
        else:
            bar = tqdm(total=args.n, desc=f"sampling {args.n} on {world.size} processes", unit="img",
                       disable=args.quiet or not world.main)
            for round_start in range(0, count, world.size):
                number = round_start + world.rank
                with distributed.together():
                    if number < count:
                        images = generate(model, schedule, args.n, sampler, batches=[number], **common)
                        write_batch(images, out, number * args.batch_size, args.n)
                bar.update(min(args.n, (round_start + world.size) * args.batch_size) - bar.n)
            bar.close()
    except OSError as exc:  # a full disk, a folder made read-only
        raise DataError(f"{exc.filename or out}: could not be written ({write_failure(exc)})") from None
    if world.main:
        write_manifest(out, args.n)


def _write_kept(model, schedule, sampler, args: argparse.Namespace, device: torch.device,
                condition: torch.Tensor | None, wanted: Wanted) -> Tally:
    """Draw batches (numbered and seeded as ``generate``'s; the first of ``min(--batch-size, --n)``
    images, the batch a plain ``sample`` draws first, the later ones sized by ``keep.next_size``)
    and write the images ``wanted`` keeps as they come, until ``--n`` are kept; refused, with what
    was kept written, once ``--max-draws`` images were drawn before that."""
    out, tally = Path(args.out), Tally()
    options = dict(seed=args.seed, device=device, condition=condition, size=args.size, windows=args.windows,
                   progress=not args.quiet)

    def draw(number: int, count: int) -> torch.Tensor:
        if number and not args.quiet:  # say where the draw stands before the next batch
            print(f"kept {tally.kept} of {args.n} asked for; {tally.describe()}", file=sys.stderr)
        return draw_batch(model, schedule, sampler, number, count, **options)

    try:
        for first, images in kept_batches(draw, args.n, wanted, args.max_draws, min(args.batch_size, args.n), tally):
            write_batch(images, out, first, args.n)
        if tally.kept:
            write_manifest(out, args.n, written=tally.kept)
    except OSError as exc:
        raise DataError(f"{exc.filename or out}: could not be written ({write_failure(exc)})") from None
    if tally.kept < args.n:
        written = (f"the {tally.kept} kept are written there (the same --seed draws them first again: rerun "
                   f"with --force)") if tally.kept else "nothing was written"
        raise DataError(f"{out}: {tally.kept} of the {args.n} images asked for were kept ({wanted.describe()}; "
                        f"{tally.describe()}, --max-draws {args.max_draws}); {written}; "
                        f"{'widen --within or ' if wanted.within else ''}raise --max-draws")
    return tally


def _sampling_setup(args: argparse.Namespace, device: torch.device, world: World) -> tuple:
    """The model, schedule, checkpoint, sampler and condition a sample command asked for, checked
    before any work; rank 0 makes the output folder (refusing one with files in it)."""
    _check_gif(args, world)
    args.precision = args.precision or ("auto" if args.fast else "fp32")
    args.memory_format = args.memory_format or sampling_layout(args.precision, device, fast=args.fast)
    model, schedule, payload = load_model(args.checkpoint, device, args.precision, args.memory_format)
    try:
        trained, side = model.config()["size"], canvas_size(model, args.size)
    except ValueError as exc:
        raise DataError(f"--size: {exc}") from None
    if args.windows and side <= trained:
        raise DataError(f"--windows draws a canvas larger than the {trained}x{trained} the network was trained on; "
                        f"give --size (e.g. --size {4 * trained})")
    if args.windows and side % (trained // 2):
        raise DataError(f"--size {side} with --windows: expected a multiple of {trained // 2} (windows of {trained} "
                        f"every {trained // 2} pixels)")
    if args.batch_size is None:  # as many pixels per batch as 256 images of the training size
        args.batch_size = max(1, 256 * trained ** 2 // side ** 2)
    try:
        recommended = fast_sampler(payload) if args.fast else recommended_sampler(payload)
        vetted = fast_sampler_evidence(payload) if args.fast else ""
    except ValueError as exc:
        raise DataError(f"--fast: {args.checkpoint} {exc}" if args.fast else
                        f"{args.checkpoint}: its recommended sampler is unusable ({exc})") from None
    try:
        sampler = recommended.replace(kind=args.sampler, steps=args.steps, eta=args.eta, variance=args.variance,
                                      clip=False if args.no_clip else None, guidance=args.guidance,
                                      spacing=args.spacing)
        sampler.timesteps(schedule)  # steps beyond the model's schedule: said before any work
    except ValueError as exc:
        raise DataError(f"--sampler/--steps/--eta/--guidance: {exc}") from None
    stats, condition, targets, unguided = payload.get("condition"), None, {}, ""
    if args.within and not stats:
        raise DataError(f"--within: {args.checkpoint} was trained without a condition, so its samples have no "
                        f"target to be within; keep closed networks with --closed alone")
    if args.condition:
        targets = parse_targets(stats, args.condition, str(args.checkpoint))
        condition = target_vector(stats, targets)
        check_guidance(payload, sampler.guidance, str(args.checkpoint))
    elif args.guidance:
        raise DataError(f"--guidance {args.guidance:g} needs a --condition to guide towards" if stats else
                        f"--guidance {args.guidance:g}: {args.checkpoint} was trained without a condition, so "
                        f"there is nothing to guide towards; sample it without --guidance")
    elif sampler.guidance:  # a conditional model sampled without a condition: nothing to guide towards
        sampler, recommended = sampler.replace(guidance=0.0), recommended.replace(guidance=0.0)
        unguided = "; drawing it without guidance, as no --condition was given (it was measured with one)"
    wanted = _wanted(args, targets, trained, side, world, tiles=samples_tile(model))
    if world.main:
        prepare_output_dir(Path(args.out), args.force)  # refuse a non-empty folder before sampling
        if args.fast:
            changed = f"; drawing {sampler.describe()} instead, as the flags ask" if sampler != recommended else ""
            print(f"the model's fast sampler, {recommended.describe()}, "
                  f"{vetted or 'was stored without a record of what vetted it'}{unguided}{changed}")
            print(_compact_hint(args.checkpoint, args.precision, device), end="")
        print(_condition_note(args, stats, trained, side), end="")
    return model, schedule, payload, sampler, condition, wanted


def _condition_note(args: argparse.Namespace, stats: dict | None, trained: int, side: int) -> str:
    """A line on what a conditional model is asked for, where it is easy to mistake: no --condition
    (unconditional samples; --fast says so itself), or a canvas larger than the training images
    (the condition is a training image's, so it holds for each window of that size); '' elsewhere."""
    if stats and not args.condition and not args.fast:
        return (f"{args.checkpoint} is conditioned on {', '.join(stats['names'])}: drawing unconditional samples "
                f"(the model's own mix), without guidance, as no --condition was given (e.g. --condition "
                f"{stats['names'][0]}={_example_target(stats)})\n")
    if args.condition and side != trained:
        return (f"{' '.join(args.condition)} is asked of each {trained}x{trained} window of the {side}x{side} canvas "
                f"(the size of the images the condition was measured on), not of the whole canvas\n")
    return ""


def _check_gif(args: argparse.Namespace, world: World) -> None:
    """--gif: one process's images, into a new file (or a GIF --force may replace) that the samples
    written into --out will not replace."""
    if args.gif and world.size > 1:
        raise DataError("--gif follows one process's images; sample with python -m helpers, not torchrun")
    _new_file(args.gif, "--gif", replace=args.force)
    if args.gif and Path(args.gif).absolute().parent == Path(args.out).absolute() and \
            _written_by_sample(Path(args.gif).name, args.n):
        raise DataError(f"--gif {args.gif}: sample writes a file of that name into --out {args.out}, which would "
                        f"replace the GIF; expected another name")


def _written_by_sample(name: str, n: int) -> bool:
    """Whether sample --n ``n`` writes a file called ``name`` into its --out folder."""
    stem = name.removesuffix(".png")
    return name == MANIFEST or (stem != name and stem.isdigit() and int(stem) < n and png_name(int(stem), n) == name)


def _example_target(stats: dict) -> str:
    """A value to show in an example --condition: the training set's mean of the first condition."""
    return f"{stats['mean'][0]:.0f}" if stats["names"][0] in COUNTS else f"{stats['mean'][0]:.3g}"


def _compact_hint(checkpoint: str, precision: str, device: torch.device) -> str:
    """sample --fast's pointer to the compact model, as a line, where the shipped model runs in fp32
    on a CPU without native bf16 (there the compact one is the fast route); '' elsewhere."""
    if (device.type != "cpu" or native_bf16(device) or resolve_precision(precision, device) != "fp32"
            or Path(checkpoint).resolve() != DEFAULT_MODEL.resolve() or not COMPACT_MODEL.is_file()):
        return ""
    return (f"this processor computes no bf16 natively, so this model samples in fp32; an older compact model, "
            f"trained on a CPU, is faster here and meets the fidelity bar by a thinner margin: --checkpoint "
            f"{COMPACT_MODEL} --memory-format channels_last, without --fast (its README: "
            f"{COMPACT_MODEL.parent / 'README.md'})\n")


def _wanted(args: argparse.Namespace, targets: dict[str, float], trained: int, side: int, world: World,
            tiles: bool) -> Wanted:
    """What --closed and --within ask of every image kept, checked against the rest of the command
    (``tiles``: the model's images tile, so a closed network is closed on the torus)."""
    wanted = Wanted(closed=args.closed, within=parse_within(args.within or [], targets, COUNTS), tiles=tiles)
    args.max_draws = _max_draws(args, bool(wanted))
    if not wanted:
        return wanted
    if args.gif:
        raise DataError("--gif records the first images drawn, which --closed and --within may throw away; "
                        "drop --gif")
    if world.size > 1:
        raise DataError("--closed and --within keep the images one process draws, in order; sample with "
                        "python -m helpers, not torchrun")
    if wanted.within and side != trained:
        raise DataError(f"--within measures images of the {trained}x{trained} the model was trained on; a "
                        f"{side}x{side} canvas holds more grains than the condition asks of a {trained}x{trained} "
                        f"image; drop --size")
    return wanted


def _max_draws(args: argparse.Namespace, keeping: bool) -> int | None:
    """--max-draws as sample and control use it: given only with --closed or --within, at least
    --n, by default ``keep.DRAWS_PER_IMAGE`` x --n."""
    if not keeping:
        if args.max_draws is not None:
            raise DataError("--max-draws limits the images drawn for --closed or --within; give one of them")
        return None
    most = args.max_draws or DRAWS_PER_IMAGE * args.n
    if most < args.n:
        raise DataError(f"--max-draws {most}: expected at least --n ({args.n})")
    return most


def _write_json(path: Path | None, report: dict) -> None:
    """Write a report as indented JSON when a path was given (checked by ``_new_file`` first), and say where."""
    if path:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(metrics.json_safe(report), indent=2, allow_nan=False) + "\n")
        print(f"wrote {path}")


def _evaluate(args: argparse.Namespace) -> None:
    boundary_masks = metrics.boundary_masks
    _new_file(args.json, "--json")
    generated = boundary_masks(load_uint8(args.generated))
    reference = boundary_masks(load_uint8(args.reference, column=args.reference_column))
    heldout = boundary_masks(load_uint8(args.heldout)) if args.heldout else None
    if generated.shape[1:] != reference.shape[1:]:
        raise DataError(f"{args.generated} holds {generated.shape[2]}x{generated.shape[1]} images but "
                        f"{args.reference} holds {reference.shape[2]}x{reference.shape[1]}; expected one size")
    report = metrics.evaluation_report(generated, reference, args.splits, args.seed, heldout)
    print(metrics.format_report(report))
    _write_json(args.json, report)


def _bench(args: argparse.Namespace) -> None:
    _new_file(args.json, "--json")
    report = run_bench(quick=args.quick, models=args.model, batch_sizes=args.batch_size,
                       memory_formats=args.memory_format, compile_modes=args.compile,
                       sample_n=args.sample_n, sample_batch=args.sample_batch,
                       sample_precisions=args.sample_precision, profile=args.profile,
                       images_per_call=args.images_per_call,
                       progress=(lambda line: None) if args.quiet else print)
    print(format_bench(report))
    _write_json(args.json, report)


CONTROL_SAMPLING = ("vary", "targets", "n", "guidance", "sampler", "steps", "eta", "spacing", "precision",
                    "memory_format", "seed", "within", "closed", "max_draws")


def _control(args: argparse.Namespace) -> None:
    _new_file(args.json, "--json")
    _new_file(args.plot, "--plot")
    if args.json and args.plot and args.json.absolute() == args.plot.absolute():
        raise DataError(f"--json and --plot both name {args.json}; expected two files (the report and its plot)")
    if args.n is not None and args.n < 2:
        raise DataError(f"--n {args.n}: each target's samples are compared as a set with real images; expected "
                        f"2 or more")
    if args.plot and args.plot.suffix.lower().lstrip(".") not in FigureCanvasBase.get_supported_filetypes():
        raise DataError(f"--plot {args.plot}: expected a picture file whose name ends in .png, .pdf or .svg (or "
                        f"another format matplotlib writes), said before the sweep")
    if args.measure:
        return _control_measured(args)
    args.n, args.guidance, args.seed = args.n or 64, args.guidance or [0.0, 1.0, 2.0, 4.0], args.seed or 0
    device = pick_device()
    args.precision = args.precision or "fp32"
    args.memory_format = args.memory_format or sampling_layout(args.precision, device)
    model, schedule, payload = load_model(args.checkpoint, device, args.precision, args.memory_format)
    stats = payload.get("condition")
    name = measured_condition(stats, str(args.checkpoint), args.vary)
    targets = args.targets or default_targets(stats, name=name)
    check_targets(stats, name, targets)  # each inside the range, and a whole number of a count
    try:
        sampler = recommended_sampler(payload).replace(kind=args.sampler, steps=args.steps, eta=args.eta,
                                                       spacing=args.spacing)
        sampler.timesteps(schedule)  # steps beyond the model's schedule: said before any work
    except ValueError as exc:
        raise DataError(f"--sampler/--steps/--eta: {exc}") from None
    for w in args.guidance:
        check_guidance(payload, w, str(args.checkpoint))
    given = args.within is not None or bool(args.closed)
    most = _max_draws(args, given)
    keeping = Keeping(args.within, bool(args.closed), most) if given else None
    start = time.perf_counter()
    reports = guidance_sweep(model, schedule, stats, targets, args.n, sampler, scales=args.guidance,
                             name=name, seed=args.seed, device=device, splits=args.splits, keeping=keeping)
    print(format_control(reports))
    precision, layout = resolve_precision(args.precision, device), args.memory_format
    print(f"({len(targets)} targets x {args.n} samples x {len(reports)} guidance scales in "
          f"{time.perf_counter() - start:.0f} s on {device}, {weights_words(precision, layout)})")
    _control_outputs(args, payload, reports, precision=precision, memory_format=layout)


def _control_measured(args: argparse.Namespace) -> None:
    """control --measure: samples drawn elsewhere (tools/gpu_session.py) measured here, against the
    same real images at the targets as a run of control that drew them itself."""
    given = [f"--{option.replace('_', '-')}" for option in CONTROL_SAMPLING if getattr(args, option) is not None]
    if given:
        raise DataError(f"--measure {args.measure}: the targets, samples and samplers come from the file; "
                        f"expected no {', '.join(given)}")
    try:
        drawn = DrawnSamples.load(args.measure)
    except ValueError as exc:
        raise DataError(str(exc)) from None
    payload = load_checkpoint(args.checkpoint)
    stats = payload.get("condition")
    measured_condition(stats, str(args.checkpoint), drawn.name)  # conditioned on what the samples vary
    if drawn.weights != weights_digest(payload):
        raise DataError(f"--measure {args.measure}: drawn by the model with weights {drawn.weights}, not by "
                        f"{args.checkpoint} ({weights_digest(payload)}); expected the model file that drew them")
    start = time.perf_counter()
    reports = list(measure(drawn, stats, args.splits))
    print(format_control(reports))
    print(f"({len(drawn.targets)} targets x {drawn.n} samples x {len(reports)} samplers from {args.measure}, "
          f"measured in {time.perf_counter() - start:.0f} s)")
    _control_outputs(args, payload, reports, samples=str(args.measure))


def _control_outputs(args: argparse.Namespace, payload: dict, reports, **more) -> None:
    _write_json(args.json, {"model": str(args.checkpoint), "step": payload["step"], **more,
                            "reports": [r.summary() for r in reports]})
    if args.plot:
        plt.close(control_plot(reports, args.plot))
        print(f"wrote {args.plot}")


def _export(args: argparse.Namespace) -> None:
    """Each image of a folder labelled and written in one format; nothing existing is replaced."""
    require(args.format)
    paths = list_images(Path(args.input))
    targets = [export_targets(args.format, Path(args.out) / path.stem) for path in paths]
    clash = next((t for group in targets for t in group if t.exists()), None)
    if clash is not None:
        raise FileExistsError(f"{clash}: already exists; nothing was written (choose another --out)")
    masks = metrics.boundary_masks(read_images(paths))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    start, counts = time.perf_counter(), []
    for index, (path, mask) in enumerate(tqdm(list(zip(paths, masks)), desc=f"export {args.format}", unit="img",
                                              disable=args.quiet)):
        try:
            micro = microstructure(mask, texture=args.texture if args.format != "npy" else None, spread=args.spread,
                                   seed=(args.seed, index), pixel_size=args.pixel_size, periodic=not args.not_periodic)
        except ValueError as exc:
            raise DataError(f"{path}: {exc}") from None
        export_microstructure(micro, args.format, Path(args.out) / path.stem, periodic=not args.not_periodic)
        counts.append(micro.grains)
    print(f"exported {len(paths)} microstructures to {args.out} as {args.format} ({min(counts)}-{max(counts)} grains, "
          f"{sum(counts) / len(counts):.1f} on average; {time.perf_counter() - start:.1f} s)")


def _tutorial(args: argparse.Namespace) -> None:
    # papermill and nbformat load only for this command: they take seconds to import
    from papermill.exceptions import PapermillExecutionError

    from .notebooks import notebook_paths, run_notebook

    paths, first = notebook_paths(args.only), time.perf_counter()
    for path in paths:
        start = time.perf_counter()
        print(f"running {path.name} ...", flush=True)
        try:
            executed = run_notebook(path, Path(args.out), smoke=args.smoke)
        except PapermillExecutionError as exc:
            raise LessonError(f"{path.name} failed in cell {exc.exec_count}: {exc.ename}: "
                              f"{exc.evalue} (executed copy in {args.out})") from None
        print(f"  -> {executed} ({time.perf_counter() - start:.0f} s)", flush=True)
    print(f"{len(paths)} lesson(s) in {(time.perf_counter() - first) / 60:.1f} min", flush=True)


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line naming the flag, then where help is (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _add_data(commands) -> None:
    """data make: a synthetic dataset folder."""
    data = commands.add_parser("data", help="make datasets").add_subparsers(dest="action",
                                                                            required=True)
    make = data.add_parser("make", help="generate a dataset folder (PNGs, manifest.csv, README.md)",
                           description="Generate synthetic microstructures into a folder.")
    make.add_argument("--kind", required=True, choices=KINDS)
    make.add_argument("--n", type=int, default=1000, help="number of images (default 1000)")
    make.add_argument("--size", type=int, default=64, help="image side in pixels (default 64)")
    make.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    make.add_argument("--out", required=True, type=Path, help="output folder (new or empty)")
    make.add_argument("--force", action="store_true", help="write into a non-empty folder")
    make.add_argument("--quiet", action="store_true", help="no progress bar")
    make.set_defaults(run=_data_make)


def _add_train(commands) -> None:
    """train: a run folder from a dataset."""
    train = commands.add_parser("train", help="train a denoiser (headless)",
                                description="Train a DDPM denoiser on a dataset folder.")
    train.add_argument("--data", help="dataset name or folder of PNGs (default: voronoi_gb_64)")
    train.add_argument("--out", required=True, type=Path, help="run folder (new, or the run to --resume)")
    train.add_argument("--model", choices=MODELS, help="the network (default: unet)")
    train.add_argument("--profile", choices=PROFILES,
                       help="settings bundle (default: gpu on CUDA, else cpu)")
    train.add_argument("--steps", type=_positive_int, help="training steps (overrides the profile; with "
                       "--resume, the new total to train on to)")
    train.add_argument("--batch-size", type=_positive_int)
    train.add_argument("--lr", type=_positive_float)
    train.add_argument("--lr-decay", type=int, metavar="N", help="decay the learning rate linearly to 0 "
                       "over the run's last N steps (default 0: constant); with --resume, anneals a "
                       "run trained at a constant rate")
    train.add_argument("--seed", type=_non_negative_int)
    train.add_argument("--precision", choices=PRECISIONS, help="auto (default): bf16 on GPUs that "
                       "compute it natively (A100, H100, RTX 30xx on), fp16 with loss scaling on older "
                       "ones (T4, V100), fp32 on a CPU or MPS")
    train.add_argument("--limit", type=_positive_int, help="use only the first N images")
    train.add_argument("--bar-every", type=_non_negative_int, metavar="N", help="check the fidelity bar on EMA "
                       "samples every N steps, logged to bar.csv with the training time so far")
    train.add_argument("--bar-samples", type=_positive_int, metavar="N", help="samples per fidelity-bar check (200)")
    train.add_argument("--prediction", choices=PREDICTIONS, help="what the network learns to output: "
                       "the noise (eps, Ho et al.) or the velocity v (steadier at high noise); "
                       "default: the profile's")
    train.add_argument("--eta", type=_fraction, help="DDIM eta of the run's sample grids and fidelity-bar "
                       "checks, and the sampler --export recommends: 0 (deterministic) to 1; "
                       "default: the profile's")
    train.add_argument("--compile", nargs="?", const="default", choices=COMPILE_MODES,
                       help="torch.compile the network: default, or reduce-overhead (adds CUDA "
                       "graphs); GPU; falls back to eager where it cannot")
    train.add_argument("--memory-format", choices=MEMORY_FORMATS, help="layout of images and weights "
                       "(default: contiguous, NCHW)")
    train.add_argument("--condition", nargs="+", action="extend", metavar="COLUMN",
                       help="condition the network on these "
                       "numeric manifest columns (e.g. grains on voronoi_gb_range_64), for sample --condition")
    train.add_argument("--init-from", type=Path, metavar="MODEL", help="start from this model file's EMA weights "
                       "(fine-tuning; same network and schedule, e.g. data/pretrained/model.pt with --profile gpu; "
                       "with --condition its new condition layers start silent) instead of random ones")
    train.add_argument("--resume", action="store_true", help="continue the run in --out")
    train.add_argument("--stop-after", type=_positive_int, help="stop this session at that step (resumable)")
    train.add_argument("--max-minutes", type=_positive_float, help="end this session (with a checkpoint) after "
                       "this many minutes of training; --resume continues")
    train.add_argument("--export", type=Path, help="also write the EMA weights (fp16) to this file")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)


def _add_sample(commands) -> None:
    """sample: PNGs (and a GIF) from a model file."""
    sample = commands.add_parser("sample", help="generate microstructures from a checkpoint",
                                 description="Sample PNGs (and optionally a GIF) from a checkpoint.")
    sample.add_argument("--checkpoint", default=str(DEFAULT_MODEL), help="checkpoint or weights file "
                        "(default: the shipped pretrained model)")
    sample.add_argument("--n", "--count", dest="n", type=_positive_int, default=16,
                        help="number of samples (write --count under torchrun, whose parser refuses --n as an "
                        "abbreviation of its own options)")
    sample.add_argument("--sampler", choices=SAMPLERS,
                        help="default: the model's recommended sampler, else ddim (dpm++2m: "
                        "DPM-Solver++(2M), good in 10-25 steps)")
    sample.add_argument("--steps", type=_positive_int, help="DDIM or DPM-Solver steps (ignored by ddpm); default: "
                        "the model's, else 50")
    sample.add_argument("--eta", type=_fraction, help="fresh noise per step for ddim and dpm++2m, 0 (deterministic) "
                        "to 1 (in between, the two weigh it differently); default: the model's, else 0")
    sample.add_argument("--spacing", choices=SPACINGS, help="timesteps of ddim and dpm++2m: uniform (evenly "
                        "spread) or quadratic (crowded near the data, DDIM's other choice); default: the model's, "
                        "else uniform")
    sample.add_argument("--variance", choices=VARIANCES,
                        help="DDPM step variance: beta_t (the original's; default) or beta-tilde_t")
    sample.add_argument("--no-clip", action="store_true", help="do not clip the x0 estimate to [-1, 1]")
    sample.add_argument("--condition", nargs="+", action="extend", metavar="NAME=VALUE",
                        help="a conditional model: the "
                        "descriptors to ask for, e.g. grains=30 (inside the range it was trained on)")
    sample.add_argument("--guidance", type=_non_negative_float, metavar="W", help="classifier-free guidance "
                        "scale w >= 0 (0: the conditional model alone); default: the model's")
    sample.add_argument("--closed", action="store_true", help="keep only images whose boundary network is "
                        "closed (two grains or more, no dangling ends; for a periodic model's images, which tile, "
                        "counted on the torus, so also none across the seam), drawing more until --n are kept")
    sample.add_argument("--within", nargs="+", action="extend", metavar="NAME=TOLERANCE",
                        help="with --condition: keep only images whose measured NAME lies within TOLERANCE of its "
                        "target (e.g. grains=1), drawing more until --n are kept")
    sample.add_argument("--max-draws", type=_positive_int, metavar="N", help="with --closed or --within: draw "
                        f"at most N images (default {DRAWS_PER_IMAGE} x --n); if fewer than --n passed, those are "
                        "written and the command fails")
    sample.add_argument("--seed", type=_non_negative_int, default=0)
    sample.add_argument("--batch-size", type=_positive_int, help="images per batch (default: 256 at the "
                        "training size, fewer on a larger canvas: the same pixels per batch)")
    sample.add_argument("--size", type=_positive_int, help="draw a larger canvas than the network was trained on, "
                        "e.g. 256 (a periodic UNet's samples tile at any size it takes: a multiple of 4 for the default UNet, of 32 "
                        "with --windows)")
    sample.add_argument("--windows", action="store_true", help="with --size: denoise the canvas as overlapping "
                        "windows of the training size, blended at every step (MultiDiffusion; 4x the arithmetic)")
    sample.add_argument("--fast", action="store_true", help="the model's fast sampler (fewer network calls than "
                        "its recommended one, measured to meet the fidelity bar on it, or for a conditional model to be "
                        "no worse under control beyond set margins; the shipped models' READMEs name it), "
                        "--precision auto and, on a CPU, --memory-format channels_last; the flags given still win")
    _add_weights(sample)
    sample.add_argument("--out", required=True, type=Path, help="folder for the PNGs (new or empty)")
    sample.add_argument("--force", action="store_true",
                        help="write into a non-empty folder (replacing its images and manifest.csv of the same "
                        "names), replace an existing GIF")
    sample.add_argument("--gif", type=Path, help="also write a GIF of the reverse process here")
    sample.add_argument("--quiet", action="store_true")
    sample.set_defaults(run=_sample)


def _add_weights(sample) -> None:
    """sample's options for the network's weights: their precision and memory layout."""
    sample.add_argument("--precision", choices=SAMPLING_PRECISIONS,
                        help="weights of the network: bf16 runs it in bfloat16, the sampler stays "
                        "float32 (faster on processors with bf16 arithmetic; measured in the README); "
                        "auto picks bf16 where the processor computes it natively, else fp32; "
                        "default: fp32, auto with --fast")
    sample.add_argument("--memory-format", choices=MEMORY_FORMATS, help="layout of the weights and images: "
                        "channels_last (NHWC) is faster on a CPU; contiguous (NCHW) draws each image bit for bit "
                        "the same in any batch in fp32; default: channels_last on a CPU with bf16 or --fast, "
                        "else contiguous")


def _add_evaluate(commands) -> None:
    """evaluate: two folders of PNGs against the noise floor."""
    evaluate = commands.add_parser("evaluate", help="compare generated and real microstructures",
                                   description="Descriptor distances of two folders of PNGs, as "
                                               "ratios to the real-vs-real noise floor.")
    evaluate.add_argument("--generated", required=True, type=Path, help="folder of generated PNGs")
    evaluate.add_argument("--reference", required=True, help="real images: dataset name or folder")
    evaluate.add_argument("--reference-column", default="file",
                          help="manifest column of the reference (grain_growth_64: boundary)")
    evaluate.add_argument("--heldout", type=Path, help="real images the model never saw "
                          "(for the memorisation baseline; default: leave-one-out on the reference)")
    evaluate.add_argument("--splits", type=_positive_int, default=20, help="random splits for the noise floor")
    evaluate.add_argument("--seed", type=_non_negative_int, default=0)
    evaluate.add_argument("--json", type=Path, help="also write the report as JSON")
    evaluate.set_defaults(run=_evaluate)


def _add_bench(commands) -> None:
    """bench: throughput of training and sampling."""
    bench = commands.add_parser("bench", help="training and sampling throughput, original vs ours",
                                description="Measure the original recipe against our fast path, "
                                            "in one process, on the current device.")
    bench.add_argument("--quick", action="store_true", help="small settings (under a minute on a CPU)")
    bench.add_argument("--model", nargs="+", choices=NETWORKS, default=list(MODELS),
                       help="networks whose training step to time (default: unet and seed-unet; compact: the cpu "
                            "profile's UNet); the sampling rows time the default UNet")
    bench.add_argument("--batch-size", nargs="+", type=_positive_int, metavar="N",
                       help="training batch sizes (default: 128 on CUDA, 32 on a CPU, 8 with --quick)")
    bench.add_argument("--memory-format", nargs="+", choices=MEMORY_FORMATS, default=["contiguous"],
                       help="layouts of images and weights (default: contiguous, NCHW)")
    bench.add_argument("--compile", nargs="+", choices=COMPILE_MODES, default=["none"],
                       help="torch.compile modes (none: eager; compile time is reported apart)")
    bench.add_argument("--sample-n", type=_positive_int, metavar="N", help="images per sampling run "
                       "(default 64, 4 with --quick)")
    bench.add_argument("--sample-batch", type=_positive_int, metavar="N",
                       help="sampling batch (default: all the images, at most 256)")
    bench.add_argument("--sample-precision", nargs="+", choices=SAMPLING_PRECISIONS, default=["fp32"],
                       help="weights of the sampling network (bf16: network in bf16, sampler in fp32)")
    bench.add_argument("--images-per-call", nargs="+", type=_positive_int, metavar="N", default=[None],
                       help="the most images one network call takes while sampling (default: "
                            f"{CPU_PIXELS_PER_CALL // 64 ** 2} of 64x64 on a CPU, the whole batch on a GPU)")
    bench.add_argument("--profile", action="store_true", help="add a profiler summary to every row of ours, "
                       "not the original recipe's (kernel launches, GPU-busy share, top kernels)")
    bench.add_argument("--json", type=Path, help="also write the numbers as JSON")
    bench.add_argument("--quiet", action="store_true", help="no progress lines; the report is still printed")
    bench.set_defaults(run=_bench)


def _add_control(commands) -> None:
    """control: a conditional model's achieved descriptor against its target, by guidance."""
    control = commands.add_parser("control", help="how well a conditional model hits its targets",
                                  description="Sample a conditional model at several targets and guidance "
                                              "scales: R^2 and mean absolute error of achieved against target, "
                                              "and ratios to the noise floor against fresh real images at "
                                              "each target, then against real images matched to each "
                                              "sample's own measured value.")
    control.add_argument("--checkpoint", required=True, help="a conditional model (train --condition)")
    control.add_argument("--vary", metavar="COLUMN", help="for a model conditioned on several descriptors: the one "
                         "the targets are values of (default: its first); the others are held at the median of "
                         "real images at each target")
    control.add_argument("--targets", type=float, nargs="+", metavar="V",
                         help="target values (default: 8 across the model's training range)")
    control.add_argument("--n", type=_positive_int, help="samples per target (default 64)")
    control.add_argument("--guidance", type=_non_negative_float, nargs="+",
                         metavar="W", help="guidance scales to compare (default 0 1 2 4)")
    control.add_argument("--sampler", choices=SAMPLERS, help="default: the model's recommended sampler")
    control.add_argument("--steps", type=_positive_int, help="sampler steps (default: the model's)")
    control.add_argument("--eta", type=_fraction, help="fresh noise per step, 0 to 1 (default: the model's)")
    control.add_argument("--spacing", choices=SPACINGS, help="uniform or quadratic timesteps (default: the model's)")
    control.add_argument("--precision", choices=SAMPLING_PRECISIONS, help="default: fp32")
    control.add_argument("--memory-format", choices=MEMORY_FORMATS, help="layout of the weights and images, as "
                         "for sample (default: channels_last on a CPU with bf16, else contiguous)")
    control.add_argument("--seed", type=_non_negative_int, help="default: 0")
    control.add_argument("--within", type=_non_negative_float, metavar="TOLERANCE", help="judge only samples whose "
                         "measured descriptor (the one --targets are values of) lies within TOLERANCE of the target, "
                         "as sample --within keeps them, drawing more until --n are kept")
    control.add_argument("--closed", action="store_true", default=None, help="judge only samples with a closed "
                         "boundary network (two grains or more, no dangling ends: as sample --closed keeps them), "
                         "drawing more until --n are kept")
    control.add_argument("--max-draws", type=_positive_int, metavar="N", help="with --within or --closed: draw "
                         f"at most N samples for a target (at each guidance scale), else fail (default "
                         f"{DRAWS_PER_IMAGE} x --n)")
    control.add_argument("--splits", type=_positive_int, default=20, help="random splits for each noise floor")
    control.add_argument("--measure", type=Path, metavar="FILE", help="measure the samples in FILE instead of "
                         "drawing them (the control.npz of tools/gpu_session.py, drawn on a GPU by --checkpoint)")
    control.add_argument("--json", type=Path, help="also write the reports as JSON")
    control.add_argument("--plot", type=Path, help="also write the control plot (PNG)")
    control.set_defaults(run=_control)


def _add_tutorial(commands) -> None:
    """tutorial: the lessons, executed."""
    tutorial = commands.add_parser("tutorial", help="execute the notebooks into an output folder",
                                   description="Execute notebooks/ in order with papermill.")
    tutorial.add_argument("--out", default="outputs", help="folder for executed notebooks")
    tutorial.add_argument("--smoke", action="store_true", help="smallest settings (for tests)")
    tutorial.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 02")
    tutorial.set_defaults(run=_tutorial)


def _add_export(commands) -> None:
    """export: boundary images as grain label maps in a simulation's file format."""
    export = commands.add_parser("export", help="label grains and write them for a simulation",
                                 description="Turn boundary images (a folder of PNGs) into periodic grain label "
                                 "maps and write each in a format of the field's tools, with a grain table "
                                 "(<name>_grains.csv). damask, ang and vtk need: pip install -r requirements-materials.txt")
    export.add_argument("--in", dest="input", required=True, type=Path, help="folder of boundary PNGs "
                        "(white boundaries on black, e.g. the output of sample)")
    export.add_argument("--format", required=True, choices=FORMATS, help="damask: DAMASK grid geometry (.vti) "
                        "and material.yaml; ang: EBSD map (EDAX/TSL); vtk: image data for ParaView; npy: labels")
    export.add_argument("--out", required=True, type=Path, help="folder for the files (existing files are "
                        "never replaced)")
    export.add_argument("--texture", choices=("random", *TEXTURES), default="random",
                        help="orientations of the grains (damask, ang, vtk): uniformly random, or scattered "
                        "about an fcc texture component")
    export.add_argument("--spread", type=_non_negative_float, default=10.0,
                        help="Gaussian scatter about the texture component, degrees (default 10)")
    export.add_argument("--pixel-size", type=_positive_float, default=1.0, help="pixel edge in micrometres")
    export.add_argument("--seed", type=_non_negative_int, default=0, help="seed of the orientations")
    export.add_argument("--not-periodic", action="store_true", help="the images do not tile: a grain cut by an "
                        "edge is not joined to the other side")
    export.add_argument("--quiet", action="store_true")
    export.set_defaults(run=_export)


def build_parser() -> argparse.ArgumentParser:
    parser = _OneLineParser(prog="python -m helpers", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_OneLineParser)
    for add in (_add_data, _add_train, _add_sample, _add_evaluate, _add_control, _add_bench, _add_export,
                _add_tutorial):
        add(commands)
    return parser


# the commands that run as several processes under torchrun; the others run in one
DISTRIBUTED_COMMANDS = ("train", "sample")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if distributed.launched() and int(os.environ["WORLD_SIZE"]) > 1 and args.command not in DISTRIBUTED_COMMANDS:
            if os.environ["RANK"] != "0":  # every rank refuses; rank 0 says why
                return 2
            raise DataError(f"{args.command} runs in one process; start it with python -m helpers, not torchrun "
                            f"(torchrun runs {' and '.join(DISTRIBUTED_COMMANDS)})")
        args.run(args)
        distributed.barrier()  # every rank done before the group is taken down
    except RankError:  # another rank failed and said why; this one stops with it
        return 2
    except (DataError, LessonError, FileNotFoundError, FileExistsError, TrainingError, CheckpointError,
            ConditionError, MissingPackage, ValueError) as exc:
        print(f"error: {distributed.prefix()}{exc}", file=sys.stderr)
        return 2
    finally:
        distributed.leave()
    return 0


if __name__ == "__main__":
    distributed.end_process(main())
