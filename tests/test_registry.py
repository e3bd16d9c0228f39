"""Registry and config: listing, overrides that swap in other blocks, and errors that name the field."""

import dataclasses
import re

import pytest
import torch
from torch import nn

import zoo
from zoo.blocks import MLP, Attention, RMSNorm, RotaryEmbedding
from zoo.config import ConfigError
from zoo.families.gpt import GPT, GPTConfig
from zoo.registry import get_family, register_variant


def test_list_models_globs():
    everything = zoo.list_models()
    assert everything == sorted(everything)
    assert {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt2-tiny"} <= set(everything)
    gpt2s = zoo.list_models("gpt2*")
    assert {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl", "gpt2-tiny"} <= set(gpt2s)
    assert all(n.startswith("gpt2") for n in gpt2s)
    assert "gpt2-tiny" in zoo.list_models("*-tiny") and "gpt2" not in zoo.list_models("*-tiny")
    assert zoo.list_models("gpt2-?l") == ["gpt2-xl"]
    assert zoo.list_models("no-such-model*") == []


def test_variant_carries_its_public_source():
    v = zoo.get_variant("gpt2-medium")
    assert v.family == "gpt" and v.source.endswith("gpt2-medium/blob/main/config.json")
    assert (v.config.d_model, v.config.n_layers, v.config.n_heads) == (1024, 24, 16)


def test_gpt2_with_llama_parts():
    model = zoo.create_model("gpt2", n_layers=2, norm="rmsnorm", mlp="swiglu")
    assert isinstance(model, GPT) and len(model.layers) == 2
    layer = model.layers[0]
    assert isinstance(layer.norm1, RMSNorm) and isinstance(layer.norm2, RMSNorm) and isinstance(model.norm, RMSNorm)
    assert isinstance(layer.mlp, MLP) and layer.mlp.gate is not None and isinstance(layer.mlp.act, nn.SiLU)
    assert layer.mlp.up.weight.shape == (3072, 768)
    assert isinstance(layer.attn, Attention) and model.config.vocab_size == 50257
    # The default stays GPT-2's own parts.
    plain = zoo.create_model("gpt2-tiny")
    assert isinstance(plain.layers[0].norm1, nn.LayerNorm) and plain.layers[0].mlp.gate is None


def test_more_overrides_rope_gqa_window():
    model = zoo.create_model("gpt2-tiny", position="rope", n_kv_heads=2, sliding_window=5, bias=False)
    assert model.pos is None and isinstance(model.rope, RotaryEmbedding)
    assert model.layers[0].attn.n_kv_heads == 2 and model.layers[0].attn.k_proj.weight.shape == (24, 48)
    assert model.layers[0].attn.q_proj.bias is None and model.layers[0].norm1.bias is None
    ids = torch.randint(0, 211, (2, 9))
    out = model(ids, labels=ids)
    assert torch.isfinite(out.loss)


def test_unknown_model_suggests_close_names():
    with pytest.raises(ValueError, match=r"unknown model 'gpt-2'; did you mean gpt2"):
        zoo.create_model("gpt-2")
    with pytest.raises(ValueError, match=r"unknown model 'gpt2-medum'; did you mean gpt2-medium"):
        zoo.create_model("gpt2-medum")
    with pytest.raises(ValueError, match=r"unknown model 'zzzz'; `zoo list` shows them all"):
        zoo.create_model("zzzz")


def test_unknown_override_field_suggests_close_names():
    with pytest.raises(
        ConfigError, match=r"^n_layer: GPTConfig has no field 'n_layer' \(override\); did you mean n_layers"
    ):
        zoo.create_model("gpt2-tiny", n_layer=2)
    with pytest.raises(
        ConfigError, match=r"^hidden_size: GPTConfig has no field 'hidden_size'.*; fields are vocab_size"
    ):
        zoo.create_model("gpt2-tiny", hidden_size=64)


def test_unknown_task_names_the_choices():
    with pytest.raises(ValueError, match=r"^task: family 'gpt' has no task 'classify'; choose one of causal_lm"):
        zoo.create_model("gpt2-tiny", task="classify")


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(d_model=50), "d_model: d_model=50 is not divisible by n_heads=4"),
        (dict(n_kv_heads=3), "n_kv_heads: n_heads=4 is not divisible by n_kv_heads=3"),
        (dict(mlp="swigelu"), "mlp: unknown value 'swigelu'; choose one of gelu, gelu_tanh"),
        (dict(norm="batchnorm"), "norm: unknown value 'batchnorm'; choose one of layernorm, rmsnorm"),
        (dict(position="alibi"), "position: unknown value 'alibi'; choose one of learned, rope"),
        (dict(n_layers=0), "n_layers: must be a positive integer, got 0"),
        (dict(n_heads=True), "n_heads: must be a positive integer, got True"),
        (dict(d_ff=10.5), "d_ff: must be a positive integer, got 10.5"),
        (dict(dropout=1.0), "dropout: must be in [0, 1), got 1.0"),
    ],
)
def test_bad_config_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        zoo.create_model("gpt2-tiny", **overrides)


def test_config_is_frozen_and_round_trips():
    config = zoo.get_variant("gpt2-tiny").config.replace(n_kv_heads=2, norm="rmsnorm")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.d_model = 64
    assert GPTConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ConfigError, match=r"^n_embd: GPTConfig has no field 'n_embd' \(from a saved config\)"):
        GPTConfig.from_dict({**config.to_dict(), "n_embd": 48})


def _tiny():
    return zoo.create_model("gpt2-tiny").eval()


def test_sequence_longer_than_max_seq_len_names_the_field():
    with pytest.raises(ValueError, match=r"^max_seq_len: 65 tokens is longer than the model's max_seq_len=64"):
        _tiny()(torch.zeros(1, 65, dtype=torch.long))


@pytest.mark.parametrize("bad", [211, -1])
def test_token_ids_out_of_vocab_name_the_field(bad):
    ids = torch.zeros(2, 5, dtype=torch.long)
    ids[1, 3] = bad
    with pytest.raises(ValueError, match=rf"^input_ids: id {bad} is outside the model's vocab_size=211"):
        _tiny()(ids)


def test_bad_input_shapes_name_the_argument():
    model = _tiny()
    with pytest.raises(ValueError, match=r"^input_ids: expected shape \(batch, seq\), got \(5,\)"):
        model(torch.zeros(5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^attention_mask: expected shape \(2, 5\)"):
        model(torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(2, 4))
    with pytest.raises(ValueError, match=r"^input_ids: empty input"):
        model(torch.zeros(1, 0, dtype=torch.long))


def test_a_variant_name_registers_once():
    with pytest.raises(ValueError, match=r"variant 'gpt2' is registered twice"):
        register_variant("gpt2", "gpt", GPTConfig(), "duplicate")


def test_unknown_family_names_the_known_ones():
    assert get_family("gpt").config_cls is GPTConfig
    with pytest.raises(ValueError, match=r"^family: unknown family 'gpt3'; known: .*gpt"):
        get_family("gpt3")
