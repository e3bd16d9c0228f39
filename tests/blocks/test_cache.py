"""KVCache: static and rolling caches give the full forward's outputs; the rolling one stays bounded."""

import pytest
import torch
from torch import nn

from tests.conftest import randomize_
from zoo.blocks import Attention, KVCache, TransformerLayer, attention_mask, make_mlp, make_norm, run_layers

B, D, H, HKV = 2, 24, 4, 2


def _stack(n_layers=2, seed=0) -> nn.ModuleList:
    layers = nn.ModuleList(
        TransformerLayer(
            Attention(D, H, HKV), make_mlp("swiglu", D, 40), make_norm("rmsnorm", D), make_norm("rmsnorm", D)
        )
        for _ in range(n_layers)
    )
    return randomize_(layers, seed=seed)


def _full(layers, x, valid, window):
    idx = torch.arange(x.shape[1])
    return run_layers(layers, x, mask=attention_mask(idx, idx, valid, causal=True, window=window))


def _incremental(layers, x, valid, cache, steps, window):
    outs, start = [], 0
    for n in steps:
        q_idx, k_idx, key_valid = cache.advance(n, valid[:, start : start + n])
        mask = attention_mask(q_idx, k_idx, key_valid, causal=True, window=window)
        outs.append(run_layers(layers, x[:, start : start + n], mask=mask, cache=cache))
        start += n
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("steps", [[5, 1, 1, 1, 1, 1], [1] * 10, [2, 3, 5]], ids=["prefill", "one-by-one", "chunks"])
def test_static_cache_equals_full_forward(steps):
    layers, T = _stack(), sum(steps)
    x = torch.randn(B, T, D)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[0, :2] = False  # left padding
    cache = KVCache(len(layers), B, HKV, D // H, max_len=T)
    with torch.no_grad():
        inc = _incremental(layers, x, valid, cache, steps, None)
        full = _full(layers, x, valid, None)
    torch.testing.assert_close(inc[valid], full[valid], atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [[5, 1, 1, 1, 1, 1, 1, 1], [1] * 12, [2, 4, 6]], ids=["prefill", "one", "chunks"])
def test_rolling_cache_equals_static_cache_with_window_mask(steps):
    window, T = 3, sum(steps)
    layers = _stack(seed=1)
    x = torch.randn(B, T, D)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, :4] = False
    static = KVCache(len(layers), B, HKV, D // H, max_len=T)
    rolling = KVCache(len(layers), B, HKV, D // H, max_len=T, window=window)
    with torch.no_grad():
        a = _incremental(layers, x, valid, static, steps, window)
        b = _incremental(layers, x, valid, rolling, steps, window)
        full = _full(layers, x, valid, window)
    torch.testing.assert_close(b[valid], a[valid], atol=1e-5, rtol=0)
    torch.testing.assert_close(b[valid], full[valid], atol=1e-5, rtol=0)
    # The window is exercised: a full causal pass differs.
    assert (_full(layers, x, valid, None)[valid] - full[valid]).abs().max() > 1e-3


def test_rolling_cache_memory_is_bounded_by_the_window():
    window, T = 4, 40
    layers = _stack(n_layers=1)
    rolling = KVCache(1, B, HKV, D // H, max_len=T, window=window)
    static = KVCache(1, B, HKV, D // H, max_len=T)
    x = torch.randn(B, T, D)
    valid = torch.ones(B, T, dtype=torch.bool)
    sizes = []
    with torch.no_grad():
        for t in range(T):
            _incremental(layers, x[:, t : t + 1], valid[:, t : t + 1], rolling, [1], window)
            sizes.append(rolling.memory_bytes())
            assert rolling.keys[0].shape[2] <= window and rolling.valid.shape[1] <= window
    assert max(sizes) == sizes[window - 1] == sizes[-1]  # grows to the window, then stays
    assert rolling.memory_bytes() * (T // window) == static.memory_bytes()


def test_reorder_selects_batch_rows():
    layers, T = _stack(), 6
    x = torch.randn(3, T + 1, D)
    valid = torch.ones(3, T + 1, dtype=torch.bool)
    cache = KVCache(len(layers), 3, HKV, D // H, max_len=T + 1)
    rows = torch.tensor([2, 2, 0])
    with torch.no_grad():
        _incremental(layers, x[:, :T], valid[:, :T], cache, [T], None)
        cache.reorder(rows)
        step = _incremental(layers, x[rows, T:], valid[rows, T:], cache, [1], None)
        full = _full(layers, x[rows], valid[rows], None)
    torch.testing.assert_close(step[:, 0], full[:, T], atol=1e-5, rtol=0)


def test_static_cache_overflow_names_max_len():
    cache = KVCache(1, 1, 1, 4, max_len=5)
    cache.advance(4)
    with pytest.raises(ValueError, match=r"^max_len: the cache holds 5 tokens; 4 are stored and 2 more do not fit"):
        cache.advance(2)
