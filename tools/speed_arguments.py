"""The arguments the CPU sampling-speed tools share (``padding_speed.py``, ``precision_speed.py``).

Both time the shipped model drawing --n images with --sampler, --repeats times each way after a
warm-up, with at most --images-per-call images in one network call; one definition keeps their
defaults, help and checks the same.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from helpers.__main__ import DEFAULT_MODEL  # noqa: E402
from pretrained_report import parse_sampler  # noqa: E402


def add_speed_arguments(parser: argparse.ArgumentParser) -> None:
    """--model, --sampler, --n, --repeats and --images-per-call, with the tools' defaults."""
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--sampler", type=parse_sampler, default=parse_sampler("dpm++2m:30:1"))
    parser.add_argument("--n", type=int, default=16, help="images per timed run (default 16)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each way (default 3; the median is kept)")
    parser.add_argument("--images-per-call", type=int, metavar="N",
                        help="the most images one network call takes (default: sample.call_size's, 8 of "
                             "64x64 on a CPU; the tables of README.md and benchmarks/README.md measured before 2026-11-30 used 16)")


def check_speed_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Exit with one line naming the flag if a count is not a positive whole number."""
    for flag, value in (("--n", args.n), ("--repeats", args.repeats), ("--images-per-call", args.images_per_call)):
        if value is not None and value < 1:
            parser.error(f"{flag} {value}: expected a positive whole number")
