"""fp32 linear layers through oneDNN for decoding steps on CPU.

A decoding step multiplies one to a few rows by every weight. For those shapes torch's default
fp32 CPU product (``F.linear``, MKL's sgemm) is neither bandwidth- nor compute-bound: on GPT-2
124M's layer weights (2 threads) it read 13 GB/s at one row and 7-8 GB/s at 2 to 8 rows, where
oneDNN's inner-product primitive (``torch.ops.mkldnn._linear_pointwise``, the kernel inductor's
CPU backend calls for frozen linear layers) ran the same products 1.7x faster at one row and
1.5-3.5x faster at 2 to 8 (the 50257-row output projection: 1.5x and 2.5-4.4x;
``benchmarks/linear_kernels.py``, docs/results/linear_kernels.md). It is the same fp32
arithmetic, summed in another order (the results agree to ~1e-6 relative, as two BLAS libraries
do). At 16 rows it was 2x slower than MKL on the layers, so only products of up to
``MAX_ROWS`` rows use it.

``onednn_linears(model)`` routes a model's float32 ``nn.Linear`` layers (and ``linear()``, which
a tied output projection calls) to it while inside, for products without autograd (no_grad or
inference mode) of at most ``MAX_ROWS`` rows on CPU; everything else, training included, runs
``F.linear`` as always. ``generate`` and speculative decoding enter it for their decoding steps.
"""

import contextlib
import functools

import torch
from torch import nn
from torch.nn import functional as F

MAX_ROWS = 8
_active = 0  # how many onednn_linears contexts are open (linear() follows them)


def available() -> bool:
    """Whether this torch build has oneDNN and its linear primitive (x86 and Arm CPU builds do)."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def _serves(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (
        x.dtype == torch.float32
        and weight.dtype == torch.float32
        and x.device.type == "cpu"
        and weight.device.type == "cpu"
        and x.numel() <= MAX_ROWS * x.shape[-1]
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
    )


def _onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear``, through oneDNN inside ``onednn_linears`` for the products it serves."""
    if _active and _serves(x, weight):
        return _onednn(x, weight, bias)
    return F.linear(x, weight, bias)


def _forward(module: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    if _serves(x, module.weight):
        return _onednn(x, module.weight, module.bias)
    return F.linear(x, module.weight, module.bias)


@contextlib.contextmanager
def onednn_linears(model: nn.Module):
    """While inside, ``model``'s ``nn.Linear`` layers (exactly that class: subclasses and quantized
    layers keep their own forward; an ``nn.Linear`` inside a wrapper is routed like any other)
    run the products oneDNN serves through it. Yields how many layers it routed; restores them
    on exit, whatever happens. Nothing is copied or changed in the weights."""
    global _active
    if not available():
        yield 0
        return
    layers = [m for m in model.modules() if type(m) is nn.Linear and "forward" not in m.__dict__]
    for m in layers:
        m.forward = functools.partial(_forward, m)
    _active += 1
    try:
        yield len(layers)
    finally:
        _active -= 1
        for m in layers:
            m.__dict__.pop("forward", None)
