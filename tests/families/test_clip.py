"""CLIP's own behaviour: nested configs, the contrastive API, pooling errors, format detection and
the zero-shot helper (its preprocessing checked against transformers' CLIPImageProcessor on real
photos). Parity with the references is in tests/parity/test_clip.py."""

import json

import numpy as np
import pytest
import skimage.data
import torch
from torch.nn import functional as F
from torchvision.transforms import v2

import zoo
from tests.conftest import randomize_
from zoo.config import ConfigError
from zoo.families.clip import CLIPConfig, CLIPTextConfig, contrastive_loss
from zoo.families.clip.parity import text_batch
from zoo.families.clip.zero_shot import ZeroShotClassifier, image_transform, preprocess, tokenize
from zoo.families.vit.convert import is_timm_config
from zoo.hub import detect_family
from zoo.train.data import train_bpe_tokenizer


def tiny(name="clip-tiny"):
    return randomize_(zoo.create_model(name), seed=3)


def test_nested_config_round_trips_and_names_bad_nested_fields(tmp_path):
    config = zoo.get_variant("clip-eos-tiny").config
    data = json.loads(json.dumps(config.to_dict()))
    assert isinstance(data["text"], dict) and isinstance(data["image_mean"], list)
    back = CLIPConfig.from_dict(data)
    assert back == config and isinstance(back.text, CLIPTextConfig) and isinstance(back.image_mean, tuple)
    data["text"]["d_modle"] = 3
    with pytest.raises(ConfigError, match=r"^d_modle: CLIPTextConfig has no field 'd_modle'.*d_model"):
        CLIPConfig.from_dict(data)
    with pytest.raises(ConfigError, match=r"^mlp: unknown value 'relu'"):
        config.text.replace(mlp="relu")
    with pytest.raises(ConfigError, match=r"^image_mean: needs one value per channel"):
        config.replace(image_mean=(0.5, 0.5))
    with pytest.raises(ConfigError, match=r"^eos_token_id: 64 is outside the vocabulary"):
        config.text.replace(eos_token_id=64)


def test_forward_gives_both_logits_embeddings_and_the_symmetric_loss():
    model = tiny()
    inputs = text_batch(model.config, torch.Generator().manual_seed(0), ends=(11, 6, 3))
    pixels = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(**inputs, pixel_values=pixels, return_loss=True)
        text, image = model.encode_text(**inputs), model.encode_image(pixels)
    assert out.logits_per_image.shape == (3, 3) and text.shape == image.shape == (3, 20)
    torch.testing.assert_close(out.text_embeds, F.normalize(text, dim=-1))
    torch.testing.assert_close(out.image_embeds, F.normalize(image, dim=-1))
    expected = model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    torch.testing.assert_close(out.logits_per_image, expected)
    assert torch.equal(out.logits_per_text, out.logits_per_image.t())
    target = torch.arange(3)
    manual = (F.cross_entropy(expected, target) + F.cross_entropy(expected.t(), target)) / 2
    torch.testing.assert_close(out.loss, manual)
    assert torch.isclose(contrastive_loss(expected), manual)
    # The loss is symmetric in images and texts; a perfectly matched batch with a high scale has ~0 loss.
    torch.testing.assert_close(contrastive_loss(expected.t()), manual)
    assert contrastive_loss(100 * torch.eye(4)) < 1e-6


def test_towers_run_alone_and_bad_calls_are_named():
    model = tiny()
    ids = text_batch(model.config, torch.Generator().manual_seed(0))["input_ids"]
    with torch.no_grad():
        assert model(input_ids=ids).logits_per_image is None
        assert model(pixel_values=torch.randn(1, 3, 24, 24)).image_embeds.shape == (1, 20)
    with pytest.raises(ValueError, match=r"^return_loss: the contrastive loss needs both"):
        model(input_ids=ids, return_loss=True)
    with pytest.raises(ValueError, match=r"^return_loss: the loss pairs text i with image i; got 3 texts and 2"):
        model(input_ids=ids, pixel_values=torch.randn(2, 3, 24, 24), return_loss=True)
    with pytest.raises(ValueError, match=r"^input_ids: give input_ids, pixel_values or both"):
        model()
    with pytest.raises(ValueError, match=r"^max_seq_len: position 12 is past"):
        model.encode_text(torch.ones(1, 13, dtype=torch.long))


def test_eos_pooling_refuses_rows_without_the_end_token():
    model = tiny("clip-eos-tiny")
    ids = text_batch(model.config, torch.Generator().manual_seed(0))["input_ids"]
    assert model.text.pool_index(ids).tolist() == [11, 6, 1]
    ids[1] = 7  # no eos_token_id=5 in row 1
    with pytest.raises(ValueError, match=r"^input_ids: rows \[1\] have no end-of-text token \(eos_token_id=5\)"):
        model.encode_text(ids)


def test_padding_after_end_of_text_does_not_change_the_text_embedding():
    """Causal attention: what follows end-of-text never reaches the pooled token, mask or not."""
    model = tiny()
    ids = text_batch(model.config, torch.Generator().manual_seed(0), ends=(5,))["input_ids"]
    with torch.no_grad():
        base = model.encode_text(ids)
        ids[0, 6:] = 17
        torch.testing.assert_close(model.encode_text(ids), base)
        torch.testing.assert_close(model.encode_text(ids[:, :6]), base)


def test_formats_are_detected_by_the_clip_family_only(tmp_path):
    hf = zoo.families.clip.config_to_hf(zoo.get_variant("clip-tiny").config, "base")
    oc = zoo.families.clip.config_to_hf(zoo.get_variant("clip-openclip-tiny").config, "base")
    assert detect_family(hf, tmp_path).name == detect_family(oc, tmp_path).name == "clip"
    assert not is_timm_config({"architecture": "vit_base_patch32_clip_224"})
    assert not is_timm_config({"architecture": "vit_large_patch14_clip_quickgelu_336"})
    assert is_timm_config({"architecture": "vit_base_patch16_224"})


