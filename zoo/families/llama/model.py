"""LLaMA (Touvron et al. 2023), Mistral (Jiang et al. 2023) and Mixtral (Jiang et al. 2024) as one decoder.

Pre-RMSNorm layers of grouped-query attention with rotary positions and a SwiGLU MLP; Mistral
adds a sliding attention window, Mixtral swaps each MLP for a top-k mixture of SwiGLU experts.
The forward pass is ``zoo.lm.CausalLM``'s; this module only builds the parts.
"""

import torch
from torch import nn

from zoo.blocks import (
    Attention,
    MoE,
    RMSNorm,
    RotaryEmbedding,
    TransformerLayer,
    load_balancing_loss,
    make_mlp,
    router_z_loss,
)
from zoo.families.llama.config import LlamaConfig
from zoo.lm import CausalLM, init_weights
from zoo.outputs import ModelOutput


def _feed_forward(c: LlamaConfig) -> nn.Module:
    if c.n_experts is None:
        return make_mlp("swiglu", c.d_model, c.d_ff, bias=c.mlp_bias)
    return MoE(c.d_model, c.d_ff, c.n_experts, top_k=c.top_k, kind="swiglu", bias=c.mlp_bias, normalize_top_k=True)


class Llama(CausalLM):
    family = "llama"

    def __init__(self, config: LlamaConfig):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = None
        self.rope = RotaryEmbedding(c.head_dim, c.rope_theta, c.rope_scaling)
        self.drop = nn.Identity()  # LLaMA has no embedding dropout
        self.layers = nn.ModuleList(
            TransformerLayer(
                attn=Attention(
                    c.d_model, c.n_heads, c.n_kv_heads, head_dim=c.head_dim, bias=c.attn_bias, dropout=c.attn_dropout
                ),
                mlp=_feed_forward(c),
                norm1=RMSNorm(c.d_model, c.norm_eps),
                norm2=RMSNorm(c.d_model, c.norm_eps),
                prenorm=True,
            )
            for _ in range(c.n_layers)
        )
        self.norm = RMSNorm(c.d_model, c.norm_eps)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)
        init_weights(self, c.init_std, c.n_layers)

    def num_active_parameters(self, exclude_embeddings: bool = False) -> int:
        """Parameters one token runs through: all but the n_experts - top_k experts it is not sent to."""
        total = self.num_parameters(exclude_embeddings)
        c = self.config
        if c.n_experts is None:
            return total
        per_expert = sum(p.numel() for p in self.layers[0].mlp.experts[0].parameters())
        return total - c.n_layers * (c.n_experts - c.top_k) * per_expert

    def router_logits(self) -> list[torch.Tensor]:
        """Every MoE layer's router logits (B * T, n_experts) from the last forward; empty when dense."""
        return [layer.mlp.router_logits for layer in self.layers if isinstance(layer.mlp, MoE)]

    def aux_loss(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """Mixtral's load-balancing loss over all layers, padding excluded; None for a dense model."""
        logits = self.router_logits()
        if not logits:
            return None
        return load_balancing_loss(logits, self.config.n_experts, self.config.top_k, attention_mask)

    def forward(self, input_ids: torch.Tensor, *args, **kwargs) -> ModelOutput:
        """``CausalLM.forward``; with ``router_z_loss_coef`` > 0 the router z-loss joins ``.loss`` too."""
        out = super().forward(input_ids, *args, **kwargs)
        if out.loss is not None and self.config.n_experts is not None and self.config.router_z_loss_coef > 0:
            out.loss = out.loss + self.config.router_z_loss_coef * router_z_loss(self.router_logits())
        return out
