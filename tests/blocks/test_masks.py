"""attention_mask: hand-checked small cases for causal, window and padding masks."""

import torch

from tests.conftest import randomize_
from zoo.blocks import Attention, attention_mask


def test_nothing_masked_gives_none():
    idx = torch.arange(4)
    assert attention_mask(idx, idx) is None


def test_causal_is_lower_triangular():
    idx = torch.arange(4)
    mask = attention_mask(idx, idx, causal=True)
    expected = torch.tensor(
        [
            [1, 0, 0, 0],
            [1, 1, 0, 0],
            [1, 1, 1, 0],
            [1, 1, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert mask.shape == (1, 1, 4, 4)
    assert torch.equal(mask[0, 0], expected)


def test_causal_window_cuts_exactly_at_q_minus_k_below_window():
    idx = torch.arange(5)
    mask = attention_mask(idx, idx, causal=True, window=2)[0, 0]
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0],
            [1, 1, 0, 0, 0],
            [0, 1, 1, 0, 0],
            [0, 0, 1, 1, 0],
            [0, 0, 0, 1, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(mask, expected)
    # The rule itself, on every pair: allowed iff 0 <= q - k < window.
    for q in range(5):
        for k in range(5):
            assert bool(mask[q, k]) == (0 <= q - k < 2)


def test_bidirectional_window_is_symmetric():
    idx = torch.arange(5)
    mask = attention_mask(idx, idx, causal=False, window=2)[0, 0]
    for q in range(5):
        for k in range(5):
            assert bool(mask[q, k]) == (abs(q - k) < 2)


def test_queries_offset_by_a_cache():
    """Two new queries at sequence indices 3 and 4 against five keys 0..4."""
    mask = attention_mask(torch.tensor([3, 4]), torch.arange(5), causal=True, window=3)[0, 0]
    expected = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(mask, expected)


def test_key_padding_combines_with_causal():
    idx = torch.arange(3)
    valid = torch.tensor([[1, 1, 1], [1, 1, 0]])
    mask = attention_mask(idx, idx, key_valid=valid, causal=True)
    assert mask.shape == (2, 1, 3, 3)
    assert torch.equal(mask[0, 0], torch.tril(torch.ones(3, 3, dtype=torch.bool)))
    # Row 1: key 2 is padding, so query 2 sees keys 0 and 1 only.
    assert torch.equal(mask[1, 0], torch.tensor([[1, 0, 0], [1, 1, 0], [1, 1, 0]], dtype=torch.bool))


def test_padding_only_mask_broadcasts_over_queries():
    valid = torch.tensor([[0, 1, 1, 1]])
    mask = attention_mask(torch.arange(2), torch.arange(4), key_valid=valid)
    assert mask.shape == (1, 1, 1, 4)
    assert torch.equal(mask[0, 0, 0], valid[0].bool())


def test_fully_padded_query_row_is_opened_and_stays_finite():
    """Left padding under a causal mask: query 0 may only see key 0, which is padding."""
    idx = torch.arange(4)
    valid = torch.tensor([[0, 0, 1, 1]])
    mask = attention_mask(idx, idx, key_valid=valid, causal=True)
    assert mask[0, 0, 0].all() and mask[0, 0, 1].all()  # rows with no allowed key are opened
    assert torch.equal(mask[0, 0, 2], torch.tensor([False, False, True, False]))
    attn = randomize_(Attention(16, 2))
    x = torch.randn(1, 4, 16)
    for backend in ("sdpa", "eager"):
        attn.backend = backend
        assert torch.isfinite(attn(x, mask=mask)).all()
