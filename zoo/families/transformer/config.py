"""The original Transformer's config (Vaswani et al. 2017), in the shape transformers' Marian stores it."""

from dataclasses import dataclass

from zoo.blocks.mlp import MLP_KINDS
from zoo.blocks.position import SINUSOID_LAYOUTS
from zoo.config import Config, ConfigError


@dataclass(frozen=True)
class TransformerConfig(Config):
    """An encoder-decoder with fixed sinusoidal positions, post-LN layers and one embedding shared
    by the source, the target and the output projection.

    The encoder has ``n_layers`` layers of ``n_heads`` heads and feed-forward width ``d_ff``; the
    decoder ``n_decoder_layers``, ``n_decoder_heads`` and ``decoder_d_ff`` (None: the encoder's).
    """

    vocab_size: int = 37000  # the paper's shared source-target BPE vocabulary (WMT14 EN-DE)
    max_seq_len: int = 1024
    d_model: int = 512
    n_layers: int = 6
    n_heads: int = 8
    d_ff: int = 2048
    n_decoder_layers: int | None = None
    n_decoder_heads: int | None = None
    decoder_d_ff: int | None = None
    mlp: str = "relu"  # opus-mt (Marian) checkpoints use "silu" (transformers' "swish")
    norm_eps: float = 1e-5
    dropout: float = 0.1  # on the embeddings and every sub-layer's output (the paper's P_drop)
    attn_dropout: float = 0.0  # on attention weights
    scale_embedding: bool = True  # token embeddings times sqrt(d_model), as the paper
    sinusoid_layout: str = "interleaved"  # the paper's; Marian stores [sin | cos] "halves"
    pad_token_id: int = 0
    eos_token_id: int = 1
    decoder_start_token_id: int = 0  # Marian's convention: the pad token starts the decoder

    def __post_init__(self):
        self._positive("vocab_size", "max_seq_len", "d_model", "n_layers", "n_heads", "d_ff")
        self._positive("n_decoder_layers", "n_decoder_heads", "decoder_d_ff")
        self._divisible("d_model", "n_heads")
        if self.d_model % self.decoder_heads:
            raise ConfigError(f"n_decoder_heads: d_model={self.d_model} is not divisible by {self.decoder_heads}")
        self._choice("mlp", [k for k in MLP_KINDS if k not in ("swiglu", "geglu", "geglu_tanh")])
        self._choice("sinusoid_layout", SINUSOID_LAYOUTS)
        self._fraction("dropout", "attn_dropout")
        for name in ("pad_token_id", "eos_token_id", "decoder_start_token_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name}: {value} is outside vocab_size={self.vocab_size}")

    @property
    def decoder_layers(self) -> int:
        return self.n_layers if self.n_decoder_layers is None else self.n_decoder_layers

    @property
    def decoder_heads(self) -> int:
        return self.n_heads if self.n_decoder_heads is None else self.n_decoder_heads

    @property
    def decoder_ff(self) -> int:
        return self.d_ff if self.decoder_d_ff is None else self.decoder_d_ff
