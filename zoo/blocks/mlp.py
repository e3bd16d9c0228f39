"""Feed-forward blocks: a plain MLP with an activation by name, and gated forms (SwiGLU, GeGLU)."""

import torch
from torch import nn


class QuickGELU(nn.Module):
    """x * sigmoid(1.702 x), the GELU approximation of the original CLIP."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


_ACTIVATIONS = {
    "gelu": lambda: nn.GELU(),
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "quick_gelu": QuickGELU,
    "relu": nn.ReLU,
    "silu": nn.SiLU,
}
# A gated MLP computes down(act(gate(x)) * up(x)); the name says which activation gates.
GATED_MLPS = {"swiglu": "silu", "geglu": "gelu", "geglu_tanh": "gelu_tanh"}
MLP_KINDS = tuple(_ACTIVATIONS) + tuple(GATED_MLPS)


def get_activation(name: str) -> nn.Module:
    """An activation module by name: gelu, gelu_tanh, quick_gelu, relu or silu."""
    if name not in _ACTIVATIONS:
        raise ValueError(f"activation: unknown activation {name!r}; choose one of {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


class MLP(nn.Module):
    """Position-wise feed-forward network.

    Args:
        d_model: input and output width.
        d_ff: hidden width.
        activation: activation name (see ``get_activation``).
        gated: if True, ``down(act(gate(x)) * up(x))`` (SwiGLU with silu); else ``down(act(up(x)))``.
        bias: whether the projections carry biases.
        dropout: dropout on the output.
        act_dropout: dropout on the hidden activations, before ``down`` (transformers' BART and
            Marian call it ``activation_dropout``; T5 drops there too, and its layer drops the
            output again as residual dropout).
    """

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        activation: str = "gelu",
        gated: bool = False,
        bias: bool = True,
        dropout: float = 0.0,
        act_dropout: float = 0.0,
    ):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff, bias=bias)
        self.gate = nn.Linear(d_model, d_ff, bias=bias) if gated else None
        self.down = nn.Linear(d_ff, d_model, bias=bias)
        self.act = get_activation(activation)
        self.dropout = nn.Dropout(dropout)
        self.act_dropout = nn.Dropout(act_dropout)
        self.gate_up: nn.Module | None = None  # see fuse_gate_up

    def fuse_gate_up(self, gate_up: nn.Module) -> None:
        """Compute gate and up with one projection to 2 * d_ff outputs, gate first (inference:
        one matmul instead of two); gate and up are removed."""
        if self.gate is None:
            raise ValueError("gate_up: only a gated MLP has a gate to fuse with up")
        self.gate_up = gate_up
        del self.gate, self.up

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up is not None:
            gate, up = self.gate_up(x).chunk(2, dim=-1)
            h = self.act(gate) * up
        elif self.gate is None:
            h = self.act(self.up(x))
        else:
            h = self.act(self.gate(x)) * self.up(x)
        return self.dropout(self.down(self.act_dropout(h)))


def make_mlp(
    kind: str, d_model: int, d_ff: int, bias: bool = True, dropout: float = 0.0, act_dropout: float = 0.0
) -> MLP:
    """An MLP by kind: an activation name gives a plain MLP, ``swiglu``/``geglu`` a gated one."""
    if kind in GATED_MLPS:
        return MLP(d_model, d_ff, GATED_MLPS[kind], gated=True, bias=bias, dropout=dropout, act_dropout=act_dropout)
    if kind in _ACTIVATIONS:
        return MLP(d_model, d_ff, kind, gated=False, bias=bias, dropout=dropout, act_dropout=act_dropout)
    raise ValueError(f"mlp: unknown MLP kind {kind!r}; choose one of {', '.join(MLP_KINDS)}")
