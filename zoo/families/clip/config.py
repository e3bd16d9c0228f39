"""CLIP's config: a causal text tower and a ViT image tower, each projected into one shared space.

The two towers are nested configs (``CLIPConfig.text``, ``CLIPConfig.vision``); ``to_dict`` and
``from_dict`` carry them through zoo.json.
"""

import math
from dataclasses import dataclass, field

from zoo.config import Config, ConfigError

# The original CLIP's activation is QuickGELU, x * sigmoid(1.702 x); most open_clip trainings use
# exact GELU. A checkpoint read with the other one loses accuracy without any error, so it is a
# config field that conversion sets from the checkpoint's config and checks on export.
ACTIVATIONS = ("quick_gelu", "gelu")
# Where the text tower reads its sentence vector: "argmax" at the highest token id (the original
# CLIP, whose end-of-text token is the last of the vocabulary), "eos" at the first eos_token_id.
TEXT_POOLS = ("argmax", "eos")
# Which reference's layout ``save_pretrained(format="hf")`` writes.
LAYOUTS = ("transformers", "open_clip")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


class _Tower(Config):
    def _check_tower(self) -> None:
        self._positive("d_model", "n_layers", "n_heads", "d_ff")
        self._divisible("d_model", "n_heads")
        self._choice("mlp", ACTIVATIONS)
        self._fraction("attn_dropout")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads


@dataclass(frozen=True)
class CLIPTextConfig(_Tower):
    vocab_size: int = 49408
    max_seq_len: int = 77
    d_model: int = 512
    n_layers: int = 12
    n_heads: int = 8
    d_ff: int = 2048
    norm_eps: float = 1e-5
    mlp: str = "quick_gelu"
    pool: str = "argmax"
    eos_token_id: int = 49407  # the pooled token with pool="eos"; also what the tokenizer appends
    pad_token_id: int = 0  # what batches are padded with after end-of-text
    attn_dropout: float = 0.0

    def __post_init__(self):
        self._positive("vocab_size", "max_seq_len")
        self._check_tower()
        self._choice("pool", TEXT_POOLS)
        for name in ("eos_token_id", "pad_token_id"):
            value = getattr(self, name)
            if not 0 <= value < self.vocab_size:
                raise ConfigError(f"{name}: {value} is outside the vocabulary (vocab_size={self.vocab_size})")


@dataclass(frozen=True)
class CLIPVisionConfig(_Tower):
    image_size: int = 224
    patch_size: int = 32
    in_channels: int = 3
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    norm_eps: float = 1e-5
    mlp: str = "quick_gelu"
    attn_dropout: float = 0.0
    # Resampling of the position grid for other image sizes: False is transformers' plain bicubic
    # (interpolate_pos_encoding=True); True timm's antialiased one.
    pos_resample_antialias: bool = False

    def __post_init__(self):
        self._positive("image_size", "patch_size", "in_channels")
        self._check_tower()
        if self.image_size % self.patch_size:
            raise ConfigError(f"image_size: {self.image_size} is not divisible by patch_size={self.patch_size}")

    @property
    def max_seq_len(self) -> int:
        """Tokens of a training image: the class token and the patches."""
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass(frozen=True)
class CLIPConfig(Config):
    text: CLIPTextConfig = field(default_factory=CLIPTextConfig)
    vision: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    embed_dim: int = 512  # the shared space both towers project into (transformers' projection_dim)
    logit_scale_init: float = math.log(1 / 0.07)  # CLIP's initial temperature, learned as exp(logit_scale)
    layout: str = "transformers"
    # The preprocessing the checkpoint was trained with (zoo.families.clip.zero_shot builds it):
    # resize the short side to image_size, center crop, normalise by these.
    image_mean: tuple[float, ...] = OPENAI_MEAN
    image_std: tuple[float, ...] = OPENAI_STD
    interpolation: str = "bicubic"
    init_std: float = 0.02

    def __post_init__(self):
        for name, cls in (("text", CLIPTextConfig), ("vision", CLIPVisionConfig)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name}: must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")
        self._positive("embed_dim")
        self._choice("layout", LAYOUTS)
        self._choice("interpolation", ("bicubic", "bilinear", "nearest"))
        for name in ("image_mean", "image_std"):
            value = getattr(self, name)
            if not isinstance(value, tuple) or len(value) != self.vision.in_channels:
                raise ConfigError(
                    f"{name}: needs one value per channel as a tuple (in_channels={self.vision.in_channels}), "
                    f"got {value!r}"
                )
        if min(self.image_std) <= 0:
            raise ConfigError(f"image_std: must be positive, got {self.image_std!r}")
