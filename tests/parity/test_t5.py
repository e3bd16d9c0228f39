"""T5 parity with transformers on tiny random models, both directions: v1.0 (ReLU, head tied to the
shared embedding with the d_model**-0.5 rescale) and v1.1 / FLAN-T5 (gated-GELU, untied lm_head),
T5ForConditionalGeneration and T5EncoderModel; padded sources, n_heads * d_kv != d_model, a
decoder shallower than the encoder, inputs long enough to reach the logarithmic buckets; greedy
and beam generation token for token; attention weights against transformers' eager ones."""

import json

import pytest
import torch
import transformers
from torch import nn

import zoo
from tests.conftest import randomize_
from zoo.cli import main
from zoo.parity import run_parity

V = 99
# 4 heads x d_kv 6 = 24 != d_model 32; 8 buckets with max_distance 12: offsets past 2 are log-bucketed.
BASE = dict(vocab_size=V, d_model=32, d_kv=6, d_ff=40, num_layers=2, num_decoder_layers=1, num_heads=4,
            relative_attention_num_buckets=8, relative_attention_max_distance=12, dropout_rate=0.0,
            decoder_start_token_id=0)  # fmt: skip
LAYOUTS = {
    "v1.0": dict(feed_forward_proj="relu", tie_word_embeddings=True),
    "v1.1": dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False),
}


def save_reference(path, layout: str, cls=transformers.T5ForConditionalGeneration, seed: int = 0) -> nn.Module:
    """A random reference model saved as the Hub's files are: config.json with tie_word_embeddings
    as the checkpoint is (transformers 5 writes true for every T5), model.safetensors."""
    torch.manual_seed(seed)
    model = cls(transformers.T5Config(**BASE, **LAYOUTS[layout]))
    if layout == "v1.1" and hasattr(model, "lm_head"):
        model.lm_head.weight = nn.Parameter(torch.empty(V, BASE["d_model"]))  # transformers 5 ties it on init
    randomize_(model, seed=seed)
    model.save_pretrained(path)
    config = json.loads((path / "config.json").read_text())
    config.pop("scale_decoder_outputs")
    config["tie_word_embeddings"] = LAYOUTS[layout]["tie_word_embeddings"]
    (path / "config.json").write_text(json.dumps(config))
    return load_reference(path, cls)


