"""BART's config (Lewis et al. 2019): a post-LN encoder-decoder with learned positions, in the shape
transformers' BartConfig stores it."""

from dataclasses import dataclass

from zoo.blocks.mlp import MLP_KINDS
from zoo.config import Config, ConfigError

# Plain (ungated) activations: BART's feed-forward is fc2(act(fc1(x))).
ACTIVATIONS = tuple(k for k in MLP_KINDS if k not in ("swiglu", "geglu", "geglu_tanh"))


@dataclass(frozen=True)
class BartConfig(Config):
    """The encoder has ``n_layers`` layers of ``n_heads`` heads and feed-forward width ``d_ff``; the
    decoder ``n_decoder_layers``, ``n_decoder_heads`` and ``decoder_d_ff`` (None: the encoder's).
    Defaults are bart-large's (transformers' BartConfig defaults)."""

    vocab_size: int = 50265
    max_seq_len: int = 1024  # positions per stack; the tables hold 2 rows more (BART's offset)
    d_model: int = 1024
    n_layers: int = 12
    n_heads: int = 16
    d_ff: int = 4096
    n_decoder_layers: int | None = None
    n_decoder_heads: int | None = None
    decoder_d_ff: int | None = None
    mlp: str = "gelu"
    norm_eps: float = 1e-5  # every LayerNorm of transformers' BART (not a config field there)
    dropout: float = 0.1  # on the embeddings and every sub-layer's output
    attn_dropout: float = 0.0  # on attention weights (attention_dropout)
    act_dropout: float = 0.0  # on the feed-forward's hidden activations (activation_dropout)
    scale_embedding: bool = False  # token embeddings times sqrt(d_model); False in bart-base/large
    pad_token_id: int = 1
    bos_token_id: int = 0
    eos_token_id: int = 2
    decoder_start_token_id: int = 2  # BART starts the decoder with its end token </s>
    # generate's defaults, as transformers reads them from config.json (see docs/families/bart.md).
    forced_bos_token_id: int | None = None
    forced_eos_token_id: int | None = 2
    init_std: float = 0.02

    def __post_init__(self):
        self._derive("n_decoder_layers", self.n_layers)
        self._derive("n_decoder_heads", self.n_heads)
        self._derive("decoder_d_ff", self.d_ff)
        self._positive("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "d_ff")
        self._positive("n_decoder_layers", "n_decoder_heads", "decoder_d_ff")
        self._divisible("d_model", "n_heads")
        self._divisible("d_model", "n_decoder_heads")
        self._choice("mlp", ACTIVATIONS)
        self._fraction("dropout", "attn_dropout", "act_dropout")
        if not self.norm_eps > 0:
            raise ConfigError(f"norm_eps: must be > 0, got {self.norm_eps!r}")
        for name in ("pad_token_id", "bos_token_id", "eos_token_id", "decoder_start_token_id",
                     "forced_bos_token_id", "forced_eos_token_id"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name}: {value} is outside vocab_size={self.vocab_size}")
