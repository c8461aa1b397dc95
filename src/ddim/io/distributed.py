"""torch.distributed plumbing for `torchrun`: process group with timeouts, DDP wrap, rank-0 duties.

Outside torchrun (no WORLD_SIZE > 1 in the environment) everything is a single-process no-op.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch

from ..core.errors import UsageError

#: collectives give up after this long, so a dead rank ends the job instead of hanging it
TIMEOUT_S = float(os.environ.get("DDIM_DIST_TIMEOUT", "120"))


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    active: bool = False

    @classmethod
    def from_env(cls) -> DistInfo:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() and os.environ.get("DDIM_BACKEND") != "gloo" else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=TIMEOUT_S))
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), active=True)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, net: torch.nn.Module) -> torch.nn.Module:
        if not self.active:
            return net
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(net)

    def share(self, batch: int) -> int:
        """This rank's part of a global batch."""
        if batch % self.world_size:
            raise UsageError(f"batch size {batch} is not divisible by the {self.world_size} ranks")
        return batch // self.world_size

    def mean(self, value: torch.Tensor) -> float:
        if self.active:
            import torch.distributed as dist

            value = value.clone()
            dist.all_reduce(value)
            value /= self.world_size
        return float(value)

    def gather_states(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every rank's RNG state (for rank 0's checkpoint)."""
        if not self.active:
            return {"rank0": state}
        import torch.distributed as dist

        out = [torch.empty_like(state) for _ in range(self.world_size)]
        dist.all_gather(out, state)
        return {f"rank{i}": s for i, s in enumerate(out)}

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()


def shutdown() -> None:
    """Destroy the process group if this process made one (end of a torchrun command)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        # every rank leaves together: a rank tearing down its gloo threads while rank 0 still writes
        # (checkpoints, plots) aborts with "terminate called without an active exception"
        try:
            dist.barrier()
        except RuntimeError:
            pass  # a peer is gone: nothing left to wait for
        dist.destroy_process_group()
