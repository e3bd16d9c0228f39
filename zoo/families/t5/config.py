"""T5's config (Raffel et al. 2020): v1.0 (t5-small/base/large) and v1.1 / FLAN-T5 in one dataclass."""

from dataclasses import dataclass

from zoo.blocks.mlp import MLP_KINDS
from zoo.config import Config, ConfigError


@dataclass(frozen=True)
class T5Config(Config):
    """An encoder-decoder of pre-norm layers with RMS norms, unscaled attention and relative
    position buckets, no biases anywhere. The defaults are t5-small's.

    v1.0 is ``mlp="relu"`` with ``tie_embeddings=True`` (the output projection is the shared
    embedding, and the decoder output is scaled by d_model**-0.5 before it); v1.1 and FLAN-T5
    are ``mlp="geglu_tanh"`` (transformers' ``"gated-gelu"``, a gelu_new gate) with an untied
    ``lm_head`` and no rescale.
    """

    vocab_size: int = 32128
    max_seq_len: int | None = None  # relative positions: no limit (T5 trained on 512 source tokens)
    d_model: int = 512
    n_layers: int = 6  # encoder layers
    n_decoder_layers: int | None = None  # None: as many as the encoder (filled in at construction)
    n_heads: int = 8  # both stacks (transformers' T5 has one num_heads)
    head_dim: int = 64  # transformers' d_kv; n_heads * head_dim need not be d_model
    d_ff: int = 2048
    mlp: str = "relu"  # a zoo MLP kind: "relu" (v1.0), "geglu_tanh" (v1.1's gated-gelu), ...
    n_buckets: int = 32  # relative_attention_num_buckets
    max_distance: int = 128  # relative_attention_max_distance: offsets past it share the last bucket
    norm_eps: float = 1e-6
    dropout: float = 0.1  # T5's dropout_rate: embeddings, attention weights, MLP hidden, residuals, final norms
    tie_embeddings: bool = True  # the output projection is the shared embedding (v1.0)
    # The decoder output times d_model**-0.5 before the head; None: as tie_embeddings (transformers'
    # scale_decoder_outputs, which follows tie_word_embeddings in a config.json unless stated).
    scale_decoder_outputs: bool | None = None
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0  # T5 starts the decoder with the pad token
    init_factor: float = 1.0  # transformers' initializer_factor

    def __post_init__(self):
        self._positive(
            "vocab_size", "max_seq_len", "d_model", "n_layers", "n_decoder_layers", "n_heads", "head_dim", "d_ff",
            "n_buckets", "max_distance",
        )  # fmt: skip
        self._derive("n_decoder_layers", self.n_layers)
        self._derive("scale_decoder_outputs", self.tie_embeddings)
        self._choice("mlp", MLP_KINDS)
        self._fraction("dropout")
        if self.n_buckets < 4:
            # Bidirectional bucketing halves the buckets, then spends half of those on exact offsets.
            raise ConfigError(f"n_buckets: T5's bucketing needs at least 4 buckets, got {self.n_buckets}")
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps: must be positive, got {self.norm_eps!r}")
        if not self.init_factor > 0:
            raise ConfigError(f"init_factor: must be positive, got {self.init_factor!r}")
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name}: {value!r} is outside vocab_size={self.vocab_size}")
