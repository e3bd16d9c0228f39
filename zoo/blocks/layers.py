"""TransformerLayer: self-attention, optional cross-attention and a feed-forward, pre- or post-LN."""

import torch
from torch import nn

from zoo.blocks.cache import ContextCache


class TransformerLayer(nn.Module):
    """One transformer layer built from given submodules.

    Args:
        attn: self-attention module (``zoo.blocks.Attention``).
        mlp: feed-forward module (``MLP`` or ``MoE``).
        norm1: norm around self-attention.
        norm2: norm around the feed-forward.
        cross_attn: optional cross-attention over an encoder's output (encoder-decoders).
        norm_cross: norm around cross-attention (required with ``cross_attn``).
        prenorm: True for pre-LN (``x + f(norm(x))``, GPT-2 and later), False for post-LN
            (``norm(x + f(x))``, the original Transformer and BERT).
        dropout: residual dropout on each sub-layer's output.
        residual: False drops the skip connections (the sub-layer's output replaces x, the norm
            stays where ``prenorm`` puts it): no transformer trains this way at depth; it is the
            switch that shows why (vanishing gradients, docs/debugging.md).
    """

    def __init__(
        self,
        attn: nn.Module,
        mlp: nn.Module,
        norm1: nn.Module,
        norm2: nn.Module,
        cross_attn: nn.Module | None = None,
        norm_cross: nn.Module | None = None,
        prenorm: bool = True,
        dropout: float = 0.0,
        residual: bool = True,
    ):
        super().__init__()
        if (cross_attn is None) != (norm_cross is None):
            raise ValueError("norm_cross: cross_attn and norm_cross come together")
        self.attn, self.mlp, self.norm1, self.norm2 = attn, mlp, norm1, norm2
        self.cross_attn, self.norm_cross = cross_attn, norm_cross
        self.prenorm, self.residual = prenorm, residual
        self.dropout = nn.Dropout(dropout)

    def _sublayer(self, x: torch.Tensor, norm: nn.Module, fn) -> torch.Tensor:
        skip = x if self.residual else 0
        if self.prenorm:
            return skip + self.dropout(fn(norm(x)))
        return norm(skip + self.dropout(fn(x)))

    def forward(
        self,
        x: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache=None,
        layer_idx: int = 0,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        context_bias: torch.Tensor | None = None,
        context_cache: ContextCache | None = None,
    ) -> torch.Tensor:
        """x (B, T, d_model) -> (B, T, d_model). Keyword arguments go to the attention modules:
        ``mask``, ``bias``, ``rope``, ``cache`` to self-attention; ``context`` (the encoder output),
        ``context_mask``, ``context_bias`` and ``context_cache`` (its keys and values, projected
        once: ``zoo.blocks.ContextCache``) to cross-attention."""
        x = self._sublayer(
            x, self.norm1, lambda h: self.attn(h, mask=mask, bias=bias, rope=rope, cache=cache, layer_idx=layer_idx)
        )
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("context: this layer has cross-attention and needs the encoder output")
            x = self._sublayer(
                x,
                self.norm_cross,
                lambda h: self.cross_attn(
                    h,
                    context=context,
                    mask=context_mask,
                    bias=context_bias,
                    context_cache=context_cache,
                    layer_idx=layer_idx,
                ),
            )
        return self._sublayer(x, self.norm2, self.mlp)


def run_layers(
    layers: nn.ModuleList,
    x: torch.Tensor,
    checkpointing: bool = False,
    states: list[torch.Tensor] | None = None,
    masks: list[torch.Tensor | None] | None = None,
    **kwargs,
) -> torch.Tensor:
    """Run a stack of layers.

    Args:
        checkpointing: recompute each layer's activations in backward instead of keeping them.
        states: if a list is given, each layer's input is appended to it (hidden states).
        masks: one attention mask per layer, for stacks whose layers mask differently (dense
            and banded layers); instead of a single ``mask`` in kwargs.
        kwargs: passed to every layer (mask, rope, cache, context, ...).
    """
    if masks is not None and len(masks) != len(layers):
        raise ValueError(f"masks: {len(masks)} masks for {len(layers)} layers")
    for i, layer in enumerate(layers):
        if masks is not None:
            kwargs["mask"] = masks[i]
        if states is not None:
            states.append(x)
        # Not with a cache: the recomputation in backward would append this step's keys twice.
        if checkpointing and torch.is_grad_enabled() and kwargs.get("cache") is None:
            x = torch.utils.checkpoint.checkpoint(layer, x, use_reentrant=False, layer_idx=i, **kwargs)
        else:
            x = layer(x, layer_idx=i, **kwargs)
    return x
