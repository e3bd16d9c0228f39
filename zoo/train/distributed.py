"""Distributed training on torch's own engine, launched with torchrun: DDP or FSDP2.

``torchrun --nproc_per_node N -m zoo.cli finetune recipe.yaml`` sets RANK/WORLD_SIZE/LOCAL_RANK;
``setup`` joins the process group (NCCL on GPUs, gloo on CPU). A plain ``python`` run is a world
of one and touches nothing here.
"""

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def sum(self, *values: float) -> list[float]:
        """Sum numbers over all processes (float64, so token counts stay exact)."""
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.distributed:
            dist.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool) -> bool:
        return self.sum(float(flag))[0] > 0

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def gather(self, obj) -> list:
        if not self.distributed:
            return [obj]
        out = [None] * self.size
        dist.all_gather_object(out, obj)
        return out


def setup(device: str = "auto") -> World:
    """Join the torchrun process group if there is one; pick this process's device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("train.device: 'cuda' was asked for but torch sees no CUDA device")
    dev = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    if size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=dev if use_cuda else None)
    return World(rank, size, local_rank, dev)


def shard_fsdp(model: nn.Module, world: World) -> nn.Module:
    """FSDP2: shard each transformer layer, then the rest (embeddings, norm, head) at the root.

    Per-layer units let one layer's parameters be gathered while the previous one computes,
    and free them after; the root unit holds what is left.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(world.device.type, (world.size,))
    layers = getattr(model, "layers", None)
    if not isinstance(layers, nn.ModuleList):
        raise ValueError(f"train.strategy: fsdp shards per layer, and {type(model).__name__} has no `layers` list")
    for layer in layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def wrap_ddp(model: nn.Module, world: World) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    ids = [world.device.index] if world.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)
