"""The CLIP recipe (recipes/clip-photos.yaml) and its pieces: image-caption data on scikit-image's
photos, the contrastive task with same-photo positives, and the before/after retrieval report."""

import json
from pathlib import Path

import pytest
import skimage.data
import torch

import zoo
from zoo.families.clip.model import CLIPOutput
from zoo.train.config import load_recipe
from zoo.train.data import (
    ContrastiveTask,
    image_caption_examples,
    read_image_captions,
    save_tokenizer,
    train_bpe_tokenizer,
)
from zoo.train.recipes import _text_tower_for, finetune

ROOT = Path(__file__).resolve().parents[2]
PHOTOS = ROOT / "recipes" / "data" / "photos.jsonl"
FAST = ["train.progress=none", "train.tensorboard=false", "train.save_every=null", "train.eval_every=null"]
TINY = [
    "model.overrides={embed_dim: 16, text: {d_model: 32, n_layers: 1, n_heads: 2, d_ff: 48, max_seq_len: 24},"
    " vision: {image_size: 32, patch_size: 16, d_model: 32, n_layers: 1, n_heads: 2, d_ff: 48}}",
    "tokenizer=bpe:300",
]


def test_the_shipped_photos_are_real_captioned_and_sourced():
    rows = read_image_captions(PHOTOS)
    assert len(rows) == 14 and len({r["label"] for r in rows}) == 14
    licences = ("CC0", "public domain", "no known copyright")
    assert all(r["image"].startswith("skimage:") and any(k in r["source"] for k in licences) for r in rows)
    assert all(len(r["captions"]) == 5 for r in rows)


def test_examples_hold_out_the_last_caption_and_the_eval_crops():
    rows = read_image_captions(PHOTOS)[:3]

    def tokenize(texts):
        ids = [[len(w) + 1 for w in t.split()] + [0] for t in texts]
        T = max(map(len, ids))
        return {"input_ids": torch.tensor([r + [0] * (T - len(r)) for r in ids]),
                "attention_mask": torch.tensor([[1] * len(r) + [0] * (T - len(r)) for r in ids])}  # fmt: skip

    center = lambda image: torch.full((3, 8, 8), float(len(str(image.shape))))
    augment = lambda image: torch.rand(3, 8, 8)  # draws from the seeded global RNG
    train, eval_, held = image_caption_examples(rows, tokenize, center, augment, crops=5, eval_crops=2, seed=0)
    assert len(train) == 15 and len(eval_) == 6 and held == [r["captions"][-1] for r in rows]
    assert [e["label"] for e in train] == [0] * 5 + [1] * 5 + [2] * 5
    held_ids = {tuple(tokenize([c])["input_ids"][0].tolist()) for c in held}
    assert not any(tuple(e["input_ids"].tolist()) in held_ids for e in train)
    assert torch.equal(eval_[0]["pixel_values"], center(skimage.data.astronaut()))  # the first eval crop: centered
    again, _, _ = image_caption_examples(rows, tokenize, center, augment, crops=5, eval_crops=2, seed=0)
    assert all(torch.equal(a["pixel_values"], b["pixel_values"]) for a, b in zip(train, again, strict=True))
    assert not torch.equal(train[0]["pixel_values"], train[1]["pixel_values"])


def test_bad_caption_files_are_named_by_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"image": "skimage:chelsea", "label": "cat", "captions": ["a cat", "a tabby"]}\n{"image": "x"}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: missing label, captions"):
        read_image_captions(path)
    path.write_text(json.dumps({"image": "skimage:nope", "label": "x", "captions": ["a", "b"]}) + "\n")
    rows = read_image_captions(path)
    with pytest.raises(ValueError, match=r"^image: scikit-image has no sample image 'nope'"):
        image_caption_examples(rows, None, None, None, 1, 1, 0)


