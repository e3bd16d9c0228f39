"""Zero-shot classification with CLIP: class names become prompts, images and prompts meet in one space.

    model = zoo.from_pretrained("path/to/clip-vit-base-patch32")      # a transformers CLIPModel directory
    tokenizer = zoo.load_tokenizer("path/to/clip-vit-base-patch32")   # its tokenizer.json
    classifier = ZeroShotClassifier(model, tokenizer, ["cat", "dog", "rocket"])
    classifier.predict([pil_image, numpy_image])                      # ["cat", "rocket"]

Images go through the preprocessing the checkpoint was trained with (``image_transform``: resize
the short side to ``image_size``, center crop, CLIP's mean and std), built from torchvision
transforms, so PIL images, (H, W[, C]) uint8 arrays and (C, H, W) tensors are all accepted.
"""

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.transforms import InterpolationMode, v2

from zoo.families.clip.config import CLIPConfig

TEMPLATE = "a photo of a {label}."


def _interpolation(config: CLIPConfig) -> InterpolationMode:
    return InterpolationMode[config.interpolation.upper()]


def image_transform(config: CLIPConfig) -> v2.Compose:
    """The inference preprocessing of a checkpoint: any image -> (3, image_size, image_size) float32.

    Grayscale and boolean images are repeated to three channels, an alpha channel dropped."""
    size = config.vision.image_size
    return v2.Compose([
        v2.Lambda(_rgb),
        v2.ToImage(),
        v2.RGB(),
        v2.Resize(size, interpolation=_interpolation(config), antialias=True),  # the short side
        v2.CenterCrop(size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(config.image_mean), list(config.image_std)),
    ])  # fmt: skip


def augment_transform(config: CLIPConfig, scale: tuple[float, float] = (0.35, 1.0)) -> v2.Compose:
    """Training crops: a random part of the image (``scale`` of its area), flipped half the time,
    then the same normalisation as ``image_transform``."""
    size = config.vision.image_size
    return v2.Compose([
        v2.Lambda(_rgb),
        v2.ToImage(),
        v2.RGB(),
        v2.RandomResizedCrop(size, scale=scale, interpolation=_interpolation(config), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(list(config.image_mean), list(config.image_std)),
    ])  # fmt: skip


def _rgb(image):
    """skimage and friends hand out boolean masks and RGBA arrays; the transforms want uint8 RGB(A)."""
    if hasattr(image, "dtype") and str(image.dtype) == "bool":
        image = image.astype("uint8") * 255
    if hasattr(image, "ndim") and image.ndim == 3 and image.shape[-1] == 4:
        image = image[..., :3]
    return image


def preprocess(config: CLIPConfig, images: Sequence, transform: v2.Compose | None = None) -> torch.Tensor:
    """A list of images -> (N, 3, image_size, image_size) pixel values for the model."""
    transform = transform or image_transform(config)
    return torch.stack([transform(image) for image in images])


def tokenize(tokenizer, texts: Sequence[str], config: CLIPConfig) -> dict[str, torch.Tensor]:
    """Token ids for the text tower: each text ends in end-of-text, cut to ``max_seq_len`` (the end
    token kept last) and padded with ``pad_token_id``. ``input_ids`` and ``attention_mask``, (N, T).

    ``tokenizer`` is any object with ``encode(text) -> list[int]`` and ``eos_token_id``: a
    transformers CLIP directory's tokenizer.json through ``zoo.load_tokenizer`` (it adds the start
    and end tokens itself), or a BPE trained by a recipe (which does not: the end is appended).
    """
    c = config.text
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("tokenizer: it has no end-of-text token, where CLIP's text tower pools")
    if c.pool == "eos" and eos != c.eos_token_id:
        raise ValueError(f"tokenizer: its end-of-text id {eos} is not the model's text.eos_token_id={c.eos_token_id}")
    if c.pool == "argmax" and eos != c.vocab_size - 1:
        raise ValueError(
            f"tokenizer: the text tower pools at the highest id (text.pool='argmax'), but the tokenizer's "
            f"end-of-text id {eos} is not the vocabulary's last ({c.vocab_size - 1})"
        )
    rows = []
    for text in texts:
        ids = list(tokenizer.encode(text))
        if not ids or ids[-1] != eos:
            ids.append(eos)
        rows.append([*ids[: c.max_seq_len - 1], eos] if len(ids) > c.max_seq_len else ids)
    T = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), c.pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), T), dtype=torch.long)
    for i, ids in enumerate(rows):
        input_ids[i, : len(ids)], attention_mask[i, : len(ids)] = torch.tensor(ids), 1
    return {"input_ids": input_ids, "attention_mask": attention_mask}