class _Tokens:
    """A stand-in tokenizer: one id per character, end-of-text the vocabulary's last id."""

    eos_token_id = 63

    def encode(self, text):
        return [ord(ch) % 60 + 3 for ch in text]


def test_tokenize_appends_end_of_text_truncates_and_pads():
    config = zoo.get_variant("clip-tiny").config
    batch = tokenize(_Tokens(), ["a cat", "a much longer caption"], config)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    assert ids.shape == (2, 12) and mask[0].tolist() == [1] * 6 + [0] * 6
    assert ids[0, 5] == 63 and (ids[0, 6:] == config.text.pad_token_id).all()
    assert ids[1, -1] == 63 and mask[1].all()  # cut to max_seq_len, the end token kept last
    eos_config = zoo.get_variant("clip-eos-tiny").config
    with pytest.raises(ValueError, match=r"^tokenizer: its end-of-text id 63 is not the model's text.eos_token_id=5"):
        tokenize(_Tokens(), ["a cat"], eos_config)
    bpe = train_bpe_tokenizer(["a photo of a cat", "a photo of a rocket"] * 5, 300)
    bpe_config = config.replace(text=config.text.replace(pool="eos", eos_token_id=bpe.eos_token_id, vocab_size=300))
    ids = tokenize(bpe, ["a photo of a cat"], bpe_config)["input_ids"][0]
    assert ids[-1] == bpe.eos_token_id and bpe.decode(ids.tolist()) == "a photo of a cat"


def test_preprocessing_matches_transformers_clip_image_processor_on_real_photos():
    """skimage's CC0 photos (colour, grayscale, boolean): resize the short side, center crop,
    CLIP's mean and std, as transformers' CLIPImageProcessor does for OpenAI's checkpoints."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    config = zoo.get_variant("clip-vit-b-32").config
    processor = CLIPImageProcessor()  # its defaults are OpenAI CLIP's: 224, bicubic, OpenAI mean/std
    for name in ("cat", "coffee", "camera"):
        image = getattr(skimage.data, name)()
        ours = preprocess(config, [image])
        theirs = torch.from_numpy(processor(images=[Image.fromarray(image).convert("RGB")],
                                            return_tensors="np")["pixel_values"])  # fmt: skip
        assert ours.shape == theirs.shape == (1, 3, 224, 224)
        assert (ours - theirs).abs().max() < 1e-5, name
    horse = preprocess(config, [skimage.data.horse()])[0]  # a boolean silhouette, repeated to three channels
    pixels = horse * torch.tensor(config.image_std)[:, None, None] + torch.tensor(config.image_mean)[:, None, None]
    assert horse.shape == (3, 224, 224) and torch.allclose(pixels[0], pixels[1], atol=1e-6)
    assert pixels.min() < 0.01 and pixels.max() > 0.99
    rgba = np.dstack([skimage.data.coffee(), np.full((400, 600), 255, dtype=np.uint8)])
    assert torch.equal(preprocess(config, [rgba]), preprocess(config, [skimage.data.coffee()]))
    resize = next(t for t in image_transform(config.replace(interpolation="bilinear")).transforms
                  if isinstance(t, v2.Resize))  # fmt: skip
    assert resize.interpolation.value == "bilinear" and resize.size == [224]


def test_zero_shot_classifier_agrees_with_the_model_logits():
    model = tiny()
    labels = ["cat", "rocket", "cup of coffee"]
    classifier = ZeroShotClassifier(model, _Tokens(), labels)
    images = [skimage.data.chelsea(), skimage.data.rocket()]
    pixels = preprocess(model.config, images)
    prompts = tokenize(_Tokens(), [f"a photo of a {label}." for label in labels], model.config)
    with torch.no_grad():
        expected = model(**prompts, pixel_values=pixels).logits_per_image
    torch.testing.assert_close(classifier.logits(images), expected)
    assert classifier.predict(pixels) == [labels[i] for i in expected.argmax(-1).tolist()]
    ensemble = ZeroShotClassifier(model, _Tokens(), labels, templates=("a photo of a {label}.", "{label}"))
    assert ensemble.class_embeds.shape == (3, 20) and not torch.allclose(ensemble.class_embeds, classifier.class_embeds)
    with pytest.raises(ValueError, match=r"^templates: each needs a \{label\} placeholder"):
        ZeroShotClassifier(model, _Tokens(), labels, templates=("a photo",))


def test_cli_lists_and_describes_the_clip_variants(capsys):
    from zoo.cli import main

    assert main(["list", "clip*"]) == 0
    listed = capsys.readouterr().out
    for name in ("clip-vit-b-32", "clip-vit-b-16", "clip-vit-l-14", "clip-openclip-vit-b-32-quickgelu", "clip-tiny"):
        assert name in listed
    assert main(["info", "clip-vit-b-32"]) == 0
    info = capsys.readouterr().out
    assert "151,277,313" in info and "vision.embed.patch_embed.proj.weight" in info  # OpenAI's ViT-B/32 count


def test_gradient_checkpointing_reaches_both_towers_and_keeps_the_gradients():
    model = tiny().train()
    inputs = text_batch(model.config, torch.Generator().manual_seed(0), ends=(11, 6, 3))
    pixels = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(1))

    def grads():
        model.zero_grad()
        model(**inputs, pixel_values=pixels, return_loss=True).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    model.set_gradient_checkpointing(True)
    assert model.text.gradient_checkpointing and model.vision.gradient_checkpointing
    checkpointed = grads()
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, atol=1e-6, rtol=1e-5, msg=name)
