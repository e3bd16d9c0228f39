"""Loading and saving checkpoints: Hugging Face-format directories, zoo's own format, other files.

Nothing in a checkpoint is executed: weights come from safetensors, or from ``pytorch_model.bin``
through ``torch.load(weights_only=True)``.
"""

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from zoo.convert.engine import convert_state_dict, identity_rules, invert_rules
from zoo.registry import FAMILIES, Family, _load_families

ZOO_CONFIG = "zoo.json"
# Loaders for single-file formats by suffix (".gguf" -> the GGUF reader); families register them.
FILE_LOADERS: dict[str, Callable[..., nn.Module]] = {}


class CheckpointError(ValueError):
    """A path that is not a readable checkpoint; the message names the file and what is wrong."""


def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupt? ({err})") from err


def read_weights(directory: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: single or sharded safetensors, or pytorch_model.bin."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        weight_map = read_json(index).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index}: no weight_map (key -> shard file) in the index")
        shards = sorted(set(weight_map.values()))
        state: dict[str, torch.Tensor] = {}
        for shard in shards:
            state.update(_load_safetensors(directory / shard))
        return state
    for name in ("model.safetensors", "open_clip_model.safetensors"):
        if (directory / name).exists():
            return _load_safetensors(directory / name)
    for name in ("pytorch_model.bin", "open_clip_pytorch_model.bin"):
        if (directory / name).exists():
            try:
                return torch.load(directory / name, map_location="cpu", weights_only=True)
            except Exception as err:
                raise CheckpointError(f"{directory / name}: cannot be read with weights_only=True ({err})") from err
    raise CheckpointError(
        f"{directory}: no weights found; expected model.safetensors, model.safetensors.index.json or pytorch_model.bin"
    )


def detect_family(hf_config: dict, where: Path) -> Family:
    _load_families()
    model_type = hf_config.get("model_type")
    for family in FAMILIES.values():
        if model_type is not None and model_type in family.hf_model_types:
            return family
    for family in FAMILIES.values():
        if family.matches is not None and family.matches(hf_config):
            return family
    known = sorted(t for f in FAMILIES.values() for t in f.hf_model_types)
    raise CheckpointError(
        f"{where}: config.json has model_type={model_type!r}, which no zoo family reads; known: {', '.join(known)}"
    )


def task_from_hf(family: Family, hf_config: dict, task: str | None) -> str:
    if task is not None:
        family.model_class(task)
        return task
    for arch in hf_config.get("architectures") or []:
        if arch in family.hf_architectures:
            return family.hf_architectures[arch]
    if family.task_from_config is not None and (found := family.task_from_config(hf_config)) is not None:
        return found
    return next(iter(family.tasks))


def _expected(model: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in model.state_dict().items()}


def load_converted(model: nn.Module, state: dict[str, torch.Tensor], rules, source_name: str) -> nn.Module:
    """Convert ``state`` with ``rules``, check every key and shape, load strictly."""
    converted = convert_state_dict(state, rules, expected=_expected(model), source_name=source_name)
    model.load_state_dict(converted, strict=True)
    return model


