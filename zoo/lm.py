"""CausalLM: the forward glue every decoder-only family shares.

A family subclass builds the modules (``embed``, optional ``pos`` and ``rope``, ``layers``,
``norm``, optional ``lm_head``) from its config; this class runs them. The config must have
``vocab_size``, ``max_seq_len``, ``n_layers`` and ``sliding_window`` (None for full attention);
a family whose layers differ in their window overrides ``layer_windows``.
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from zoo.blocks import onednn
from zoo.blocks.cache import KVCache
from zoo.modeling import ZooModel
from zoo.outputs import ModelOutput
from zoo.preamble import positions_from_mask, prepare, run_stack

__all__ = ["CausalLM", "init_weights", "lm_loss", "positions_from_mask"]


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

    def generation_defaults(self) -> dict:
        """Options ``generate`` takes from the model unless given: none for a causal LM."""
        return {}

    def start_decoding(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 1,
        use_cache: bool = True,
    ):
        """The decoding state generation talks to (``zoo.generation.Decoder``): the prompt, its
        mask and a KV cache sized for ``max_new_tokens`` more tokens."""
        from zoo.generation.state import Decoder

        return Decoder(self, input_ids, attention_mask, max_new_tokens, use_cache)

    def attention_bias(self, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor | None:
        """An additive bias on every layer's attention scores, (1 or B, n_heads, T, S) from the
        queries' and keys' sequence indices (ALiBi, relative buckets); none by default."""
        return None

    def layer_windows(self) -> list[int | None]:
        """Each layer's sliding window (None: the whole context); by default the config's, for every layer."""
        return [self.config.sliding_window] * len(self.layers)

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> KVCache:
        """An empty KV cache sized for this model (rolling when every layer has the same sliding window)."""
        attn = self.layers[0].attn
        windows = set(self.layer_windows())
        # Dense and banded layers mixed: a static cache for all, and the banded layers' mask
        # keeps them inside their window.
        window = windows.pop() if len(windows) == 1 else None
        return KVCache(
            len(self.layers),
            batch_size,
            attn.n_kv_heads,
            attn.head_dim,
            max_len,
            window=window,
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
        compute_logits: bool = True,
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
            compute_logits: False skips the output projection (``logits`` is None), for a caller
                that projects ``last_hidden_state`` itself (``zoo.quant.screen_head``).
        """
        if not compute_logits and labels is not None:
            raise ValueError("labels: the loss needs the logits; pass compute_logits=True")
        prep = prepare(
            input_ids,
            vocab_size=self.config.vocab_size,
            max_seq_len=self.config.max_seq_len,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            count_positions=positions_from_mask,
        )
        position_ids, past = prep.position_ids, prep.past
        mask_kwargs = prep.mask_kwargs(causal=True, windows=self.layer_windows())

        x = self.embed(input_ids)  # (B, T, d_model)
        if self.pos is not None:
            x = x + self.pos(position_ids)
        x = self.drop(x)
        rope = self.rope(position_ids) if self.rope is not None else None
        x, states = run_stack(
            self.layers,
            self.norm,
            x,
            checkpointing=self.gradient_checkpointing,
            output_hidden_states=output_hidden_states,
            rope=rope,
            cache=cache,
            bias=prep.bias(self.attention_bias),
            **mask_kwargs,
        )
        h = x[:, -logits_to_keep:] if logits_to_keep > 0 else x
        if not compute_logits:
            logits = None
        elif self.lm_head is not None:
            logits = self.lm_head(h)  # (B, T, vocab)
        else:
            logits = onednn.linear(h, self.embed.weight)  # tied: F.linear, or oneDNN while decoding

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
            hidden_states=states,
            cache=cache,
        )
