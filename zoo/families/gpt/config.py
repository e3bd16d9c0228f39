"""The GPT series' config: GPT-2's defaults, GPT-1's post-LN and GPT-3's banded layers as switches,
and every part switchable to the modern ones (RMSNorm, SwiGLU, RoPE, GQA)."""

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
    d_ff: int | None = None  # None: 4 * d_model, filled in at construction (and by replace)
    norm: str = "layernorm"
    norm_eps: float = 1e-5
    mlp: str = "gelu_tanh"  # GPT-2's "gelu_new"; "swiglu" etc. swap in gated MLPs
    # "learned" (GPT-2), "rope", "sinusoidal" (the fixed table, scaled to a learned table's initial
    # RMS, init_std) or "none" (order from the causal mask alone)
    position: str = "learned"
    rope_theta: float = 10000.0
    bias: bool = True
    dropout: float = 0.0
    tie_embeddings: bool = True
    sliding_window: int | None = None
    # Which layers attend within the sliding window (GPT-3's locally banded layers); None: all of
    # them when sliding_window is set. The other layers attend to the whole context.
    window_layers: tuple[int, ...] | None = None
    prenorm: bool = True  # False: post-LN, norm(x + f(x)), as GPT-1 (and the original Transformer)
    final_norm: bool = True  # a norm after the last layer (GPT-2 added it; GPT-1 has none)
    init_std: float = 0.02

    def __post_init__(self):
        self._positive(
            "vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "sliding_window"
        )
        self._derive("d_ff", 4 * self.d_model)
        self._divisible("d_model", "n_heads")
        if self.n_kv_heads is not None and self.n_heads % self.n_kv_heads:
            raise ConfigError(f"n_kv_heads: n_heads={self.n_heads} is not divisible by n_kv_heads={self.n_kv_heads}")
        self._choice("norm", NORMS)
        self._choice("mlp", MLP_KINDS)
        self._choice("position", ("learned", "rope", "sinusoidal", "none"))
        self._fraction("dropout")
        if self.window_layers is not None:
            # A saved config comes back from JSON as a list; the frozen config keeps a hashable tuple.
            object.__setattr__(self, "window_layers", tuple(self.window_layers))
            if self.sliding_window is None:
                raise ConfigError("window_layers: names banded layers, but sliding_window (their band) is not set")
            bad = [i for i in self.window_layers if not isinstance(i, int) or not 0 <= i < self.n_layers]
            if bad:
                raise ConfigError(f"window_layers: {bad} are not layer indices in [0, n_layers={self.n_layers})")

    @property
    def layer_windows(self) -> list[int | None]:
        """Each layer's sliding window, None where the layer attends to the whole context."""
        banded = range(self.n_layers) if self.window_layers is None else self.window_layers
        return [self.sliding_window if i in banded else None for i in range(self.n_layers)]

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads
