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
    if r < 1:
        raise ValueError(f"r: LoRA rank must be at least 1, got {r}")
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


def save_adapter(model: nn.Module, path: str | Path) -> Path:
    """Write ``adapter.safetensors`` (trainable tensors only) and ``adapter.json`` into ``path``."""
    config = getattr(model, "lora_config", None)
    if config is None:
        raise ValueError("model: has no LoRA adapters (call apply_lora first)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().clone() for k, v in adapter_state_dict(model).items()}
    tmp = path / (ADAPTER_WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(path / ADAPTER_WEIGHTS)
    (path / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return path


def load_adapter(model: nn.Module, path: str | Path) -> nn.Module:
    """Apply the adapters saved in ``path`` to a fresh base model and load their weights strictly."""
    path = Path(path)
    for name in (ADAPTER_CONFIG, ADAPTER_WEIGHTS):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name}: missing; not a LoRA adapter directory")
    config = json.loads((path / ADAPTER_CONFIG).read_text())
    apply_lora(model, **config)
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
    return model
