"""Training checkpoints: model, optimizer, scheduler, RNG and data position, written atomically.

Layout of ``run_dir/checkpoints``::

    step-00000040/
        model.safetensors       model weights (only the trainable ones when part of it is frozen)
        optimizer.safetensors   AdamW moments; param groups in its metadata
        rng.safetensors         each process's torch (and CUDA) RNG state
        trainer.json            step, data position, scheduler, grad scaler, config; written last

A checkpoint is written into a hidden ``.tmp-*`` sibling, every file is fsynced, and the
directory is renamed into place in one ``os.rename``. A crash, a kill or a full disk in the
middle of a write leaves at most a ``.tmp-*`` directory, which is never read and is cleaned up
by the next run: the last good checkpoint is never touched.
"""

import json
import os
import re
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from zoo.hub import CheckpointWriteError

STEP_DIR = re.compile(r"^step-(\d{8})$")
TRAINER_STATE = "trainer.json"


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
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}-{os.getpid()}"
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        model_tensors = {k: v.detach().cpu().contiguous() for k, v in model_state.items()}
        save_file(model_tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        opt_tensors, opt_meta = _flatten_optimizer(optimizer_state)
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"), metadata={"zoo.optimizer": json.dumps(opt_meta)})
        save_file({k: v.cpu().contiguous() for k, v in rng_state.items()}, str(tmp / "rng.safetensors"))
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=2) + "\n")
        for item in tmp.iterdir():
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
            previous = latest_checkpoint(root)
            kept = f"the last good checkpoint {previous} is kept" if previous else "no earlier checkpoint exists"
            raise CheckpointWriteError(f"checkpoint: writing step {step} failed ({err}); {kept}") from err
        raise
    for old in list_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


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


def tensor_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a safetensors file, from its header (no tensor is read)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as err:
        raise ValueError(f"{path}: not a readable safetensors file ({err})") from err


def load_checkpoint(path: str | Path) -> dict:
    """Read a checkpoint directory: {"model", "optimizer", "rng", "trainer"}."""
    path = Path(path)
    if not (path / TRAINER_STATE).is_file():
        raise ValueError(f"{path}: not a complete checkpoint (no {TRAINER_STATE})")
    model, _ = _read_safetensors(path / "model.safetensors")
    opt_tensors, opt_meta = _read_safetensors(path / "optimizer.safetensors")
    rng, _ = _read_safetensors(path / "rng.safetensors")
    return {
        "model": model,
        "optimizer": _unflatten_optimizer(opt_tensors, json.loads(opt_meta["zoo.optimizer"])),
        "rng": rng,
        "trainer": json.loads((path / TRAINER_STATE).read_text()),
    }
