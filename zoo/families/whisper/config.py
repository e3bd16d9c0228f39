"""Whisper's encoder config: a convolutional stem over log-mel frames, then a pre-LN encoder."""

from dataclasses import dataclass
from typing import ClassVar

from zoo.config import Config, ConfigError

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


@dataclass(frozen=True)
class WhisperConfig(Config):
    renamed_fields: ClassVar[dict[str, str]] = {"n_classes": "n_labels"}  # so configs saved by zoo 0.1 still load
    n_mels: int = 80  # mel bins of the input features (128 for large-v3)
    max_seq_len: int = 1500  # encoder positions: the stride-2 stem halves 3,000 frames to 1,500
    d_model: int = 384
    n_layers: int = 4
    n_heads: int = 6
    d_ff: int | None = None  # None: 4 * d_model, filled in at construction (and by replace)
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    dropout: float = 0.0  # residual dropout (transformers' dropout)
    attn_dropout: float = 0.0
    # Audio classification (transformers' WhisperForAudioClassification): projector width and classes.
    classifier_proj_size: int = 256
    n_labels: int = 2
    init_std: float = 0.02

    def __post_init__(self):
        self._positive("n_mels", "max_seq_len", "d_model", "n_layers", "n_heads", "d_ff", "classifier_proj_size")
        self._derive("d_ff", 4 * self.d_model)
        self._divisible("d_model", "n_heads")
        if self.d_model % 2 or self.d_model < 4:
            raise ConfigError(f"d_model: the [sin | cos] position table needs an even width >= 4, got {self.d_model}")
        if not isinstance(self.n_labels, int) or self.n_labels < 1:
            raise ConfigError(f"n_labels: must be a positive integer, got {self.n_labels!r}")
        self._choice("mlp", ACTIVATIONS)
        self._fraction("dropout", "attn_dropout")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def n_frames(self) -> int:
        """Input frames the encoder takes: twice its positions (3,000 = 30 s at a 10 ms hop)."""
        return 2 * self.max_seq_len
