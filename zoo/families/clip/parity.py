"""CLIP's hooks for ``zoo parity``: transformers' CLIPModel or open_clip, whichever format the directory holds.

The text batch is built so that pooling at end-of-text is exercised: one row ends at the last
position (so every position feeds the pooled token through the causal mask), one in the middle,
one early, each padded after its end; with argmax pooling the end token is the highest id, and
with eos pooling a higher id sits before it, so pooling at the wrong place changes the output.
"""

import json
from pathlib import Path

import torch
from torch import nn

from zoo.families.clip.convert import OPEN_CLIP_CONFIG
from zoo.parity import ParitySpec, strict_transformers_loader


def load_open_clip(path: Path) -> nn.Module:
    """open_clip's own loader: it builds from open_clip_config.json and loads the weights strictly."""
    import open_clip

    return open_clip.create_model(f"local-dir:{path}", weights_only=True).eval()


def load_reference(path, task: str) -> nn.Module:
    """transformers for a CLIPModel config.json, open_clip otherwise (a directory with only
    open_clip_config.json, or timm's CLIP repositories, whose config.json is timm's image tower)."""
    path = Path(path)
    config = path / "config.json"
    if config.exists() and json.loads(config.read_text()).get("model_type") == "clip":
        return strict_transformers_loader("CLIPModel")(path, task)
    if (path / OPEN_CLIP_CONFIG).exists():
        return load_open_clip(path)
    raise ValueError(f"parity: {path} holds neither a transformers CLIPModel config.json nor {OPEN_CLIP_CONFIG}")


def text_batch(config, generator: torch.Generator, ends: tuple[int, ...] | None = None) -> dict:
    """Token ids (len(ends), max_seq_len) whose end-of-text sits at ``ends`` (default: last, middle,
    second position), padding after it; ``attention_mask`` marks the real tokens."""
    c = config.text
    T = c.max_seq_len
    ends = ends or (T - 1, T // 2, 1)
    end_id = c.vocab_size - 1 if c.pool == "argmax" else c.eos_token_id
    ids = torch.randint(0, c.vocab_size - 1, (len(ends), T), generator=generator)
    ids[ids == end_id] = (end_id + 1) % (c.vocab_size - 1)
    mask = torch.zeros(len(ends), T, dtype=torch.long)
    for row, end in enumerate(ends):
        if c.pool == "eos" and end > 0 and c.eos_token_id < c.vocab_size - 1:
            ids[row, 0] = c.vocab_size - 1  # argmax would pool here, not at end-of-text
        ids[row, end] = end_id
        ids[row, end + 1 :] = c.pad_token_id
        mask[row, : end + 1] = 1
    return {"input_ids": ids, "attention_mask": mask}


def make_inputs(model: nn.Module, generator: torch.Generator) -> dict:
    """Three texts and two images (so logits_per_image is not square). open_clip's text tower reads
    full-length rows without a mask (the causal mask keeps padding after end-of-text out of the
    pool); transformers' gets the attention mask too."""
    c = model.config
    inputs = text_batch(c, generator)
    if c.layout == "open_clip":
        del inputs["attention_mask"]
    v = c.vision
    inputs["pixel_values"] = torch.randn(2, v.in_channels, v.image_size, v.image_size, generator=generator)
    return inputs


def run_zoo(model: nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    out = model(**inputs)
    return {
        "text_features": model.text_proj(out.text_outputs.pooler_output),
        "image_features": model.vision_proj(out.vision_outputs.pooler_output),
        "logits_per_image": out.logits_per_image,
        "text_hidden_states": out.text_outputs.last_hidden_state,
        "image_hidden_states": out.vision_outputs.last_hidden_state,
    }


def run_reference(model: nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    dtype = next(model.parameters()).dtype
    ids, pixels = inputs["input_ids"], inputs["pixel_values"].to(dtype)
    if hasattr(model, "visual"):  # open_clip
        text, image = model.encode_text(ids), model.encode_image(pixels)
        scale = model.logit_scale.exp()
        logits = scale * nn.functional.normalize(image, dim=-1) @ nn.functional.normalize(text, dim=-1).t()
        return {"text_features": text, "image_features": image, "logits_per_image": logits}
    text = model.text_model(input_ids=ids, attention_mask=inputs.get("attention_mask"))
    vision = model.vision_model(pixel_values=pixels)
    out = model(input_ids=ids, attention_mask=inputs.get("attention_mask"), pixel_values=pixels)
    return {
        "text_features": model.text_projection(text.pooler_output),
        "image_features": model.visual_projection(vision.pooler_output),
        "logits_per_image": out.logits_per_image,
        "text_hidden_states": text.last_hidden_state,
        "image_hidden_states": vision.last_hidden_state,
    }


PARITY = ParitySpec(load_reference, make_inputs, run_zoo, run_reference)
