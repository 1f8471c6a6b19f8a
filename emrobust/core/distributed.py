"""Multi-process runs (one process per GPU, e.g. a multi-task Slurm job): the process group, rank 0's role.

Contract: every rank runs the same cell. Rank 0 alone decides (cache hit or build), holds the artifact lock,
writes artifacts, `run.json`, `sweep.csv` and tracker output. A stage that trains (`DISTRIBUTED = True` in its
module) runs on every rank: ranks > 0 build into a scratch dir that is deleted, and generation inside it is done
by rank 0 and broadcast (`rank0_compute`), so every rank trains on the same data. Other stages run on rank 0
while the rest wait on a barrier. A single process (no RANK/WORLD_SIZE, no multi-task Slurm job) is world 1.
"""
from __future__ import annotations

import datetime
import logging
import os
from typing import Any, Callable

from submitit.helpers import TorchDistributedEnvironment

log = logging.getLogger(__name__)


def setup() -> int:
    """Join the process group if this process is one of several tasks; returns the world size.

    Inside a Slurm job with several tasks (srun, submitit), RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT come from
    submitit's `TorchDistributedEnvironment` (port derived from the job id). Under torchrun they are already set.
    """
    # lazy: slow import
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    if "RANK" not in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_JOB_ID" in os.environ:

        # CUDA_VISIBLE_DEVICES is left as Slurm set it; the device is chosen by local rank below
        TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 1
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "gloo":  # DeepSpeed on CPU (tests, laptops): without this it probes for CUDA, then MPI
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend, timeout=datetime.timedelta(hours=2))
    log.info("rank %d/%d joined the process group (%s, %s:%s)", dist.get_rank(), world, backend,
             os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT"))
    return world


def active() -> bool:
    import torch.distributed as dist  # lazy: slow import

    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    import torch.distributed as dist  # lazy: slow import

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    import torch.distributed as dist  # lazy: slow import

    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if active():
        import torch.distributed as dist  # lazy: slow import

        dist.barrier()


def broadcast(obj: Any) -> Any:
    """Rank 0's `obj` on every rank (pickled)."""
    if not active():
        return obj
    import torch.distributed as dist  # lazy: slow import

    box = [obj if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def rank0_compute(fn: Callable[[], Any]) -> Any:
    """`fn()` run on rank 0 only, its result given to every rank. An exception on rank 0 reaches all ranks."""
    if not active():
        return fn()
    if is_main():
        try:
            result = fn()
        except Exception as e:
            broadcast((None, f"{type(e).__name__}: {e}"))
            raise
        return broadcast((result, None))[0]
    result, error = broadcast(None)
    if error is not None:
        raise RuntimeError(f"rank 0 failed: {error}")
    return result
