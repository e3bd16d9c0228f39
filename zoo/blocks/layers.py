"""TransformerLayer: self-attention, optional cross-attention and a feed-forward, pre- or post-LN;
``compile_decoding``: the same layers' decoding step through torch.compile."""

import torch
from torch import nn

from zoo.blocks.cache import ContextCache
from zoo.blocks.moe import MoE


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
        self.compiled_decoding = False  # see compile_decoding
        self._decoding_parts = None

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
        if self.compiled_decoding and cache is not None and x.shape[1] == 1 and self._compilable():
            return self._compiled_step(x, mask=mask, bias=bias, rope=rope, cache=cache, layer_idx=layer_idx)
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

    def _compilable(self) -> bool:
        """Whether the compiled decoding step computes what ``forward`` does: inference, pre-LN
        with residuals, self-attention only, no attention map kept."""
        return (
            self.prenorm
            and self.residual
            and self.cross_attn is None
            and not self.training
            and not torch.is_grad_enabled()
            and not self.attn.keep_weights
        )

    def _compiled_step(self, x, *, mask, bias, rope, cache, layer_idx):
        """One decoding step (T = 1) in three parts: norm, q/k/v projection and RoPE as one
        compiled graph; the cache write and attention eagerly (the keys grow every step, and a
        graph per length would recompile each step); output projection, residual, norm, MLP and
        residual as a second graph (eager for a mixture of experts, whose routing is data)."""
        enter, leave = self._decoding_parts
        q, k, v = enter(self, x, rope)
        attended = self.attn.attend(q, k, v, mask=mask, bias=bias, cache=cache, layer_idx=layer_idx)
        return (_leave if isinstance(self.mlp, MoE) else leave)(self, x, attended)


def _enter(layer: TransformerLayer, x: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return layer.attn.project(layer.norm1(x), rope)


def _leave(layer: TransformerLayer, x: torch.Tensor, attended: torch.Tensor) -> torch.Tensor:
    x = x + layer.attn.o_proj(attended)
    return x + layer.mlp(layer.norm2(x))


def _compiled_parts() -> tuple:
    """``_enter`` and ``_leave`` through torch.compile, for one model. torch.compile treats a
    module's parameters and buffers as inputs, so all layers of the same structure share one
    compiled graph: a 30-layer model compiles each part once, not 30 times (a new dtype, batch size
    or layer structure compiles again). torch.compile keeps its compiled graphs, and its limit of
    recompilations, per code object; each call gets fresh copies of the two functions' code, so
    one model's recompilations never use up another's."""

    def fresh(fn):
        code = fn.__code__.replace()  # an equal but distinct code object
        return torch.compile(type(fn)(code, fn.__globals__, fn.__name__), dynamic=False)

    return fresh(_enter), fresh(_leave)


def compile_decoding(model: nn.Module, enabled: bool = True) -> int:
    """Run a model's decoding steps (one new token a row, with a KV cache, under no_grad or
    inference mode) through torch.compile: each layer's norm, projections, RoPE, residuals and
    MLP become two fused graphs instead of about 40 eager ops. The prompt's prefill, training,
    and anything else run as before. The first steps compile (seconds to tens of seconds on a
    CPU); later ones reuse the graphs. ``enabled=False`` turns it off again.

    Serves pre-LN layers with residuals and self-attention only (GPT-2, LLaMA, Mistral, Mixtral);
    returns how many layers it serves, and raises ``ValueError`` if none (an encoder-decoder's
    decoder layers, with cross-attention, or a post-LN model)."""
    layers = [m for m in model.modules() if isinstance(m, TransformerLayer)]
    served = [m for m in layers if m.prenorm and m.residual and m.cross_attn is None]
    if enabled:
        why = None
        if not layers:
            why = "has no transformer layers"
        elif any(m.cross_attn is not None for m in layers):
            why = "decodes with cross-attention (an encoder-decoder)"
        elif not served:
            why = "has only post-LN layers or layers without residuals"
        if why:
            raise ValueError(
                f"compile: {type(model).__name__} {why}; the compiled decoding step serves pre-LN decoder "
                "layers with self-attention only (GPT-2, LLaMA, Mistral, Mixtral)"
            )
    parts = _compiled_parts() if enabled else None
    for m in served:
        m.compiled_decoding, m._decoding_parts = enabled, parts
    return len(served)


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
