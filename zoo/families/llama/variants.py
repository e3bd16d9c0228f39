"""Registered LLaMA-family variants, each with the public config.json it mirrors."""

from zoo.families.llama.config import LlamaConfig
from zoo.registry import register_variant

_HF = "https://huggingface.co/{}/blob/main/config.json"

register_variant(
    "llama-2-7b",
    "llama",
    LlamaConfig(vocab_size=32000, max_seq_len=4096, d_model=4096, n_layers=32, n_heads=32, d_ff=11008),
    _HF.format("meta-llama/Llama-2-7b-hf"),
)
register_variant(
    "llama-3-8b",
    "llama",
    LlamaConfig(
        vocab_size=128256, max_seq_len=8192, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
        rope_theta=500000.0,
    ),
    _HF.format("meta-llama/Meta-Llama-3-8B"),
)  # fmt: skip
register_variant(
    "llama-3.2-1b",
    "llama",
    LlamaConfig(
        vocab_size=128256, max_seq_len=131072, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8, head_dim=64,
        d_ff=8192, rope_theta=500000.0, tie_embeddings=True,
        rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192},
    ),
    _HF.format("meta-llama/Llama-3.2-1B"),
)  # fmt: skip
register_variant(
    "mistral-7b-v0.1",
    "llama",
    LlamaConfig(
        vocab_size=32000, max_seq_len=32768, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
        sliding_window=4096,
    ),
    _HF.format("mistralai/Mistral-7B-v0.1"),
)  # fmt: skip
register_variant(
    "mixtral-8x7b-v0.1",
    "llama",
    LlamaConfig(
        vocab_size=32000, max_seq_len=32768, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8, d_ff=14336,
        rope_theta=1e6, n_experts=8, top_k=2, aux_loss_coef=0.02,
    ),
    _HF.format("mistralai/Mixtral-8x7B-v0.1"),
)  # fmt: skip
_SMOLLM2_135M = LlamaConfig(
    vocab_size=49152, max_seq_len=8192, d_model=576, n_layers=30, n_heads=9, n_kv_heads=3, d_ff=1536,
    rope_theta=100000.0, tie_embeddings=True,
)  # fmt: skip
register_variant("smollm2-135m", "llama", _SMOLLM2_135M, _HF.format("HuggingFaceTB/SmolLM2-135M"))
register_variant("smollm2-135m-instruct", "llama", _SMOLLM2_135M, _HF.format("HuggingFaceTB/SmolLM2-135M-Instruct"))

# Tiny shapes for tests, non-square everywhere: odd vocabularies, d_ff not a multiple of d_model,
# fewer key/value heads than query heads, head_dim != d_model / n_heads.
register_variant(
    "llama-tiny",
    "llama",
    LlamaConfig(vocab_size=211, max_seq_len=64, d_model=48, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=104),
    "zoo test config",
)
register_variant(
    "mistral-tiny",
    "llama",
    LlamaConfig(
        vocab_size=173, max_seq_len=64, d_model=40, n_layers=2, n_heads=4, n_kv_heads=1, d_ff=88, sliding_window=5
    ),
    "zoo test config (sliding window shorter than the test sequences)",
)
register_variant(
    "mixtral-tiny",
    "llama",
    LlamaConfig(
        vocab_size=157, max_seq_len=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=12, d_ff=56,
        n_experts=4, top_k=2, sliding_window=7,
    ),
    "zoo test config",
)  # fmt: skip
