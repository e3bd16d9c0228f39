"""The GPT series on one model: GPT-2 (pre-LN, final norm), GPT-1 (post-LN, no final norm) and
GPT-3 (GPT-2's layers, alternating dense and locally banded attention)."""

import torch
from torch import nn
from torch.nn import functional as F

from zoo.blocks import (
    Attention,
    LearnedPositions,
    RotaryEmbedding,
    SinusoidalPositions,
    TransformerLayer,
    make_mlp,
    make_norm,
)
from zoo.families.gpt.config import GPTConfig
from zoo.lm import CausalLM, init_weights
from zoo.outputs import ModelOutput


class GPT(CausalLM):
    family = "gpt"

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = {
            "learned": lambda: LearnedPositions(c.max_seq_len, c.d_model),
            "sinusoidal": lambda: SinusoidalPositions(c.max_seq_len, c.d_model, rms=c.init_std),
        }.get(c.position, lambda: None)()
        self.rope = RotaryEmbedding(c.head_dim, c.rope_theta) if c.position == "rope" else None
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(
                attn=Attention(c.d_model, c.n_heads, c.n_kv_heads, bias=c.bias, dropout=c.dropout),
                mlp=make_mlp(c.mlp, c.d_model, c.d_ff, bias=c.bias, dropout=c.dropout),
                norm1=make_norm(c.norm, c.d_model, c.norm_eps, bias=c.bias),
                norm2=make_norm(c.norm, c.d_model, c.norm_eps, bias=c.bias),
                prenorm=c.prenorm,
                dropout=c.dropout,
            )
            for _ in range(c.n_layers)
        )
        # Post-LN layers end on a norm already; GPT-1 adds none after the stack.
        self.norm = make_norm(c.norm, c.d_model, c.norm_eps, bias=c.bias) if c.final_norm else nn.Identity()
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)
        init_weights(self, c.init_std, c.n_layers)

    def layer_windows(self) -> list[int | None]:
        return self.config.layer_windows


def _flat(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.reshape(-1, t.shape[-1])  # (..., T) -> (N, T)


class GPTDoubleHeads(GPT):
    """GPT-1's fine-tuning model (transformers' ``OpenAIGPTDoubleHeadsModel``): the LM head plus a
    multiple-choice head, one score per choice read at its classification token.

    Inputs have a choices dimension: ``input_ids`` (B, n_choices, T); any leading dimensions are
    flattened through the LM and restored on the outputs.
    """

    task = "double_heads"

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        self.mc_head = nn.Linear(config.d_model, 1)
        init_weights(self.mc_head, config.init_std, config.n_layers)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mc_token_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        mc_labels: torch.Tensor | None = None,
        **kwargs,
    ) -> ModelOutput:
        """Args:
        input_ids: (..., T) token ids, e.g. (B, n_choices, T).
        attention_mask, labels: (..., T), as for the LM (``labels`` gives the LM loss).
        mc_token_ids: (...) position of each sequence's classification token; default the last
            position, as in transformers (with right padding, pass the real last token).
        mc_labels: (B,) index of the right choice: adds the multiple-choice cross-entropy to the loss.

        Returns ``logits`` (..., T, vocab), ``mc_logits`` (...) and the LM outputs.
        """
        lead, T = input_ids.shape[:-1], input_ids.shape[-1]
        out = super().forward(_flat(input_ids), attention_mask=_flat(attention_mask), labels=_flat(labels), **kwargs)
        h = out.last_hidden_state  # (N, T, d_model)
        if mc_token_ids is None:
            mc_token_ids = torch.full(lead, T - 1, dtype=torch.long, device=h.device)
        if mc_token_ids.shape != lead:
            raise ValueError(
                f"mc_token_ids: expected shape {tuple(lead)} (input_ids without T), got {tuple(mc_token_ids.shape)}"
            )
        picked = h[torch.arange(h.shape[0], device=h.device), mc_token_ids.reshape(-1)]  # (N, d_model)
        out.mc_logits = self.mc_head(picked).squeeze(-1).reshape(lead)  # (...)
        out.logits = out.logits.reshape(*lead, *out.logits.shape[1:])  # (..., T, vocab)
        out.last_hidden_state = h.reshape(*lead, T, -1)
        if out.hidden_states is not None:
            out.hidden_states = tuple(s.reshape(*lead, T, -1) for s in out.hidden_states)
        if mc_labels is not None:
            scores = out.mc_logits.reshape(-1, out.mc_logits.shape[-1]).float()  # (B, n_choices)
            out.mc_loss = F.cross_entropy(scores, mc_labels.reshape(-1))
            out.loss = out.mc_loss if out.loss is None else out.loss + out.mc_loss
        return out
