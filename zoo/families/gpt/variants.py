"""Registered GPT-2 variants, each with the public config it mirrors."""

from zoo.families.gpt.config import GPTConfig
from zoo.registry import register_variant

_SRC = "https://huggingface.co/openai-community/{}/blob/main/config.json"

register_variant("gpt2", "gpt", GPTConfig(), _SRC.format("gpt2"))
register_variant("gpt2-medium", "gpt", GPTConfig(d_model=1024, n_layers=24, n_heads=16), _SRC.format("gpt2-medium"))
register_variant("gpt2-large", "gpt", GPTConfig(d_model=1280, n_layers=36, n_heads=20), _SRC.format("gpt2-large"))
register_variant("gpt2-xl", "gpt", GPTConfig(d_model=1600, n_layers=48, n_heads=25), _SRC.format("gpt2-xl"))
# Tiny shapes for tests: non-square everywhere (d_ff != 4 * d_model, vocab not a multiple of 8).
register_variant(
    "gpt2-tiny",
    "gpt",
    GPTConfig(vocab_size=211, max_seq_len=64, d_model=48, n_layers=2, n_heads=4, d_ff=104),
    "zoo test config",
)
