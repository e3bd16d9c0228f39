"""Heads over an encoder's output: the first-token pooler."""

import torch
from torch import nn


class FirstTokenPooler(nn.Module):
    """``tanh(dense(x[:, 0]))``: the pooler of BERT and of transformers' ViTModel.

    The first token ([CLS], or a vision transformer's class token) sees the whole sequence
    through bidirectional attention; a dense layer and tanh turn it into one vector per input.

    Args:
        d_model: width of the hidden states.
        d_out: width of the pooled vector (default ``d_model``).
    """

    def __init__(self, d_model: int, d_out: int | None = None):
        super().__init__()
        self.dense = nn.Linear(d_model, d_out or d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, d_model) -> (B, d_out)."""
        return torch.tanh(self.dense(x[:, 0]))
