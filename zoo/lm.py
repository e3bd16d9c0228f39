"""CausalLM: the forward glue every decoder-only family shares.

A family subclass builds the modules (``embed``, optional ``pos`` and ``rope``, ``layers``,
``norm``, optional ``lm_head``) from its config; this class runs them. The config must have
``vocab_size``, ``max_seq_len``, ``n_layers`` and ``sliding_window`` (None for full attention).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from zoo.blocks.cache import KVCache
from zoo.blocks.embeddings import check_token_ids
from zoo.blocks.layers import run_layers
from zoo.blocks.masks import attention_mask as build_mask
from zoo.modeling import ZooModel
from zoo.outputs import ModelOutput


def init_weights(model: nn.Module, std: float, n_layers: int) -> None:
    """GPT-2's initialisation: normal(0, std) for weights, zeros for biases, ones for norms; the
    projections that write into the residual stream (``o_proj``, ``down``) are scaled by
    1/sqrt(2 * n_layers) so the residual variance does not grow with depth."""
    for name, p in model.named_parameters():
        if p.dim() >= 2:
            scale = 1 / math.sqrt(2 * n_layers) if name.endswith(("o_proj.weight", "down.weight")) else 1.0
            nn.init.normal_(p, std=std * scale)
        elif name.endswith("bias"):
            nn.init.zeros_(p)
        else:
            nn.init.ones_(p)


def positions_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip padding: (B, S) 1/0 mask -> (B, S), padding slots at 0.

    Left-padded rows then give their real tokens the same positions as unpadded rows."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: logits at t predict labels at t+1; -100 labels are ignored."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=-100)


class CausalLM(ZooModel):
    task = "causal_lm"
    # Subclasses set every one of these in __init__ (None where unused). No class-level
    # defaults: a class attribute would shadow the submodule nn.Module registers.
    embed: nn.Embedding
    pos: nn.Module | None
    rope: nn.Module | None
    drop: nn.Module
    layers: nn.ModuleList
    norm: nn.Module
    lm_head: nn.Linear | None

    def aux_loss(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Auxiliary training loss gathered after a forward (MoE families override)."""
        return None

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **options) -> torch.Tensor:
        """Continue the prompts: greedy, sampling or beam search; see ``zoo.generation.generate``."""
        from zoo.generation import generate

        return generate(self, input_ids, attention_mask, **options)

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache sized for this model (rolling when the model has a sliding window)."""
        attn = self.layers[0].attn
        return KVCache(
            len(self.layers),
            batch_size,
            attn.n_kv_heads,
            attn.head_dim,
            max_len,
            window=self.config.sliding_window,
            dtype=dtype or self.dtype,
            device=self.device,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: KVCache | None = None,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,
    ) -> ModelOutput:
        """Run the LM.

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T) 1 for real tokens, 0 for padding; with a cache, (B, past + T).
            labels: (B, T) targets (usually ``input_ids``); shifted inside; -100 is ignored.
            position_ids: (B, T); default counts real tokens only (see ``positions_from_mask``).
            cache: a ``KVCache`` from ``new_cache``; updated in place.
            output_hidden_states: return every layer's input and the final hidden state.
            logits_to_keep: if > 0, compute logits for the last this many positions only
                (generation needs the last one; the vocab projection is the largest matmul).
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected shape (batch, seq), got {tuple(input_ids.shape)}")
        check_token_ids(input_ids, self.config.vocab_size)
        B, T = input_ids.shape
        past = cache.length if cache is not None else 0
        if past + T > self.config.max_seq_len:
            raise ValueError(
                f"max_seq_len: {past + T} tokens is longer than the model's max_seq_len={self.config.max_seq_len}"
            )
        new_valid = None
        if attention_mask is not None:
            if attention_mask.shape != (B, past + T):
                raise ValueError(
                    f"attention_mask: expected shape {(B, past + T)} (past + new tokens), "
                    f"got {tuple(attention_mask.shape)}"
                )
            new_valid = attention_mask[:, past:].bool()
        if position_ids is None:
            if attention_mask is not None:
                position_ids = positions_from_mask(attention_mask)[:, past:]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device).expand(B, T)
        if cache is None:
            idx = torch.arange(T, device=input_ids.device)
            q_idx, k_idx, key_valid = idx, idx, new_valid
        else:
            q_idx, k_idx, key_valid = cache.advance(T, new_valid)
        mask = build_mask(q_idx, k_idx, key_valid, causal=True, window=self.config.sliding_window)

        x = self.embed(input_ids)  # (B, T, d_model)
        if self.pos is not None:
            x = x + self.pos(position_ids)
        x = self.drop(x)
        rope = self.rope(position_ids) if self.rope is not None else None
        states: list[torch.Tensor] | None = [] if output_hidden_states else None
        x = run_layers(
            self.layers, x, checkpointing=self.gradient_checkpointing, states=states, mask=mask, rope=rope, cache=cache
        )
        x = self.norm(x)
        h = x[:, -logits_to_keep:] if logits_to_keep > 0 else x
        logits = self.lm_head(h) if self.lm_head is not None else F.linear(h, self.embed.weight)  # (B, T, vocab)

        full_mask = attention_mask
        aux = self.aux_loss(full_mask[:, past:] if full_mask is not None else None)
        loss = None
        if labels is not None:
            loss = lm_loss(logits, labels)
            if aux is not None:
                loss = loss + self.config.aux_loss_coef * aux
        return ModelOutput(
            logits=logits,
            loss=loss,
            aux_loss=aux,
            last_hidden_state=x,
            hidden_states=(*tuple(states), x) if states is not None else None,
            cache=cache,
        )
