"""BART (Lewis et al. 2019), as transformers' BartForConditionalGeneration computes it.

The forward is ``zoo.seq2seq.Seq2SeqLM``'s; this module builds the parts and writes the three
hooks. Each stack embeds as ``dropout(layernorm_embedding(embed(ids) * scale + pos(positions)))``,
with one token table shared by encoder, decoder and output, and learned position tables (one per
stack) that keep BART's offset of 2 rows: position p reads row p + 2. Positions count 0, 1, ...
in every row, padding included, as transformers numbers them. The layers are post-LN
(``norm(x + f(x))``), so the stacks need no final norm. Logits are scored against the shared
table plus ``final_logits_bias`` (a buffer, zeros in the public checkpoints).
"""

import math

import torch
from torch import nn
from torch.nn import functional as F

from zoo.blocks import Attention, LearnedPositions, TransformerLayer, make_mlp, make_norm
from zoo.families.bart.config import BartConfig
from zoo.seq2seq import Seq2SeqLM

# fairseq's positions were padding-aware and started past pad_token_id (1); transformers keeps the
# two unused rows, so the checkpoints hold max_seq_len + 2 rows.
POSITION_OFFSET = 2


def _layer(c: BartConfig, n_heads: int, d_ff: int, cross: bool) -> TransformerLayer:
    def attn() -> Attention:
        return Attention(c.d_model, n_heads, bias=True, dropout=c.attn_dropout)

    def norm() -> nn.Module:
        return make_norm("layernorm", c.d_model, c.norm_eps)

    return TransformerLayer(
        attn=attn(),
        # The layer applies the residual dropout; the MLP drops only its hidden activations.
        mlp=make_mlp(c.mlp, c.d_model, d_ff, act_dropout=c.act_dropout),
        norm1=norm(),
        norm2=norm(),
        cross_attn=attn() if cross else None,
        norm_cross=norm() if cross else None,
        prenorm=False,
        dropout=c.dropout,
    )


class Bart(Seq2SeqLM):
    """Encoder-decoder with shared embeddings and a tied LM head (transformers' BartForConditionalGeneration)."""

    family = "bart"
    task = "seq2seq_lm"

    def __init__(self, config: BartConfig):
        super().__init__(config)
        c = config
        # padding_idx: the pad row gets no gradient, as in transformers' BartScaledWordEmbedding.
        self.embed = nn.Embedding(c.vocab_size, c.d_model, padding_idx=c.pad_token_id)
        self.embed_scale = math.sqrt(c.d_model) if c.scale_embedding else 1.0
        self.encoder_pos = LearnedPositions(c.max_seq_len, c.d_model, offset=POSITION_OFFSET)
        self.decoder_pos = LearnedPositions(c.max_seq_len, c.d_model, offset=POSITION_OFFSET)
        self.encoder_embed_norm = make_norm("layernorm", c.d_model, c.norm_eps)
        self.decoder_embed_norm = make_norm("layernorm", c.d_model, c.norm_eps)
        self.drop = nn.Dropout(c.dropout)
        self.encoder_layers = nn.ModuleList(_layer(c, c.n_heads, c.d_ff, cross=False) for _ in range(c.n_layers))
        self.decoder_layers = nn.ModuleList(
            _layer(c, c.n_decoder_heads, c.decoder_d_ff, cross=True) for _ in range(c.n_decoder_layers)
        )
        self.encoder_norm = nn.Identity()  # post-LN: every layer already ends in a norm
        self.decoder_norm = nn.Identity()
        # transformers' final_logits_bias: a buffer (saved, never trained), (1, vocab_size).
        self.register_buffer("logits_bias", torch.zeros(1, c.vocab_size))
        self.init_weights()

    def init_weights(self) -> None:
        """transformers' initialisation of BART: every matrix and table N(0, init_std), zero
        biases and pad row, unit norm scales."""
        std = self.config.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=std)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding | LearnedPositions):
                nn.init.normal_(module.weight, std=std)
            elif isinstance(module, nn.LayerNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        with torch.no_grad():
            self.embed.weight[self.config.pad_token_id].zero_()

    def _embed(self, ids: torch.Tensor, positions: torch.Tensor, pos: nn.Module, norm: nn.Module) -> torch.Tensor:
        return self.drop(norm(self.embed(ids) * self.embed_scale + pos(positions)))  # (B, T, d_model)

    def embed_encoder(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self._embed(input_ids, position_ids, self.encoder_pos, self.encoder_embed_norm)

    def embed_decoder(self, decoder_input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self._embed(decoder_input_ids, position_ids, self.decoder_pos, self.decoder_embed_norm)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.linear(hidden, self.embed.weight) + self.logits_bias  # (B, T, vocab)

    def generation_defaults(self) -> dict:
        """The end and pad tokens, and the forced first and last tokens BART's config names."""
        c = self.config
        return super().generation_defaults() | {
            "forced_bos_token_id": c.forced_bos_token_id,
            "forced_eos_token_id": c.forced_eos_token_id,
        }
