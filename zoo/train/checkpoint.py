"""Training checkpoints: model, optimizer, scheduler, RNG and data position, written atomically.

Layout of ``run_dir/checkpoints``::

    step-00000040/
        model.safetensors       model weights (only the trainable ones when part of it is frozen)
        optimizer.safetensors   AdamW moments; param groups in its metadata
        rng.safetensors         each process's torch (and CUDA) RNG state
        trainer.json            step, data position, scheduler, grad scaler, config; written last

or, sharded (``train.checkpoint_format: sharded``, the default under FSDP)::

    step-00000040/
        shards/                 torch.distributed.checkpoint (DCP): {"model", "optimizer"}
            __0_0.distcp ...    each process's own shards of the parameters and AdamW moments
            .metadata           where every piece of every tensor lies (global shapes, offsets)
        rng.safetensors, trainer.json   as above

A sharded checkpoint is written by every process at once, each its own part, with no gather;
it loads on any number of processes (DCP reshards by global offsets), a single process too.

A checkpoint is written into a hidden ``.tmp-*`` sibling, every file is fsynced, and the
directory is renamed into place in one ``os.rename``. A crash, a kill or a full disk in the
middle of a write leaves at most a ``.tmp-*`` directory, which is never read and is cleaned up
by the next run: the last good checkpoint is never touched.
"""

import contextlib
import io
import json
import os
import pickle
import re
import shutil
import typing
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from zoo.hub import CheckpointWriteError

STEP_DIR = re.compile(r"^step-(\d{8})$")
TRAINER_STATE = "trainer.json"
SHARDS = "shards"  # the DCP directory of a sharded checkpoint


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Optimizer state dict (keys are parameter names) -> tensors + a JSON-able remainder."""
    tensors, scalars = {}, {}
    for param, values in state.get("state", {}).items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{param}/{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{param}/{key}"] = value
    return tensors, {"param_groups": state.get("param_groups", []), "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[str, dict] = {}
    for key, value in list(tensors.items()) + list(meta["scalars"].items()):
        param, _, name = key.rpartition("/")
        state.setdefault(param, {})[name] = value
    return {"state": state, "param_groups": meta["param_groups"]}


def _write_aside(root: Path, step: int, tmp: Path, write: Callable[[Path], None], keep: int) -> Path:
    """Run ``write(tmp)``, fsync what it wrote, rename ``tmp`` to ``step-N`` in one ``os.rename``;
    on failure remove ``tmp`` and keep every earlier checkpoint. Returns the checkpoint's path."""
    final = root / f"step-{step:08d}"
    try:
        write(tmp)
        for item in tmp.rglob("*"):
            _fsync(item)
        if final.exists():  # the same step saved again (a resumed run that stopped at once)
            old = root / f".tmp-old-{final.name}-{os.getpid()}"
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        _fsync(root)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        # safetensors reports a full disk as its own SafetensorError, not an OSError.
        if isinstance(err, (OSError, SafetensorError)):
            raise _write_error(root, step, err) from err
        raise
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_error(root: Path, step: int, err: BaseException) -> CheckpointWriteError:
    previous = latest_checkpoint(root)
    kept = f"the last good checkpoint {previous} is kept" if previous else "no earlier checkpoint exists"
    return CheckpointWriteError(f"checkpoint: writing step {step} failed ({err}); {kept}")