class ZeroShotClassifier:
    """Classify images by the class prompt their embedding is closest to.

    Args:
        model: a zoo ``CLIPModel``.
        tokenizer: see ``tokenize``.
        labels: class names.
        templates: prompts with ``{label}``; with several, each class is the normalised mean of its
            prompts' embeddings (CLIP's prompt ensembling).
    """

    def __init__(self, model: nn.Module, tokenizer, labels: Sequence[str], templates: Sequence[str] = (TEMPLATE,)):
        if not labels:
            raise ValueError("labels: give at least one class name")
        if any("{label}" not in t for t in templates):
            raise ValueError(f"templates: each needs a {{label}} placeholder, got {list(templates)}")
        self.model, self.labels = model, list(labels)
        self.transform = image_transform(model.config)
        prompts = [t.format(label=label) for label in self.labels for t in templates]
        with torch.no_grad():
            batch = {k: v.to(model.device) for k, v in tokenize(tokenizer, prompts, model.config).items()}
            text = F.normalize(model.encode_text(**batch).float(), dim=-1)  # (n_labels * n_templates, embed_dim)
            text = text.view(len(self.labels), len(templates), -1).mean(dim=1)  # (n_labels, embed_dim)
        self.class_embeds = F.normalize(text, dim=-1)

    @torch.no_grad()
    def logits(self, images) -> torch.Tensor:
        """Images (a list, or preprocessed (N, 3, H, W) pixel values) -> (N, n_labels) scaled similarities."""
        pixel_values = (
            images if isinstance(images, torch.Tensor) else preprocess(self.model.config, images, self.transform)
        )
        pixel_values = pixel_values.to(device=self.model.device, dtype=self.model.dtype)
        image = F.normalize(self.model.encode_image(pixel_values).float(), dim=-1)  # (N, embed_dim)
        return self.model.logit_scale.exp().float() * image @ self.class_embeds.t()

    def predict(self, images) -> list[str]:
        return [self.labels[i] for i in self.logits(images).argmax(dim=-1).tolist()]


@torch.no_grad()
def retrieval_report(model: nn.Module, tokenizer, labels: Sequence[str], examples: list[dict],
                     captions: Sequence[str]) -> dict:  # fmt: skip
    """Zero-shot accuracy and text-to-image retrieval on preprocessed examples.

    Args:
        labels: class names; example ``label`` i is ``labels[i]``.
        examples: dicts with ``pixel_values`` (C, H, W) and ``label``.
        captions: one caption per label (held out of training).

    Returns ``zero_shot_accuracy`` (each image's closest "a photo of a {label}." prompt is its own)
    and ``text_to_image_top1`` (each caption's closest image is one of its label's).
    """
    was_training = model.training
    model.eval()
    try:
        pixels = torch.stack([e["pixel_values"] for e in examples])
        truth = torch.tensor([int(e["label"]) for e in examples])
        predicted = ZeroShotClassifier(model, tokenizer, labels).logits(pixels).argmax(dim=-1).cpu()
        batch = {k: v.to(model.device) for k, v in tokenize(tokenizer, list(captions), model.config).items()}
        text = F.normalize(model.encode_text(**batch).float(), dim=-1)  # (n_labels, embed_dim)
        image = F.normalize(model.encode_image(pixels.to(model.device, model.dtype)).float(), dim=-1)
        closest = (text @ image.t()).argmax(dim=-1).cpu()  # (n_labels,) an image index per caption
    finally:
        model.train(was_training)
    return {
        "zero_shot_accuracy": float((predicted == truth).float().mean()),
        "text_to_image_top1": float((truth[closest] == torch.arange(len(captions))).float().mean()),
    }
