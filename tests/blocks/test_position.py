"""Position encodings against their definitions: the paper's sinusoids, transformers' RoPE and T5 buckets."""

import math

import pytest
import torch
import transformers
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb
from transformers.models.t5.modeling_t5 import T5Attention

from tests.conftest import randomize_
from zoo.blocks import LearnedPositions, RelativePositionBias, RotaryEmbedding, apply_rope, sinusoidal_table
from zoo.blocks.position import relative_position_bucket, rope_inv_freq


@pytest.mark.parametrize("d_model", [16, 10])
def test_sinusoidal_table_is_the_papers_formula(d_model):
    """PE(pos, 2i) = sin(pos / 10000^(2i/d)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d))."""
    table = sinusoidal_table(50, d_model)
    expected = torch.empty(50, d_model)
    for pos in range(50):
        for i in range(d_model // 2):
            angle = pos / 10000 ** (2 * i / d_model)
            expected[pos, 2 * i], expected[pos, 2 * i + 1] = math.sin(angle), math.cos(angle)
    torch.testing.assert_close(table, expected, atol=1e-5, rtol=0)


HEAD_DIM, HIDDEN, HEADS = 64, 256, 4
SCALINGS = {
    "default": None,
    "linear": {"rope_type": "linear", "factor": 4.0},
    # original_max_position_embeddings is small so the 32 frequencies fall in all three bands.
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64,
    },
}


def _hf_config(theta: float, scaling: dict | None) -> transformers.LlamaConfig:
    params = {"rope_type": "default", "rope_theta": theta, **(scaling or {})}
    return transformers.LlamaConfig(
        hidden_size=HIDDEN, num_attention_heads=HEADS, max_position_embeddings=4096, rope_parameters=params
    )


@pytest.mark.parametrize("kind", sorted(SCALINGS))
def test_rope_inv_freq_matches_transformers_init_functions(kind):
    theta, scaling = 500000.0, SCALINGS[kind]
    config = _hf_config(theta, scaling)
    if scaling is None:
        expected, _ = LlamaRotaryEmbedding.compute_default_rope_parameters(config)
    else:
        expected, attention_factor = ROPE_INIT_FUNCTIONS[kind](config)
        assert attention_factor == 1.0  # neither scaling rescales the attention
    torch.testing.assert_close(rope_inv_freq(HEAD_DIM, theta, scaling), expected, atol=0, rtol=1e-6)
    if kind == "llama3":  # all three bands are exercised: kept, divided by factor, blended
        base = rope_inv_freq(HEAD_DIM, theta)
        ratio = base / expected
        assert (ratio == 1).any() and (ratio == 8).any() and ((ratio > 1.01) & (ratio < 7.99)).any()


@pytest.mark.parametrize("kind", sorted(SCALINGS))
def test_rope_rotation_matches_transformers(kind):
    theta, scaling = 10000.0, SCALINGS[kind]
    ref = LlamaRotaryEmbedding(_hf_config(theta, scaling))
    ours = RotaryEmbedding(HEAD_DIM, theta, scaling)
    positions = torch.tensor([[0, 1, 2, 3, 50, 700], [0, 0, 0, 1, 2, 3]])
    q, k = torch.randn(2, HEADS, 6, HEAD_DIM), torch.randn(2, 2, 6, HEAD_DIM)
    cos, sin = ours(positions)
    ref_cos, ref_sin = ref(q, positions)
    torch.testing.assert_close(cos[:, 0], ref_cos, atol=1e-6, rtol=0)
    torch.testing.assert_close(sin[:, 0], ref_sin, atol=1e-6, rtol=0)
    ref_q, ref_k = apply_rotary_pos_emb(q, k, ref_cos, ref_sin)
    torch.testing.assert_close(apply_rope(q, cos, sin), ref_q, atol=1e-5, rtol=0)
    torch.testing.assert_close(apply_rope(k, cos, sin), ref_k, atol=1e-5, rtol=0)


def test_rope_scores_depend_only_on_the_offset():
    rope = RotaryEmbedding(16)
    q, k = torch.randn(1, 1, 1, 16), torch.randn(1, 1, 1, 16)

    def score(m, n):
        cm, sm = rope(torch.tensor([[m]]))
        cn, sn = rope(torch.tensor([[n]]))
        return (apply_rope(q, cm, sm) * apply_rope(k, cn, sn)).sum()

    torch.testing.assert_close(score(5, 2), score(13, 10), atol=1e-5, rtol=0)
    assert (score(5, 2) - score(5, 3)).abs() > 1e-3


