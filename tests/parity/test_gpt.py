"""GPT-2 parity with transformers, both directions, on tiny random non-square models."""

import pytest
import torch
import transformers

import zoo
from tests.conftest import randomize_
from zoo.convert import rename
from zoo.families.gpt import convert as gpt_convert
from zoo.lm import positions_from_mask
from zoo.parity import run_parity

CONFIG = dict(
    vocab_size=211, n_positions=64, n_embd=48, n_layer=2, n_head=4, n_inner=104, bos_token_id=0, eos_token_id=0
)


@pytest.fixture
def hf_gpt2_dir(tmp_path):
    model = randomize_(transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG)))
    model.save_pretrained(tmp_path)
    return tmp_path


def test_parity_tool_both_directions(hf_gpt2_dir):
    report = run_parity(hf_gpt2_dir)
    assert report.ok, report.table()
    directions = {r.direction for r in report.rows}
    assert directions == {"load into zoo", "export to reference"}
    assert all(r.max_abs_diff < 1e-5 for r in report.rows if r.dtype == "float32")


def test_padded_batch_matches_unpadded_rows(hf_gpt2_dir):
    model = zoo.from_pretrained(hf_gpt2_dir)
    ids = torch.randint(0, 211, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding on row 1
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        alone = model(ids[1:, 3:]).logits
    torch.testing.assert_close(batched[1, 3:], alone[0], atol=1e-5, rtol=0)


def test_logits_match_transformers_with_padding(hf_gpt2_dir):
    ref = transformers.GPT2LMHeadModel.from_pretrained(hf_gpt2_dir).eval()
    model = zoo.from_pretrained(hf_gpt2_dir)
    ids = torch.randint(0, 211, (3, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, -3:] = 0
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        theirs = ref(ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max() < 1e-5


def test_parity_fails_when_a_mapping_is_wrong(hf_gpt2_dir, monkeypatch):
    """Swap the two layer norms' mapping: the parity tool must notice."""
    right = gpt_convert.rules

    def wrong(config, task):
        out = [r for r in right(config, task) if "ln_1" not in r.src[0] and "ln_2" not in r.src[0]]
        for w in ("weight", "bias"):
            out.append(rename(f"transformer.h.{{i}}.ln_1.{w}", f"layers.{{i}}.norm2.{w}"))
            out.append(rename(f"transformer.h.{{i}}.ln_2.{w}", f"layers.{{i}}.norm1.{w}"))
        return out

    monkeypatch.setattr(zoo.registry.FAMILIES["gpt"], "rules", wrong)
    report = run_parity(hf_gpt2_dir, dtypes=("float32",), roundtrip=False)
    assert not report.ok


def test_untied_head_roundtrip(tmp_path):
    cfg = transformers.GPT2Config(**CONFIG, tie_word_embeddings=False)
    model = randomize_(transformers.GPT2LMHeadModel(cfg))
    model.save_pretrained(tmp_path)
    assert not zoo.from_pretrained(tmp_path).config.tie_embeddings
    assert run_parity(tmp_path, dtypes=("float32",)).ok
