"""BERT's hooks for ``zoo parity``: transformers is the reference; padded token batches with token types."""

import torch
from torch import nn

from zoo.parity import ParitySpec, padded_token_batch, strict_transformers_loader

_AUTO = {
    "base": "AutoModel",
    "masked_lm": "AutoModelForMaskedLM",
    "sequence_classification": "AutoModelForSequenceClassification",
}


def load_reference(path, task: str) -> nn.Module:
    return strict_transformers_loader(_AUTO[task])(path, task)


def make_inputs(model: nn.Module, generator: torch.Generator) -> dict:
    """Three rows (unpadded, left- and right-padded) with random token types, so every type's
    embedding row and every padding mask matters."""
    inputs = padded_token_batch(model, generator)
    ids = inputs["input_ids"]
    inputs["token_type_ids"] = torch.randint(0, model.config.type_vocab_size, ids.shape, generator=generator)
    return inputs


def run_zoo(model: nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    out = model(**inputs)
    names = ("last_hidden_state", "pooler_output", "logits")
    return {n: getattr(out, n) for n in names if getattr(out, n) is not None}


def run_reference(model: nn.Module, inputs: dict) -> dict[str, torch.Tensor]:
    out = model(**inputs, output_hidden_states=True)
    # Post-LN BERT has no final norm: the last hidden state is the last layer's output.
    result = {"last_hidden_state": out.hidden_states[-1]}
    if getattr(out, "pooler_output", None) is not None:
        result["pooler_output"] = out.pooler_output
    elif getattr(model, "bert", None) is not None and model.bert.pooler is not None:
        result["pooler_output"] = model.bert(**inputs).pooler_output  # a classifier's pooled [CLS]
    if getattr(out, "logits", None) is not None:
        result["logits"] = out.logits
    return result


def _real_tokens(inputs: dict) -> torch.Tensor:
    return inputs["attention_mask"].bool()


PARITY = ParitySpec(load_reference, make_inputs, run_zoo, run_reference, _real_tokens)
