"""Command line: ``python -m helpers <command> --help`` documents each command."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .data import KINDS, DataError


class LessonError(RuntimeError):
    """A notebook failed while the tutorial ran."""


def _data_make(args: argparse.Namespace) -> None:
    from tqdm.auto import tqdm

    from .data import make_dataset

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


def _tutorial(args: argparse.Namespace) -> None:
    from .notebooks import notebook_paths, run_notebook

    from papermill.exceptions import PapermillExecutionError

    for path in notebook_paths(args.only):
        start = time.perf_counter()
        print(f"running {path.name} ...", flush=True)
        try:
            executed = run_notebook(path, Path(args.out), smoke=args.smoke)
        except PapermillExecutionError as exc:
            raise LessonError(f"{path.name} failed in cell {exc.exec_count}: {exc.ename}: "
                              f"{exc.evalue} (executed copy in {args.out})") from None
        print(f"  -> {executed} ({time.perf_counter() - start:.0f} s)", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m helpers", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

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

    tutorial = commands.add_parser("tutorial", help="execute the notebooks into an output folder",
                                   description="Execute notebooks/ in order with papermill.")
    tutorial.add_argument("--out", default="outputs", help="folder for executed notebooks")
    tutorial.add_argument("--smoke", action="store_true", help="smallest settings (for tests)")
    tutorial.add_argument("--only", nargs="*", help="notebook name prefixes, e.g. 01 02")
    tutorial.set_defaults(run=_tutorial)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except (DataError, LessonError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
