"""ViT without a reference: bad images and configs get named errors; positions resample with the
class token kept apart; timm configs zoo cannot reproduce are refused; exports refuse what the
target reference lacks."""

import json

import pytest
import torch

import zoo
from tests.conftest import randomize_
from zoo.blocks import resize_position_grid
from zoo.config import ConfigError
from zoo.families.vit import convert as vit_convert
from zoo.hub import CheckpointError, detect_family


def tiny(name="vit-test-tiny", **overrides):
    return randomize_(zoo.create_model(name, **overrides))


def images(H=40, W=40, C=3, B=2):
    return torch.randn(B, C, H, W, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(
    ("pixels", "words"),
    [
        (images(C=1), ["pixel_values", "1 channels", "in_channels=3"]),
        (images(C=4), ["pixel_values", "4 channels", "in_channels=3"]),
        (images(H=42), ["pixel_values", "42x40", "patch_size=8"]),
        (images(W=36 + 3), ["pixel_values", "40x39", "patch_size=8"]),
        (torch.randn(3, 40, 40), ["pixel_values", "(batch, channels, height, width)"]),
    ],
    ids=["grey", "rgba", "height", "width", "3d"],
)
def test_bad_images_get_named_errors(pixels, words):
    with pytest.raises(ValueError) as err:
        tiny()(pixels)
    for word in words:
        assert word in str(err.value), (word, str(err.value))


def test_labels_need_a_head():
    with pytest.raises(ValueError, match="labels: the base ViT"):
        tiny("vit-hf-tiny")(images(), labels=torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels: 3 rows"):
        tiny()(images(), labels=torch.tensor([0, 1, 2]))


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"image_size": 42}, "image_size"),
        ({"d_model": 50}, "d_model"),
        ({"pool": "max"}, "pool"),
        ({"n_labels": -1}, "n_labels"),
        ({"layout": "keras"}, "layout"),
        ({"mlp": "swiglu"}, "mlp"),
    ],
)
def test_bad_config_names_the_field(overrides, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        zoo.get_variant("vit-test-tiny").config.replace(**overrides)


def test_a_classifier_needs_classes():
    with pytest.raises(ConfigError, match=r"^n_labels:"):
        zoo.create_model("vit-test-tiny", n_labels=0)
    assert zoo.create_model("vit-test-tiny", task="base", n_labels=0).pooler is None


@pytest.mark.parametrize(
    ("name", "overrides", "field"),
    [
        ("vit-avg-tiny", {"layout": "transformers"}, "pool"),
        ("vit-test-tiny", {"layout": "transformers", "fc_norm": True}, "fc_norm"),
        ("vit-test-tiny", {"layout": "transformers", "pooler": True}, "pooler"),  # ViTForImageClassification
        ("vit-hf-tiny", {"layout": "timm"}, "pooler"),
        ("vit-test-tiny", {"norm_eps": 1e-5}, "norm_eps"),  # timm's ViT norms use 1e-6
        ("vit-test-tiny", {"mlp": "relu"}, "mlp"),
    ],
)
def test_export_refuses_what_the_reference_lacks(tmp_path, name, overrides, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        tiny(name, **overrides).save_pretrained(tmp_path, format="hf")


def timm_config(**model_args):
    return {"architecture": "vit_tiny_patch16_224", "num_classes": 7, "global_pool": "token",
            "model_args": {"img_size": [40, 40], "patch_size": 8, "embed_dim": 48, "depth": 2, "num_heads": 4,
                           "mlp_ratio": 2.25} | model_args}  # fmt: skip


@pytest.mark.parametrize(
    ("model_args", "field"),
    [
        ({"reg_tokens": 4}, "model_args.reg_tokens"),
        ({"class_token": False}, "model_args.class_token"),
        ({"init_values": 1e-5}, "model_args.init_values"),
        ({"qk_norm": True}, "model_args.qk_norm"),
        ({"no_embed_class": True}, "model_args.no_embed_class"),
        ({"some_new_switch": 1}, "model_args.some_new_switch"),
        ({"global_pool": "map"}, "global_pool"),
        ({"img_size": [40, 48]}, "img_size"),
    ],
)
def test_timm_configs_zoo_cannot_reproduce_are_refused(model_args, field):
    with pytest.raises(ConfigError, match=f"^{field}:"):
        vit_convert.config_from_hf(timm_config(**model_args))


def test_unknown_timm_architecture_without_model_args_is_named():
    with pytest.raises(ConfigError, match=r"^architecture: timm's 'vit_medium_patch16_gap_256'"):
        vit_convert.config_from_hf({"architecture": "vit_medium_patch16_gap_256", "num_classes": 10})


def test_timm_configs_are_detected_without_model_type(tmp_path):
    assert detect_family(timm_config(), tmp_path).name == "vit"
    assert vit_convert.task_from_config(timm_config()) == "image_classification"
    assert vit_convert.task_from_config(timm_config(num_classes=0)) == "base"
    with pytest.raises(CheckpointError, match="model_type=None"):
        detect_family({"architecture": "resnet50", "num_classes": 10}, tmp_path)


@pytest.mark.parametrize("d_ff", [100, 107, 108, 191, 1536])
def test_mlp_ratio_gives_back_d_ff_in_timm(d_ff):
    """timm builds its MLP with int(dim * mlp_ratio): the exported ratio must give d_ff exactly."""
    config = zoo.get_variant("vit-test-tiny").config.replace(d_ff=d_ff)
    exported = vit_convert.config_to_hf(config, "image_classification")
    assert vit_convert.config_from_hf(exported).d_ff == d_ff


@pytest.mark.parametrize("name", ["vit-test-tiny", "vit-avg-tiny", "vit-hf-tiny"])
def test_config_round_trips_through_its_reference_config(name):
    variant = zoo.get_variant(name)
    config = variant.config.replace(dropout=0.125, attn_dropout=0.25)
    task = variant.task or "base"
    assert vit_convert.config_from_hf(vit_convert.config_to_hf(config, task)) == config


def test_positions_keep_the_class_token_apart():
    model = tiny()
    table = model.embed.pos.weight
    for grid in ((5, 5), (7, 5), (3, 3)):
        positions = model.embed.positions(grid, model.config.pos_resample_antialias)
        assert positions.shape == (1 + grid[0] * grid[1], 48)
        assert torch.equal(positions[0], table[0])
    assert torch.equal(model.embed.positions((5, 5)), table)  # the training grid: no resampling


def test_resize_position_grid_keeps_a_smooth_grid():
    """A grid that is linear in its coordinates stays close to linear after bicubic resampling."""
    rows, cols = torch.meshgrid(torch.linspace(0, 1, 4), torch.linspace(0, 1, 4), indexing="ij")
    table = torch.stack([rows, cols], dim=-1).reshape(16, 2)
    assert resize_position_grid(table, (4, 4), (4, 4)) is table
    out = resize_position_grid(table, (4, 4), (8, 6), antialias=True).reshape(8, 6, 2)
    assert (out[1:, :, 0] >= out[:-1, :, 0] - 1e-6).all() and (out[:, 1:, 1] >= out[:, :-1, 1] - 1e-6).all()
    with pytest.raises(ValueError, match=r"^table: 16 positions"):
        resize_position_grid(table, (3, 5), (4, 4))


@pytest.mark.parametrize("name", ["vit-test-tiny", "vit-hf-tiny"])
def test_zoo_format_round_trip(tmp_path, name):
    model = tiny(name)
    model.save_pretrained(tmp_path, format="zoo")
    loaded = zoo.from_pretrained(tmp_path)
    assert loaded.task == model.task and loaded.config == model.config
    x = images()
    with torch.no_grad():
        assert torch.equal(model(x).pooler_output, loaded(x).pooler_output)


def test_bfloat16_model_reads_float32_images():
    model = tiny().to(torch.bfloat16)
    with torch.no_grad():
        out = model(images())
    assert out.logits.dtype == torch.bfloat16 and torch.isfinite(out.logits.float()).all()


def test_avg_pooling_is_the_normalised_mean_of_patch_tokens():
    model = tiny("vit-avg-tiny")
    with torch.no_grad():
        out = model(images())
        expected = model.fc_norm(out.last_hidden_state[:, 1:].mean(1))
        assert torch.allclose(out.pooler_output, expected, atol=1e-6)
        assert torch.allclose(out.logits, model.classifier(expected), atol=1e-6)


def test_timm_export_writes_timm_config(tmp_path):
    tiny().save_pretrained(tmp_path, format="hf")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architecture"].startswith("vit_") and "model_type" not in config
    assert config["num_classes"] == 7 and config["pretrained_cfg"]["input_size"] == [3, 40, 40]
