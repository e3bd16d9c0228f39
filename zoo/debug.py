"""Debug tools for any model, in training or not: a shape trace of every module, the first
module whose output goes NaN/Inf, and gradient norms per parameter and per layer.

The functions at the end are the public face (``zoo.debug.trace_shapes(model, input_ids=ids)``,
``first_nonfinite``, ``layer_grad_norms``); the training loop's debug mode uses the classes.
"""

import math
import re
import sys
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


def trace_shapes(model: nn.Module, *args, file=sys.stdout, **inputs) -> list[str]:
    """Run one forward (no gradients) and print every module call as
    ``name (Class): input shapes -> output shapes``, in call order; returns the lines.

    The seed's first debugging rule, "always print shapes", for a whole model at once::

        zoo.debug.trace_shapes(model, input_ids=ids)
    """
    with torch.no_grad(), ShapeTrace(model) as trace:
        model(*args, **inputs)
    if file is not None:
        print("\n".join(trace.lines), file=file)
    return trace.lines


def first_nonfinite(model: nn.Module, *args, **inputs) -> str | None:
    """Run one forward (no gradients) and name the first (innermost) module whose output holds
    NaN or Inf, as ``"layers.1.mlp.down (Linear): Inf"``; None when every output is finite.

    Parameters that are already non-finite are named instead, since every output after them is.
    """
    bad = nonfinite_parameters(model)
    if bad:
        return f"parameter {bad[0]} is already NaN/Inf ({len(bad)} parameters in all)"
    with torch.no_grad(), NonFiniteWatch(model) as watch:
        model(*args, **inputs)
    return None if watch.first is None else f"{watch.first}: {watch.first_kind}"


_LAYER = re.compile(r"^(.*?layers\.\d+)\.")


def layer_grad_norms(model: nn.Module) -> list[tuple[str, float]]:
    """Gradient L2 norm per layer (``layers.3``; the parameters outside the stack each by
    name), in model order: run after ``loss.backward()``. A norm falling layer by layer towards
    the input is a vanishing gradient; rising, an exploding one."""
    groups: dict[str, float] = {}
    for name, p in model.named_parameters():
        if p.grad is None:
            continue
        m = _LAYER.match(name)
        key = m.group(1) if m else name
        groups[key] = groups.get(key, 0.0) + float(_local(p.grad).float().pow(2).sum())
    return [(k, math.sqrt(v)) for k, v in groups.items()]


def layer_grad_norm_report(model: nn.Module) -> str:
    """``layer_grad_norms`` as a table with a bar per layer (log scale), for a terminal."""
    norms = layer_grad_norms(model)
    if not norms:
        return "  (no gradients: run loss.backward() first)"
    finite = [n for _, n in norms if math.isfinite(n) and n > 0]
    low = math.log10(min(finite)) if finite else 0.0
    high = math.log10(max(finite)) if finite else 1.0
    width = max(len(k) for k, _ in norms)
    lines = []
    for name, norm in norms:
        if not math.isfinite(norm):
            bar = "NaN/Inf"
        elif norm == 0:
            bar = "0"
        else:
            bar = "#" * (1 + round(30 * (math.log10(norm) - low) / max(high - low, 1e-9)))
        lines.append(f"  {name:<{width}}  {norm:10.4g}  {bar}")
    return "\n".join(lines)
