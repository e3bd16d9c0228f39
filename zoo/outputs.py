"""The one output type every model returns, with the field names users know from transformers."""

from dataclasses import dataclass

import torch


@dataclass
class ModelOutput:
    """Fields a model does not produce stay None.

    Attributes:
        logits: (B, T, vocab) for LMs, (B, n_labels) for classifiers.
        loss: scalar training loss when labels were given (aux losses included).
        aux_loss: mixture-of-experts balancing loss, before its coefficient.
        last_hidden_state: (B, T, d_model) after the final norm.
        pooler_output: (B, d_model) pooled representation (encoders).
        hidden_states: each layer's input, then the final output, when asked for.
        attentions: with ``output_attentions=True``, each self-attention layer's weights
            (B, n_heads, T, S), in call order (see ``zoo.modeling``).
        cross_attentions: the same for cross-attention layers (encoder-decoders).
        encoder_attentions, decoder_attentions: an encoder-decoder's self-attentions split by
            stack (``attentions`` holds both, the encoder's first), as transformers names them.
        cache: the KV cache, updated, when one was passed in.
        encoder_last_hidden_state: (B, S, d_model) the encoder's output (encoder-decoders).
        encoder_hidden_states: each encoder layer's input, then its output, when asked for.
        mc_logits: (B, n_choices) multiple-choice scores (GPT-1's double-heads model).
        mc_loss: the multiple-choice cross-entropy, when its labels were given (also in ``loss``).
    """

    logits: torch.Tensor | None = None
    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None
    cross_attentions: tuple[torch.Tensor, ...] | None = None
    encoder_attentions: tuple[torch.Tensor, ...] | None = None
    decoder_attentions: tuple[torch.Tensor, ...] | None = None
    cache: object | None = None
    encoder_last_hidden_state: torch.Tensor | None = None
    encoder_hidden_states: tuple[torch.Tensor, ...] | None = None
    mc_logits: torch.Tensor | None = None
    mc_loss: torch.Tensor | None = None
