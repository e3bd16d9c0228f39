"""ZooModel: what every family's model class shares (saving, backends, checkpointing, counts)."""

from pathlib import Path

import torch
from torch import nn

from zoo.blocks.attention import Attention
from zoo.config import Config


class ZooModel(nn.Module):
    """Base of every family's model. Subclasses set ``family`` and ``task`` and build from a config."""

    family: str = ""
    task: str = ""

    def __init__(self, config: Config):
        super().__init__()
        self.config = config
        self.gradient_checkpointing = False

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        params = {id(p): p for p in self.parameters()}
        if exclude_embeddings:
            for module in self.modules():
                if isinstance(module, nn.Embedding):
                    params.pop(id(module.weight), None)
                elif hasattr(module, "max_seq_len") and isinstance(getattr(module, "weight", None), nn.Parameter):
                    params.pop(id(module.weight), None)  # learned position tables
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
