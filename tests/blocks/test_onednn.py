"""zoo.blocks.onednn: small fp32 products through oneDNN while decoding; F.linear everywhere else."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import zoo
from tests.conftest import randomize_
from zoo.blocks import onednn

pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(not onednn.available(), reason="this torch build has no oneDNN"),
]


@pytest.fixture
def calls(monkeypatch):
    """The products that went to oneDNN: (rows, output features) each."""
    seen = []
    real = onednn._onednn

    def spy(x, weight, bias):
        seen.append((x.numel() // x.shape[-1], weight.shape[0]))
        return real(x, weight, bias)

    monkeypatch.setattr(onednn, "_onednn", spy)
    return seen


@pytest.mark.parametrize("shape", [(1, 48), (8, 48), (2, 3, 48)])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("column_major", [False, True])
def test_the_same_products_as_f_linear(shape, bias, column_major, calls):
    layer = nn.Linear(48, 40, bias=bias)  # non-square
    if column_major:
        layer.weight.data = layer.weight.data.t().contiguous().t()
    x = torch.randn(shape)
    with torch.no_grad(), onednn.onednn_linears(layer):
        y = layer(x)
    assert calls == [(x.numel() // 48, 40)]
    torch.testing.assert_close(y, F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-6)


def test_only_small_products_without_autograd(calls):
    layer = nn.Linear(16, 24)
    with onednn.onednn_linears(layer) as routed:
        assert routed == 1
        with torch.no_grad():
            layer(torch.randn(9, 16))  # 9 rows: MKL
            layer(torch.randn(3, 3, 16))  # 9 rows in two dimensions
        x = torch.randn(2, 16, requires_grad=True)
        layer(x).sum().backward()  # training: F.linear, with its gradients
        assert x.grad is not None and layer.weight.grad is not None
        assert calls == []
        with torch.inference_mode():
            layer(torch.randn(2, 16))
    assert calls == [(2, 24)]
    assert "forward" not in layer.__dict__
    with torch.no_grad():
        layer(torch.randn(2, 16))  # outside: untouched
        onednn.linear(torch.randn(2, 16), layer.weight)  # the tied head's function too
    assert calls == [(2, 24)]
    double = nn.Linear(16, 24).double()
    with torch.no_grad(), onednn.onednn_linears(double):
        double(torch.randn(2, 16).double())  # not float32: F.linear
    assert calls == [(2, 24)]


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny", "t5-tiny"])
def test_decoding_runs_through_onednn_with_the_same_tokens(name, calls, monkeypatch):
    model = randomize_(zoo.create_model(name), std=0.1).eval()
    ids = torch.randint(3, model.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    fast = model.generate(ids, max_new_tokens=8)
    assert calls and max(rows for rows, _ in calls) <= onednn.MAX_ROWS  # the steps; the prefill (18 rows) is MKL's
    monkeypatch.setattr(onednn, "available", lambda: False)
    calls.clear()
    assert torch.equal(model.generate(ids, max_new_tokens=8), fast) and calls == []


def test_tied_output_projection_through_onednn(calls):
    model = randomize_(zoo.create_model("gpt2-tiny"), std=0.1).eval()
    assert model.lm_head is None  # tied: CausalLM.forward calls onednn.linear with the embedding
    ids = torch.randint(0, model.config.vocab_size, (1, 5))
    with torch.no_grad():
        ref = model(ids, logits_to_keep=1).logits
        with onednn.onednn_linears(model):
            calls.clear()
            got = model(ids, logits_to_keep=1).logits
    assert (1, model.config.vocab_size) in calls  # the last position's logits
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_restored_when_interrupted():
    model = zoo.create_model("llama-tiny")
    with pytest.raises(KeyboardInterrupt), onednn.onednn_linears(model):
        raise KeyboardInterrupt
    assert not any("forward" in m.__dict__ for m in model.modules()) and onednn._active == 0
