"""LoRA (Hu et al. 2021): low-rank adapters on linear layers, found by module name.

Every family names its projections the same way (``attn.q_proj``, ``attn.k_proj``,
``attn.v_proj``, ``attn.o_proj``, ``mlp.up``, ``mlp.gate``, ``mlp.down``), so one list of
targets adapts GPT-2, LLaMA, BERT or ViT alike.

    model = zoo.create_model("gpt2-tiny")
    zoo.lora.apply_lora(model, targets=["attn.q_proj", "attn.v_proj"], r=8)
    ...train...
    zoo.lora.save_adapter(model, "adapter/")      # a few hundred KB, not the whole model
    zoo.lora.merge_lora(model)                     # plain nn.Linear again, ready to export

A ``LoRALinear`` keeps the original ``weight`` and ``bias`` Parameters under their own names,
so the base checkpoint's keys are unchanged and merging gives back a plain ``nn.Linear``.
"""

import fnmatch
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

ADAPTER_WEIGHTS = "adapter.safetensors"
ADAPTER_CONFIG = "adapter.json"
# PEFT's adapter format (what ``PeftModel.from_pretrained`` reads), written beside zoo's own.
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"
_LORA_ARGS = ("targets", "r", "alpha", "dropout", "train_also")
_PEFT_TASK_TYPES = {"causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS"}


class LoRALinear(nn.Linear):
    """``y = x W^T + b + (alpha / r) * dropout(x) A^T B^T``, with W and b frozen.

    Args:
        base: the linear layer to adapt; its weight and bias Parameters are reused, not copied.
        r: rank of the update.
        alpha: scale numerator.
        dropout: dropout on the adapter's input.
    """

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r
        factory = {"device": base.weight.device, "dtype": base.weight.dtype}
        # B starts at zero so the adapted model equals the base model at step 0.
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **factory))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **factory))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        update = F.linear(F.linear(self.lora_dropout(x), self.lora_A), self.lora_B)  # (..., out)
        return F.linear(x, self.weight, self.bias) + self.scaling * update

    def merged(self) -> nn.Linear:
        """A plain nn.Linear with ``W + (alpha / r) B A`` folded in."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None)
        linear = linear.to(device=self.weight.device, dtype=self.weight.dtype)
        with torch.no_grad():
            delta = (self.lora_B.float() @ self.lora_A.float()) * self.scaling  # (out, in)
            linear.weight.copy_((self.weight.float() + delta).to(self.weight.dtype))
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        linear.weight.requires_grad_(self.weight.requires_grad)
        return linear

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, r={self.r}, alpha={self.alpha}"


def _matches(name: str, pattern: str) -> bool:
    """``attn.q_proj`` matches ``layers.3.attn.q_proj`` (a dotted suffix); globs match whole names."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.endswith("." + pattern)


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(root.get_submodule(parent_name) if parent_name else root, child, module)


