"""The shared block library. No family name appears in here: blocks take explicit arguments."""

from zoo.blocks.attention import Attention
from zoo.blocks.cache import ContextCache, KVCache
from zoo.blocks.embeddings import PatchEmbedding, PatchTokens, check_token_ids, embedding_tables
from zoo.blocks.heads import FirstTokenPooler
from zoo.blocks.layers import TransformerLayer, compile_decoding, run_layers
from zoo.blocks.masks import attention_mask
from zoo.blocks.mlp import MLP, get_activation, make_mlp
from zoo.blocks.moe import MoE, load_balancing_loss, router_z_loss
from zoo.blocks.norms import RMSNorm, make_norm
from zoo.blocks.position import (
    SINUSOID_LAYOUTS,
    LearnedPositions,
    RelativePositionBias,
    RotaryEmbedding,
    SinusoidalPositions,
    apply_rope,
    resize_position_grid,
    sinusoidal_table,
    timing_signal,
)

__all__ = [
    "MLP",
    "SINUSOID_LAYOUTS",
    "Attention",
    "ContextCache",
    "FirstTokenPooler",
    "KVCache",
    "LearnedPositions",
    "MoE",
    "PatchEmbedding",
    "PatchTokens",
    "RMSNorm",
    "RelativePositionBias",
    "RotaryEmbedding",
    "SinusoidalPositions",
    "TransformerLayer",
    "apply_rope",
    "attention_mask",
    "check_token_ids",
    "compile_decoding",
    "embedding_tables",
    "get_activation",
    "load_balancing_loss",
    "make_mlp",
    "make_norm",
    "resize_position_grid",
    "router_z_loss",
    "run_layers",
    "sinusoidal_table",
    "timing_signal",
]
