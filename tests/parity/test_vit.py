"""ViT parity with both references, both directions, on tiny random non-square models: timm's
VisionTransformer (read from its Hugging Face-format directory) and transformers' ViTModel /
ViTForImageClassification. Image size 40 (not 224), patch 8, d_ff != 4 * d_model, 7 classes."""

import json

import pytest
import timm
import torch
import transformers
from timm.models._hub import save_for_hf

import zoo
from tests.conftest import randomize_
from zoo.cli import main
from zoo.convert import split
from zoo.families.vit import convert as vit_convert
from zoo.families.vit.parity import load_reference
from zoo.parity import run_parity

TIMM_ARGS = dict(img_size=40, patch_size=8, embed_dim=48, depth=2, num_heads=4, mlp_ratio=2.25, num_classes=7)
HF_CONFIG = dict(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=108, image_size=40,
                 patch_size=8, num_labels=7)  # fmt: skip


def save_timm(path, **overrides):
    """A timm model saved as timm's push_to_hf_hub writes it: config.json + model.safetensors."""
    model = randomize_(timm.create_model("vit_tiny_patch16_224", **(TIMM_ARGS | overrides)))
    save_for_hf(model, path, safe_serialization=True)
    return model


def save_transformers(cls, path, **overrides):
    model = randomize_(cls(transformers.ViTConfig(**(HF_CONFIG | overrides))))
    model.save_pretrained(path)
    return model


def images(H=40, W=40, B=2, seed=0):
    return torch.randn(B, 3, H, W, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "overrides",
    [
        {},  # class-token pooling, 7 classes
        {"global_pool": "avg"},  # average pooling, with timm's fc_norm after it
        {"global_pool": "avg", "fc_norm": False, "qkv_bias": False},  # final norm before pooling; no q/k/v bias
        {"num_classes": 0},  # no head: read as the base model
    ],
    ids=["token", "avg", "avg-no-fc-norm", "headless"],
)
def test_timm_parity_both_directions(tmp_path, overrides):
    save_timm(tmp_path, **overrides)
    model = zoo.from_pretrained(tmp_path)
    assert model.config.layout == "timm"
    assert model.task == ("base" if overrides.get("num_classes") == 0 else "image_classification")
    report = run_parity(tmp_path, dtypes=("float32",))
    assert report.ok, report.table()
    assert {r.direction for r in report.rows} == {"load into zoo", "export to reference"}
    expected = {"last_hidden_state", "pooler_output"} | ({"logits"} if model.task == "image_classification" else set())
    assert {r.output for r in report.rows} == expected


@pytest.mark.parametrize("cls", [transformers.ViTModel, transformers.ViTForImageClassification])
def test_transformers_parity_both_directions(tmp_path, cls):
    save_transformers(cls, tmp_path)
    model = zoo.from_pretrained(tmp_path)
    assert model.config.layout == "transformers"
    assert model.task == {"ViTModel": "base", "ViTForImageClassification": "image_classification"}[cls.__name__]
    report = run_parity(tmp_path, dtypes=("float32",))
    assert report.ok, report.table()
    outputs = {r.output for r in report.rows}
    assert outputs == ({"last_hidden_state", "pooler_output"} if cls is transformers.ViTModel else
                       {"last_hidden_state", "logits"})  # fmt: skip


def test_bfloat16_parity(tmp_path):
    save_timm(tmp_path)
    report = run_parity(tmp_path, dtypes=("bfloat16",), roundtrip=False)
    assert report.ok, report.table()


def test_hidden_states_match_transformers(tmp_path):
    ref = save_transformers(transformers.ViTModel, tmp_path)
    model = zoo.from_pretrained(tmp_path)
    x = images()
    with torch.no_grad():
        ours, theirs = model(x, output_hidden_states=True), ref(x, output_hidden_states=True)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 3
    # transformers' last hidden state is before the final LayerNorm, zoo's (as for every zoo
    # model) after it: the layers' inputs match one to one.
    for a, b in zip(ours.hidden_states[:-1], theirs.hidden_states[:-1], strict=True):
        assert (a - b).abs().max() < 1e-5
    assert (ours.hidden_states[-1] - ours.last_hidden_state).abs().max() == 0


