"""Several processes training one fold together under ``torchrun`` (docs/DESIGN.md §3, §13).

Each rank draws the same epoch order and the same augmentation parameters from the shared
seed, takes rows ``rank::world`` of every global batch, and DistributedDataParallel averages
the gradients; with the loss's global denominators (``losses.Normalisers``) a step equals the
single-process step on the whole batch. Only rank 0 validates and writes files.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TypeVar

import torch
import torch.distributed as torch_dist

T = TypeVar("T")

# Rank 0 validates (and writes the out-of-fold table) while the others wait in a collective.
TIMEOUT = timedelta(minutes=60)


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank, number of processes, local rank (its GPU)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """Each rank's own GPU (``cuda:LOCAL_RANK``) under torchrun; the CPU stays the CPU."""
        if self.enabled and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum of CPU ``values`` over the ranks (NCCL reduces only GPU tensors: moved there)."""
        if not self.enabled:
            return values
        on = values
        if torch_dist.get_backend() == "nccl":
            on = values.to(torch.device("cuda", self.local_rank))
        torch_dist.all_reduce(on, op=torch_dist.ReduceOp.SUM)
        return on.cpu()

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (also a barrier: the others wait for rank 0)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        torch_dist.broadcast_object_list(box, src=0)
        return box[0]

    def main_first(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0, then on the others: rank 0 creates shared files (the folds
        file, the canvas cache) once and the others read them."""
        if self.is_main:
            result = fn()
            self.barrier()
            return result
        self.barrier()
        return fn()


SINGLE = DistContext()


def context_from_env() -> DistContext:
    """Rank, world size and local rank from torchrun's variables (one process without them)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return SINGLE
    return DistContext(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def init_distributed(device: torch.device) -> DistContext:
    """Join torchrun's process group: NCCL for CUDA, gloo on CPU (``env://`` rendezvous).

    Returns the single-process context when not started by torchrun with more than one process.
    """
    ctx = context_from_env()
    if not ctx.enabled or torch_dist.is_initialized():
        return ctx
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(ctx.local_rank)
    torch_dist.init_process_group(
        backend, init_method="env://", rank=ctx.rank, world_size=ctx.world, timeout=TIMEOUT
    )
    return ctx


def shutdown(ctx: DistContext) -> None:
    """Leave the process group (what ``init_distributed`` joined)."""
    if ctx.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def check_batch_size(batch_size: int, world: int) -> None:
    """The global batch must split evenly over the processes, so every rank does equal work."""
    if batch_size % world:
        raise ValueError(
            f"batch_size {batch_size} does not divide by the {world} processes: the global batch "
            f"is split over them; use a multiple of {world} (e.g. {world * max(1, batch_size // world)})."
        )


def shard_rows(n: int, rank: int, world: int) -> tuple[list[int], float]:
    """Rows of an ``n``-item global batch that ``rank`` trains on, and their loss weight.

    Rows ``rank::world``. The last batch of an epoch can be smaller than ``world``; a rank left
    without rows trains on row 0 with weight 0 so that it still joins the gradient all-reduce.
    """
    rows = list(range(rank, n, world))
    if rows:
        return rows, 1.0
    return [0], 0.0


def wrap_model(
    model: torch.nn.Module, ctx: DistContext, device: torch.device, unused_parameters: bool
) -> torch.nn.Module:
    """The DDP wrapper that averages gradients over the ranks (the model itself on one process).

    Built per curriculum phase: DDP records which parameters train when it is made, and a phase
    without segmentation leaves the decoder unused (``unused_parameters``).
    """
    if not ctx.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    # A false alarm of channels-last weights with size-1 dimensions (the 1x1x1 convolutions
    # into one channel): their strides differ from the gradient's but name the same layout.
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=unused_parameters)
