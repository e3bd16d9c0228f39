"""Tests generated from the registry (timm style): every ``*-tiny`` test variant of every family gets
forward, backward, config round trip, zoo-format save/load and reference-format export for free.

A family joins by registering a tiny variant and a ``ParitySpec`` (whose ``make_inputs`` builds
the batch used here); nothing in this file names a family.
"""

import json

import pytest
import torch

import zoo
from tests.conftest import randomize_, tiny_test_variants
from zoo.registry import get_family

TINY = tiny_test_variants()
OUTPUT_FIELDS = ("logits", "last_hidden_state", "pooler_output")


def _build(name: str):
    variant = zoo.get_variant(name)
    family = get_family(variant.family)
    assert family.parity is not None, f"family {family.name!r} has no ParitySpec, so no make_inputs for its tests"
    model = randomize_(zoo.create_model(name), seed=1)
    inputs = family.parity.make_inputs(model, torch.Generator().manual_seed(0))
    return family, model, inputs


def _outputs(family, model, inputs) -> dict[str, torch.Tensor]:
    return family.parity.run_zoo(model, inputs)


def test_there_are_tiny_variants():
    assert "gpt2-tiny" in TINY


@pytest.mark.parametrize("name", TINY)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    family, model, inputs = _build(name)
    model.train()
    if "labels" in inputs:
        loss = model(**inputs).loss
    else:
        # A random projection of every output, so no output's gradient cancels (a plain sum
        # of softmax-like outputs would be constant).
        g = torch.Generator().manual_seed(2)
        outs = _outputs(family, model, inputs)
        assert outs, f"{name}: run_zoo returned no outputs"
        loss = sum((out.float() * torch.randn(out.shape, generator=g)).sum() for out in outs.values())
    assert torch.isfinite(loss), f"{name}: loss is {loss}"
    loss.backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not no_grad, f"{name}: parameters without a gradient: {no_grad}"
    nan_grad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not nan_grad, f"{name}: non-finite gradients in {nan_grad}"


@pytest.mark.parametrize("name", TINY)
def test_config_round_trip(name):
    config = zoo.get_variant(name).config
    cls = type(config)
    assert cls.from_dict(config.to_dict()) == config
    assert cls.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # as zoo.json stores it


@pytest.mark.parametrize("name", TINY)
def test_zoo_format_save_load_is_exact(name, tmp_path):
    family, model, inputs = _build(name)
    model.save_pretrained(tmp_path, format="zoo")
    loaded = zoo.from_pretrained(tmp_path)
    assert type(loaded) is type(model) and loaded.config == model.config and not loaded.training
    expected = model.state_dict()
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    with torch.no_grad():
        a, b = _outputs(family, model, inputs), _outputs(family, loaded, inputs)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=0, rtol=0)


EXPORTABLE = [n for n in TINY if get_family(zoo.get_variant(n).family).config_to_hf is not None]


@pytest.mark.parametrize("name", EXPORTABLE)
def test_reference_format_export_round_trip(name, tmp_path):
    family, model, inputs = _build(name)
    model.save_pretrained(tmp_path, format="hf")
    # Most formats keep their config in config.json; a family names others (open_clip's) itself.
    config_file = family.export_files(model.config)[0] if family.export_files else "config.json"
    assert (tmp_path / config_file).exists()
    loaded = zoo.from_pretrained(tmp_path)
    assert type(loaded) is type(model)
    expected, got = model.state_dict(), loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected), "weights changed through export and import"
    with torch.no_grad():
        a, b = _outputs(family, model, inputs), _outputs(family, loaded, inputs)
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=1e-6, rtol=0)
