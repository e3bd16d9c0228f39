"""CLIP parity with both references, both directions, on tiny random models: transformers'
CLIPModel (from a tiny CLIPConfig) and open_clip's CLIP (from a tiny model_cfg, built with random
weights by open_clip itself). Text and image widths, d_ff and embed_dim all differ; the text batch
ends one row at the last position, so every position feeds the pooled token."""

import json

import open_clip
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import zoo
from tests.conftest import randomize_
from zoo.cli import main
from zoo.config import ConfigError
from zoo.families.clip import convert as clip_convert
from zoo.families.clip.parity import load_open_clip, make_inputs, run_reference, run_zoo, text_batch
from zoo.parity import run_parity

HF_TEXT = dict(vocab_size=64, hidden_size=32, intermediate_size=72, num_hidden_layers=2, num_attention_heads=4,
               max_position_embeddings=12, pad_token_id=1, bos_token_id=62, eos_token_id=2)  # fmt: skip
HF_VISION = dict(hidden_size=48, intermediate_size=60, num_hidden_layers=2, num_attention_heads=4, image_size=24,
                 patch_size=8)  # fmt: skip
OC_CFG = {
    "embed_dim": 20,
    "vision_cfg": {"image_size": 24, "layers": 2, "width": 48, "head_width": 12, "mlp_ratio": 1.25, "patch_size": 8},
    "text_cfg": {"context_length": 12, "vocab_size": 64, "width": 32, "heads": 4, "layers": 2, "mlp_ratio": 2.25},
}


def save_transformers(path, text=None, vision=None):
    config = transformers.CLIPConfig(text_config=HF_TEXT | (text or {}), vision_config=HF_VISION | (vision or {}),
                                     projection_dim=20)  # fmt: skip
    model = randomize_(transformers.CLIPModel(config))
    model.save_pretrained(path)
    return model


def save_open_clip(path, **top):
    """An open_clip directory as its push_to_hf_hub writes it: open_clip_config.json (model_cfg,
    preprocess_cfg) and open_clip_model.safetensors, the model built by open_clip from that config."""
    path.mkdir(parents=True, exist_ok=True)
    cfg = json.loads(json.dumps(OC_CFG | top))
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    model = randomize_(open_clip.create_model(f"local-dir:{path}"))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path / "open_clip_model.safetensors"))
    return model


@pytest.mark.parametrize(
    ("text", "vision"),
    [({}, {}), ({"eos_token_id": 5, "hidden_act": "gelu"}, {"hidden_act": "gelu"})],
    ids=["argmax-quickgelu", "eos-gelu"],
)
def test_transformers_parity_both_directions(tmp_path, text, vision):
    save_transformers(tmp_path, text, vision)
    model = zoo.from_pretrained(tmp_path)
    assert model.config.layout == "transformers"
    assert model.config.text.pool == ("eos" if text else "argmax")
    assert model.config.text.mlp == model.config.vision.mlp == ("gelu" if text else "quick_gelu")
    report = run_parity(tmp_path, dtypes=("float32",))
    assert report.ok, report.table()
    assert {r.direction for r in report.rows} == {"load into zoo", "export to reference"}
    assert {r.output for r in report.rows} >= {"text_features", "image_features", "logits_per_image",
                                               "text_hidden_states", "image_hidden_states"}  # fmt: skip


@pytest.mark.parametrize("quick_gelu", [True, False], ids=["quickgelu", "gelu"])
def test_open_clip_parity_both_directions(tmp_path, quick_gelu):
    original = save_open_clip(tmp_path, quick_gelu=quick_gelu)
    model = zoo.from_pretrained(tmp_path)
    assert model.config.layout == "open_clip"
    assert model.config.text.mlp == ("quick_gelu" if quick_gelu else "gelu")
    report = run_parity(tmp_path, dtypes=("float32",))
    assert report.ok, report.table()
    assert {r.direction for r in report.rows} == {"load into zoo", "export to reference"}
    # The export is open_clip's own layout, read back by open_clip's own loader (strictly).
    out = tmp_path / "exported"
    model.save_pretrained(out)
    assert sorted(p.name for p in out.iterdir()) == [
        ".zoo-save.json",
        "open_clip_config.json",
        "open_clip_model.safetensors",
    ]
    exported, expected = load_open_clip(out).state_dict(), original.state_dict()
    assert exported.keys() == expected.keys()
    assert all(torch.equal(exported[k], expected[k]) for k in expected)  # in_proj_weight fused back exactly


def test_open_clip_pytorch_bin_is_read_with_weights_only(tmp_path):
    save_open_clip(tmp_path)
    state = load_file(str(tmp_path / "open_clip_model.safetensors"))
    (tmp_path / "open_clip_model.safetensors").unlink()
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    report = run_parity(tmp_path, dtypes=("float32",), roundtrip=False)
    assert report.ok, report.table()


def _max_diff(model, reference, inputs) -> float:
    with torch.no_grad():
        ours, theirs = run_zoo(model, inputs), run_reference(reference, inputs)
    return max((ours[k] - theirs[k]).abs().max().item() for k in theirs)


