"""MoE routing against a naive per-token loop; the balancing loss against transformers' Mixtral."""

import pytest
import torch
from transformers.models.mixtral.modeling_mixtral import load_balancing_loss_func

from tests.conftest import randomize_
from zoo.blocks import MoE, load_balancing_loss, router_z_loss

D, FF, E = 12, 20, 5


def naive_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Each token on its own: softmax over experts, top-k, (renormalise), weighted sum of expert outputs."""
    flat = x.reshape(-1, x.shape[-1])
    out = torch.zeros_like(flat)
    for n, token in enumerate(flat):
        probs = (moe.router.weight @ token).softmax(-1)
        weights, chosen = probs.topk(moe.top_k)
        if moe.normalize_top_k:
            weights = weights / weights.sum()
        for w, e in zip(weights, chosen.tolist(), strict=True):
            out[n] += w * moe.experts[e](token[None])[0]
    return out.reshape(x.shape)


@pytest.mark.parametrize("top_k,normalize", [(2, True), (2, False), (1, True), (3, True)])
def test_routing_matches_a_per_token_loop(top_k, normalize):
    moe = randomize_(MoE(D, FF, E, top_k=top_k, normalize_top_k=normalize), std=0.5)
    x = torch.randn(2, 9, D, generator=torch.Generator().manual_seed(top_k))
    out = moe(x)
    # Outputs reach ~30 with these weights: fp32 summation order alone moves them by ~1e-5, so the
    # bound is relative too (a wrong routing is off by order 1).
    torch.testing.assert_close(out, naive_moe(moe, x), atol=1e-5, rtol=1e-6)
    assert moe.router_logits.shape == (18, E)
    assert len(moe.router_logits.argmax(-1).unique()) > 1  # several experts in use: the routing matters


def test_chosen_experts_get_gradients_and_the_router_too():
    moe = randomize_(MoE(D, FF, E, top_k=2), std=0.5)
    x = torch.randn(4, 8, D)
    moe(x).sum().backward()
    used = set(moe.router_logits.topk(2, dim=-1).indices.unique().tolist())
    assert moe.router.weight.grad is not None and moe.router.weight.grad.abs().sum() > 0
    for e, expert in enumerate(moe.experts):
        got = expert.up.weight.grad is not None and expert.up.weight.grad.abs().sum() > 0
        assert got == (e in used)


@pytest.mark.parametrize("top_k", [1, 2])
@pytest.mark.parametrize("with_mask", [False, True])
def test_load_balancing_loss_equals_transformers_mixtral(top_k, with_mask):
    g = torch.Generator().manual_seed(0)
    B, T, L = 3, 6, 2
    logits = [torch.randn(B * T, E, generator=g) * 2 for _ in range(L)]
    mask = None
    if with_mask:
        mask = torch.ones(B, T, dtype=torch.long)
        mask[1, :2] = 0
        mask[2, -3:] = 0
    ours = load_balancing_loss(logits, E, top_k, attention_mask=mask)
    ref = load_balancing_loss_func(tuple(logits), E, top_k, attention_mask=mask)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    if with_mask:  # padding is really excluded
        assert (ours - load_balancing_loss(logits, E, top_k)).abs() > 1e-4


@pytest.mark.parametrize("top_k", [1, 2, 3])
def test_load_balancing_loss_is_top_k_for_uniform_routing(top_k):
    logits = [torch.zeros(10, E), torch.zeros(10, E)]
    torch.testing.assert_close(load_balancing_loss(logits, E, top_k), torch.tensor(float(top_k)))
    skewed = [torch.zeros(10, E).index_fill_(1, torch.tensor([0]), 5.0)]
    assert load_balancing_loss(skewed, E, top_k) > top_k  # imbalance is penalised


def test_router_z_loss_formula():
    logits = [torch.randn(7, E), torch.randn(3, E)]
    expected = torch.cat(logits).exp().sum(-1).log().pow(2).mean()
    torch.testing.assert_close(router_z_loss(logits), expected, atol=1e-5, rtol=0)


def test_top_k_out_of_range_names_the_field():
    with pytest.raises(ValueError, match=r"^top_k: must be between 1 and n_experts=5, got 6"):
        MoE(D, FF, E, top_k=6)
