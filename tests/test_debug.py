"""zoo.debug on a plain forward: the shape trace, the first non-finite module, per-layer gradient norms."""

import io

import torch

import zoo
from zoo import debug


def test_trace_shapes_prints_every_module_in_call_order():
    model = zoo.create_model("llama-tiny", n_layers=2)
    ids = torch.randint(0, model.config.vocab_size, (3, 7))
    out = io.StringIO()
    lines = debug.trace_shapes(model, input_ids=ids, file=out)
    assert out.getvalue().splitlines() == lines
    d, kv = model.config.d_model, model.config.n_kv_heads * model.config.head_dim
    assert f"layers.0.attn.k_proj (Linear): ((3, 7, {d}) float32) -> (3, 7, {kv}) float32" in lines
    names = [line.split(" ")[0] for line in lines]
    assert names.index("layers.0.attn.q_proj") < names.index("layers.1.attn.q_proj") < names.index("norm")
    assert lines[-1].startswith("(model) (Llama): ((3, 7) int64) -> logits=(3, 7, ")


def test_first_nonfinite_names_the_innermost_module():
    model = zoo.create_model("gpt2-tiny")
    ids = torch.randint(0, model.config.vocab_size, (2, 5))
    assert debug.first_nonfinite(model, ids) is None
    with torch.no_grad():
        model.layers[1].mlp.up.weight.fill_(1e38)  # finite weights whose sums overflow
    assert debug.first_nonfinite(model, ids) in ("layers.1.mlp.up (Linear): Inf", "layers.1.mlp.up (Linear): NaN")
    with torch.no_grad():
        model.layers[0].attn.q_proj.bias[3] = float("nan")
    assert debug.first_nonfinite(model, ids).startswith("parameter layers.0.attn.q_proj.bias is already NaN/Inf")


def test_layer_grad_norms_group_parameters_by_layer():
    model = zoo.create_model("gpt2-tiny", n_layers=3)
    assert "no gradients" in debug.layer_grad_norm_report(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 6))
    model(ids, labels=ids).loss.backward()
    norms = dict(debug.layer_grad_norms(model))
    assert [k for k in norms if k.startswith("layers.")] == ["layers.0", "layers.1", "layers.2"]
    expected = sum(p.grad.pow(2).sum() for n, p in model.named_parameters() if n.startswith("layers.1.")).sqrt()
    assert abs(norms["layers.1"] - float(expected)) < 1e-6
    report = debug.layer_grad_norm_report(model)
    assert len(report.splitlines()) == len(norms) and "#" in report
