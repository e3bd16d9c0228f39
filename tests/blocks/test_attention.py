"""Attention: the sdpa and eager backends agree to 1e-6 at fp32, and both match a per-head loop."""

import pytest
import torch

from tests.conftest import randomize_
from zoo.blocks import Attention, KVCache, RelativePositionBias, RotaryEmbedding, attention_mask

B, T, D = 2, 7, 40


def _agree(attn: Attention, *args, **kwargs) -> torch.Tensor:
    """Run both backends; assert they agree to 1e-6; return the sdpa output."""
    attn.backend = "sdpa"
    fast = attn(*args, **kwargs)
    attn.backend = "eager"
    slow = attn(*args, **kwargs)
    attn.backend = "sdpa"
    torch.testing.assert_close(fast, slow, atol=1e-6, rtol=0)
    return fast


def naive_attention(attn: Attention, x, context=None, mask=None, bias=None) -> torch.Tensor:
    """One head at a time, query head h reading key/value head h // (n_heads / n_kv_heads)."""
    source = x if context is None else context
    hd, group = attn.head_dim, attn.n_heads // attn.n_kv_heads
    q = attn.q_proj(x)  # (B, T, H * hd)
    k, v = attn.k_proj(source), attn.v_proj(source)  # (B, S, Hkv * hd)
    heads = []
    for h in range(attn.n_heads):
        g = h // group
        qh, kh, vh = q[..., h * hd : (h + 1) * hd], k[..., g * hd : (g + 1) * hd], v[..., g * hd : (g + 1) * hd]
        scores = torch.einsum("btd,bsd->bts", qh, kh) * attn.scale  # (B, T, S)
        if bias is not None:
            scores = scores + bias.expand(x.shape[0], attn.n_heads, -1, -1)[:, h]
        if mask is not None:
            scores = scores.masked_fill(~mask.expand(x.shape[0], 1, -1, -1)[:, 0], float("-inf"))
        heads.append(scores.softmax(-1) @ vh)  # (B, T, hd)
    return attn.o_proj(torch.cat(heads, dim=-1))


def _padding() -> torch.Tensor:
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, :3] = False  # left padding on row 1
    return valid


def _case_masks(case: str):
    idx = torch.arange(T)
    if case == "none":
        return None
    if case == "causal":
        return attention_mask(idx, idx, causal=True)
    if case == "causal+padding":
        return attention_mask(idx, idx, key_valid=_padding(), causal=True)
    if case == "window":
        return attention_mask(idx, idx, key_valid=_padding(), causal=True, window=3)  # window < T
    if case == "bidirectional+padding":
        return attention_mask(idx, idx, key_valid=_padding())
    raise AssertionError(case)


