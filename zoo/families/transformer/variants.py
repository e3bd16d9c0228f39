"""Registered Transformer variants, each with the public config it mirrors."""

from zoo.families.transformer.config import TransformerConfig
from zoo.registry import register_variant

_PAPER = "https://arxiv.org/abs/1706.03762 (Table 3, {})"

# Table 3: base N=6, d_model=512, d_ff=2048, h=8, P_drop=0.1 (and label smoothing 0.1, a
# training setting: see recipes/transformer-numbers.yaml); big d_model=1024, d_ff=4096, h=16,
# P_drop=0.3. The paper's interleaved sinusoids, ReLU, shared embeddings scaled by sqrt(d_model).
register_variant("transformer-base", "transformer", TransformerConfig(), _PAPER.format("base"))
register_variant(
    "transformer-big",
    "transformer",
    TransformerConfig(d_model=1024, d_ff=4096, n_heads=16, dropout=0.3),
    _PAPER.format("big"),
)
# Tiny shapes for tests, in Marian's layout so it exports to MarianMTModel: non-square
# everywhere (d_ff != 4 d_model, an odd vocabulary, encoder and decoder of other depths, head
# counts and widths), swish as opus-mt.
register_variant(
    "transformer-tiny",
    "transformer",
    TransformerConfig(
        vocab_size=97,
        max_seq_len=64,
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_ff=48,
        n_decoder_layers=1,
        n_decoder_heads=2,
        decoder_d_ff=40,
        mlp="silu",
        sinusoid_layout="halves",
        pad_token_id=96,
        eos_token_id=0,
        decoder_start_token_id=96,
    ),
    "zoo test config",
)
