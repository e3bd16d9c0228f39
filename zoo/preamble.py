"""The forward preamble every base shares (CausalLM, Encoder, Seq2SeqLM): input checks, position
ids, the cache's key layout, the boolean masks and the additive bias; then the stack itself.

A base calls ``prepare`` once per stack and forward, and hands what it returns to ``run_stack``;
no base writes its own mask or position arithmetic.
"""

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from zoo.blocks.cache import KVCache
from zoo.blocks.embeddings import check_token_ids
from zoo.blocks.layers import run_layers
from zoo.blocks.masks import attention_mask as build_mask


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding: (B, S) 1/0 mask -> (B, S), padding slots at 0.

    Left-padded rows then give their real tokens the same positions as unpadded rows."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


@dataclass
class Preamble:
    """What one stack needs for one forward.

    Attributes:
        position_ids: (B, T) the new tokens' positions.
        q_idx: (T,) sequence index of each query (cache included).
        k_idx: (S,) sequence index of each key.
        key_valid: (B, S) False at padding keys, or None when nothing is padded.
        past: tokens the cache held before this forward.
    """

    position_ids: torch.Tensor
    q_idx: torch.Tensor
    k_idx: torch.Tensor
    key_valid: torch.Tensor | None
    past: int

    def mask(self, causal: bool, window: int | None = None) -> torch.Tensor | None:
        """The (B or 1, 1, T, S) boolean mask of this forward (see ``zoo.blocks.attention_mask``)."""
        return build_mask(self.q_idx, self.k_idx, self.key_valid, causal=causal, window=window)

    def mask_kwargs(self, causal: bool, windows: list[int | None] | None = None) -> dict:
        """``mask=`` for a stack whose layers mask alike, else ``masks=`` (one per layer): one mask
        is built per distinct window (two at most for dense + banded layers), not one per layer."""
        if not windows:
            return {"mask": self.mask(causal)}
        masks = {w: self.mask(causal, w) for w in set(windows)}
        return {"mask": masks[windows[0]]} if len(masks) == 1 else {"masks": [masks[w] for w in windows]}

    def bias(self, make_bias: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | None]) -> torch.Tensor | None:
        """The additive attention bias ``make_bias(q_idx, k_idx)`` (T5's relative buckets: (1, H, T, S)),
        computed once here and shared by every layer of the stack. At a decoding step q_idx holds
        the absolute index of the new token, so the cache offset is in it."""
        return make_bias(self.q_idx, self.k_idx)


def prepare(
    input_ids: torch.Tensor | None,
    *,
    shape: tuple[int, int] | None = None,
    device: torch.device | None = None,
    vocab_size: int | None = None,
    max_seq_len: int | None = None,
    attention_mask: torch.Tensor | None = None,
    position_ids: torch.Tensor | None = None,
    cache: KVCache | None = None,
    count_positions: Callable[[torch.Tensor], torch.Tensor] | None = None,
    name: str = "input_ids",
) -> Preamble:
    """Check a forward's inputs and lay out its positions, keys and padding.

    Args:
        input_ids: (B, T) token ids, checked against ``vocab_size``; None for embedded inputs
            (images, audio), then ``shape`` (B, T) and ``device`` say what the stack reads.
        max_seq_len: the most positions the model holds (cache included); None: no limit.
        attention_mask: (B, T) 1 for real tokens, 0 for padding; with a cache, (B, past + T).
        position_ids: (B, T); by default ``count_positions(attention_mask)`` where both are given
            (``positions_from_mask``: left padding does not shift the real tokens, as decoder-only
            LMs need), else past, ..., past + T - 1 for every row (encoder-decoders, as
            transformers numbers them).
        cache: a ``KVCache``, advanced here once for every layer.
        name: the argument named in errors (``input_ids``, ``decoder_input_ids``).
    """
    mask_name = "attention_mask" if name == "input_ids" else name.replace("input_ids", "attention_mask")
    if input_ids is not None:
        if input_ids.dim() != 2:
            raise ValueError(f"{name}: expected shape (batch, seq), got {tuple(input_ids.shape)}")
        check_token_ids(input_ids, vocab_size, name=name)
        shape, device = tuple(input_ids.shape), input_ids.device
    B, T = shape
    past = cache.length if cache is not None else 0
    if max_seq_len is not None and past + T > max_seq_len:
        raise ValueError(f"max_seq_len: {past + T} tokens is longer than the model's max_seq_len={max_seq_len}")
    new_valid = None
    if attention_mask is not None:
        if attention_mask.shape != (B, past + T):
            raise ValueError(
                f"{mask_name}: expected shape {(B, past + T)} (past + new tokens), got {tuple(attention_mask.shape)}"
            )
        new_valid = attention_mask[:, past:].bool()
    if position_ids is None:
        if attention_mask is not None and count_positions is not None:
            position_ids = count_positions(attention_mask)[:, past:]
        else:
            position_ids = torch.arange(past, past + T, device=device).expand(B, T)
    if cache is None:
        idx = torch.arange(T, device=device)
        return Preamble(position_ids, idx, idx, new_valid, past)
    q_idx, k_idx, key_valid = cache.advance(T, new_valid)
    return Preamble(position_ids, q_idx, k_idx, key_valid, past)


def run_stack(
    layers: nn.ModuleList,
    norm: nn.Module,
    x: torch.Tensor,
    *,
    checkpointing: bool = False,
    output_hidden_states: bool = False,
    **kwargs,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
    """Run ``layers`` then ``norm`` over x (B, T, d_model); kwargs (mask or masks, bias, rope,
    cache, context, context_mask, context_cache) go to every layer.

    Returns the output (B, T, d_model) and, when asked for, each layer's input and the output.
    """
    states: list[torch.Tensor] | None = [] if output_hidden_states else None
    x = run_layers(layers, x, checkpointing=checkpointing, states=states, **kwargs)
    x = norm(x)
    return x, ((*states, x) if states is not None else None)


def context_mask(context: torch.Tensor, key_valid: torch.Tensor | None) -> torch.Tensor | None:
    """Cross-attention's mask over a context (B, S, d) with padding ``key_valid`` (B, S):
    (B, 1, 1, S), the same for every query; None when nothing is padded."""
    B, S = context.shape[:2]
    if key_valid is None:
        return None
    if key_valid.shape != (B, S):
        raise ValueError(
            f"encoder_attention_mask: expected shape {(B, S)} like the encoder output, got {tuple(key_valid.shape)}"
        )
    idx = torch.arange(S, device=context.device)
    return build_mask(idx[:1], idx, key_valid)