def test_crops_of_the_same_photo_are_positives_not_negatives():
    """Images 0 and 1 are crops of one photo, equally close to both its captions: with the photo
    labels nothing pushes them apart (zero gradient); plain CLIP targets would."""
    task = ContrastiveTask()
    pixel_values = torch.zeros(3, 1)

    def gradient(labels):
        logits = torch.tensor([[5.0, 5.0, 0.0], [5.0, 5.0, 0.0], [0.0, 0.0, 5.0]], requires_grad=True)
        task.loss_sum(CLIPOutput(logits_per_image=logits), {"label": labels, "pixel_values": pixel_values}).backward()
        return logits.grad

    assert gradient(torch.tensor([7, 7, 3]))[0, 1].abs() < 1e-2  # a sibling caption: left alone
    assert gradient(torch.tensor([0, 1, 2]))[0, 1] > 0.4  # plain targets: pushed down as a negative
    batch = {"label": torch.tensor([7, 7, 3]), "pixel_values": pixel_values}
    out = CLIPOutput(logits_per_image=torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [3.0, 0.0, 1.0]]))
    assert task.correct(out, batch) == 2 and task.targets(batch) == 3  # image 2's best text is image 0's


def _four_photos(tmp_path) -> Path:
    small = tmp_path / "photos.jsonl"
    rows = [r for r in PHOTOS.read_text().splitlines() if any(f'"skimage:{n}"' in r
            for n in ("chelsea", "coffee", "rocket", "coins"))]  # fmt: skip
    small.write_text("\n".join(rows) + "\n")
    return small


def test_clip_photos_recipe_trains_and_reports_retrieval(tmp_path):
    """The shipped recipe on 4 of its photos (the small ones, to keep the test short), tiny towers."""
    small = _four_photos(tmp_path)
    recipe = load_recipe(ROOT / "recipes" / "clip-photos.yaml",
                         [f"out_dir={tmp_path / 'run'}", *FAST, *TINY, f"data.train={small}", "data.crops=3",
                          "data.eval_crops=2", "train.steps=8", "train.batch_size=12", "train.warmup_steps=1",
                          "train.lr=1e-2"])  # fmt: skip
    lines = []
    result = finetune(recipe, log=lines.append)
    assert "on 12 examples (8 held out)" in lines[0]
    assert any("zero-shot accuracy over 4 classes" in line for line in lines)
    assert result.train.status == "finished"
    losses = result.train.losses
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    for report in (result.before, result.after):
        assert 0.0 <= report["zero_shot_accuracy"] <= 1.0 and 0.0 <= report["text_to_image_top1"] <= 1.0
    assert (tmp_path / "run" / "adapter").is_dir()


def test_clip_photos_recipe_on_a_checkpoint_with_its_tokenizer(tmp_path):
    """The user's path: model.path to a transformers CLIPModel directory holding its tokenizer.json,
    tokenizer=null, the embeddings and norms frozen."""
    small = _four_photos(tmp_path)
    bpe = train_bpe_tokenizer([c for r in read_image_captions(small) for c in r["captions"]] + ["a photo of a"], 300)
    text = {"vocab_size": bpe.vocab_size, "pool": "eos", "eos_token_id": bpe.eos_token_id, "pad_token_id": 0,
            "max_seq_len": 24}  # fmt: skip
    base = zoo.create_model("clip-tiny", text=text)
    base.save_pretrained(tmp_path / "ckpt")  # transformers' layout: config.json + model.safetensors
    save_tokenizer(bpe, tmp_path / "ckpt")
    recipe = load_recipe(ROOT / "recipes" / "clip-photos.yaml",
                         [f"out_dir={tmp_path / 'run'}", *FAST, "model.name=null", f"model.path={tmp_path / 'ckpt'}",
                          "tokenizer=null", "model.overrides={}", f"data.train={small}", "data.crops=2",
                          "data.eval_crops=1", "train.steps=3", "train.batch_size=8",
                          "lora.train_also=[text_proj.weight,vision_proj.weight,logit_scale]"])  # fmt: skip
    result = finetune(recipe, log=lambda *a: None)
    assert result.train.status == "finished" and (tmp_path / "run" / "adapter").is_dir()
    assert "zero_shot_accuracy" in result.before and "text_to_image_top1" in result.after


def test_a_random_text_tower_is_built_for_the_recipe_tokenizer():
    """A trained BPE's end-of-text is id 0, not the highest id: the tower pools at it by id."""
    bpe = train_bpe_tokenizer(["a photo of a cat", "a rocket on the pad"] * 4, 280)
    text = _text_tower_for(bpe, {"d_model": 32})
    assert text == {"d_model": 32, "vocab_size": bpe.vocab_size, "pool": "eos", "eos_token_id": 0, "pad_token_id": 0}
    assert _text_tower_for(bpe, {"pool": "argmax"})["pool"] == "argmax"  # what the recipe sets wins
