"""Whisper's encoder config: a convolutional stem over log-mel frames, then a pre-LN encoder."""

from dataclasses import dataclass

from zoo.config import Config, ConfigError

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu")


@dataclass(frozen=True)
class WhisperConfig(Config):
    n_mels: int = 80  # mel bins of the input features (128 for large-v3)
    max_seq_len: int = 1500  # encoder positions: the stride-2 stem halves 3,000 frames to 1,500
    d_model: int = 384
    n_layers: int = 4
    n_heads: int = 6
    d_ff: int | None = None  # None: 4 * d_model
    norm_eps: float = 1e-5
    mlp: str = "gelu"
    dropout: float = 0.0  # residual dropout (transformers' dropout)
    attn_dropout: float = 0.0
    # Audio classification (transformers' WhisperForAudioClassification): projector width and classes.
    classifier_proj_size: int = 256
    n_classes: int = 2
    init_std: float = 0.02

    def __post_init__(self):
        self._positive("n_mels", "max_seq_len", "d_model", "n_layers", "n_heads", "d_ff", "classifier_proj_size")
        self._divisible("d_model", "n_heads")
        if self.d_model % 2 or self.d_model < 4:
            raise ConfigError(f"d_model: the [sin | cos] position table needs an even width >= 4, got {self.d_model}")
        if not isinstance(self.n_classes, int) or self.n_classes < 1:
            raise ConfigError(f"n_classes: must be a positive integer, got {self.n_classes!r}")
        self._choice("mlp", ACTIVATIONS)
        self._fraction("dropout", "attn_dropout")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def ff_dim(self) -> int:
        return self.d_ff or 4 * self.d_model

    @property
    def n_frames(self) -> int:
        """Input frames the encoder takes: twice its positions (3,000 = 30 s at a 10 ms hop)."""
        return 2 * self.max_seq_len
