"""BERT without a reference: bad inputs and configs get named errors; heads, pooling, losses,
checkpointing and saving behave."""

import json

import pytest
import torch
import transformers
from torch.nn import functional as F

import zoo
from tests.conftest import randomize_
from zoo.config import ConfigError
from zoo.encoder import classification_loss, mean_pool
from zoo.families.bert import convert as bert_convert
from zoo.hub import CheckpointError


def tiny(task="base", **overrides):
    return randomize_(zoo.create_model({"base": "bert-tiny", "masked_lm": "bert-mlm-tiny",
                                        "sequence_classification": "bert-cls-tiny"}[task], **overrides))  # fmt: skip


def ids(B=2, T=9, seed=0, high=211):
    return torch.randint(0, high, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"input_ids": torch.tensor([[1, 2, 211]])}, ["input_ids", "211", "vocab_size=211"]),
        ({"input_ids": torch.tensor([[1, -1]])}, ["input_ids", "-1"]),
        ({"input_ids": ids(), "token_type_ids": torch.full((2, 9), 3)}, ["token_type_ids", "type_vocab_size=3"]),
        ({"input_ids": ids(), "token_type_ids": torch.zeros(2, 8, dtype=torch.long)}, ["token_type_ids", "(2, 9)"]),
        ({"input_ids": ids(), "attention_mask": torch.ones(2, 10)}, ["attention_mask", "(2, 9)"]),
        ({"input_ids": ids(T=41)}, ["max_seq_len", "40"]),
        ({"input_ids": torch.tensor([1, 2, 3])}, ["input_ids", "(batch, seq)"]),
        ({"input_ids": ids(), "labels": torch.zeros(2, dtype=torch.long)}, ["labels", "masked_lm"]),
    ],
    ids=["id-too-large", "id-negative", "token-type", "token-type-shape", "mask-shape", "too-long", "1d", "labels"],
)
def test_bad_inputs_get_named_errors(kwargs, words):
    with pytest.raises(ValueError) as err:
        tiny()(**kwargs)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_bad_labels_get_named_errors():
    with pytest.raises(ValueError, match="labels: expected shape"):
        tiny("masked_lm")(ids(), labels=ids(T=8))
    with pytest.raises(ValueError, match="labels: 3 rows"):
        tiny("sequence_classification")(ids(), labels=torch.tensor([0, 1, 2]))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"d_model": 50}, "d_model"),
        ({"mlp": "swiglu"}, "mlp"),
        ({"type_vocab_size": 0}, "type_vocab_size"),
        ({"problem_type": "ranking"}, "problem_type"),
        ({"pad_token_id": 211}, "pad_token_id"),
        ({"dropout": 1.0}, "dropout"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        zoo.get_variant("bert-tiny").config.replace(**overrides)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"position_embedding_type": "relative_key"}, "position_embedding_type"),
        ({"is_decoder": True}, "is_decoder"),
        ({"add_cross_attention": True}, "add_cross_attention"),
        ({"tie_word_embeddings": False}, "tie_word_embeddings"),
        ({"hidden_act": "mish"}, "hidden_act"),
    ],
)
def test_unsupported_transformers_switches_are_refused(tmp_path, change, field):
    model = tiny("masked_lm")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text()) | change
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=f"^{field}:"):
        zoo.from_pretrained(tmp_path)


def test_missing_config_field_is_named(tmp_path):
    tiny().save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["hidden_size"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match="'hidden_size'"):
        zoo.from_pretrained(tmp_path)


@pytest.mark.parametrize("task", ["base", "masked_lm", "sequence_classification"])
def test_config_round_trips_through_the_transformers_config(task):
    config = zoo.get_variant("bert-tiny").config.replace(dropout=0.05, problem_type="regression", n_labels=1)
    assert bert_convert.config_from_hf(bert_convert.config_to_hf(config, task)) == config


