"""ViT's hooks for ``zoo parity``: timm or transformers, whichever format the directory holds."""

import json
from pathlib import Path

import torch
from torch import nn

from zoo.families.vit.convert import is_timm_config
from zoo.parity import ParitySpec, strict_transformers_loader

_AUTO = {"base": "AutoModel", "image_classification": "AutoModelForImageClassification"}


def load_timm(path: Path) -> nn.Module:
    """Build the timm model a timm Hugging Face-format directory describes; load its weights strictly."""
    import timm
    from safetensors.torch import load_file

    config = json.loads((path / "config.json").read_text())
    args = dict(config.get("model_args") or {})
    args.setdefault("num_classes", config.get("num_classes", 1000))
    args.setdefault("global_pool", config.get("global_pool", "token"))
    input_size = (config.get("pretrained_cfg") or {}).get("input_size")
    if input_size:
        args.setdefault("img_size", tuple(input_size[-2:]))
    # dynamic_img_size lets timm resample its positions for other image sizes, as zoo always does.
    args["dynamic_img_size"] = True
    model = timm.create_model(config["architecture"], pretrained=False, **args)
    model.load_state_dict(load_file(str(path / "model.safetensors")), strict=True)
    return model.eval()


def load_reference(path, task: str) -> nn.Module:
    path = Path(path)
    if is_timm_config(json.loads((path / "config.json").read_text())):
        return load_timm(path)
    return strict_transformers_loader(_AUTO[task])(path, task)


def make_inputs(model: nn.Module, generator: torch.Generator) -> dict:
    """Two random images of the size the model was trained for."""
    c = model.config
    return {"pixel_values": torch.randn(2, c.in_channels, c.image_size, c.image_size, generator=generator)}


def run_zoo(model: nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    out = model(**inputs)
    names = ("last_hidden_state", "pooler_output", "logits")
    return {n: getattr(out, n) for n in names if getattr(out, n) is not None}


def run_reference(model: nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    pixel_values = inputs["pixel_values"].to(next(model.parameters()).dtype)
    if hasattr(model, "forward_features"):  # timm
        features = model.forward_features(pixel_values)
        result = {"last_hidden_state": features, "pooler_output": model.forward_head(features, pre_logits=True)}
        if model.num_classes > 0:
            result["logits"] = model.forward_head(features)
        return result
    if hasattr(model, "classifier"):  # ViTForImageClassification: no pooler
        return {"last_hidden_state": model.vit(pixel_values).last_hidden_state, "logits": model(pixel_values).logits}
    out = model(pixel_values)
    return {"last_hidden_state": out.last_hidden_state, "pooler_output": out.pooler_output}


PARITY = ParitySpec(load_reference, make_inputs, run_zoo, run_reference)
