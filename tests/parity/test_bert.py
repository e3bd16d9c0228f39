"""BERT parity with transformers, both directions, on tiny random non-square models with token
types and padded batches: BertModel, BertForMaskedLM, BertForSequenceClassification."""

import pytest
import torch
import transformers

import zoo
from tests.conftest import randomize_
from zoo.cli import main
from zoo.convert import rename
from zoo.families.bert import convert as bert_convert
from zoo.families.bert.parity import load_reference
from zoo.parity import run_parity

# d_ff != 4 * d_model, an odd vocabulary, three token types, three labels.
CONFIG = dict(vocab_size=211, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=104,
              max_position_embeddings=40, type_vocab_size=3, num_labels=3)  # fmt: skip
CLASSES = {
    "base": transformers.BertModel,
    "masked_lm": transformers.BertForMaskedLM,
    "sequence_classification": transformers.BertForSequenceClassification,
}


def save_reference(cls, path, **overrides):
    model = randomize_(cls(transformers.BertConfig(**(CONFIG | overrides))))
    model.save_pretrained(path)
    return model


def batch(seed=0, B=3, T=11):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, CONFIG["vocab_size"], (B, T), generator=g)
    types = torch.randint(0, CONFIG["type_vocab_size"], (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, -4:] = 0  # right padding, as BERT tokenizers pad
    mask[2, :3] = 0  # left padding
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


@pytest.mark.parametrize("task", list(CLASSES))
def test_parity_tool_both_directions(tmp_path, task):
    save_reference(CLASSES[task], tmp_path)
    report = run_parity(tmp_path, dtypes=("float32",))
    assert report.ok, report.table()
    assert report.task == task
    assert {r.direction for r in report.rows} == {"load into zoo", "export to reference"}
    outputs = {r.output for r in report.rows}
    assert "last_hidden_state" in outputs
    assert ("logits" in outputs) == (task != "base")
    assert ("pooler_output" in outputs) == (task != "masked_lm")


def test_parity_tool_in_bfloat16(tmp_path):
    save_reference(transformers.BertForSequenceClassification, tmp_path)
    report = run_parity(tmp_path, dtypes=("bfloat16",), roundtrip=False)
    assert report.ok, report.table()


def test_hidden_states_and_outputs_match_with_token_types_and_padding(tmp_path):
    ref = save_reference(transformers.BertModel, tmp_path)
    model = zoo.from_pretrained(tmp_path)
    inputs = batch()
    with torch.no_grad():
        ours = model(**inputs, output_hidden_states=True)
        theirs = ref(**inputs, output_hidden_states=True)
    real = inputs["attention_mask"].bool()
    assert len(ours.hidden_states) == len(theirs.hidden_states) == CONFIG["num_hidden_layers"] + 1
    for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        assert (a[real] - b[real]).abs().max() < 1e-5
    assert (ours.last_hidden_state[real] - theirs.last_hidden_state[real]).abs().max() < 1e-5
    assert (ours.pooler_output - theirs.pooler_output).abs().max() < 1e-5
    # Token types matter: changing them changes the output (their mapping is exercised).
    with torch.no_grad():
        other = model(**(inputs | {"token_type_ids": (inputs["token_type_ids"] + 1) % 3})).last_hidden_state
    assert (other - ours.last_hidden_state).abs().max() > 1e-2


def test_padded_row_matches_the_unpadded_sequence(tmp_path):
    save_reference(transformers.BertModel, tmp_path)
    model = zoo.from_pretrained(tmp_path)
    inputs = batch()
    with torch.no_grad():
        padded = model(**inputs).last_hidden_state
        alone = model(inputs["input_ids"][1:2, :-4], token_type_ids=inputs["token_type_ids"][1:2, :-4])
    assert (padded[1, :-4] - alone.last_hidden_state[0]).abs().max() < 1e-5


def test_masked_lm_loss_matches(tmp_path):
    ref = save_reference(transformers.BertForMaskedLM, tmp_path)
    model = zoo.from_pretrained(tmp_path)
    inputs = batch()
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[:, 2:5] = inputs["input_ids"][:, 2:5]
    with torch.no_grad():
        ours, theirs = model(**inputs, labels=labels), ref(**inputs, labels=labels)
    assert abs(ours.loss.item() - theirs.loss.item()) < 1e-5
    # The decoder is tied to the token embeddings.
    assert model.num_parameters() == sum(p.numel() for p in ref.parameters())


@pytest.mark.parametrize(
    ("n_labels", "labels"),
    [
        (3, torch.tensor([0, 2, 1])),  # single-label: cross-entropy
        (1, torch.tensor([0.5, -1.0, 2.0])),  # regression: mean squared error
        (3, torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0], [1.0, 1.0, 0.0]])),  # multi-label: BCE
    ],
)
def test_sequence_classification_loss_matches(tmp_path, n_labels, labels):
    ref = save_reference(transformers.BertForSequenceClassification, tmp_path, num_labels=n_labels)
    model = zoo.from_pretrained(tmp_path)
    assert model.config.n_labels == n_labels
    inputs = batch()
    with torch.no_grad():
        ours, theirs = model(**inputs, labels=labels), ref(**inputs, labels=labels)
    assert (ours.logits - theirs.logits).abs().max() < 1e-5
    assert abs(ours.loss.item() - theirs.loss.item()) < 1e-5