@pytest.mark.parametrize(("H", "W"), [(56, 40), (24, 24)], ids=["larger-non-square", "smaller"])
def test_other_image_sizes_resample_positions_as_timm(tmp_path, H, W):
    ref = save_timm(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    timm_dynamic = timm.create_model("vit_tiny_patch16_224", **TIMM_ARGS, dynamic_img_size=True)
    timm_dynamic.load_state_dict(ref.state_dict())
    x = images(H, W)
    with torch.no_grad():
        ours = model(x)
        assert (ours.logits - timm_dynamic.eval()(x)).abs().max() < 1e-5
        # transformers' resampling (no antialias) gives other positions: the choice matters.
        model.config = model.config.replace(pos_resample_antialias=False)
        assert (model(x).logits - ours.logits).abs().max() > 1e-4


def test_other_image_sizes_resample_positions_as_transformers(tmp_path):
    ref = save_transformers(transformers.ViTForImageClassification, tmp_path)
    model = zoo.from_pretrained(tmp_path)
    x = images(56, 40)
    with torch.no_grad():
        ours = model(x).logits
        theirs = ref(x, interpolate_pos_encoding=True).logits
    assert (ours - theirs).abs().max() < 1e-5


def test_image_classification_loss_matches_transformers(tmp_path):
    ref = save_transformers(transformers.ViTForImageClassification, tmp_path)
    model = zoo.from_pretrained(tmp_path)
    x, labels = images(B=3), torch.tensor([6, 0, 3])
    with torch.no_grad():
        ours, theirs = model(x, labels=labels), ref(x, labels=labels)
    assert abs(ours.loss.item() - theirs.loss.item()) < 1e-5


@pytest.mark.parametrize("name", ["vit-test-tiny", "vit-avg-tiny", "vit-hf-tiny"])
def test_zoo_model_exports_into_its_reference(tmp_path, name):
    """The other direction, starting from zoo: random zoo weights, exported to the variant's layout
    (timm or transformers), loaded strictly there."""
    model = randomize_(zoo.create_model(name))
    model.save_pretrained(tmp_path, format="hf")
    config = json.loads((tmp_path / "config.json").read_text())
    assert ("architecture" in config) == (model.config.layout == "timm")
    ref = load_reference(tmp_path, model.task)
    x = images()
    with torch.no_grad():
        ours = model(x)
        if model.config.layout == "timm":
            theirs = ref(x)
            assert (ours.logits - theirs).abs().max() < 1e-5
        else:
            theirs = ref(x)
            assert (ours.pooler_output - theirs.pooler_output).abs().max() < 1e-5
            assert (ours.last_hidden_state - theirs.last_hidden_state).abs().max() < 1e-5


def test_timm_directory_exports_to_transformers_and_back(tmp_path):
    """One set of weights in both references' formats: timm -> zoo -> transformers."""
    ref = save_timm(tmp_path / "timm")
    model = zoo.from_pretrained(tmp_path / "timm")
    hf_model = zoo.create_model("vit-test-tiny", layout="transformers", norm_eps=1e-6)
    hf_model.load_state_dict(model.state_dict())
    hf_model.save_pretrained(tmp_path / "hf", format="hf")
    theirs = load_reference(tmp_path / "hf", "image_classification")
    x = images()
    with torch.no_grad():
        assert (theirs(x).logits - ref(x)).abs().max() < 1e-5


def test_timm_names_match_timm(tmp_path):
    """zoo's table of timm architecture names (read when config.json has no model_args) and the
    registered variants mirror timm's own entry points."""
    for name, (patch, image, width, depth, heads) in vit_convert.TIMM_ARCHITECTURES.items():
        with torch.device("meta"):
            model = timm.create_model(name)
        assert (model.patch_embed.patch_size[0], model.patch_embed.img_size[0]) == (patch, image), name
        assert (model.embed_dim, len(model.blocks), model.blocks[0].attn.num_heads) == (width, depth, heads), name
    for size in ("tiny", "small", "base"):
        timm_config = {"architecture": f"vit_{size}_patch16_224", "num_classes": 1000, "global_pool": "token",
                       "pretrained_cfg": {"input_size": [3, 224, 224]}}  # fmt: skip
        assert vit_convert.config_from_hf(timm_config) == zoo.get_variant(f"vit-{size}-patch16-224").config


def test_parity_fails_when_a_mapping_is_wrong(tmp_path, monkeypatch):
    """Split timm's fused qkv in the wrong order (k, q, v): the parity tool must notice."""
    save_timm(tmp_path)
    right = vit_convert.rules

    def wrong(config, task):
        out = [r for r in right(config, task) if "qkv" not in r.src[0]]
        for w in ("weight", "bias"):
            names = [f"layers.{{i}}.attn.{n}_proj.{w}" for n in "kqv"]
            out.append(split(f"blocks.{{i}}.attn.qkv.{w}", names))
        return out

    monkeypatch.setattr(zoo.registry.FAMILIES["vit"], "rules", wrong)
    report = run_parity(tmp_path, dtypes=("float32",), roundtrip=False)
    assert not report.ok


@pytest.mark.parametrize("reference", ["timm", "transformers"])
def test_zoo_parity_command(tmp_path, capsys, reference):
    if reference == "timm":
        save_timm(tmp_path)
    else:
        save_transformers(transformers.ViTForImageClassification, tmp_path)
    assert main(["parity", str(tmp_path), "--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "export to reference" in out and "parity: ok" in out
