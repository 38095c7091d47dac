"""Several processes, one job: torchrun's environment, the process group, and what the ranks share.

``torchrun --nproc_per_node N -m helpers train ...`` starts N copies of the CLI. Each reads its
place from the variables torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT)
and joins one process group: NCCL between GPUs, gloo between CPU processes. Every byte that moves
between processes goes through torch.distributed: DistributedDataParallel averages the gradients,
and the few collectives below agree on failures and stops and gather samples.

In a plain ``python`` process none of this runs: ``current()`` is the world of one, and every
collective here returns its input.
"""
from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .device import pick_device

# what torchrun (or a SLURM script, or any launcher) sets for each process it starts
LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# how long a collective waits for a missing rank before the job ends with an error
TIMEOUT = timedelta(minutes=10)


class RankError(RuntimeError):
    """Another rank failed (and said why); this one stops too instead of waiting for it."""


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among ``size`` processes, and its GPU on the node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Rank 0 writes the files, the progress bar and the messages."""
        return self.rank == 0

    def describe(self) -> str:
        return f"rank {self.rank} of {self.size}"

    def rows(self, total: int) -> slice:
        """This rank's rows of a global batch of ``total``: contiguous, equal shares, in rank order."""
        if total % self.size:
            raise ValueError(f"--batch-size {total} does not split over {self.size} processes; "
                             f"expected a multiple of {self.size} (it is the global batch)")
        share = total // self.size
        return slice(self.rank * share, (self.rank + 1) * share)

    def batches(self, count: int) -> range:
        """This rank's batches of ``count``: every size-th one from its rank (disjoint, all covered)."""
        return range(self.rank, count, self.size)


def launched() -> bool:
    """Whether a launcher such as torchrun started this process as one rank of a job."""
    return all(name in os.environ for name in LAUNCH_VARIABLES)


def current() -> World:
    """The world this process is in: the process group's, or the world of one."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))


def join() -> tuple[World, torch.device]:
    """Join the job torchrun started (a plain process stays alone) and pick this rank's device:
    its node's GPU number LOCAL_RANK with NCCL, or the CPU with gloo."""
    device = pick_device()
    if not launched() or dist.is_initialized():
        return current(), device
    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":  # MPS has no process-group backend
        device = torch.device("cpu")
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return current(), device


def leave() -> None:
    """Leave the process group (at the end of a command), if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def end_process(code: int) -> None:
    """End this process with ``code``. A rank of a launched job ends at once, after flushing its
    output and leaving the group: its files are written and closed, and gloo's worker threads can
    abort a process while the interpreter tears itself down (rarely, under load: a finished job
    would report SIGABRT). A plain process exits as usual."""
    if launched():
        leave()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def parallel(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` wrapped in DistributedDataParallel inside a process group (its backward pass
    averages the gradients over the ranks; its construction makes every rank start from rank 0's
    weights), or ``model`` itself in a single process."""
    if not (dist.is_available() and dist.is_initialized()):
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def prefix() -> str:
    """What starts this rank's messages: nothing in a single process, else "rank R of N: "."""
    world = current()
    return f"{world.describe()}: " if world.size > 1 else ""


# ---------------------------------------------------------------------------------------------
# Collectives: each is called by every rank at the same point, and is the identity alone
# ---------------------------------------------------------------------------------------------
def mean(tensor: torch.Tensor) -> torch.Tensor:
    """The element-wise mean of ``tensor`` over the ranks (a new tensor; the input is kept)."""
    if current().size == 1:
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return total / current().size


def decide(flag: bool) -> bool:
    """Rank 0's ``flag`` on every rank: one decision (such as "out of time") for all."""
    if current().size == 1:
        return flag
    box = [flag]
    dist.broadcast_object_list(box, src=0)
    return bool(box[0])


def share(value: Any) -> Any:
    """Rank 0's ``value`` (any picklable object, tensors on the CPU) on every rank."""
    if current().size == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(items: list) -> list:
    """Every rank's ``items`` (picklable; tensors on the CPU), concatenated in rank order, on every rank."""
    if current().size == 1:
        return list(items)
    parts: list = [None] * current().size
    dist.all_gather_object(parts, list(items))
    return [item for part in parts for item in part]


def barrier() -> None:
    """Wait until every rank gets here."""
    if current().size > 1:
        dist.barrier()


@contextmanager
def together() -> Iterator[None]:
    """Run a block that can fail on some ranks only (a path missing on one node, a folder rank 0
    refuses), then compare notes, so that the whole job stops at once instead of waiting in its
    next collective: the first rank that failed raises its own error (the one line the job
    prints), every other rank a ``RankError``. The block must hold no collective of its own (a
    failed rank would never reach it)."""
    world = current()
    failure = None
    try:
        yield
    except Exception as exc:  # noqa: BLE001 (reported to the other ranks, then raised again)
        failure = exc
    if world.size > 1:
        notes: list = [None] * world.size
        dist.all_gather_object(notes, None if failure is None else str(failure))
        failed = [rank for rank, note in enumerate(notes) if note is not None]
        if failed and failed[0] != world.rank:
            raise RankError(f"rank {failed[0]} of {world.size} failed: {notes[failed[0]]}")
    if failure is not None:
        raise failure
