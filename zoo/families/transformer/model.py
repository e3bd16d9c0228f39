"""The original Transformer (Vaswani et al. 2017, "Attention Is All You Need"), as transformers'
MarianMTModel computes it.

The forward is ``zoo.seq2seq.Seq2SeqLM``'s; this module builds the parts and writes the three
hooks: token embeddings scaled by sqrt(d_model) plus the fixed sinusoids, then dropout, on both
sides; post-LN layers (``norm(x + f(x))``, so the stacks need no final norm); logits against the
shared embedding, plus Marian's ``final_logits_bias`` (zeros in a model trained here).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from zoo.blocks import Attention, SinusoidalPositions, TransformerLayer, make_mlp, make_norm
from zoo.families.transformer.config import TransformerConfig
from zoo.seq2seq import Seq2SeqLM


def _layer(c: TransformerConfig, n_heads: int, d_ff: int, cross: bool) -> TransformerLayer:
    def attn() -> Attention:
        return Attention(c.d_model, n_heads, bias=True, dropout=c.attn_dropout)

    return TransformerLayer(
        attn=attn(),
        # The layer applies the residual dropout; the MLP's own would drop twice.
        mlp=make_mlp(c.mlp, c.d_model, d_ff),
        norm1=make_norm("layernorm", c.d_model, c.norm_eps),
        norm2=make_norm("layernorm", c.d_model, c.norm_eps),
        cross_attn=attn() if cross else None,
        norm_cross=make_norm("layernorm", c.d_model, c.norm_eps) if cross else None,
        prenorm=False,
        dropout=c.dropout,
    )


class Transformer(Seq2SeqLM):
    """Encoder-decoder with shared embeddings (transformers' MarianMTModel)."""

    family = "transformer"
    task = "seq2seq_lm"

    def __init__(self, config: TransformerConfig):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)  # source, target and output, shared
        self.pos = SinusoidalPositions(c.max_seq_len, c.d_model, layout=c.sinusoid_layout)
        self.embed_scale = math.sqrt(c.d_model) if c.scale_embedding else 1.0
        self.drop = nn.Dropout(c.dropout)
        self.encoder_layers = nn.ModuleList(_layer(c, c.n_heads, c.d_ff, cross=False) for _ in range(c.n_layers))
        self.decoder_layers = nn.ModuleList(
            _layer(c, c.decoder_heads, c.decoder_ff, cross=True) for _ in range(c.decoder_layers)
        )
        self.encoder_norm = nn.Identity()  # post-LN: every layer already ends in a norm
        self.decoder_norm = nn.Identity()
        # Marian's final_logits_bias: a buffer, not trained (transformers keeps it so too).
        self.register_buffer("logits_bias", torch.zeros(1, c.vocab_size))
        self.init_weights()

    def init_weights(self) -> None:
        """fairseq's initialisation of this architecture: embeddings N(0, d_model^-0.5) (they are
        scaled up by sqrt(d_model), so token vectors start at unit scale like the sinusoids),
        Xavier-uniform matrices, zero biases, unit norm scales."""
        for name, p in self.named_parameters():
            if name == "embed.weight":
                nn.init.normal_(p, std=self.config.d_model**-0.5)
            elif p.dim() >= 2:
                nn.init.xavier_uniform_(p)
            elif name.endswith("bias"):
                nn.init.zeros_(p)
            else:
                nn.init.ones_(p)

    def _embed(self, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.drop(self.embed(ids) * self.embed_scale + self.pos(positions))  # (B, T, d_model)

    def embed_encoder(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self._embed(input_ids, position_ids)

    def embed_decoder(self, decoder_input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self._embed(decoder_input_ids, position_ids)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.embed.weight) + self.logits_bias  # (B, T, vocab)
