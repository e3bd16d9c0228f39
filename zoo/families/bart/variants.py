"""Registered BART variants, each with the public config it mirrors."""

from zoo.families.bart.config import BartConfig
from zoo.registry import register_variant

_SRC = "https://huggingface.co/{}/blob/main/config.json"

# facebook/bart-base: 6 + 6 layers of width 768; its config.json drops attention weights and the
# feed-forward's activations too (attention_dropout and activation_dropout 0.1), and forces <s>
# first (forced_bos_token_id 0).
register_variant(
    "bart-base",
    "bart",
    BartConfig(
        d_model=768, n_layers=6, n_heads=12, d_ff=3072, attn_dropout=0.1, act_dropout=0.1, forced_bos_token_id=0
    ),
    _SRC.format("facebook/bart-base"),
)
# facebook/bart-large: transformers' BartConfig defaults (12 + 12 layers of width 1024); <s> is
# forced first by its generation config.
register_variant("bart-large", "bart", BartConfig(forced_bos_token_id=0), _SRC.format("facebook/bart-large"))
# Tiny shapes for tests: non-square everywhere (d_ff != 4 d_model, an odd vocabulary, encoder and
# decoder of other depths, head counts and widths), all three dropouts.
register_variant(
    "bart-tiny",
    "bart",
    BartConfig(
        vocab_size=97,
        max_seq_len=40,
        d_model=32,
        n_layers=2,
        n_heads=4,
        d_ff=48,
        n_decoder_layers=1,
        n_decoder_heads=2,
        decoder_d_ff=40,
        attn_dropout=0.1,
        act_dropout=0.1,
    ),
    "zoo test config",
)
