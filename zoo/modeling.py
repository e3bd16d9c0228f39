"""ZooModel: what every family's model class shares (saving, backends, checkpointing, counts,
attention maps)."""

from pathlib import Path

import torch
from torch import nn

from zoo.blocks.attention import Attention
from zoo.blocks.embeddings import embedding_tables
from zoo.config import Config


class ZooModel(nn.Module):
    """Base of every family's model. Subclasses set ``family`` and ``task`` and build from a config."""

    family: str = ""
    task: str = ""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False
        # Every family's forward takes output_attentions=True through these two hooks, so no
        # family writes (or forgets) the collection: see AttentionRecorder.
        self.register_forward_pre_hook(_start_recording, with_kwargs=True)
        self.register_forward_hook(_finish_recording, always_call=True)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            for table in embedding_tables(self):
                params.pop(id(table), None)
        return sum(p.numel() for p in params.values())

    def set_attention_backend(self, backend: str) -> "ZooModel":
        """Switch every attention layer to ``"sdpa"`` or ``"eager"``."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.backend = backend
        return self

    def set_gradient_checkpointing(self, enabled: bool = True) -> "ZooModel":
        """Recompute each layer's activations during backward instead of storing them."""
        self.gradient_checkpointing = enabled
        return self

    def save_pretrained(self, path: str | Path, format: str = "hf") -> Path:
        """Write config and weights; ``format="hf"`` is the reference layout, ``"zoo"`` zoo's own."""
        from zoo.hub import save_pretrained

        return save_pretrained(self, path, format=format)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


class AttentionRecorder:
    """Collects every Attention module's weights during one forward, whatever its backend.

    Each Attention is switched to keep its weights (which runs its eager path for this call
    only: SDPA and flash kernels never form the weights), and a hook appends them in call order,
    self-attention and cross-attention (modules named ``cross_attn``) apart. ``stop()`` restores
    every module as it was, so the model's backend is unchanged afterwards. The weights are
    detached: they are for looking at, not for a loss.
    """

    def __init__(self, model: nn.Module):
        self.model = model
        self.self_attn: list[torch.Tensor] = []
        self.cross_attn: list[torch.Tensor] = []
        # An encoder-decoder's self-attentions by stack (its modules live under encoder_layers /
        # decoder_layers); empty for other models.
        self.by_stack: dict[str, list[torch.Tensor]] = {"encoder_layers": [], "decoder_layers": []}
        self._saved: list[tuple[Attention, bool]] = []
        self._handles = []

    def start(self) -> "AttentionRecorder":
        for name, module in self.model.named_modules():
            if isinstance(module, Attention):
                cross = "cross" in name.rsplit(".", 1)[-1]
                sinks = [self.cross_attn] if cross else [self.self_attn]
                stack = name.split(".", 1)[0]
                if not cross and stack in self.by_stack:
                    sinks.append(self.by_stack[stack])
                self._saved.append((module, module.keep_weights))
                module.keep_weights = True
                self._handles.append(module.register_forward_hook(_append_weights(sinks)))
        return self

    def stop(self) -> None:
        for h in self._handles:
            h.remove()
        for module, keep in self._saved:
            module.keep_weights = keep
            if not keep:
                module.weights = None  # a (B, H, T, S) tensor per layer: do not hold it on the model
        self._handles.clear()
        self._saved.clear()


def _append_weights(sinks: list[list]):
    def hook(module, args, output):
        for sink in sinks:
            sink.append(module.weights)

    return hook


def _start_recording(model: "ZooModel", args, kwargs):
    if kwargs.pop("output_attentions", False):
        model._recorder = AttentionRecorder(model).start()
    return args, kwargs


def _finish_recording(model: "ZooModel", args, output):
    recorder = model.__dict__.pop("_recorder", None)
    if recorder is None:
        return None
    recorder.stop()  # also when the forward raised (always_call): then there is no output
    if output is None:
        return None
    if not hasattr(output, "attentions"):
        raise TypeError(f"output_attentions: {type(model).__name__} returns {type(output).__name__}, no attentions")
    output.attentions = tuple(recorder.self_attn)
    output.cross_attentions = tuple(recorder.cross_attn) or None
    if recorder.by_stack["decoder_layers"]:
        output.encoder_attentions = tuple(recorder.by_stack["encoder_layers"]) or None
        output.decoder_attentions = tuple(recorder.by_stack["decoder_layers"])
    return output
