"""The house rules every family's config keeps: derived fields follow overrides, renamed fields
still load, one table of transformers' activation names, one definition of an embedding table."""

import pytest
import torch

import zoo
from zoo.config import ConfigError
from zoo.convert.hf import ACT_FROM_HF, activation_from_hf, activation_to_hf, labels_to_hf, n_labels_from_hf
from zoo.families.gpt.config import GPTConfig
from zoo.families.llama.config import LlamaConfig
from zoo.families.vit.config import ViTConfig
from zoo.families.whisper.config import WhisperConfig
from zoo.train.optim import param_groups


def test_head_dim_follows_n_heads_on_replace():
    c = LlamaConfig()
    assert c.head_dim == 128
    assert c.replace(n_heads=16).head_dim == 256
    assert c.replace(d_model=2048).head_dim == 64
    # A head_dim that differs from d_model // n_heads is the user's choice, and stays.
    wide = LlamaConfig(d_model=512, n_heads=8, head_dim=96)
    assert wide.replace(n_layers=2).head_dim == 96
    assert wide.replace(n_heads=4).head_dim == 96
    # Overriding both at once is honoured.
    assert c.replace(n_heads=16, head_dim=64).head_dim == 64


def test_derived_field_survives_a_save_and_follows_overrides_after_it():
    saved = LlamaConfig(d_model=256, n_heads=4).to_dict()
    assert saved["head_dim"] == 64  # stated in the saved config, as transformers does
    loaded = LlamaConfig.from_dict(saved)
    assert loaded == LlamaConfig(d_model=256, n_heads=4)
    assert loaded.replace(n_heads=8).head_dim == 32


@pytest.mark.parametrize("cls", [GPTConfig, ViTConfig, WhisperConfig])
def test_d_ff_is_one_field_filled_in_and_re_derived(cls):
    c = cls(d_model=64, n_heads=4)
    assert c.d_ff == 256
    assert not hasattr(c, "ff_dim")
    assert c.replace(d_model=32).d_ff == 128
    assert cls(d_model=64, n_heads=4, d_ff=100).replace(d_model=32).d_ff == 100


@pytest.mark.parametrize("cls", [ViTConfig, WhisperConfig])
def test_renamed_label_field_loads_and_overrides_say_the_new_name(cls):
    data = {**cls(d_model=64, n_heads=4, n_labels=7).to_dict()}
    data["n_classes"] = data.pop("n_labels")  # as zoo 0.1 saved it
    assert cls.from_dict(data).n_labels == 7
    with pytest.raises(ConfigError, match=r"n_classes: .* calls this field 'n_labels'"):
        cls().replace(n_classes=3)


def test_every_classifier_family_names_its_label_count_n_labels():
    configs = {type(zoo.registry.get_variant(name).config) for name in zoo.list_models()}
    with_labels = {cls.__name__ for cls in configs if "n_labels" in cls.field_names()}
    assert {"BertConfig", "ViTConfig", "WhisperConfig"} <= with_labels
    assert not [cls.__name__ for cls in configs if "n_classes" in cls.field_names()]


def test_activation_table_round_trips_and_names_the_field():
    for hf_name, ours in ACT_FROM_HF.items():
        assert activation_from_hf(hf_name, "hidden_act", "BERT") == ours
        assert ACT_FROM_HF[activation_to_hf(ours, "mlp", "BERT")] == ours
    with pytest.raises(ConfigError, match=r"^hidden_act: BERT checkpoint uses 'mish'"):
        activation_from_hf("mish", "hidden_act", "BERT")
    with pytest.raises(ConfigError, match=r"^mlp: .*'swiglu'"):
        activation_to_hf("swiglu", "mlp", "ViT")


def test_labels_as_transformers_reads_and_writes_them():
    assert n_labels_from_hf({"num_labels": 5}) == 5
    assert n_labels_from_hf({"id2label": {"0": "a", "1": "b", "2": "c"}}) == 3
    assert n_labels_from_hf({}) == 2
    labels = labels_to_hf(3)
    assert labels["id2label"] == {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"}
    assert labels["label2id"] == {"LABEL_0": 0, "LABEL_1": 1, "LABEL_2": 2}


def test_embedding_tables_token_and_learned_positions():
    model = zoo.create_model("gpt2-tiny")
    tables = zoo.blocks.embedding_tables(model)
    assert {id(t) for t in tables} == {id(model.embed.weight), id(model.pos.weight)}
    no_decay = {id(p) for g in param_groups(model, 0.1) if g["weight_decay"] == 0 for p in g["params"]}
    assert {id(t) for t in tables} <= no_decay
    n_tables = sum(t.numel() for t in tables)
    assert model.num_parameters(exclude_embeddings=True) == model.num_parameters() - n_tables
    # A sinusoidal table is a buffer, not a parameter: nothing to leave out.
    sinus = zoo.create_model("gpt2-tiny", position="sinusoidal")
    assert [id(t) for t in zoo.blocks.embedding_tables(sinus)] == [id(sinus.embed.weight)]
    assert torch.is_tensor(sinus.embed.weight)
