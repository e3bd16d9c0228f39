"""Registered T5 variants, each with the public config it mirrors (the HF config.json of the repo id)."""

from zoo.families.t5.config import T5Config
from zoo.registry import register_variant

_HF = "https://huggingface.co/{}/blob/main/config.json"

# v1.0 (Raffel et al. 2020): ReLU feed-forward, head tied to the shared embedding, rescaled.
for name, repo, shape in (
    ("t5-small", "google-t5/t5-small", dict(d_model=512, d_ff=2048, n_layers=6, n_heads=8)),
    ("t5-base", "google-t5/t5-base", dict(d_model=768, d_ff=3072, n_layers=12, n_heads=12)),
    ("t5-large", "google-t5/t5-large", dict(d_model=1024, d_ff=4096, n_layers=24, n_heads=16)),
):
    register_variant(name, "t5", T5Config(**shape), _HF.format(repo))

# v1.1 and FLAN-T5: gated-GELU (gelu_new gate) feed-forward, untied lm_head without the rescale;
# the configs state dropout_rate 0.1 and d_kv 64 like v1.0, and the same 32,128-token vocabulary.
_V11 = dict(mlp="geglu_tanh", tie_embeddings=False)
for name, repo, shape in (
    ("t5-v1_1-small", "google/t5-v1_1-small", dict(d_model=512, d_ff=1024, n_layers=8, n_heads=6)),
    ("t5-v1_1-base", "google/t5-v1_1-base", dict(d_model=768, d_ff=2048, n_layers=12, n_heads=12)),
    ("flan-t5-small", "google/flan-t5-small", dict(d_model=512, d_ff=1024, n_layers=8, n_heads=6)),
    ("flan-t5-base", "google/flan-t5-base", dict(d_model=768, d_ff=2048, n_layers=12, n_heads=12)),
    ("flan-t5-large", "google/flan-t5-large", dict(d_model=1024, d_ff=2816, n_layers=24, n_heads=16)),
):
    register_variant(name, "t5", T5Config(**shape, **_V11), _HF.format(repo))

# Tiny shapes for tests: non-square everywhere (n_heads * head_dim = 24 != d_model = 32, d_ff not a
# multiple of d_model, an odd vocabulary), the decoder shallower than the encoder, few buckets
# and a short max_distance so the logarithmic buckets are reached by short inputs.
_TINY = dict(vocab_size=99, d_model=32, n_layers=2, n_decoder_layers=1, n_heads=4, head_dim=6, d_ff=40,
             n_buckets=8, max_distance=12)  # fmt: skip
register_variant("t5-tiny", "t5", T5Config(**_TINY), "zoo test config (v1.0 layout)")
register_variant("t5-v1_1-tiny", "t5", T5Config(**_TINY, **_V11), "zoo test config (v1.1 layout)")
