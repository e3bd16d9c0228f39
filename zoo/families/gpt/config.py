"""GPT-2's config, with its parts switchable to the modern ones (RMSNorm, SwiGLU, RoPE, GQA)."""

from dataclasses import dataclass

from zoo.blocks.mlp import MLP_KINDS
from zoo.blocks.norms import NORMS
from zoo.config import Config, ConfigError


@dataclass(frozen=True)
class GPTConfig(Config):
    vocab_size: int = 50257
    max_seq_len: int = 1024
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    n_kv_heads: int | None = None  # None: as many as n_heads (GPT-2 is plain multi-head)
    d_ff: int | None = None  # None: 4 * d_model
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu_tanh"  # GPT-2's "gelu_new"; "swiglu" etc. swap in gated MLPs
    position: str = "learned"  # or "rope"
    rope_theta: float = 10000.0
    bias: bool = True
    dropout: float = 0.0
    tie_embeddings: bool = True
    sliding_window: int | None = None
    init_std: float = 0.02

    def __post_init__(self):
        self._positive(
            "vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "sliding_window"
        )
        self._divisible("d_model", "n_heads")
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_kv_heads: n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        self._choice("norm", NORMS)
        self._choice("mlp", MLP_KINDS)
        self._choice("position", ("learned", "rope"))
        self._fraction("dropout")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ff_dim(self) -> int:
        return self.d_ff or 4 * self.d_model
