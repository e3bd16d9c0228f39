"""The LLaMA family's config: LLaMA 2/3, Mistral (sliding window) and Mixtral (experts) in one dataclass."""

from dataclasses import dataclass
from typing import Any

from zoo.config import Config, ConfigError

# What each supported ``rope_scaling["rope_type"]`` needs beside ``factor``.
ROPE_SCALING_KEYS = {
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


@dataclass(frozen=True)
class LlamaConfig(Config):
    """A decoder of RMSNorm, grouped-query attention with RoPE, and SwiGLU (or a mixture of SwiGLU experts).

    The defaults are LLaMA 2 7B's. Mistral is ``sliding_window`` set; Mixtral is ``n_experts`` set.
    """

    vocab_size: int = 32000
    max_seq_len: int = 4096
    d_model: int = 4096
    n_layers: int = 32
    n_heads: int = 32
    n_kv_heads: int | None = None  # None: as many as n_heads (multi-head); fewer is GQA, 1 is MQA
    head_dim: int | None = None  # None: d_model // n_heads, filled in at construction (and by replace)
    d_ff: int = 11008  # hidden width of the SwiGLU MLP (of each expert, with n_experts)
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # None, {"rope_type": "linear", "factor": f} or {"rope_type": "llama3", "factor", "low_freq_factor",
    # "high_freq_factor", "original_max_position_embeddings"}, as in Hugging Face configs.
    rope_scaling: dict[str, Any] | None = None
    sliding_window: int | None = None  # a query sees only the last `sliding_window` keys (Mistral)
    tie_embeddings: bool = False
    attn_bias: bool = False  # biases on q/k/v/o projections
    mlp_bias: bool = False  # biases on the MLP's gate/up/down
    attn_dropout: float = 0.0
    n_experts: int | None = None  # None: a dense MLP; else a top-k mixture of this many experts (Mixtral)
    top_k: int = 2  # experts per token
    aux_loss_coef: float = 0.001  # weight of the load-balancing loss in `.loss` (Mixtral's router_aux_loss_coef)
    router_z_loss_coef: float = 0.0  # weight of ST-MoE's router z-loss in `.loss`; 0 leaves it out
    init_std: float = 0.02

    def __post_init__(self):
        self._positive(
            "vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff",
            "sliding_window", "n_experts", "top_k",
        )  # fmt: skip
        if self.head_dim is None:
            self._divisible("d_model", "n_heads")
        if self.d_model % self.n_heads == 0:
            # Stated in the saved config, as transformers does; re-derived by replace().
            self._derive("head_dim", self.d_model // self.n_heads)
        if self.head_dim % 2:
            raise ConfigError(f"head_dim: RoPE rotates channel pairs, so head_dim must be even, got {self.head_dim}")
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_kv_heads: n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        if self.n_experts is not None and self.top_k > self.n_experts:
            raise ConfigError(f"top_k: {self.top_k} experts per token, but n_experts={self.n_experts}")
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps: must be positive, got {self.norm_eps!r}")
        if not self.rope_theta > 0:
            raise ConfigError(f"rope_theta: must be positive, got {self.rope_theta!r}")
        for name in ("aux_loss_coef", "router_z_loss_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name}: must be >= 0, got {getattr(self, name)!r}")
        self._fraction("attn_dropout")
        self._check_rope_scaling()

    def _check_rope_scaling(self) -> None:
        s = self.rope_scaling
        if s is None:
            return
        if not isinstance(s, dict):
            raise ConfigError(f"rope_scaling: expected a dict or None, got {s!r}")
        kind = s.get("rope_type")
        if kind not in ROPE_SCALING_KEYS:
            raise ConfigError(
                f"rope_scaling: rope_type {kind!r} is not supported; choose one of {', '.join(ROPE_SCALING_KEYS)}"
            )
        missing = [k for k in ROPE_SCALING_KEYS[kind] if k not in s]
        if missing:
            raise ConfigError(f"rope_scaling: rope_type {kind!r} needs {', '.join(missing)}")
        if not float(s["factor"]) > 0:
            raise ConfigError(f"rope_scaling: factor must be positive, got {s['factor']!r}")

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads
