"""GPT-2 (Radford et al. 2019): pre-LN decoder, learned positions, GELU MLP, tied embeddings."""

from torch import nn

from zoo.blocks import Attention, LearnedPositions, RotaryEmbedding, TransformerLayer, make_mlp, make_norm
from zoo.families.gpt.config import GPTConfig
from zoo.lm import CausalLM, init_weights


class GPT(CausalLM):
    family = "gpt"

    def __init__(self, config: GPTConfig):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = LearnedPositions(c.max_seq_len, c.d_model) if c.position == "learned" else None
        self.rope = RotaryEmbedding(c.head_dim, c.rope_theta) if c.position == "rope" else None
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(
                attn=Attention(c.d_model, c.n_heads, c.n_kv_heads, bias=c.bias, dropout=c.dropout),
                mlp=make_mlp(c.mlp, c.d_model, c.ff_dim, bias=c.bias, dropout=c.dropout),
                norm1=make_norm(c.norm, c.d_model, c.norm_eps, bias=c.bias),
                norm2=make_norm(c.norm, c.d_model, c.norm_eps, bias=c.bias),
                prenorm=True,
                dropout=c.dropout,
            )
            for _ in range(c.n_layers)
        )
        self.norm = make_norm(c.norm, c.d_model, c.norm_eps, bias=c.bias)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)
        init_weights(self, c.init_std, c.n_layers)
