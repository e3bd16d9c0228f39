"""Distributed training on torch's own engine, launched with torchrun: DDP or FSDP2.

``torchrun --nproc_per_node N -m zoo.cli finetune recipe.yaml`` sets RANK/WORLD_SIZE/LOCAL_RANK;
``setup`` joins the process group (NCCL on GPUs, gloo on CPU). A plain ``python`` run is a world
of one and touches nothing here. Several nodes work the same way (``torchrun --nnodes N
--rdzv_backend c10d ...``): ``LOCAL_RANK`` picks this process's GPU on its node, ``RANK`` (global)
decides everything else, and the run directory is assumed to be on a filesystem every node
shares (docs/distributed.md).
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
        """Global rank 0: the one process (of all nodes) that writes the run's shared files."""
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


def is_fsdp_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def _weight_files(path) -> dict[str, str]:
    """Tensor name -> the safetensors file that holds it, in a zoo save (one file or an index)."""
    from zoo.hub import CheckpointError, read_json

    index = path / "model.safetensors.index.json"
    if index.is_file():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no weight_map (key -> shard file) in the index")
        return {k: str(path / v) for k, v in weight_map.items()}
    if not (path / "model.safetensors").is_file():
        raise CheckpointError(f"{path}: no model.safetensors or model.safetensors.index.json to load shards from")
    from safetensors import safe_open

    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return dict.fromkeys(f.keys(), str(path / "model.safetensors"))


def load_sharded_pretrained(path, world: World, dtype: torch.dtype | None = None) -> nn.Module:
    """A zoo save (``save_pretrained(format="zoo")``) loaded straight into FSDP2 shards: the model is
    built on the meta device (no memory), sharded with ``fully_shard``, given storage for this
    process's shards only (``to_empty``), and each shard is filled from the slice of the file that
    belongs to it (safetensors ``get_slice`` reads only those bytes). No process ever holds the
    whole model. Returns the sharded model, in train mode, ready for the Trainer.
    """
    from safetensors import safe_open
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    from zoo.hub import ZOO_CONFIG, CheckpointError, _set_label_names, read_architecture, resolve_checkpoint

    path = resolve_checkpoint(path)
    if not (path.is_dir() and (path / ZOO_CONFIG).is_file()):
        raise CheckpointError(
            f"{path}: a sharded load reads zoo's own format (zoo.json + safetensors); convert it once with "
            "zoo.save_pretrained(zoo.from_pretrained(PATH), OUT, format='zoo')"
        )
    family, task, config, meta = read_architecture(path)
    with torch.device("meta"):
        model = family.model_class(task)(config)
    if dtype is not None:
        model = model.to(dtype)
    shard_fsdp(model, world)
    # Storage for this process's shards and the (small) buffers; modules with non-persistent
    # buffers recompute them when moved (RotaryEmbedding, SinusoidalPositions).
    model.to_empty(device=world.device)
    files = _weight_files(path)
    targets = model.state_dict()
    missing = sorted(set(targets) - set(files))
    unexpected = sorted(set(files) - set(targets))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not fit a {family.name} {task} of this config; missing {missing[:8]}, "
            f"unexpected {unexpected[:8]}"
        )
    with torch.no_grad():
        for name, target in targets.items():
            # The file is opened per tensor: safetensors reads through mmap, and the pages a slice
            # touched count in this process's memory for as long as the file stays mapped.
            with safe_open(files[name], framework="pt") as f:
                part = f.get_slice(name)
                saved, needed = tuple(part.get_shape()), tuple(target.shape)
                if saved != needed:
                    raise CheckpointError(f"{files[name]}: {name} has shape {saved}, the model needs {needed}")
                if isinstance(target, DTensor):
                    shape, offset = compute_local_shape_and_global_offset(needed, target.device_mesh, target.placements)
                    local = target.to_local()
                    index = tuple(slice(o, o + n) for o, n in zip(offset, shape, strict=True))
                    local.copy_(part[index] if local.numel() else local)
                else:
                    target.copy_(part[:])
    _set_label_names(model, meta.get("label_names"), path / ZOO_CONFIG)
    return model.train()