def test_pretraining_checkpoint_reads_as_masked_lm(tmp_path):
    """bert-base-uncased ships BertForPreTraining weights (pooler and next-sentence head included)."""
    ref = save_reference(transformers.BertForPreTraining, tmp_path)
    model = zoo.from_pretrained(tmp_path)
    assert model.task == "masked_lm"
    inputs = batch()
    with torch.no_grad():
        ours, theirs = model(**inputs).logits, ref(**inputs).prediction_logits
    assert (ours - theirs).abs().max() < 1e-5


def test_head_checkpoint_reads_as_base(tmp_path):
    ref = save_reference(transformers.BertForSequenceClassification, tmp_path)
    model = zoo.from_pretrained(tmp_path, task="base")
    inputs = batch()
    with torch.no_grad():
        ours, theirs = model(**inputs), ref.bert(**inputs)
    assert (ours.pooler_output - theirs.pooler_output).abs().max() < 1e-5


@pytest.mark.parametrize("name", ["bert-tiny", "bert-mlm-tiny", "bert-cls-tiny"])
def test_zoo_model_exports_into_transformers(tmp_path, name):
    """The other direction, starting from zoo: random zoo weights, exported, loaded strictly."""
    model = randomize_(zoo.create_model(name))
    model.save_pretrained(tmp_path, format="hf")
    ref = load_reference(tmp_path, model.task)  # transformers' Auto class for the task, strictly
    assert type(ref).__name__ == bert_convert.ARCHITECTURES[model.task]
    inputs = batch()
    with torch.no_grad():
        ours, theirs = model(**inputs), ref(**inputs)
    real = inputs["attention_mask"].bool()
    if model.task == "base":
        assert (ours.last_hidden_state[real] - theirs.last_hidden_state[real]).abs().max() < 1e-5
    else:
        a, b = (ours.logits[real], theirs.logits[real]) if model.task == "masked_lm" else (ours.logits, theirs.logits)
        assert (a - b).abs().max() < 1e-5


def test_parity_fails_when_a_mapping_is_wrong(tmp_path, monkeypatch):
    """Swap each layer's two norms (post-attention and post-MLP): the parity tool must notice."""
    save_reference(transformers.BertModel, tmp_path)
    right = bert_convert.rules

    def wrong(config, task):
        out = [r for r in right(config, task) if "LayerNorm" not in r.src[0] or "embeddings" in r.src[0]]
        for w in ("weight", "bias"):
            out.append(rename(f"encoder.layer.{{i}}.attention.output.LayerNorm.{w}", f"layers.{{i}}.norm2.{w}"))
            out.append(rename(f"encoder.layer.{{i}}.output.LayerNorm.{w}", f"layers.{{i}}.norm1.{w}"))
        return out

    monkeypatch.setattr(zoo.registry.FAMILIES["bert"], "rules", wrong)
    report = run_parity(tmp_path, dtypes=("float32",), roundtrip=False)
    assert not report.ok


def test_zoo_parity_command(tmp_path, capsys):
    save_reference(transformers.BertForMaskedLM, tmp_path)
    assert main(["parity", str(tmp_path), "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "family bert, task masked_lm" in out and "parity: ok" in out