def test_the_wrong_activation_breaks_parity(tmp_path):
    """QuickGELU and GELU are close but not equal: reading a checkpoint with the other one is a
    silent accuracy loss, so conversion takes it from the config (open_clip's quick_gelu)."""
    reference = save_open_clip(tmp_path, quick_gelu=True)
    model = zoo.from_pretrained(tmp_path)
    inputs = make_inputs(model, torch.Generator().manual_seed(0))
    assert _max_diff(model, reference, inputs) < 1e-5
    c = model.config
    wrong = zoo.from_pretrained(tmp_path)
    wrong_cfg = c.replace(text=c.text.replace(mlp="gelu"), vision=c.vision.replace(mlp="gelu"))
    rebuilt = type(model)(wrong_cfg)
    rebuilt.load_state_dict(wrong.state_dict())
    assert _max_diff(rebuilt.eval(), reference, inputs) > 1e-3


def test_pooling_reads_end_of_text_not_position_zero(tmp_path):
    """The trap: if the end-of-text token never occurs, argmax pools position 0, which under the
    causal mask sees only itself, and the keys of every other position stop mattering. With the
    end at the last position, changing any earlier token changes the text embedding."""
    save_transformers(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    ids = text_batch(model.config, torch.Generator().manual_seed(0), ends=(11,))["input_ids"]
    with torch.no_grad():
        base = model.encode_text(ids)
        for pos in (0, 5, 10):
            changed = ids.clone()
            changed[0, pos] = (changed[0, pos] + 1) % 62
            assert (model.encode_text(changed) - base).abs().max() > 1e-4, pos
    # The pool index follows the end token: the first eos for pool="eos", the highest id for argmax.
    assert model.text.pool_index(ids).tolist() == [11]


def test_other_image_sizes_resample_positions_as_transformers(tmp_path):
    reference = save_transformers(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    x = torch.randn(2, 3, 40, 32, generator=torch.Generator().manual_seed(0))  # a 5x4 grid, trained on 3x3
    with torch.no_grad():
        ours = model.encode_image(x)
        theirs = reference.visual_projection(reference.vision_model(x, interpolate_pos_encoding=True).pooler_output)
    assert (ours - theirs).abs().max() < 1e-5


def test_config_round_trips_through_both_reference_configs():
    for name in ("clip-tiny", "clip-eos-tiny", "clip-openclip-tiny", "clip-openclip-vit-b-32-quickgelu",
                 "clip-vit-l-14"):  # fmt: skip
        config = zoo.get_variant(name).config
        assert clip_convert.config_from_hf(clip_convert.config_to_hf(config, "base")) == config, name


def test_open_clip_options_zoo_does_not_reproduce_are_refused_by_name():
    base = {"model_cfg": json.loads(json.dumps(OC_CFG))}
    for where, key, value in (("vision_cfg", "ls_init_value", 0.1), ("text_cfg", "pool_type", "last"),
                              ("vision_cfg", "layers", [3, 4, 6, 3]), ("text_cfg", "hf_model_name", "roberta-base"),
                              (None, "init_logit_bias", -10.0), (None, "custom_text", True),
                              ("vision_cfg", "frobnicate", 1)):  # fmt: skip
        cfg = json.loads(json.dumps(base))
        (cfg["model_cfg"] if where is None else cfg["model_cfg"][where])[key] = value
        prefix = "model_cfg." + (f"{where}." if where else "") + key
        with pytest.raises(ConfigError, match=rf"^{prefix}: "):
            clip_convert.config_from_hf(cfg)
    bad = {"model_type": "clip", "text_config": {"hidden_act": "relu"}}
    with pytest.raises(ConfigError, match=r"^text_config.hidden_act: 'relu'"):
        clip_convert.config_from_hf(bad)
    mixed = zoo.get_variant("clip-openclip-tiny").config
    mixed = mixed.replace(text=mixed.text.replace(mlp="quick_gelu"))
    with pytest.raises(ConfigError, match=r"^vision.mlp: no equivalent in open_clip"):
        clip_convert.config_to_hf(mixed, "base")


def test_zoo_parity_cli_on_both_formats(tmp_path, capsys):
    save_transformers(tmp_path / "hf")
    save_open_clip(tmp_path / "oc")
    for sub in ("hf", "oc"):
        assert main(["parity", str(tmp_path / sub), "--dtype", "float32"]) == 0
        assert "parity: ok" in capsys.readouterr().out


def test_timm_clip_repository_is_read_as_open_clip_not_vit(tmp_path):
    """timm's CLIP repositories (timm/vit_base_patch32_clip_224.openai) hold timm's image-tower
    config.json beside open_clip's files; the ViT family must not claim the directory."""
    save_open_clip(tmp_path, quick_gelu=True)
    timm_config = {"architecture": "vit_base_patch32_clip_224", "num_classes": 0, "model_args": {"pre_norm": True}}
    (tmp_path / "config.json").write_text(json.dumps(timm_config))
    model = zoo.from_pretrained(tmp_path)
    assert model.family == "clip" and model.config.layout == "open_clip"
    report = run_parity(tmp_path, dtypes=("float32",), roundtrip=False)
    assert report.ok, report.table()
