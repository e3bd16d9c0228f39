"""TransformerLayer against hand-written pre-LN / post-LN formulas; run_layers with checkpointing."""

import pytest
import torch
from torch import nn

from tests.conftest import randomize_
from zoo.blocks import Attention, TransformerLayer, attention_mask, make_mlp, make_norm, run_layers

B, T, S, D = 2, 6, 4, 16


def _layer(prenorm: bool, cross: bool = False, seed: int = 0) -> TransformerLayer:
    layer = TransformerLayer(
        attn=Attention(D, 4, 2),
        mlp=make_mlp("gelu", D, 28),
        norm1=make_norm("layernorm", D),
        norm2=make_norm("layernorm", D),
        cross_attn=Attention(D, 4, kv_dim=10) if cross else None,
        norm_cross=make_norm("layernorm", D) if cross else None,
        prenorm=prenorm,
    )
    return randomize_(layer, seed=seed)


def _mask():
    idx = torch.arange(T)
    valid = torch.ones(B, T, dtype=torch.bool)
    valid[1, :2] = False
    return attention_mask(idx, idx, valid, causal=True)


def test_pre_ln_formula():
    layer, x, mask = _layer(prenorm=True), torch.randn(B, T, D), _mask()
    h = x + layer.attn(layer.norm1(x), mask=mask)
    expected = h + layer.mlp(layer.norm2(h))
    torch.testing.assert_close(layer(x, mask=mask), expected, atol=1e-6, rtol=0)


def test_post_ln_formula():
    layer, x, mask = _layer(prenorm=False), torch.randn(B, T, D), _mask()
    h = layer.norm1(x + layer.attn(x, mask=mask))
    expected = layer.norm2(h + layer.mlp(h))
    out = layer(x, mask=mask)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    pre = _layer(prenorm=True)
    pre.load_state_dict(layer.state_dict())
    assert (pre(x, mask=mask) - out).abs().max() > 1e-2  # the switch changes the computation


@pytest.mark.parametrize("prenorm", [True, False])
def test_cross_attention_sublayer(prenorm):
    layer = _layer(prenorm=prenorm, cross=True)
    x, context, mask = torch.randn(B, T, D), torch.randn(B, S, 10), _mask()
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    cmask = attention_mask(torch.arange(T), torch.arange(S), valid)
    if prenorm:
        h = x + layer.attn(layer.norm1(x), mask=mask)
        h = h + layer.cross_attn(layer.norm_cross(h), context=context, mask=cmask)
        expected = h + layer.mlp(layer.norm2(h))
    else:
        h = layer.norm1(x + layer.attn(x, mask=mask))
        h = layer.norm_cross(h + layer.cross_attn(h, context=context, mask=cmask))
        expected = layer.norm2(h + layer.mlp(h))
    out = layer(x, mask=mask, context=context, context_mask=cmask)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
    other = layer(x, mask=mask, context=torch.randn(B, S, 10), context_mask=cmask)
    assert (other - out).abs().max() > 1e-3  # the context is read


def test_cross_attention_needs_context_and_its_norm():
    layer = _layer(prenorm=True, cross=True)
    with pytest.raises(ValueError, match=r"^context: this layer has cross-attention"):
        layer(torch.randn(B, T, D))
    with pytest.raises(ValueError, match=r"^norm_cross: cross_attn and norm_cross come together"):
        TransformerLayer(
            Attention(D, 4), make_mlp("relu", D, 8), nn.Identity(), nn.Identity(), cross_attn=nn.Linear(1, 1)
        )


def test_run_layers_collects_each_layers_input():
    layers = nn.ModuleList(_layer(prenorm=True, seed=i) for i in range(3))
    x, mask = torch.randn(B, T, D), _mask()
    states: list[torch.Tensor] = []
    out = run_layers(layers, x, states=states, mask=mask)
    assert len(states) == 3 and states[0] is x
    h = x
    for i, layer in enumerate(layers):
        torch.testing.assert_close(states[i], h, atol=0, rtol=0)
        h = layer(h, mask=mask)
    torch.testing.assert_close(out, h, atol=0, rtol=0)


def test_gradient_checkpointing_gives_equal_gradients():
    layers = nn.ModuleList(_layer(prenorm=True, seed=i) for i in range(3)).train()
    x, mask = torch.randn(B, T, D), _mask()

    def grads(checkpointing: bool):
        layers.zero_grad()
        inp = x.clone().requires_grad_(True)
        run_layers(layers, inp, checkpointing=checkpointing, mask=mask).pow(2).sum().backward()
        return [inp.grad] + [p.grad.clone() for p in layers.parameters()]

    plain, checkpointed = grads(False), grads(True)
    assert all(g is not None for g in checkpointed)
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