def load_reference(path, cls=transformers.T5ForConditionalGeneration) -> nn.Module:
    model, info = cls.from_pretrained(path, attn_implementation="eager", output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    return model.eval()


def sources(seed=0, B=3, S=16):
    """Unpadded, right-padded and left-padded rows (T5's relative positions allow either side)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, V, (B, S), generator=g)
    mask = torch.ones(B, S, dtype=torch.long)
    mask[1, -5:] = 0
    mask[2, :4] = 0
    return ids.masked_fill(mask == 0, 0), mask


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_parity_tool_both_directions(tmp_path, layout):
    save_reference(tmp_path, layout)
    model = zoo.from_pretrained(tmp_path)
    assert model.config.tie_embeddings == (layout == "v1.0") and (model.lm_head is None) == (layout == "v1.0")
    assert model.config.mlp == ("relu" if layout == "v1.0" else "geglu_tanh")
    report = run_parity(tmp_path, dtypes=("float32",))
    assert report.ok, report.table()
    assert {r.direction for r in report.rows} == {"load into zoo", "export to reference"}
    assert {r.output for r in report.rows} == {"logits", "encoder_last_hidden_state"}
    # In bfloat16 this random model's logits move by ~10% of their scale in transformers too:
    # zoo is judged against the reference's own bf16 error (within 3x, on the fp32 reference).
    report = run_parity(tmp_path, dtypes=("float32", "bfloat16"), roundtrip=False)
    rows = [r for r in report.rows if r.dtype == "bfloat16"]
    assert len(rows) == 2 and all(r.ok_relative for r in rows), report.table()


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("backend", ["sdpa", "eager"])
def test_logits_and_every_hidden_state_on_padded_batches(tmp_path, layout, backend):
    ref = save_reference(tmp_path, layout)
    model = zoo.from_pretrained(tmp_path).set_attention_backend(backend)
    ids, mask = sources()
    dec = torch.randint(2, V, (3, 9), generator=torch.Generator().manual_seed(1))
    dec[:, 0] = 0
    dec_mask = torch.ones_like(dec)
    dec_mask[1, -3:] = 0
    with torch.no_grad():
        theirs = ref(ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask,
                     output_hidden_states=True)  # fmt: skip
        ours = model(ids, mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask, output_hidden_states=True)
    real_src, real_tgt = mask.bool(), dec_mask.bool()
    torch.testing.assert_close(ours.logits[real_tgt], theirs.logits[real_tgt], atol=1e-5, rtol=0)
    assert len(ours.encoder_hidden_states) == len(theirs.encoder_hidden_states) == 3
    for a, b in zip(ours.encoder_hidden_states, theirs.encoder_hidden_states, strict=True):
        torch.testing.assert_close(a[real_src], b[real_src], atol=1e-5, rtol=0)
    assert len(ours.hidden_states) == len(theirs.decoder_hidden_states) == 2
    for a, b in zip(ours.hidden_states, theirs.decoder_hidden_states, strict=True):
        torch.testing.assert_close(a[real_tgt], b[real_tgt], atol=1e-5, rtol=0)
    assert ours.logits.std() > 0.1  # a model whose outputs vary, not all near zero


def until_eos(ids: torch.Tensor) -> list[list[int]]:
    """Each row up to its first end token (1). transformers' beam search fills the rest with the
    end token when pad_token_id is 0 (``pad_token_id or eos_token_id``: 0 is falsy), zoo with
    the pad token; the filler is no output, the lengths must still agree."""
    rows = []
    for row in ids.tolist():
        rows.append(row[: row.index(1, 1) + 1] if 1 in row[1:] else row)
    return rows


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_generation_is_token_identical(tmp_path, layout):
    ref = save_reference(tmp_path, layout, seed=3)
    model = zoo.from_pretrained(tmp_path)
    with torch.no_grad():  # make the end token likely, so rows end at different steps
        ref.lm_head.weight[1] *= 3  # the shared table itself in v1.0 (tied)
        (model.embed if model.lm_head is None else model.lm_head).weight[1] *= 3
    ids, mask = sources(seed=3)
    tokens = dict(pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)  # T5's generation_config.json
    ended = 0
    for options in (dict(num_beams=1), dict(num_beams=4, length_penalty=0.6)):
        with torch.no_grad():
            theirs = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=10, do_sample=False, **options,
                                  **tokens)  # fmt: skip
        ours = model.generate(ids, mask, max_new_tokens=10, **options)
        assert ours.shape == theirs.shape and until_eos(ours) == until_eos(theirs), options
        ended += sum(len(row) < ours.shape[1] for row in until_eos(ours))
    assert ended > 0  # some rows ended before others, so the end token's handling is compared too


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_attentions_equal_transformers_eager(tmp_path, layout):
    ref = save_reference(tmp_path, layout)
    model = zoo.from_pretrained(tmp_path)
    ids, mask = sources()
    dec = torch.randint(2, V, (3, 7), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = ref(ids, attention_mask=mask, decoder_input_ids=dec, output_attentions=True)
        ours = model(ids, mask, decoder_input_ids=dec, output_attentions=True)
    n_enc = len(theirs.encoder_attentions)
    pairs = list(zip(theirs.encoder_attentions + theirs.decoder_attentions, ours.attentions, strict=True))
    pairs += list(zip(theirs.cross_attentions, ours.cross_attentions, strict=True))
    assert n_enc == 2 and len(pairs) == 4
    rows = [mask] * n_enc + [None, None]  # padded source queries' rows are arbitrary in both
    for (t, o), real in zip(pairs, rows, strict=True):
        assert o.shape == t.shape
        keep = real.bool()[:, None, :, None].expand_as(o) if real is not None else torch.ones_like(o, dtype=torch.bool)
        assert (o - t).abs()[keep].max() < 1e-5
    assert ours.cross_attentions[0][2, :, :, :4].abs().max() == 0  # nothing on left-padded source keys
    assert all(m.backend == "sdpa" for m in model.modules() if hasattr(m, "backend"))


def test_the_encoder_model(tmp_path):
    save_reference(tmp_path, "v1.1", cls=transformers.T5EncoderModel)
    model = zoo.from_pretrained(tmp_path)
    assert model.task == "encoder" and type(model).__name__ == "T5Encoder"
    report = run_parity(tmp_path, dtypes=("float32",))
    assert report.ok, report.table()
    assert {r.output for r in report.rows} == {"last_hidden_state"}


def test_the_encoder_read_from_a_full_checkpoint(tmp_path):
    """task="encoder" on a T5ForConditionalGeneration directory reads its encoder, as
    T5EncoderModel.from_pretrained does (text-to-image pipelines load t5-v1_1-xxl so)."""
    ref = save_reference(tmp_path, "v1.1")
    model = zoo.from_pretrained(tmp_path, task="encoder")
    ids, mask = sources()
    with torch.no_grad():
        theirs = ref.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        ours = model(ids, mask).last_hidden_state
    torch.testing.assert_close(ours[mask.bool()], theirs[mask.bool()], atol=1e-5, rtol=0)


def test_cli_parity(tmp_path, capsys):
    save_reference(tmp_path, "v1.1")
    assert main(["parity", str(tmp_path), "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "family t5" in out and "FAIL" not in out and "export to reference" in out
