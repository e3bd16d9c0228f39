"""Norms against their formulas; MLP kinds and activations by name against formulas and transformers."""

import math

import pytest
import torch
from transformers.activations import ACT2FN

from tests.conftest import randomize_
from zoo.blocks import MLP, RMSNorm, get_activation, make_mlp, make_norm


def test_rmsnorm_matches_the_formula():
    norm = randomize_(RMSNorm(6, eps=1e-3))
    x = torch.randn(3, 5, 6) * 2
    expected = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-3) * norm.weight
    torch.testing.assert_close(norm(x), expected, atol=1e-6, rtol=0)
    # No mean is subtracted: a constant shift changes the output (a LayerNorm would not see it).
    assert (norm(x + 1) - norm(x)).abs().max() > 1e-2


def test_rmsnorm_keeps_bf16_and_computes_in_fp32():
    norm = randomize_(RMSNorm(8))
    x = torch.randn(4, 8) * 1e-3  # small values: squaring them in bf16 would lose precision
    out = norm.bfloat16()(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), norm.float()(x), atol=3e-2, rtol=3e-2)


def test_layernorm_with_and_without_bias():
    x = torch.randn(3, 4, 10)
    with_bias = randomize_(make_norm("layernorm", 10, eps=1e-5))
    without = randomize_(make_norm("layernorm", 10, eps=1e-5, bias=False))
    assert with_bias.bias is not None and without.bias is None
    assert [n for n, _ in without.named_parameters()] == ["weight"]
    normed = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(without(x), normed * without.weight, atol=1e-5, rtol=0)
    torch.testing.assert_close(with_bias(x), normed * with_bias.weight + with_bias.bias, atol=1e-5, rtol=0)


def test_make_norm_rmsnorm_and_unknown_name():
    assert isinstance(make_norm("rmsnorm", 4, eps=1e-6), RMSNorm)
    with pytest.raises(ValueError, match=r"^norm: unknown norm 'batchnorm'; choose one of layernorm, rmsnorm"):
        make_norm("batchnorm", 4)


_FORMULAS = {
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "gelu_tanh": lambda x: 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3))),
    "quick_gelu": lambda x: x * torch.sigmoid(1.702 * x),
    "relu": lambda x: x.clamp(min=0),
    "silu": lambda x: x / (1 + torch.exp(-x)),
}
# transformers' names for the same functions.
_HF_NAMES = {"gelu": "gelu", "gelu_tanh": "gelu_new", "quick_gelu": "quick_gelu", "relu": "relu", "silu": "silu"}


@pytest.mark.parametrize("name", sorted(_FORMULAS))
def test_activation_by_name(name):
    x = torch.linspace(-6, 6, 101)
    act = get_activation(name)
    torch.testing.assert_close(act(x), _FORMULAS[name](x), atol=1e-6, rtol=0)
    torch.testing.assert_close(act(x), ACT2FN[_HF_NAMES[name]](x), atol=1e-6, rtol=0)


def test_unknown_activation_names_the_field():
    with pytest.raises(ValueError, match=r"^activation: unknown activation 'swish2'"):
        get_activation("swish2")
    with pytest.raises(ValueError, match=r"^mlp: unknown MLP kind 'swigelu'"):
        make_mlp("swigelu", 8, 16)


@pytest.mark.parametrize("kind", sorted(_FORMULAS))
def test_plain_mlp(kind):
    mlp = randomize_(make_mlp(kind, 12, 20))
    assert mlp.gate is None
    x = torch.randn(2, 3, 12)
    expected = mlp.down(_FORMULAS[kind](x @ mlp.up.weight.T + mlp.up.bias))
    torch.testing.assert_close(mlp(x), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind,act", [("swiglu", "silu"), ("geglu", "gelu"), ("geglu_tanh", "gelu_tanh")])
def test_gated_mlp(kind, act):
    mlp = randomize_(make_mlp(kind, 12, 20, bias=False))
    assert mlp.up.bias is None and mlp.gate.weight.shape == (20, 12) and mlp.down.weight.shape == (12, 20)
    x = torch.randn(2, 3, 12)
    expected = (_FORMULAS[act](x @ mlp.gate.weight.T) * (x @ mlp.up.weight.T)) @ mlp.down.weight.T
    torch.testing.assert_close(mlp(x), expected, atol=1e-5, rtol=0)
    # gate and up are different roles: swapping them changes the output.
    swapped = MLP(12, 20, act, gated=True, bias=False)
    swapped.load_state_dict(
        {"up.weight": mlp.gate.weight, "gate.weight": mlp.up.weight, "down.weight": mlp.down.weight}
    )
    assert (swapped(x) - mlp(x)).abs().max() > 1e-3
