"""ViT's config: a pre-LN encoder over image patches, a class token and learned positions."""

from dataclasses import dataclass
from typing import ClassVar

from zoo.config import Config, ConfigError
from zoo.encoder import PROBLEM_TYPES

ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "quick_gelu")
# Which reference's checkpoint layout ``save_pretrained(format="hf")`` writes: a model read from a
# timm directory goes back to timm, one read from transformers back to transformers.
LAYOUTS = ("timm", "transformers")


@dataclass(frozen=True)
class ViTConfig(Config):
    renamed_fields: ClassVar[dict[str, str]] = {"n_classes": "n_labels"}  # so configs saved by zoo 0.1 still load
    image_size: int = 224  # side of the square images the position table was trained for
    patch_size: int = 16
    in_channels: int = 3
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int | None = None  # None: 4 * d_model, filled in at construction (and by replace)
    norm_eps: float = 1e-6
    mlp: str = "gelu"
    qkv_bias: bool = True
    pool: str = "token"  # "token": the class token's final state; "avg": the mean of the patch tokens
    fc_norm: bool | None = None  # norm after pooling instead of before (timm's fc_norm); None: with "avg"
    pooler: bool = False  # transformers ViTModel's tanh(dense(class token)) as pooler_output
    n_labels: int = 1000  # classifier outputs (0: none, as timm's num_classes=0)
    problem_type: str | None = None  # None: inferred from n_labels and the labels, as transformers does
    dropout: float = 0.0
    attn_dropout: float = 0.0
    layout: str = "timm"
    # Resampling of the position grid for other image sizes: timm's (antialiased bicubic) or
    # transformers' (plain bicubic); see zoo.blocks.resize_position_grid.
    pos_resample_antialias: bool = True
    init_std: float = 0.02

    def __post_init__(self):
        self._positive("image_size", "patch_size", "in_channels", "d_model", "n_layers", "n_heads", "d_ff")
        self._derive("d_ff", 4 * self.d_model)
        self._divisible("d_model", "n_heads")
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size: {self.image_size} is not divisible by patch_size={self.patch_size}")
        if not isinstance(self.n_labels, int) or self.n_labels < 0:
            raise ConfigError(f"n_labels: must be a non-negative integer, got {self.n_labels!r}")
        self._choice("mlp", ACTIVATIONS)
        self._choice("pool", ("token", "avg"))
        self._choice("layout", LAYOUTS)
        self._fraction("dropout", "attn_dropout")
        if self.problem_type is not None:
            self._choice("problem_type", PROBLEM_TYPES)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def grid(self) -> tuple[int, int]:
        """Patches per side of a training image."""
        side = self.image_size // self.patch_size
        return side, side

    @property
    def max_seq_len(self) -> int:
        """Tokens of a training image: its patches and the class token."""
        return self.grid[0] * self.grid[1] + 1

    @property
    def use_fc_norm(self) -> bool:
        return self.pool == "avg" if self.fc_norm is None else self.fc_norm
