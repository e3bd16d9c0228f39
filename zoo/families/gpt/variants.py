"""Registered GPT-1, GPT-2 and GPT-3 variants, each with the public config it mirrors."""

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

# GPT-1 (Radford et al. 2018): post-LN layers, no final norm, GELU (transformers' "gelu" is the
# tanh form), 40,478 BPE tokens, 512 positions.
_GPT1 = dict(vocab_size=40478, max_seq_len=512, prenorm=False, final_norm=False)
# Residual, embedding and attention dropout 0.1, as in the paper and transformers' OpenAIGPTConfig.
register_variant("gpt1", "gpt", GPTConfig(**_GPT1, dropout=0.1), _SRC.format("openai-gpt"))
# transformers' OpenAIGPT fixes d_ff at 4 * d_model, so the tiny one is non-square elsewhere.
register_variant(
    "gpt1-tiny",
    "gpt",
    GPTConfig(**{**_GPT1, "vocab_size": 197, "max_seq_len": 64}, d_model=40, n_layers=2, n_heads=4),
    "zoo test config",
)

# GPT-3 (Brown et al. 2020), Table 2.1: GPT-2's layers at 2048 tokens of context, with "alternating
# dense and locally banded sparse attention patterns in the layers of the transformer, similar to the
# Sparse Transformer". The paper gives no band width: zoo's default is 256, the local layers'
# window of EleutherAI's GPT-Neo (its public GPT-3 replication, attention_types [global, local]),
# and here too the odd layers are the banded ones. Two rows of the table are not self-consistent,
# and zoo keeps the attention width equal to d_model (as the table's parameter counts assume):
# GPT-3 XL lists 24 heads of d_head 128 for d_model 2048 (24 * 128 = 3072), so it gets 16 heads of
# 128; GPT-3 13B lists d_model 5140 with 40 heads of 128, so it gets d_model 5120 = 40 * 128.
# Parameter counts then match the table's (125M ... 175B) within its rounding.
GPT3_SOURCE = "https://arxiv.org/abs/2005.14165"  # Table 2.1; the band as in GPT-Neo's config (above)
GPT3_WINDOW = 256
GPT3_TABLE = {  # name: (n_layers, d_model, n_heads), d_head = d_model / n_heads
    "gpt3-small": (12, 768, 12),
    "gpt3-medium": (24, 1024, 16),
    "gpt3-large": (24, 1536, 16),
    "gpt3-xl": (24, 2048, 16),
    "gpt3-2.7b": (32, 2560, 32),
    "gpt3-6.7b": (32, 4096, 32),
    "gpt3-13b": (40, 5120, 40),
    "gpt3-175b": (96, 12288, 96),
}
for _name, (_layers, _d, _heads) in GPT3_TABLE.items():
    register_variant(
        _name,
        "gpt",
        GPTConfig(
            max_seq_len=2048,
            d_model=_d,
            n_layers=_layers,
            n_heads=_heads,
            sliding_window=GPT3_WINDOW,
            window_layers=tuple(range(1, _layers, 2)),
        ),
        GPT3_SOURCE,
    )
