"""zoo parity --per-layer: every layer's output against the reference, the first divergence named,
and bf16 judged against the reference's own bf16 error."""

import pytest
import timm
import torch
import transformers

from tests.conftest import randomize_
from zoo.cli import main
from zoo.parity import layer_stack, run_parity

GPT2 = dict(vocab_size=211, n_positions=64, n_embd=48, n_layer=3, n_head=4, n_inner=104)
BERT = dict(vocab_size=211, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=104,
            max_position_embeddings=40)  # fmt: skip


def save(model, path):
    randomize_(model).save_pretrained(path)
    return path


def layer_rows(report, dtype="float32"):
    return [r for r in report.rows if r.output.startswith("layer ") and r.dtype == dtype]


@pytest.mark.parametrize(
    "make",
    [
        lambda: transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)),
        lambda: transformers.BertModel(transformers.BertConfig(**BERT)),
        lambda: transformers.LlamaForCausalLM(
            transformers.LlamaConfig(vocab_size=211, hidden_size=48, intermediate_size=88, num_hidden_layers=2,
                                     num_attention_heads=6, num_key_value_heads=2)
        ),
    ],
    ids=["gpt2", "bert", "llama"],
)  # fmt: skip
def test_every_layer_agrees_on_a_sound_checkpoint(tmp_path, make):
    report = run_parity(save(make(), tmp_path), per_layer=True, roundtrip=False)
    assert report.ok, report.table()
    n = report.rows and len(layer_rows(report))
    assert n == len(layer_stack(make(), n)) and all(r.max_abs_diff < 1e-5 for r in layer_rows(report))
    assert report.first_divergence() is None
    assert "first divergence: none, every layer agrees" in report.table()


def test_timm_vit_layers_are_found_and_agree(tmp_path):
    from timm.models import save_for_hf

    model = randomize_(timm.create_model("vit_tiny_patch16_224", img_size=40, patch_size=8, embed_dim=48, depth=2,
                                         num_heads=4, mlp_ratio=2.25, num_classes=7))  # fmt: skip
    save_for_hf(model, tmp_path, safe_serialization=True)
    report = run_parity(tmp_path, dtypes=("float32",), per_layer=True, roundtrip=False)
    assert report.ok and len(layer_rows(report)) == 2, report.table()


def test_a_right_shaped_tensor_under_the_wrong_name_is_located(tmp_path, monkeypatch):
    """zoo reads layer 1's two norm scales into each other's place: every key and shape still
    matches, the final output fails, and per-layer names layer 1 (layer 0 is untouched)."""
    import zoo.hub

    path = save(transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)), tmp_path)
    load = zoo.hub.from_pretrained

    def misread(*args, **kwargs):
        model = load(*args, **kwargs)
        layer = model.layers[1]
        with torch.no_grad():
            w1, w2 = layer.norm1.weight.clone(), layer.norm2.weight.clone()
            layer.norm1.weight.copy_(w2)
            layer.norm2.weight.copy_(w1)
        return model

    monkeypatch.setattr(zoo.hub, "from_pretrained", misread)
    report = run_parity(path, dtypes=("float32",), per_layer=True, roundtrip=False)
    rows = {r.output: r for r in layer_rows(report)}
    assert rows["layer 0 output"].ok and not rows["layer 1 output"].ok and not report.ok
    assert report.first_divergence().startswith("layer 1 (load into zoo, float32")


def test_bf16_is_judged_against_the_references_own_error(tmp_path, capsys):
    path = save(transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2)), tmp_path)
    report = run_parity(path, per_layer=True, roundtrip=False)
    bf16 = [r for r in report.rows if r.dtype == "bfloat16"]
    assert bf16 and all(r.reference_error > 0 and r.error_vs_fp32 is not None for r in bf16)
    assert all(r.ok_relative for r in bf16), report.table()
    assert all(r.ok_relative is None for r in report.rows if r.dtype == "float32")
    assert main(["parity", str(path), "--per-layer", "--no-roundtrip"]) == 0
    out = capsys.readouterr().out
    assert "layer 2 output" in out and "ref own err" in out and "first divergence: none" in out