def test_partial_rotary_leaves_the_rest_unchanged():
    full, partial = RotaryEmbedding(8), RotaryEmbedding(8)
    x = torch.randn(2, 3, 5, 12)  # head_dim 12, only the first 8 channels rotate
    positions = torch.arange(5).expand(2, 5)
    out = apply_rope(x, *partial(positions))
    torch.testing.assert_close(out[..., 8:], x[..., 8:], atol=0, rtol=0)
    torch.testing.assert_close(out[..., :8], apply_rope(x[..., :8].contiguous(), *full(positions)), atol=0, rtol=0)
    assert (out[..., :8] - x[..., :8]).abs().max() > 1e-3


def test_rope_bad_arguments():
    with pytest.raises(ValueError, match=r"^rotary_dim: must be even, got 7"):
        RotaryEmbedding(7)
    with pytest.raises(ValueError, match=r"^rope_scaling: unknown rope_type 'yarn'"):
        RotaryEmbedding(8, scaling={"rope_type": "yarn", "factor": 2.0})


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("n_buckets,max_distance", [(32, 128), (8, 20), (16, 40)])
def test_relative_buckets_match_t5(bidirectional, n_buckets, max_distance):
    relative = torch.arange(-300, 301)[None, :]  # (1, 601) offsets k - q
    ours = relative_position_bucket(relative, bidirectional, n_buckets, max_distance)
    ref = T5Attention._relative_position_bucket(relative, bidirectional, n_buckets, max_distance)
    assert torch.equal(ours, ref)
    # Every bucket is reached (bidirectional: offset 0 sits in the "before" half, so one "after" bucket is empty).
    assert len(ours.unique()) == (n_buckets - 1 if bidirectional else n_buckets)


def test_relative_position_bias_reads_the_bucket_table():
    rel = randomize_(RelativePositionBias(3, n_buckets=8, max_distance=16, bidirectional=True))
    q_idx, k_idx = torch.arange(4, 9), torch.arange(12)
    bias = rel(q_idx, k_idx)
    assert bias.shape == (1, 3, 5, 12)
    for i, q in enumerate(q_idx.tolist()):
        for j, k in enumerate(k_idx.tolist()):
            bucket = T5Attention._relative_position_bucket(torch.tensor(k - q), True, 8, 16)
            torch.testing.assert_close(bias[0, :, i, j], rel.embedding.weight[bucket], atol=0, rtol=0)


def test_learned_positions_past_the_table_name_max_seq_len():
    pos = LearnedPositions(8, 4)
    torch.testing.assert_close(pos(torch.tensor([[1, 7]])), pos.weight[[1, 7]][None], atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"^max_seq_len: position 8 is past the model's 8 learned positions"):
        pos(torch.arange(9))


@pytest.mark.parametrize("d_model", [48, 10])
def test_timing_signal_is_whispers_sin_cos_halves(d_model):
    from transformers.models.whisper.modeling_whisper import sinusoids

    from zoo.blocks import timing_signal

    table = timing_signal(1500, d_model)
    torch.testing.assert_close(table, sinusoids(1500, d_model), atol=1e-6, rtol=0)
    assert not torch.allclose(table, sinusoidal_table(1500, d_model), atol=1e-2)  # not the interleaved table


def test_learned_positions_offset_reads_past_the_first_rows():
    """BART's table has max_seq_len + 2 rows and position p reads row p + 2."""
    pos = LearnedPositions(8, 4, offset=2)
    assert pos.weight.shape == (10, 4)
    torch.testing.assert_close(pos(torch.tensor([[0, 7]])), pos.weight[[2, 9]][None], atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"^max_seq_len: position 8 is past the model's 8 learned positions"):
        pos(torch.arange(9))


@pytest.mark.parametrize("d_model", [16, 10])
def test_sinusoidal_halves_are_marians_table(d_model):
    """[sin | cos] with the paper's frequencies, exactly transformers' MarianSinusoidalPositionalEmbedding
    (its table is numpy float64, cast; ours is computed in float64 too)."""
    from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding

    from zoo.blocks import SinusoidalPositions

    ref = MarianSinusoidalPositionalEmbedding(512, d_model)
    table = SinusoidalPositions(512, d_model, layout="halves").table
    torch.testing.assert_close(table, ref.create_weight(), atol=0, rtol=0)
    interleaved = sinusoidal_table(512, d_model)
    half = d_model // 2
    torch.testing.assert_close(table[:, :half], interleaved[:, 0::2], atol=0, rtol=0)  # same angles, other places
    torch.testing.assert_close(table[:, half:], interleaved[:, 1::2], atol=0, rtol=0)
    with pytest.raises(ValueError, match=r"^layout: unknown sinusoid layout 'stacked'"):
        SinusoidalPositions(8, d_model, layout="stacked")
    with pytest.raises(ValueError, match=r"^max_seq_len: position 512 is past the model's 512 sinusoidal"):
        SinusoidalPositions(512, d_model)(torch.tensor([512]))
