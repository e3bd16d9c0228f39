"""Debug tools for studying a model in training: a shape trace of every module, the first
module whose output goes NaN/Inf, and per-parameter gradient norms."""

import math
from collections.abc import Iterable

import torch
from torch import nn


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).removeprefix('torch.')}"
    if isinstance(value, (tuple, list)):
        inner = [_describe(v) for v in value]
        inner = [s for s in inner if s]
        return "(" + ", ".join(inner) + ")" if inner else ""
    if hasattr(value, "__dataclass_fields__"):  # ModelOutput
        parts = [f"{k}={_describe(getattr(value, k))}" for k in value.__dataclass_fields__]
        return ", ".join(p for p in parts if not p.endswith("="))
    return ""


def _tensors(value) -> Iterable[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for v in value:
            yield from _tensors(v)
    elif hasattr(value, "__dataclass_fields__"):
        for k in value.__dataclass_fields__:
            yield from _tensors(getattr(value, k))


class ShapeTrace:
    """Records ``name (Class): inputs -> outputs`` for every module call, in call order.

    Use as a context manager around one forward; ``lines`` holds the trace.
    """

    def __init__(self, model: nn.Module):
        self.model, self.lines, self._handles = model, [], []

    def __enter__(self) -> "ShapeTrace":
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_hook(self._hook(name or "(model)"), with_kwargs=True))
        return self

    def _hook(self, name: str):
        def hook(module, args, kwargs, output):
            inputs = _describe(list(args) + [v for v in kwargs.values() if isinstance(v, torch.Tensor)])
            self.lines.append(f"{name} ({type(module).__name__}): {inputs} -> {_describe(output)}")

        return hook

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class NonFiniteWatch:
    """Checks every module's output for NaN/Inf and remembers the first one that has any.

    Forward hooks fire when a module finishes, innermost first, so the first module recorded
    is the smallest one where a bad value appeared (``layers.1.mlp.up``, not ``layers.1``).
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.first: str | None = None
        self.first_kind = ""
        self._handles = []

    def __enter__(self) -> "NonFiniteWatch":
        for name, module in self.model.named_modules():
            self._handles.append(module.register_forward_hook(self._hook(name or "(model)")))
        return self

    def _hook(self, name: str):
        def hook(module, args, output):
            if self.first is not None:
                return
            for t in _tensors(output):
                if t.is_floating_point() and not torch.isfinite(t).all():
                    self.first = f"{name} ({type(module).__name__})"
                    self.first_kind = "NaN" if torch.isnan(t).any() else "Inf"
                    return

        return hook

    def reset(self) -> None:
        self.first, self.first_kind = None, ""

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.full_tensor() if hasattr(t, "full_tensor") else t  # FSDP2 shards are DTensors


def grad_norms(model: nn.Module) -> list[tuple[str, float]]:
    """(parameter name, gradient L2 norm) for every parameter with a gradient, largest first."""
    out = [(n, float(_local(p.grad).float().norm())) for n, p in model.named_parameters() if p.grad is not None]
    return sorted(out, key=lambda x: -x[1] if math.isfinite(x[1]) else -math.inf)


def nonfinite_parameters(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if not torch.isfinite(_local(p.detach())).all()]


def grad_norm_table(norms: list[tuple[str, float]], limit: int = 20) -> str:
    width = max((len(n) for n, _ in norms[:limit]), default=10)
    lines = [f"  {name:<{width}}  {norm:.4g}" for name, norm in norms[:limit]]
    if len(norms) > limit:
        lines.append(f"  ... {len(norms) - limit} more")
    return "\n".join(lines)
