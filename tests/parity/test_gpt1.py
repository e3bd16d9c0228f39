"""GPT-1 parity with transformers' OpenAIGPT models, both directions, on tiny random models.

transformers' OpenAIGPT fixes d_ff at 4 * d_model; the shapes are non-square elsewhere (the fused
qkv is (40, 120), the vocabulary 197 rows).
"""

import json

import pytest
import torch
import transformers

import zoo
from tests.conftest import randomize_
from zoo.config import ConfigError
from zoo.convert import rename
from zoo.families.gpt import convert as gpt_convert
from zoo.lm import positions_from_mask
from zoo.parity import run_parity, strict_transformers_loader

CONFIG = dict(vocab_size=197, n_positions=64, n_embd=40, n_layer=2, n_head=4)


def _save(cls_name: str, path, **extra):
    cls = getattr(transformers, cls_name)
    model = randomize_(cls(transformers.OpenAIGPTConfig(**CONFIG, **extra)))
    model.save_pretrained(path)
    return model


@pytest.mark.parametrize("cls_name", ["OpenAIGPTLMHeadModel", "OpenAIGPTDoubleHeadsModel"])
def test_parity_tool_both_directions(cls_name, tmp_path):
    _save(cls_name, tmp_path)
    report = run_parity(tmp_path, dtypes=("float32",))
    assert report.ok, report.table()
    assert {r.direction for r in report.rows} == {"load into zoo", "export to reference"}
    outputs = {r.output for r in report.rows}
    assert {"logits", "last_hidden_state"} <= outputs
    if cls_name == "OpenAIGPTDoubleHeadsModel":
        assert "mc_logits" in outputs
        assert json.loads((tmp_path / "config.json").read_text())["architectures"] == [cls_name]


def test_loaded_model_is_post_ln_without_final_norm(tmp_path):
    _save("OpenAIGPTLMHeadModel", tmp_path)
    model = zoo.from_pretrained(tmp_path)
    c = model.config
    assert not c.prenorm and not c.final_norm and c.mlp == "gelu_tanh"
    assert isinstance(model.norm, torch.nn.Identity) and not model.layers[0].prenorm


def test_bare_model_loads_and_exports_into_it(tmp_path):
    """OpenAIGPTModel (the bare trunk, as openai-community/openai-gpt is saved): no key prefix."""
    base = _save("OpenAIGPTModel", tmp_path / "hf")
    model = zoo.from_pretrained(tmp_path / "hf")
    ids = torch.randint(0, 197, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, base(ids).last_hidden_state, atol=1e-5, rtol=0)
        model.save_pretrained(tmp_path / "out")
        again = strict_transformers_loader("OpenAIGPTModel")(tmp_path / "out", "causal_lm")
        torch.testing.assert_close(again(ids).last_hidden_state, base(ids).last_hidden_state, atol=1e-5, rtol=0)


def test_double_heads_choices_and_losses_match_transformers(tmp_path):
    """(batch 2, 3 choices, 10 tokens), each choice right-padded and scored at its own last real token."""
    ref = _save("OpenAIGPTDoubleHeadsModel", tmp_path)
    model = zoo.from_pretrained(tmp_path)
    assert model.task == "double_heads"
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 197, (2, 3, 10), generator=g)
    lengths = torch.tensor([[10, 7, 8], [9, 10, 6]])
    mask = (torch.arange(10) < lengths[..., None]).long()
    mc_token_ids, mc_labels = lengths - 1, torch.tensor([2, 0])
    labels = ids.masked_fill(mask == 0, -100)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, mc_token_ids=mc_token_ids, labels=labels, mc_labels=mc_labels)
        # transformers' OpenAIGPT flattens input_ids' choices but not the mask's: flatten it for it.
        flat_mask = mask.view(6, 10)
        theirs = ref(ids, attention_mask=flat_mask, mc_token_ids=mc_token_ids, labels=labels, mc_labels=mc_labels)
    assert ours.mc_logits.shape == (2, 3) and ours.logits.shape == (2, 3, 10, 197)
    torch.testing.assert_close(ours.mc_logits, theirs.mc_logits, atol=1e-5, rtol=0)
    real = mask.bool()
    torch.testing.assert_close(ours.logits[real], theirs.logits[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.mc_loss, theirs.mc_loss, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.loss, theirs.loss + theirs.mc_loss, atol=1e-5, rtol=0)


def test_left_padded_batch_matches_transformers(tmp_path):
    ref = _save("OpenAIGPTLMHeadModel", tmp_path)
    model = zoo.from_pretrained(tmp_path)
    ids = torch.randint(0, 197, (2, 12), generator=torch.Generator().manual_seed(2))
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with torch.no_grad():
        ours = model(ids, attention_mask=mask).logits
        theirs = ref(ids, attention_mask=mask, position_ids=positions_from_mask(mask)).logits
        alone = model(ids[1:, 5:]).logits
    real = mask.bool()
    assert (ours[real] - theirs[real]).abs().max() < 1e-5
    torch.testing.assert_close(ours[1, 5:], alone[0], atol=1e-5, rtol=0)


def test_parity_fails_when_a_mapping_is_wrong(tmp_path, monkeypatch):
    """Post-LN makes ln_1 and ln_2 easy to swap by mistake: the parity tool must notice."""
    _save("OpenAIGPTLMHeadModel", tmp_path)
    right = gpt_convert.rules

    def wrong(config, task):
        out = [r for r in right(config, task) if ".ln_" not in r.src[0]]
        for w in ("weight", "bias"):
            out.append(rename(f"transformer.h.{{i}}.ln_1.{w}", f"layers.{{i}}.norm2.{w}"))
            out.append(rename(f"transformer.h.{{i}}.ln_2.{w}", f"layers.{{i}}.norm1.{w}"))
        return out

    monkeypatch.setattr(zoo.registry.FAMILIES["gpt"], "rules", wrong)
    assert not run_parity(tmp_path, dtypes=("float32",), roundtrip=False).ok


def test_gpt1_variant_is_transformers_default_config():
    """`gpt1` is OpenAIGPTConfig() (openai-community/openai-gpt): same config, same parameter count."""
    hf = transformers.OpenAIGPTConfig()
    assert gpt_convert.config_from_hf(hf.to_dict()) == zoo.get_variant("gpt1").config
    with torch.device("meta"):
        ref = transformers.OpenAIGPTLMHeadModel(hf)
        ours = zoo.create_model("gpt1")
    assert ours.config.vocab_size == 40478
    assert ours.num_parameters() == sum(p.numel() for p in ref.parameters())  # tied: counted once


def test_unmapped_activation_and_head_are_refused():
    with pytest.raises(ConfigError, match=r"^afn: GPT-1 checkpoint uses 'gelu_fast'"):
        gpt_convert.config_from_hf(transformers.OpenAIGPTConfig(**CONFIG, afn="gelu_fast").to_dict())
    with pytest.raises(ConfigError, match=r"^summary_type: the checkpoint sets summary_type='mean'"):
        gpt_convert.config_from_hf(transformers.OpenAIGPTConfig(**CONFIG, summary_type="mean").to_dict())


@pytest.mark.parametrize(
    "overrides,field",
    [(dict(d_ff=100), "d_ff"), (dict(final_norm=True), "final_norm"), (dict(mlp="gelu"), "mlp")],
)
def test_export_refuses_what_openai_gpt_cannot_express(overrides, field, tmp_path):
    model = zoo.create_model("gpt1-tiny", **overrides)
    with pytest.raises(ConfigError, match=rf"^{field}: .* no equivalent in transformers' OpenAIGPT"):
        model.save_pretrained(tmp_path)
