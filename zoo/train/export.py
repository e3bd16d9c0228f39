"""`zoo export RUN_DIR OUT`: a run's checkpoint, full or sharded, consolidated into one model
directory (zoo's format or the reference's), on one process.

The model is built on the meta device from the checkpoint's own record (trainer.json), given
uninitialised storage once (``to_empty``), and the checkpoint is read straight into that storage:
a sharded checkpoint through ``torch.distributed.checkpoint.load`` without a process group
(``no_dist``), a full one tensor by tensor from its safetensors file. So the weights are held
once, never as a loaded state dict beside a model. A LoRA run's checkpoint holds only the
adapters (and any new head): they are put on the base model the recipe names, and the export
is what ``zoo finetune`` saves at the end of such a run (the merged model, or the adapter).
"""

from pathlib import Path

import torch
import yaml
from safetensors import safe_open
from torch import nn

from zoo.hub import CheckpointError, save_pretrained
from zoo.train import checkpoint as ckpt


def choose_checkpoint(run_dir: Path, checkpoint: str | None = None) -> Path:
    """The run's newest complete checkpoint, or the one ``checkpoint`` names (a step number,
    ``step-00000040``, or a path)."""
    root = run_dir / "checkpoints"
    found = ckpt.list_checkpoints(root)
    if checkpoint is None:
        if not found:
            raise CheckpointError(f"{run_dir}: no checkpoints (no {root}/step-*/{ckpt.TRAINER_STATE})")
        return found[-1]
    candidates = [Path(checkpoint)]
    if checkpoint.isdigit():
        candidates.insert(0, root / f"step-{int(checkpoint):08d}")
    else:
        candidates.insert(0, root / checkpoint)
    for path in candidates:
        if (path / ckpt.TRAINER_STATE).is_file():
            return path
    have = ", ".join(p.name for p in found) or "none"
    raise CheckpointError(f"--checkpoint: no step {checkpoint} in {root} (complete checkpoints: {have})")


def _empty_model(record: dict, dtype: torch.dtype) -> nn.Module:
    from zoo.registry import FAMILIES, _load_families

    _load_families()
    family = FAMILIES.get(record.get("family"))
    if family is None or not isinstance(record.get("config"), dict):
        raise CheckpointError(f"trainer.json: records no zoo model to rebuild (model: {record!r:.200})")
    config = family.config_cls.from_dict(record["config"])
    with torch.device("meta"):
        model = family.model_class(record.get("task"))(config).to(dtype)
    return model.to_empty(device="cpu")  # one uninitialised copy; the checkpoint fills it


def _saved_dtype(path: Path) -> torch.dtype:
    """The floating dtype the checkpoint's weights were trained in."""
    if ckpt.is_sharded(path):
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        meta = ckpt.shards_reader(path).read_metadata().state_dict_metadata
        dtypes = [v.properties.dtype for k, v in meta.items()
                  if k.startswith("model.") and isinstance(v, TensorStorageMetadata)]  # fmt: skip
    else:
        with safe_open(str(path / "model.safetensors"), framework="pt") as f:
            dtypes = [f.get_slice(k).get_dtype() for k in f.keys()]
        names = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
        dtypes = [names.get(d, torch.float32) for d in dtypes]
    floating = [d for d in dtypes if d.is_floating_point]
    return floating[0] if floating else torch.float32


def _fill(model: nn.Module, path: Path, names: list[str] | None) -> None:
    """Read the checkpoint's model tensors (all, or ``names``) into the model's own storage."""
    targets = model.state_dict()
    if names is not None:
        targets = {k: targets[k] for k in names}
    saved = ckpt.model_shapes(path)
    problems = [f"{k}: the checkpoint lacks it" for k in targets if k not in saved]
    problems += [f"{k}: the checkpoint's shape is {saved[k]}, the model's {tuple(v.shape)}"
                 for k, v in targets.items() if k in saved and saved[k] != tuple(v.shape)]  # fmt: skip
    if problems:
        raise CheckpointError(f"{path}: does not fit the model it records:\n  " + "\n  ".join(problems[:12]))
    if ckpt.is_sharded(path):
        ckpt.load_sharded(path, {"model": targets})
        return
    with safe_open(str(path / "model.safetensors"), framework="pt") as f, torch.no_grad():
        for name, target in targets.items():
            target.copy_(f.get_tensor(name))  # one tensor at a time beside the model


