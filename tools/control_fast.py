"""Measure a conditional model's candidate fast samplers against its recommended sampler, by control.

    python tools/control_fast.py --samplers dpm++2m:30:1 --precision bf16 --json ROWS.json
    python tools/control_fast.py --samplers dpm++2m:30:1 --precision fp32 --json ROWS.json --store-fast

Each sampler in --samplers draws --n samples (64) at each of --targets (default: control's eight,
spread over the training range) with --model's recommended guidance and seed --seed, with
--precision weights, and is measured as ``python -m helpers control`` measures (R^2, MAE, ratios,
dangling ends). It is compared with the model's recommended sampler measured the same way with
fp32 weights, on the same targets, samples per target and seed (measured first unless --json holds
that row): ``helpers.control.falls_behind`` says where it falls behind by more than
``FAST_TOLERANCES``. A candidate's row --json already holds is not drawn again either (the draws are
seeded: with the same torch, which each row records, they would be the same samples), only judged
again against the recommended sampler's row, so a model given a new recommended sampler
(``helpers.checkpoint.store_recommended_sampler``) has its fast sampler vetted against it by drawing
the new one alone; give another --json to draw again.
Rows are printed and merged into --json, named by the model's weights, the sampler with its guidance,
the precision (with the layout where it is not the precision's default), seed, --n and targets.
Only a model conditioned on one count (grains) is measured: the tolerances are in its units.

--store-fast keeps the one sampler measured, which must take fewer network calls than the
recommended one, as the model's fast sampler (``sample --fast``) if, on control's default targets
(or more) with ``FAST_VETTING_N`` samples each or more, it was as good in a row of each precision
``sample --fast`` may pick (fp32 and bf16) and fell behind in none (other seeds included; each row
judged again with today's tolerances): measure the other precision first (checked before
anything is measured). The file then keeps every
such row (precision, seed, samples, R^2, MAE and dangling ends beside the recommended sampler's),
which ``sample --fast`` prints. An unconditional model's fast sampler is vetted by the fidelity bar
instead (``tools/sampler_sweep.py``).

--memory-format is the layout of the candidates' weights and images (default: ``sample``'s without
--fast: NCHW in fp32, NHWC in bf16); ``sample --fast`` runs fp32 in NHWC on a CPU, whose rounding
differs from NCHW's in the last bits, so a row in another layout than the default says so in its
key, and a seed measured in both layouts counts once, in --fast's. The recommended sampler is
measured as its published numbers were: fp32, NCHW.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

from helpers import ROOT  # noqa: E402
from helpers.checkpoint import fast_sampler_refusal, load_model, store_fast_sampler, weights_digest  # noqa: E402
from helpers.conditions import ConditionError  # noqa: E402
from helpers.control import (COUNTS, FAST_VETTING_N, check_targets, controllability, default_targets,  # noqa: E402
                            falls_behind)
from helpers.device import (AUTO_SAMPLING_PICKS, MEMORY_FORMATS, drawn_layout, sampling_layout,  # noqa: E402
                            weights_words)
from helpers.sample import Sampler, call_size, fast_sampler_evidence, recommended_sampler  # noqa: E402
from pretrained_report import json_rows, layout_suffix, model_file, one_set_per_seed, parse_sampler, spec  # noqa: E402

DEFAULT_MODEL = ROOT / "data" / "pretrained_conditional" / "model.pt"
RECOMMENDED_PRECISION = "fp32"  # what the model's published control numbers were measured with


def key(digest: str, sampler: Sampler, precision: str, layout: str, args: argparse.Namespace,
        targets: list[float]) -> str:
    """A row's name in --json: the model, the sampler with its guidance, and how it was measured
    (the layout only where it is not the precision's default)."""
    return (f"{digest}:{spec(sampler)}:guidance{sampler.guidance:g}:{precision}{layout_suffix(precision, layout)}:"
            f"seed{args.seed}:n{args.n}:targets{','.join(f'{t:g}' for t in targets)}")


def measure(path: Path, sampler: Sampler, precision: str, layout: str, args: argparse.Namespace,
            targets: list[float]) -> dict:
    """One sampler's control over --targets at ``precision`` in ``layout``, as a row of --json."""
    cpu = torch.device("cpu")
    model, schedule, payload = load_model(path, cpu, precision, layout)
    start = time.perf_counter()
    report = controllability(model, schedule, payload["condition"], targets, args.n, sampler, seed=args.seed,
                             device=cpu)
    summary = report.summary()  # every number control reports, per target too
    words = summary.pop("sampler")
    return {"sampler_words": words, **summary, "precision": precision, "memory_format": layout, "seed": args.seed,
            "n": args.n, "samples": args.n * len(targets), "weights": weights_digest(payload), **sampler.stored(),
            "images_per_call": call_size(cpu, model.config()["size"], batch=args.n),
            "seconds": time.perf_counter() - start, "threads": torch.get_num_threads(), "torch": torch.__version__}


def judged(row: dict, recommended: dict) -> dict:
    """``row`` with what the model file keeps of the comparison, and whether it is as good."""
    behind = falls_behind(row, recommended)
    return {**row, "targets_count": len(row["targets"]), "recommended_words": recommended["sampler_words"],
            "recommended_r2": recommended["r2"], "recommended_mae": recommended["mae"],
            "recommended_dangling_ends": recommended["dangling_ends"], "falls_behind": behind, "as_good": not behind}


def table_row(row: dict, label: str, verdict: str) -> str:
    """One row of the printed Markdown table: ``label``, then what ``row`` measured, then ``verdict``."""
    return (f"| {label} | {weights_words(row['precision'], drawn_layout(row))} | {row['r2']:.3f} | {row['mae']:.2f} | "
            f"{row['dangling_ends']:.2f} | {row['worst_ratio']:.2f} | {row['worst_matched_ratio']:.2f} | "
            f"{row['seconds']:.0f} | {verdict} |")


def large_enough(targets: list[float], n: int, stats: dict) -> bool:
    """Whether control over ``targets`` with ``n`` samples each is what the tolerances are sized for."""
    return set(default_targets(stats)) <= set(targets) and n >= FAST_VETTING_N


def stored_rows(rows: dict, words: str, recommended_words: str, digest: str,
                stats: dict) -> tuple[list[dict], list[str]]:
    """The rows of --json that judged sampler ``words`` against ``recommended_words`` on the model
    ``digest``, large enough (``large_enough``), each judged again against the recommended numbers
    it recorded: those as good, in the form the model file keeps (one per precision and seed,
    ``one_set_per_seed``), and the keys of those behind (in any layout)."""
    same = {name: row for name, row in rows.items()
            if (row.get("sampler_words"), row.get("recommended_words"), row.get("weights"))
            == (words, recommended_words, digest) and large_enough(row["targets"], row["n"], stats)}
    behind = [name for name, row in same.items() if falls_behind(row, {
        "targets": row["targets"], **{name: row[f"recommended_{name}"] for name in ("r2", "mae", "dangling_ends")}})]
    good = [{**row, "targets": row["targets_count"]} for name, row in same.items() if name not in behind]
    return one_set_per_seed(good), behind


def refusal(payload: dict, args: argparse.Namespace, targets: list[float], schedule) -> str:
    """Why this command cannot measure (or store) what it asks, in one line; '' if it can."""
    stats, recommended = payload.get("condition"), recommended_sampler(payload)
    if not stats:
        return f"--model {args.model}: an unconditional model; measure its samplers with tools/sampler_sweep.py"
    if len(stats["names"]) > 1 or stats["names"][0] not in COUNTS:
        return (f"--model {args.model}: conditioned on {', '.join(stats['names'])}; the tolerances are for one "
                f"count ({', '.join(COUNTS)}), in its units")
    try:  # each inside the range and a whole count, as control takes them
        check_targets(stats, stats["names"][0], targets)
    except ConditionError as exc:
        return str(exc)
    if any(spec(s) == spec(recommended) for s in args.samplers):
        return f"--samplers: {spec(recommended)} is the model's recommended sampler, the one compared with"
    if not args.store_fast:
        return ""
    fewer = len(args.samplers[0].timesteps(schedule)) < len(recommended.timesteps(schedule))
    if len(args.samplers) != 1 or not fewer:
        return (f"--store-fast: expected one sampler in --samplers, with fewer network calls than the recommended "
                f"{recommended.describe()}")
    if not large_enough(targets, args.n, stats):
        wanted = ", ".join(f"{t:g}" for t in default_targets(stats))
        return (f"--store-fast: expected control's default targets ({wanted}; more may be added) and --n "
                f"{FAST_VETTING_N} or more, what the tolerances are sized for")
    return fast_sampler_refusal(payload) or ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--samplers", nargs="+", type=parse_sampler, required=True,
                        help="as ddim:STEPS:ETA or dpm++2m:STEPS:ETA (either with :quadratic); each takes the "
                        "model's recommended guidance")
    parser.add_argument("--precision", choices=AUTO_SAMPLING_PICKS, default="fp32",
                        help="the candidates' network weights (the recommended sampler's are fp32)")
    parser.add_argument("--memory-format", choices=MEMORY_FORMATS, help="layout of the candidates' weights and "
                        "images (default: NCHW in fp32, NHWC in bf16; sample --fast runs fp32 in NHWC on a CPU)")
    parser.add_argument("--n", type=int, default=FAST_VETTING_N, help="samples per target (default 64)")
    parser.add_argument("--targets", type=float, nargs="+", metavar="V", help="default: control's eight")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, required=True, help="rows are merged into this file")
    parser.add_argument("--store-fast", action="store_true", help="store the one sampler measured in --model "
                        "as its fast sampler (sample --fast) if it is as good as the recommended sampler")
    args = parser.parse_args()
    if args.n < 1 or args.seed < 0:
        parser.error(f"--n {args.n} --seed {args.seed}: expected a positive --n and a seed of 0 or more")
    cpu = torch.device("cpu")
    args.memory_format = args.memory_format or sampling_layout(args.precision, cpu)
    rows = json_rows(parser, args.json)
    _, schedule, payload = model_file(parser, args.model)
    stats = payload.get("condition")
    targets = args.targets or (default_targets(stats) if stats else [])
    why = refusal(payload, args, targets, schedule)
    if why:
        parser.error(why)
    recommended, digest = recommended_sampler(payload), weights_digest(payload)
    samplers = [recommended.replace(kind=s.kind, steps=s.steps, eta=s.eta, spacing=s.spacing) for s in args.samplers]
    if args.store_fast:  # sample --fast may pick either precision: the other one is measured first
        vetted = stored_rows(rows, samplers[0].describe(), recommended.describe(), digest, stats)[0]
        other = [p for p in AUTO_SAMPLING_PICKS if p != args.precision and p not in {r["precision"] for r in vetted}]
        if other:
            parser.error(f"--store-fast: {args.json} holds no row of {samplers[0].describe()} on this model as good "
                         f"as the recommended sampler in {other[0]}; measure it first with --precision {other[0]}, "
                         "without --store-fast")
    print(f"{args.model} (step {payload['step']}), {len(targets)} targets x {args.n}, seed {args.seed}, "
          f"{torch.get_num_threads()} CPU threads, torch {torch.__version__}; candidates in {args.precision}, "
          f"{args.memory_format}")
    base_layout = sampling_layout(RECOMMENDED_PRECISION, cpu)
    base_key = key(digest, recommended, RECOMMENDED_PRECISION, base_layout, args, targets)
    if rows.get(base_key, {}).get("sampler_words") != recommended.describe():
        rows[base_key] = measure(args.model, recommended, RECOMMENDED_PRECISION, base_layout, args, targets)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    base = rows[base_key]
    print("| sampler | weights | R^2 | MAE | dangling ends | worst ratio | matched | seconds | as good |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(table_row(base, f"{base['sampler_words']} (recommended)", ""))
    for sampler in samplers:
        name = key(digest, sampler, args.precision, args.memory_format, args, targets)
        held = rows.get(name, {})
        if held.get("sampler_words") == sampler.describe():  # seeded: drawn again, it would be the same samples
            print(f"(judged again, not drawn: {name} in {args.json})")
        else:
            held = measure(args.model, sampler, args.precision, args.memory_format, args, targets)
        rows[name] = row = judged(held, base)
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
        verdict = "yes" if row["as_good"] else "no: " + "; ".join(row["falls_behind"])
        print(table_row(row, row["sampler_words"], verdict), flush=True)
    return store(args, samplers[0], recommended, digest, rows, stats) if args.store_fast else 0


def store(args: argparse.Namespace, sampler: Sampler, recommended: Sampler, digest: str, rows: dict,
          stats: dict) -> int:
    """--store-fast: keep ``sampler`` in --model if no row of it fell behind (``main`` checked before
    measuring that the other precision has a row as good); say why not otherwise (exit status 1)."""
    vetted, behind = stored_rows(rows, sampler.describe(), recommended.describe(), digest, stats)
    if behind:
        print(f"{sampler.describe()} fell behind the recommended sampler ({', '.join(behind)}): not stored")
        return 1
    stored = store_fast_sampler(args.model, sampler, vetted)
    print(f"stored {sampler.describe()} in {args.model} as its fast sampler (sample --fast); it "
          f"{fast_sampler_evidence(stored)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
