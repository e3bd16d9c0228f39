"""T5's parity hooks: the encoder-decoder against T5ForConditionalGeneration, the encoder alone
against T5EncoderModel (one spec, which the model's task picks)."""

from pathlib import Path

from torch import nn

from zoo.parity import ParitySpec, seq2seq_lm_parity, seq2seq_token_batch, strict_transformers_loader

_SEQ2SEQ = seq2seq_lm_parity("AutoModelForSeq2SeqLM")
_LOADERS = {"seq2seq_lm": _SEQ2SEQ.load_reference, "encoder": strict_transformers_loader("T5EncoderModel")}


def _load_reference(path: Path, task: str) -> nn.Module:
    return _LOADERS[task](path, task)


def _inputs(model, generator) -> dict:
    inputs = seq2seq_token_batch(model, generator)
    if model.task == "encoder":
        inputs.pop("decoder_input_ids")
    return inputs


def _encoder_outputs(model, inputs) -> dict:
    return {"last_hidden_state": model(**inputs).last_hidden_state}


def _run_zoo(model, inputs) -> dict:
    return _SEQ2SEQ.run_zoo(model, inputs) if model.task == "seq2seq_lm" else _encoder_outputs(model, inputs)


def _run_reference(model, inputs) -> dict:
    return _SEQ2SEQ.run_reference(model, inputs) if "decoder_input_ids" in inputs else _encoder_outputs(model, inputs)


PARITY = ParitySpec(_load_reference, _inputs, _run_zoo, _run_reference)