def _tokenizer_for(run_dir: Path, recipe: dict):
    from zoo.hub import resolve_checkpoint
    from zoo.tokenizer import load_tokenizer

    if (run_dir / "tokenizer" / "tokenizer.json").is_file():  # a BPE the run trained
        return load_tokenizer(run_dir / "tokenizer")
    source = recipe.get("tokenizer") or (recipe.get("model") or {}).get("path")
    if not source or source.startswith("bpe:"):  # none, or a trained BPE no longer beside the run
        return None
    return load_tokenizer(resolve_checkpoint(source))


def export_run(
    run_dir: str | Path, out: str | Path, format: str = "zoo", checkpoint: str | None = None, lora: str = "merged"
) -> Path:
    """Write the model of ``run_dir``'s checkpoint to ``out``; see the module docstring.

    Args:
        format: ``zoo`` (zoo.json + safetensors) or ``hf`` (the reference layout).
        checkpoint: which checkpoint (default the newest): a step, a ``step-*`` name or a path.
        lora: for a LoRA run, ``merged`` (the adapters folded into the base) or ``adapter``
            (zoo's adapter files for ``zoo``, PEFT's for ``hf``).
    """
    from zoo.lora import apply_lora, export_peft, merge_lora, save_adapter
    from zoo.train.data import save_tokenizer

    if format not in ("zoo", "hf"):
        raise ValueError(f"--format: choose zoo or hf, not {format!r}")
    if lora not in ("merged", "adapter"):
        raise ValueError(f"--lora: choose merged or adapter, not {lora!r}")
    run_dir, out = Path(run_dir), Path(out)
    path = choose_checkpoint(run_dir, checkpoint)
    state = ckpt.read_trainer_state(path)
    recipe_file = run_dir / "recipe.yaml"
    recipe = yaml.safe_load(recipe_file.read_text()) if recipe_file.is_file() else {}
    if state.get("model_state") == "trainable":  # LoRA: the adapters (and a new head) only
        import zoo

        lora_config = recipe.get("lora") or {}
        base = (recipe.get("model") or {}).get("path")
        base_dir = base if base is not None else run_dir / "base"
        if base is None and not (run_dir / "base" / "zoo.json").is_file():
            raise CheckpointError(
                f"{path}: holds LoRA adapters of a freshly initialised model, whose base weights "
                f"({run_dir / 'base'}) the run writes only when it finishes"
            )
        model = zoo.from_pretrained(base_dir, task=state["model"].get("task"), dtype=_saved_dtype(path))
        apply_lora(model, lora_config["targets"], lora_config["r"], lora_config["alpha"], 0.0,
                   [n for n in ckpt.model_shapes(path) if ".lora_" not in n])  # fmt: skip
        _fill(model, path, [n for n, p in model.named_parameters() if p.requires_grad])
        if lora == "adapter":
            written = (export_peft if format == "hf" else save_adapter)(model, out, base=str(base_dir))
        else:
            written = save_pretrained(merge_lora(model), out, format=format)
    else:
        model = _empty_model(state["model"], _saved_dtype(path))
        _fill(model, path, None)
        if (run_dir / "labels.json").is_file():
            import json

            model.label_names = json.loads((run_dir / "labels.json").read_text())
        written = save_pretrained(model.eval(), out, format=format)
    tokenizer = _tokenizer_for(run_dir, recipe)
    if tokenizer is not None:
        save_tokenizer(tokenizer, out)
    return written if isinstance(written, Path) else out
