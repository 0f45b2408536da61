"""The data-parallel world of one trial: its rank, its size, and the few collectives the
trainer needs so that every global statistic is global.

A one-worker trial gets ``World()`` (rank 0 of 1): every method is a no-op and the trainer runs
as it always has. A multi-worker trial (``train.workers > 1``) runs one process per worker in a
``torch.distributed`` group (Ray Train sets it up: gloo on CPU, nccl on CUDA; ``torchrun`` works
the same) and gets :meth:`World.current`. What must agree on every rank goes through here:

- the summed expert load of each step (aux-loss-free bias update, DeepSeek-V3 arXiv 2412.19437
  section 2.1.2: the bias moves by the sign of the *global* load error), :meth:`all_sum`;
- the max attention logit per head (QK-Clip, Kimi K2 arXiv 2507.20534 section 2.1: every rank
  rescales the same heads by the same factor), :meth:`all_max`;
- the step's loss and the evaluation losses, reduced before they are logged.

Gradients are all-reduced by DDP and Muon's Newton-Schulz is split over the ranks
(:func:`harness.optim.muon.newton_schulz_sharded`); both live where they are used.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class World:
    """Rank and size of the trial's process group (``World()``: one process, no group)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def current(cls) -> World:
        """The default ``torch.distributed`` group, or one process when none is set up."""
        import os

        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return cls()
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))

    @classmethod
    def over_file(cls, store: str, rank: int, size: int) -> World:
        """Join a gloo group of ``size`` processes on this machine (``mp.spawn``'ed ranks) that
        meet through the file ``store``: no port to pick and release before the ranks bind it."""
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=size)
        return cls.current()

    @property
    def main(self) -> bool:
        """Rank 0: the one that writes checkpoints, records and reports."""
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int] | None:
        """(rank, size) for work split over the ranks; None for one process."""
        return (self.rank, self.size) if self.size > 1 else None

    def share(self, n: int) -> range:
        """This rank's contiguous share of ``n`` items (``n`` a multiple of the size)."""
        per = n // self.size
        return range(self.rank * per, (self.rank + 1) * per)

    def device(self, device: torch.device) -> torch.device:
        """The rank's own GPU when the trial runs on CUDA (one GPU per worker, ``LOCAL_RANK``)."""
        if device.type == "cuda" and self.size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over the ranks (in place; ``t`` itself for one process)."""
        return self._reduce(t, "SUM")

    def all_max(self, t: torch.Tensor) -> torch.Tensor:
        """Elementwise max of ``t`` over the ranks (in place)."""
        return self._reduce(t, "MAX")

    def _reduce(self, t: torch.Tensor, op: str) -> torch.Tensor:
        if self.size > 1:
            import torch.distributed as dist

            dist.all_reduce(t, op=getattr(dist.ReduceOp, op))
        return t

    def barrier(self) -> None:
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()

    def leave(self) -> None:
        """Tear the process group down once every rank has reached this point: under load a
        rank that tore the gloo group down while its peer was still in a collective aborted at
        exit (SIGABRT)."""
        if self.size > 1:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()

    def from_main(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (pickled; small objects: paths, dicts)."""
        if self.size == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block before the others do (a data cache it may build, a damaged
        checkpoint it may set aside), so no two ranks write the same file."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()