def from_pretrained(
    path: str | os.PathLike,
    task: str | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    quantization: str | None = None,
) -> nn.Module:
    """Load a checkpoint into its zoo family, in eval mode.

    Args:
        path: a Hugging Face-format directory (config.json + weights), a directory saved by
            zoo (zoo.json), or a single file of a registered format (``.gguf``).
        task: which head to build (default: what config.json's ``architectures`` names).
        dtype: cast the weights to this dtype.
        device: move the model there.
        quantization: ``"int8"`` or ``"int4"`` quantizes the weights for CPU decoding
            (``zoo.quant.quantize``); ``"native"`` keeps a GGUF file's own Q4_0/Q4_1/Q8_0 weights.
            See docs/quantization.md.
    """
    if quantization is not None and dtype is not None:
        raise ValueError("dtype: a quantized model chooses its own dtypes (docs/quantization.md); drop dtype")
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such file or directory")
    if path.is_file():
        loader = FILE_LOADERS.get(path.suffix.lower())
        if loader is None:
            _load_families()
            loader = FILE_LOADERS.get(path.suffix.lower())
        if loader is None:
            raise CheckpointError(
                f"{path}: zoo reads checkpoint directories and single files of kind "
                f"{', '.join(sorted(FILE_LOADERS)) or '(none)'}; not {path.suffix or 'a file without suffix'}"
            )
        model = loader(path, task=task, **({"quantization": quantization} if quantization else {}))
    elif (path / ZOO_CONFIG).exists():
        meta = read_json(path / ZOO_CONFIG)
        _load_families()
        family = FAMILIES.get(meta.get("family"))
        if family is None:
            raise CheckpointError(f"{path / ZOO_CONFIG}: unknown family {meta.get('family')!r}")
        model = family.model_class(task or meta.get("task"))(family.config_cls.from_dict(meta["config"]))
        state = read_weights(path)
        load_converted(model, state, identity_rules(state), source_name=str(path))
    elif (path / "config.json").exists():
        hf_config = read_json(path / "config.json")
        family = detect_family(hf_config, path)
        task = task_from_hf(family, hf_config, task)
        try:
            config = family.config_from_hf(hf_config)
        except KeyError as err:
            raise CheckpointError(
                f"{path / 'config.json'}: no {err.args[0]!r} field, which a {family.name} config needs"
            ) from err
        model = family.model_class(task)(config)
        load_converted(model, read_weights(path), family.rules(config, task), source_name=str(path))
    else:
        raise CheckpointError(f"{path}: not a checkpoint directory (no config.json or {ZOO_CONFIG} in it)")
    if quantization is not None and not path.is_file():
        from zoo.quant import check_quantization, quantize

        check_quantization(quantization, native=False)
        model = quantize(model, quantization)
    if dtype is not None:
        model = model.to(dtype)
    if device is not None:
        model = model.to(device)
    return model.eval()


_CHECKPOINT_FILES = (
    ZOO_CONFIG,
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model-*-of-*.bin",
)


def _atomic_directory_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write into a temporary sibling directory, then move each file into place with os.replace,
    so a failed or interrupted save never leaves a half-written file where a good one was."""
    path.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".zoo-save-", dir=path))
    try:
        write(tmp)
        written = {item.name for item in tmp.iterdir()}
        for item in tmp.iterdir():
            os.replace(item, path / item.name)
        # Checkpoint files of an earlier save that this one did not write would be read in its
        # place (a shard index wins over model.safetensors, zoo.json over config.json): remove them.
        for pattern in _CHECKPOINT_FILES:
            for stale in path.glob(pattern):
                if stale.name not in written:
                    stale.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().clone() for k, v in state.items()}


def save_pretrained(model: nn.Module, path: str | os.PathLike, format: str = "hf") -> Path:
    """Save ``model`` to directory ``path``.

    Args:
        format: ``"hf"`` writes the reference layout (config.json + model.safetensors) that the
            reference implementation loads strictly; ``"zoo"`` writes zoo.json + zoo's own keys.
    """
    path = Path(path)
    from zoo.quant import QuantLinear

    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ValueError("model: a quantized model is for inference and is not saved; save the float model")
    _load_families()
    family = FAMILIES[model.family]
    state = model.state_dict()
    if format == "zoo":
        meta = {"family": model.family, "task": model.task, "config": model.config.to_dict()}

        def write(tmp: Path) -> None:
            (tmp / ZOO_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
            save_file(_contiguous(state), str(tmp / "model.safetensors"), metadata={"format": "pt"})

    elif format == "hf":
        if family.config_to_hf is None or family.rules is None:
            raise ValueError(f"format: family {family.name!r} has no export to the reference format")
        hf_config = family.config_to_hf(model.config, model.task)
        exported = convert_state_dict(
            state, invert_rules(family.rules(model.config, model.task)), source_name="zoo model"
        )

        def write(tmp: Path) -> None:
            (tmp / "config.json").write_text(json.dumps(hf_config, indent=2) + "\n")
            save_file(_contiguous(exported), str(tmp / "model.safetensors"), metadata={"format": "pt"})

    else:
        raise ValueError(f"format: unknown checkpoint format {format!r}; choose 'hf' or 'zoo'")
    _atomic_directory_write(path, write)
    return path