def _write_trainer_files(tmp: Path, rng_state: dict[str, torch.Tensor], trainer_state: dict) -> None:
    save_file({k: v.cpu().contiguous() for k, v in rng_state.items()}, str(tmp / "rng.safetensors"))
    (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")


def save_checkpoint(
    root: str | Path,
    step: int,
    model_state: dict[str, torch.Tensor],
    optimizer_state: dict,
    rng_state: dict[str, torch.Tensor],
    trainer_state: dict,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically; keep the ``keep`` newest ones."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"

    def write(tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model_tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
        save_file(model_tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"), metadata={"zoo.optimizer": json.dumps(opt_meta)})
        _write_trainer_files(tmp, rng_state, trainer_state)

    return _write_aside(root, step, tmp, write, keep)


def save_sharded_checkpoint(
    root: str | Path,
    step: int,
    state: dict,
    rng_state: dict[str, torch.Tensor],
    trainer_state: dict,
    world,
    keep: int = 2,
) -> Path | None:
    """Every process calls this: each writes its own shards of ``state`` ({"model", "optimizer"},
    DTensors under FSDP) with ``torch.distributed.checkpoint.save``; the first process then adds
    rng.safetensors and trainer.json and renames the directory into place. Returns the path on
    the first process, None on the others. Assumes ``root`` is one filesystem every process sees."""
    import torch.distributed.checkpoint as dcp

    root = Path(root)
    # One name for every process (they all write into it); the run directory's lock keeps a
    # second run out, and the next run removes it if this one dies half-way.
    tmp = root / f".tmp-step-{step:08d}"
    if world.is_main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    world.barrier()
    try:
        # DCP gathers the write results of every process before it returns: when it does, every
        # shard is on disk (fsynced: sync_files) and the first process has written .metadata.
        with _one_process_is_meant():
            dcp.save(state, storage_writer=dcp.FileSystemWriter(tmp / SHARDS), no_dist=not world.distributed)
    except BaseException as err:
        if world.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, (OSError, dcp.api.CheckpointException)):
            raise _write_error(root, step, err) from err
        raise
    path = None
    if world.is_main:
        path = _write_aside(root, step, tmp, lambda t: _write_trainer_files(t, rng_state, trainer_state), keep)
    world.barrier()
    return path


def is_sharded(path: str | Path) -> bool:
    return (Path(path) / SHARDS).is_dir()


class _MetadataUnpickler(pickle.Unpickler):
    """DCP's .metadata is a pickle. Nothing in a checkpoint is executed: only DCP's own metadata
    classes and torch's dtype/size/layout constants may be named in it, by exact name."""

    _ALLOWED: typing.ClassVar[dict[str, set[str]]] = {
        "torch.distributed.checkpoint.metadata": {
            "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
            "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING",
        },
        "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
        "torch.serialization": {"_get_layout"},  # a layout by its name ("torch.strided")
        "torch": {"Size"},
        "pathlib": {"PosixPath", "WindowsPath"},  # the checkpoint id
        "collections": {"OrderedDict"},
    }  # fmt: skip

    def find_class(self, module: str, name: str):
        is_dtype = module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)
        if not (is_dtype or name in self._ALLOWED.get(module, ())):
            raise pickle.UnpicklingError(f"{module}.{name} is not part of DCP metadata")
        return super().find_class(module, name)


def shards_reader(path: Path):
    """A DCP reader of ``path/shards`` whose metadata is read by the restricted unpickler."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import StorageMeta

    class Reader(FileSystemReader):
        def read_metadata(self, *args, **kwargs):
            where = Path(self.path) / ".metadata"
            try:
                metadata = _MetadataUnpickler(io.BytesIO(where.read_bytes())).load()
            except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as err:
                raise ValueError(f"{where}: not readable DCP metadata ({err})") from err
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    return Reader(path / SHARDS)


def sharded_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Global shape of every tensor in a sharded checkpoint, from its metadata; keys as in the
    saved state ("model.<name>", "optimizer.state.<name>.exp_avg", ...)."""
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = shards_reader(Path(path)).read_metadata()
    return {k: tuple(v.size) for k, v in meta.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


def _weights_only_planner():
    """DCP's load planner, reading the non-tensor values (AdamW's param groups: numbers, names)
    with ``torch.load(weights_only=True)``; DCP's own would unpickle anything."""
    from torch.distributed.checkpoint import DefaultLoadPlanner
    from torch.distributed.checkpoint._nested_dict import set_element

    class Planner(DefaultLoadPlanner):
        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            obj = torch.load(value, weights_only=True)
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
            else:
                self.state_dict[read_item.dest_index.fqn] = obj

    return Planner()


def load_sharded(path: str | Path, state: dict) -> None:
    """Fill ``state`` in place from a sharded checkpoint: each tensor (or this process's shard of a
    DTensor) reads just its part. Without a process group it runs on one process (``no_dist``)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    distributed = dist.is_available() and dist.is_initialized()
    reader = shards_reader(Path(path))
    with _one_process_is_meant():
        dcp.load(state, storage_reader=reader, planner=_weights_only_planner(), no_dist=not distributed)


@contextlib.contextmanager
def _one_process_is_meant():
    """DCP warns that it 'assumes' one process when there is no process group; zoo asks for it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")
        yield


def list_checkpoints(root: str | Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (``.tmp-*`` leftovers are not checkpoints)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / TRAINER_STATE).is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def latest_checkpoint(root: str | Path) -> Path | None:
    found = list_checkpoints(root)
    return found[-1] if found else None


def remove_partial_writes(root: str | Path) -> list[Path]:
    """Delete ``.tmp-*`` directories an interrupted write left behind."""
    root = Path(root)
    removed = [p for p in root.glob(".tmp-*")] if root.is_dir() else []
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}, f.metadata() or {}
    except Exception as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err


def read_trainer_state(path: str | Path) -> dict:
    """A checkpoint's trainer.json (step, data position, the config and model it was written for)."""
    path = Path(path)
    try:
        return json.loads((path / TRAINER_STATE).read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: not a complete checkpoint (no {TRAINER_STATE})") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"{path / TRAINER_STATE}: not valid JSON ({err})") from err


def model_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every model tensor of a checkpoint, full or sharded (no tensor is read)."""
    path = Path(path)
    if is_sharded(path):
        return {k[len("model.") :]: v for k, v in sharded_shapes(path).items() if k.startswith("model.")}
    return tensor_shapes(path / "model.safetensors")


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err


def read_rng(path: str | Path) -> dict[str, torch.Tensor]:
    return _read_safetensors(Path(path) / "rng.safetensors")[0]


def load_checkpoint(path: str | Path) -> dict:
    """Read a full (not sharded) checkpoint directory: {"model", "optimizer", "rng", "trainer"}."""
    path = Path(path)
    if not (path / TRAINER_STATE).is_file():
        raise ValueError(f"{path}: not a complete checkpoint (no {TRAINER_STATE})")
    if is_sharded(path):
        raise ValueError(f"{path}: a sharded checkpoint; load_sharded reads it into a model's state")
    model, _ = _read_safetensors(path / "model.safetensors")
    opt_tensors, opt_meta = _read_safetensors(path / "optimizer.safetensors")
    rng, _ = _read_safetensors(path / "rng.safetensors")
    return {
        "model": model,
        "optimizer": _unflatten_optimizer(opt_tensors, json.loads(opt_meta["zoo.optimizer"])),
        "rng": rng,
        "trainer": json.loads((path / TRAINER_STATE).read_text()),
    }