@pytest.mark.parametrize("task", ["base", "masked_lm", "sequence_classification"])
def test_zoo_format_round_trip(tmp_path, task):
    model = tiny(task)
    model.save_pretrained(tmp_path, format="zoo")
    loaded = zoo.from_pretrained(tmp_path)
    assert loaded.task == task and loaded.config == model.config
    x = ids()
    with torch.no_grad():
        a, b = model(x), loaded(x)
    assert torch.equal(a.last_hidden_state, b.last_hidden_state)


def test_pooler_per_task_as_transformers():
    assert tiny().pooler is not None
    assert tiny("sequence_classification").pooler is not None
    assert tiny("masked_lm").pooler is None


def test_masked_lm_decoder_is_tied_to_the_embeddings():
    model = tiny("masked_lm")
    x = ids().clamp(min=6)  # token 5 never occurs as input: only its score can move
    with torch.no_grad():
        before = model(x).logits
        model.embed.weight[5] += 1.0
        after = model(x).logits
    assert (after[..., 5] - before[..., 5]).abs().min() > 0
    assert torch.equal(after[..., :5], before[..., :5])


def test_mean_pool_ignores_padding():
    hidden = torch.randn(2, 5, 4, generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    pooled = mean_pool(hidden, mask)
    assert torch.allclose(pooled[0], hidden[0, :3].mean(0))
    assert torch.allclose(pooled[1], hidden[1].mean(0))
    assert torch.allclose(mean_pool(hidden), hidden.mean(1))


def test_embed_sentences_is_the_normalised_mean_of_real_tokens():
    model = tiny()
    x, mask = ids(), torch.tensor([[1] * 9, [1] * 5 + [0] * 4])
    emb = model.embed_sentences(x, mask)
    with torch.no_grad():
        hidden = model(x, attention_mask=mask).last_hidden_state
    assert torch.allclose(emb, F.normalize(mean_pool(hidden, mask), dim=-1), atol=1e-6)
    raw = model.embed_sentences(x, mask, normalize=False)
    assert torch.allclose(raw[1], hidden[1, :5].mean(0), atol=1e-6)


def test_classification_loss_follows_the_problem_type():
    logits = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([1, -100, 3])
    assert torch.allclose(classification_loss(logits, labels, None), F.cross_entropy(logits[[0, 2]], labels[[0, 2]]))
    floats = torch.rand(3, 4)
    assert torch.allclose(classification_loss(logits, floats, None), F.binary_cross_entropy_with_logits(logits, floats))
    assert torch.allclose(classification_loss(logits, floats, "regression"), F.mse_loss(logits, floats))
    with pytest.raises(ValueError, match="labels: multi-label"):
        classification_loss(logits, torch.rand(3, 2), "multi_label_classification")


def test_gradient_checkpointing_gives_the_same_gradients():
    model = tiny("masked_lm", dropout=0.0, attn_dropout=0.0).train()
    x = ids()
    grads = []
    for enabled in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(enabled)
        model(x, labels=x).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], atol=1e-6), name


def test_dropout_only_in_training():
    model = tiny()
    x = ids()
    with torch.no_grad():
        assert torch.equal(model.eval()(x).last_hidden_state, model(x).last_hidden_state)
        model.train()
        assert not torch.equal(model(x).last_hidden_state, model(x).last_hidden_state)


def test_registered_variants_mirror_their_public_configs():
    base = zoo.get_variant("bert-base-uncased").config
    assert (base.vocab_size, base.d_model, base.n_layers, base.n_heads, base.d_ff) == (30522, 768, 12, 12, 3072)
    minilm = zoo.get_variant("all-minilm-l6-v2").config
    assert (minilm.d_model, minilm.n_layers, minilm.n_heads, minilm.d_ff) == (384, 6, 12, 1536)
    for name in ("bert-base-uncased", "bert-large-uncased", "all-minilm-l6-v2"):
        config = zoo.get_variant(name).config
        hf = transformers.BertConfig(**{k: v for k, v in bert_convert.config_to_hf(config, "base").items()
                                        if k not in ("model_type", "architectures")})  # fmt: skip
        with torch.device("meta"):
            ours, theirs = zoo.create_model(name), transformers.BertModel(hf)
        assert ours.num_parameters() == sum(p.numel() for p in theirs.parameters()), name