def apply_lora(
    model: nn.Module,
    targets: list[str],
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    train_also: list[str] | tuple[str, ...] = (),
) -> list[str]:
    """Put adapters on the linear layers named by ``targets``; freeze everything else.

    Args:
        targets: module names, as dotted suffixes (``attn.q_proj``) or globs (``layers.1*.mlp.*``).
        r, alpha, dropout: see ``LoRALinear``.
        train_also: parameter-name globs that stay trainable (a fresh classifier head, say).

    Returns the adapted module names. Raises ValueError naming the target that matched nothing.
    """
    if isinstance(targets, str):  # iterating it would try each character as a module name
        raise ValueError(f"targets: expected a list of module names, got the string {targets!r}; use [{targets!r}]")
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"r: LoRA rank must be an integer >= 1, got {r!r}")
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and not isinstance(m, LoRALinear)}
    adapted = []
    for target in targets:
        hits = [n for n in linears if _matches(n, target)]
        if not hits:
            examples = ", ".join(sorted({n.split(".", 2)[-1] if n.startswith("layers.") else n for n in linears})[:8])
            raise ValueError(f"targets: {target!r} matches no linear layer; this model's are named like {examples}")
        adapted += [n for n in hits if n not in adapted]
    for p in model.parameters():
        p.requires_grad_(False)
    for name in adapted:
        _set_module(model, name, LoRALinear(linears[name], r, alpha, dropout))
    named = dict(model.named_parameters())
    for pattern in train_also:
        hits = [n for n in named if fnmatch.fnmatchcase(n, pattern) or n.startswith(pattern + ".")]
        if not hits:
            raise ValueError(f"train_also: {pattern!r} matches no parameter")
        for n in hits:
            named[n].requires_grad_(True)
    model.lora_config = {"targets": list(targets), "r": r, "alpha": alpha, "dropout": dropout,
                         "train_also": list(train_also)}  # fmt: skip
    return adapted


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its linear layer (in place); the model has plain nn.Linears after."""
    for name, module in list(model.named_modules()):
        if isinstance(module, LoRALinear):
            _set_module(model, name, module.merged())
    if hasattr(model, "lora_config"):
        del model.lora_config
    return model


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The trainable tensors of a LoRA model: the adapters plus ``train_also`` parameters."""
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _base_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without its adapters (LoRALinear keeps the base weights' own names)."""
    return {k: v for k, v in model.state_dict().items() if ".lora_" not in k}


def base_model(model: nn.Module) -> nn.Module:
    """A plain copy of a LoRA model's base (adapters left out, not merged), ready to save."""
    from zoo.registry import FAMILIES, _load_families

    _load_families()
    base = FAMILIES[model.family].model_class(model.task)(model.config)
    base.load_state_dict(_base_state(model), strict=True)
    if getattr(model, "label_names", None):
        base.label_names = list(model.label_names)
    return base.to(next(model.parameters()).dtype)


def with_task(model: nn.Module, task: str, config=None) -> tuple[nn.Module, list[str]]:
    """The same family built for ``task`` (and ``config``), ``model``'s weights loaded into it;
    what ``model`` lacks (a new head) keeps its fresh initialisation. Returns (model, new weights)."""
    from zoo.registry import FAMILIES

    family = FAMILIES[model.family]
    new = family.model_class(task)(config or model.config).to(model.dtype)
    shapes = {k: v.shape for k, v in new.state_dict().items()}
    # A head resized to another number of classes starts fresh, like a new one.
    state = {k: v for k, v in model.state_dict().items() if k not in shapes or shapes[k] == v.shape}
    missing, unexpected = new.load_state_dict(state, strict=False)
    if unexpected:
        raise ValueError(
            f"task: the checkpoint's {model.task!r} weights {unexpected[:4]} have no place in a {task!r} model"
        )
    return new, list(missing)


def save_adapter(model: nn.Module, path: str | Path, base: str | None = None) -> Path:
    """Write ``adapter.safetensors`` (trainable tensors only) and ``adapter.json`` into ``path``.

    Args:
        base: where the base model is (a path, relative paths from ``path``; ``pkg://``; a Hub
            repo id), recorded in adapter.json with the adapted model's family, task and config,
            so ``load_adapted(path)`` rebuilds the whole model (a new head included).
    """
    config = getattr(model, "lora_config", None)
    if config is None:
        raise ValueError("model: has no LoRA adapters (call apply_lora first)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().clone() for k, v in adapter_state_dict(model).items()}
    tmp = path / (ADAPTER_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(path / ADAPTER_WEIGHTS)
    record = {"family": model.family, "task": model.task, "config": model.config.to_dict()}
    if getattr(model, "label_names", None):
        record["label_names"] = list(model.label_names)
    (path / ADAPTER_CONFIG).write_text(json.dumps({**config, "base": base, "model": record}, indent=2) + "\n")
    return path


def _read_adapter_config(path: Path) -> dict:
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (path / name).is_file():
            hint = " (a PEFT adapter: zoo reads the adapter.json beside it)" if (path / PEFT_CONFIG).is_file() else ""
            raise FileNotFoundError(f"{path / name}: missing; not a zoo LoRA adapter directory{hint}")
    try:
        return json.loads((path / ADAPTER_CONFIG).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path / ADAPTER_CONFIG}: not valid JSON ({err})") from err


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Apply the adapters saved in ``path`` to a fresh base model and load their weights strictly."""
    path = Path(path)
    config = _read_adapter_config(path)
    missing_args = [k for k in _LORA_ARGS if k not in config]
    if missing_args:
        raise ValueError(f"{path / ADAPTER_CONFIG}: no {', '.join(missing_args)}")
    record = config.get("model") or {}
    if record.get("task") not in (None, model.task):
        raise ValueError(
            f"{path / ADAPTER_CONFIG}: adapts a {record['task']!r} model, this one is {model.task!r} "
            "(zoo.lora.load_adapted builds the adapter's own head)"
        )
    apply_lora(model, **{k: config[k] for k in _LORA_ARGS})
    tensors = load_file(str(path / ADAPTER_WEIGHTS))
    expected = {n: p for n, p in model.named_parameters() if p.requires_grad}
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path / ADAPTER_WEIGHTS}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    with torch.no_grad():
        for n, t in tensors.items():
            if t.shape != expected[n].shape:
                raise ValueError(f"{n}: adapter has shape {tuple(t.shape)}, model expects {tuple(expected[n].shape)}")
            expected[n].copy_(t)
    if record.get("label_names"):
        model.label_names = list(record["label_names"])
    return model


def load_adapted(path: str | Path, base: str | Path | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """The base model named in ``path/adapter.json`` (or ``base``) with the adapter applied,
    its new head included, in eval mode."""
    from zoo.hub import from_pretrained
    from zoo.registry import FAMILIES, _load_families

    path = Path(path)
    config = _read_adapter_config(path)
    base = base if base is not None else config.get("base")
    if base is None:
        raise ValueError(
            f"{path / ADAPTER_CONFIG}: records no base model; name it (zoo generate BASE --adapter {path})"
        )
    base = str(base)
    if not base.startswith("pkg://") and not Path(base).is_absolute() and (path / base).exists():
        base = str(path / base)  # a base saved beside the adapter (a run's base/)
    model = from_pretrained(base, dtype=dtype)
    record = config.get("model") or {}
    if record.get("task") not in (None, model.task):
        _load_families()
        head_config = FAMILIES[model.family].config_cls.from_dict(record["config"])
        model, _ = with_task(model, record["task"], head_config)
    return load_adapter(model, path).eval()


def _reference_key(rules, key: str):
    """zoo key -> (the reference's key, the rule's function) when one rule maps it one to one."""
    from zoo.convert.engine import _pattern

    for rule in rules:
        for template in rule.src:
            m = _pattern(template).fullmatch(key)
            if m is None:
                continue
            if len(rule.src) != 1 or len(rule.dst) != 1:
                return None  # part of a fused reference tensor (GPT-2's c_attn holds q, k and v)
            return rule.dst[0].format(**m.groupdict()), rule.fn
    return None


def export_peft(model: nn.Module, path: str | Path, base: str | None = None) -> Path:
    """Write the adapter in PEFT's format (adapter_config.json + adapter_model.safetensors, with the
    reference implementation's module names), so transformers + ``PeftModel.from_pretrained``
    load it on the reference base model; trained extra parameters (a new head) go in as
    ``modules_to_save``. Raises ValueError naming a module PEFT cannot express."""
    from zoo.convert.engine import invert_rules
    from zoo.registry import FAMILIES, _load_families

    config = getattr(model, "lora_config", None)
    if config is None:
        raise ValueError("model: has no LoRA adapters (call apply_lora first)")
    _load_families()
    family = FAMILIES[model.family]
    if family.rules is None:
        raise ValueError(f"family {family.name!r} has no reference layout to name PEFT's modules after")
    rules = invert_rules(family.rules(model.config, model.task))
    probe = torch.arange(6.0).reshape(2, 3)
    tensors, targets, transposed, to_save = {}, [], set(), set()
    for name, module in model.named_modules():
        if not isinstance(module, LoRALinear):
            continue
        found = _reference_key(rules, f"{name}.weight")
        if found is None:
            raise ValueError(f"{name}: has no one-to-one module in the reference layout, which PEFT would need")
        ref, fn = found
        ref_module = ref.removesuffix(".weight")
        transposed.add(not torch.equal(fn([probe])[0], probe))  # GPT-2's Conv1D stores (in, out)
        tensors[f"base_model.model.{ref_module}.lora_A.weight"] = module.lora_A
        tensors[f"base_model.model.{ref_module}.lora_B.weight"] = module.lora_B
        targets.append(ref_module)
    if len(transposed) > 1:
        raise ValueError("targets: mix transposed (Conv1D) and plain linear layers; PEFT's fan_in_fan_out is one flag")
    for name, param in model.named_parameters():
        if param.requires_grad and ".lora_" not in name:
            found = _reference_key(rules, name)
            if found is None:
                raise ValueError(f"{name}: trained, but no reference parameter holds it one to one")
            ref, fn = found
            tensors[f"base_model.model.{ref}"] = fn([param.detach()])[0]
            to_save.add(ref.rpartition(".")[0])
    peft_config = {
        "peft_type": "LORA",
        "task_type": _PEFT_TASK_TYPES.get(model.task),
        "base_model_name_or_path": base,
        "r": config["r"],
        "lora_alpha": config["alpha"],
        "lora_dropout": config["dropout"],
        "target_modules": sorted(targets),
        "modules_to_save": sorted(to_save) or None,
        "fan_in_fan_out": transposed == {True},
        "bias": "none",
        "inference_mode": True,
    }
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().clone() for k, v in tensors.items()}, str(path / PEFT_WEIGHTS),
              metadata={"format": "pt"})  # fmt: skip
    (path / PEFT_CONFIG).write_text(json.dumps(peft_config, indent=2) + "\n")
    return path
