"""Normalisation layers: LayerNorm (with or without bias) and RMSNorm."""

import torch
from torch import nn

NORMS = ("layernorm", "rmsnorm")


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019), as LLaMA and T5 use it.

    Args:
        dim: size of the last dimension.
        eps: added to the mean square before the square root.

    The statistic is computed in fp32 and the result cast back, so bf16 inputs do not lose
    the small-variance rows.
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


def make_norm(kind: str, dim: int, eps: float = 1e-5, bias: bool = True) -> nn.Module:
    """Build a norm by name: ``"layernorm"`` or ``"rmsnorm"``.

    Args:
        kind: the norm's name.
        dim: the normalised dimension.
        eps: numerical floor.
        bias: LayerNorm only; False gives a LayerNorm without a shift.
    """
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=eps, bias=bias)
    if kind == "rmsnorm":
        return RMSNorm(dim, eps=eps)
    raise ValueError(f"norm: unknown norm {kind!r}; choose one of {', '.join(NORMS)}")
