"""Encoder: the forward glue every bidirectional encoder shares (BERT, ViT, ...).

A family subclass builds its input embedding, ``layers`` and ``norm`` (the final norm; an
``nn.Identity`` for post-LN stacks, whose layers already end in a norm) and calls ``encode``;
this module runs the stack with a non-causal padding mask, and holds what encoder heads share:
mean pooling, the classification loss and the weight initialisation.
"""

import torch
from torch import nn
from torch.nn import functional as F

from zoo.modeling import ZooModel
from zoo.preamble import prepare, run_stack

PROBLEM_TYPES = ("regression", "single_label_classification", "multi_label_classification")


def init_encoder_weights(model: nn.Module, std: float) -> None:
    """BERT's initialisation: normal(0, std) for matrices, tables and tokens; zeros for biases;
    ones for norm scales."""
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            nn.init.normal_(p, std=std)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
        else:
            nn.init.ones_(p)


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Average of the hidden states over real tokens: (B, T, d) and (B, T) 1/0 -> (B, d).

    Padding is left out of both the sum and the count (sentence-transformers' mean pooling)."""
    if attention_mask is None:
        return hidden.mean(dim=1)
    weights = attention_mask.to(hidden.dtype)[..., None]  # (B, T, 1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


def problem_type_of(n_labels: int, labels: torch.Tensor, problem_type: str | None) -> str:
    """transformers' rule: one label is regression; integer labels are single-label; else multi-label."""
    if problem_type is not None:
        return problem_type
    if n_labels == 1:
        return "regression"
    if labels.dtype in (torch.long, torch.int):
        return "single_label_classification"
    return "multi_label_classification"


def classification_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str | None) -> torch.Tensor:
    """The loss of a sequence or image classifier (B, n_labels) against ``labels``.

    Mean squared error for regression, cross-entropy for integer labels (-100 ignored), binary
    cross-entropy for multi-label float targets, as transformers chooses them.
    """
    n_labels = logits.shape[-1]
    kind = problem_type_of(n_labels, labels, problem_type)
    if kind == "regression":
        if n_labels == 1:
            return F.mse_loss(logits.squeeze(-1).float(), labels.reshape(-1).float())
        return F.mse_loss(logits.float(), labels.float())
    if kind == "single_label_classification":
        return F.cross_entropy(logits.reshape(-1, n_labels).float(), labels.reshape(-1), ignore_index=-100)
    if labels.shape != logits.shape:
        raise ValueError(f"labels: multi-label targets need shape {tuple(logits.shape)}, got {tuple(labels.shape)}")
    return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


class Encoder(ZooModel):
    """Base of bidirectional encoders. Subclasses set ``layers`` and ``norm`` in ``__init__``."""

    # No class-level defaults: a class attribute would shadow the submodule nn.Module registers.
    layers: nn.ModuleList
    norm: nn.Module

    def attention_bias(self, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor | None:
        """An additive bias on every layer's attention scores, (1 or B, n_heads, T, S) from the
        queries' and keys' sequence indices (relative buckets); none by default."""
        return None

    def encode(
        self, x: torch.Tensor, key_valid: torch.Tensor | None = None, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Run the layers over embedded inputs, every token seeing every real token.

        Args:
            x: (B, T, d_model) embedded inputs.
            key_valid: (B, T) 1/True for real tokens, 0/False for padding; None when all are real.
            output_hidden_states: also return each layer's input and the final output.

        Returns:
            The final hidden states (B, T, d_model), after ``norm``, and the hidden states (or None).
        """
        prep = prepare(None, shape=tuple(x.shape[:2]), device=x.device, attention_mask=key_valid)
        return run_stack(
            self.layers,
            self.norm,
            x,
            checkpointing=self.gradient_checkpointing,
            output_hidden_states=output_hidden_states,
            bias=prep.bias(self.attention_bias),
            **prep.mask_kwargs(causal=False),
        )