@pytest.mark.parametrize("n_heads,n_kv_heads", [(4, 4), (4, 2), (4, 1)], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("case", ["none", "causal", "causal+padding", "window", "bidirectional+padding"])
def test_backends_agree_and_match_naive(n_heads, n_kv_heads, case):
    attn = randomize_(Attention(D, n_heads, n_kv_heads))
    x = torch.randn(B, T, D, generator=torch.Generator().manual_seed(1))
    mask = _case_masks(case)
    out = _agree(attn, x, mask=mask)
    torch.testing.assert_close(out, naive_attention(attn, x, mask=mask), atol=1e-5, rtol=0)


def test_window_changes_the_output():
    """The window test above is not vacuous: a window shorter than the sequence matters."""
    attn = randomize_(Attention(D, 4, 2))
    x = torch.randn(B, T, D)
    idx = torch.arange(T)
    full = attn(x, mask=attention_mask(idx, idx, causal=True))
    windowed = attn(x, mask=attention_mask(idx, idx, causal=True, window=3))
    assert (full[:, 3:] - windowed[:, 3:]).abs().max() > 1e-3
    torch.testing.assert_close(full[:, :3], windowed[:, :3], atol=1e-6, rtol=0)  # within the window: equal


@pytest.mark.parametrize("with_mask", [False, True])
def test_additive_relative_position_bias(with_mask):
    attn = randomize_(Attention(D, 4, 2, bias=False, scale=1.0))  # T5 style: no projection bias, no scaling
    rel = randomize_(RelativePositionBias(4, n_buckets=8, max_distance=16, bidirectional=not with_mask), seed=3)
    x = torch.randn(B, T, D)
    idx = torch.arange(T)
    bias = rel(idx, idx)
    mask = attention_mask(idx, idx, key_valid=_padding(), causal=True) if with_mask else None
    out = _agree(attn, x, mask=mask, bias=bias)
    torch.testing.assert_close(out, naive_attention(attn, x, mask=mask, bias=bias), atol=1e-5, rtol=0)
    assert (out - attn(x, mask=mask)).abs().max() > 1e-3  # the bias is really added


@pytest.mark.parametrize("n_kv_heads", [4, 2, 1])
def test_cross_attention_over_a_padded_context(n_kv_heads):
    kv_dim, S = 24, 5
    attn = randomize_(Attention(D, 4, n_kv_heads, kv_dim=kv_dim))
    x, context = torch.randn(B, T, D), torch.randn(B, S, kv_dim)
    valid = torch.ones(B, S, dtype=torch.bool)
    valid[0, -2:] = False
    mask = attention_mask(torch.arange(T), torch.arange(S), key_valid=valid)
    out = _agree(attn, x, context=context, mask=mask)
    torch.testing.assert_close(out, naive_attention(attn, x, context=context, mask=mask), atol=1e-5, rtol=0)
    # Padding keys are ignored: changing the padded context rows changes nothing.
    context2 = context.clone()
    context2[0, -2:] = torch.randn(2, kv_dim)
    torch.testing.assert_close(attn(x, context=context2, mask=mask), out, atol=1e-6, rtol=0)


def test_explicit_head_dim_not_d_model_over_heads():
    attn = randomize_(Attention(D, 4, 2, head_dim=6))  # 4 * 6 != 40
    assert attn.q_proj.weight.shape == (24, D) and attn.o_proj.weight.shape == (D, 24)
    x = torch.randn(B, T, D)
    mask = _case_masks("causal+padding")
    torch.testing.assert_close(_agree(attn, x, mask=mask), naive_attention(attn, x, mask=mask), atol=1e-5, rtol=0)


def test_rope_backends_agree():
    attn = randomize_(Attention(D, 4, 2))
    rope = RotaryEmbedding(attn.head_dim, theta=500.0)
    x = torch.randn(B, T, D)
    positions = torch.arange(T).expand(B, T)
    out = _agree(attn, x, mask=_case_masks("causal"), rope=rope(positions))
    assert (out - attn(x, mask=_case_masks("causal"))).abs().max() > 1e-3


@pytest.mark.parametrize("backend", ["sdpa", "eager"])
@pytest.mark.parametrize("window", [None, 3])
def test_kv_cache_incremental_equals_full_forward(backend, window):
    """Prefill 4 tokens, then decode one at a time: the same outputs as one full causal pass."""
    attn = randomize_(Attention(D, 4, 2))
    attn.backend = backend
    rope = RotaryEmbedding(attn.head_dim)
    x = torch.randn(B, T, D)
    valid = _padding()
    idx = torch.arange(T)
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    full = attn(x, mask=attention_mask(idx, idx, valid, causal=True, window=window), rope=rope(positions))

    cache = KVCache(1, B, attn.n_kv_heads, attn.head_dim, max_len=T, window=window)
    steps, outs, start = [4, 1, 1, 1], [], 0
    for n in steps:
        q_idx, k_idx, key_valid = cache.advance(n, valid[:, start : start + n])
        mask = attention_mask(q_idx, k_idx, key_valid, causal=True, window=window)
        outs.append(attn(x[:, start : start + n], mask=mask, rope=rope(positions[:, start : start + n]), cache=cache))
        start += n
    incremental = torch.cat(outs, dim=1)
    real = valid  # padding queries' outputs are never used
    torch.testing.assert_close(incremental[real], full[real], atol=1e-5, rtol=0)


def test_eager_keeps_weights_that_respect_the_mask():
    attn = randomize_(Attention(D, 4, 1))
    attn.keep_weights = True
    mask = _case_masks("window")
    attn(torch.randn(B, T, D), mask=mask)
    w = attn.weights
    assert w.shape == (B, 4, T, T)
    torch.testing.assert_close(w.sum(-1), torch.ones(B, 4, T), atol=1e-6, rtol=0)
    assert (w.masked_select(~mask.expand_as(w)) == 0).all()


def test_bad_arguments_name_the_field():
    with pytest.raises(ValueError, match=r"^d_model: 40 is not divisible by n_heads=3"):
        Attention(40, 3)
    with pytest.raises(ValueError, match=r"^n_kv_heads: n_heads=4 is not divisible by n_kv_heads=3"):
        Attention(40, 4, 3)
    with pytest.raises(ValueError, match=r"^attn_backend: unknown attention backend 'flash'"):
        Attention(40, 4, backend="flash")


def test_per_projection_bias_keys_without_queries_and_values_with():
    attn = randomize_(Attention(D, 4, bias=True, k_bias=False), std=0.1)
    assert attn.k_proj.bias is None
    assert all(p.bias is not None for p in (attn.q_proj, attn.v_proj, attn.o_proj))
    x = torch.randn(B, T, D)
    _agree(attn, x)
    default = Attention(D, 4, bias=False)  # the single switch still sets every projection
    assert all(p.bias is None for p in (default.q_proj, default.k_proj, default.v_proj, default.o_proj))
    only_q = Attention(D, 4, bias=False, q_bias=True)
    assert only_q.q_proj.bias is not None and only_q.k_proj.bias is None and only_q.o_proj.bias is None
