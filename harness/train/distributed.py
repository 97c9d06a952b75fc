"""torch.distributed set-up from SLURM (through submitit) or torchrun, and per-rank seeding.

One process per device. Under SLURM, submitit's `TorchDistributedEnvironment` exports RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR / MASTER_PORT from the job's variables; torchrun sets them itself. Without them, the run is
a single process. Backend: NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["Dist", "barrier", "seed_everything", "setup"]


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _export_from_slurm() -> None:
    """Let submitit derive the torch.distributed variables for a multi-task SLURM job step."""
    if "RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) <= 1:
        return
    if "SUBMITIT_EXECUTOR" not in os.environ and "SUBMITIT_FOLDER" not in os.environ:
        return
    from submitit.helpers import TorchDistributedEnvironment

    TorchDistributedEnvironment().export(set_cuda_visible_devices=False)


def setup(device: str = "auto") -> Dist:
    """Initialise the process group when the environment describes several processes; pick this rank's device."""
    _export_from_slurm()
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if cpus:  # SLURM may not bind CPUs (task/none): keep torch to the CPUs this task was given
        torch.set_num_threads(int(cpus))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world)
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) global generators; call with `seed + rank`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
