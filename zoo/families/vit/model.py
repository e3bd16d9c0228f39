"""ViT (Dosovitskiy et al. 2020): image patches, a class token and learned positions into a pre-LN encoder.

The layers are the shared ``TransformerLayer`` with ``prenorm=True``: each sub-layer is
``x + f(norm(x))``, so the residual stream is never normalised inside the stack and a final
norm (``norm``) closes it, or, with timm's ``fc_norm``, a norm after pooling instead.
"""

import torch
from torch import nn

from zoo.blocks import (
    Attention,
    FirstTokenPooler,
    PatchTokens,
    TransformerLayer,
    make_mlp,
    make_norm,
)
from zoo.config import ConfigError
from zoo.encoder import Encoder, classification_loss, init_encoder_weights
from zoo.families.vit.config import ViTConfig
from zoo.outputs import ModelOutput


class ViT(Encoder):
    """The image encoder (timm's VisionTransformer without head, transformers' ViTModel).

    ``pooler_output`` is the pooled image feature the head reads (the class token's final state,
    or the mean of the patch tokens, after ``fc_norm``), or ``tanh(dense(class token))`` when
    the config has transformers' ``pooler``.
    """

    family = "vit"
    task = "base"

    def __init__(self, config: ViTConfig):
        super().__init__(config)
        c = config
        self.embed = PatchTokens(c.image_size, c.patch_size, c.in_channels, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(
                attn=Attention(c.d_model, c.n_heads, bias=c.qkv_bias, out_bias=True, dropout=c.attn_dropout),
                mlp=make_mlp(c.mlp, c.d_model, c.d_ff),
                norm1=make_norm("layernorm", c.d_model, c.norm_eps),
                norm2=make_norm("layernorm", c.d_model, c.norm_eps),
                prenorm=True,
                dropout=c.dropout,
            )
            for _ in range(c.n_layers)
        )
        self.norm = nn.Identity() if c.use_fc_norm else make_norm("layernorm", c.d_model, c.norm_eps)
        self.fc_norm = make_norm("layernorm", c.d_model, c.norm_eps) if c.use_fc_norm else None
        self.pooler = FirstTokenPooler(c.d_model) if c.pooler else None
        self.build_head()
        init_encoder_weights(self, c.init_std)

    def build_head(self) -> None:
        """Subclasses build their head here (before the weights are initialised)."""

    def features(
        self, pixel_values: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """pixel_values (B, C, H, W) -> final hidden states (B, 1 + patches, d_model), the pooled
        feature (B, d_model) and the hidden states. H and W need not be the training size."""
        x = self.embed(pixel_values, self.config.pos_resample_antialias)  # (B, 1 + h * w, d_model)
        x, states = self.encode(self.drop(x), output_hidden_states=output_hidden_states)
        pooled = x[:, 0] if self.config.pool == "token" else x[:, 1:].mean(dim=1)  # (B, d_model)
        if self.fc_norm is not None:
            pooled = self.fc_norm(pooled)
        return x, pooled, states

    def forward(
        self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None, output_hidden_states: bool = False
    ) -> ModelOutput:
        """Encode images.

        Args:
            pixel_values: (B, in_channels, H, W), H and W multiples of patch_size; other sizes
                than image_size get resampled positions.
            labels: targets for the head (not accepted by the base model, which has none).
            output_hidden_states: return the embeddings, each layer's output and the final one.
        """
        if labels is not None:
            raise ValueError("labels: the base ViT model has no head; load task 'image_classification'")
        x, pooled, states = self.features(pixel_values, output_hidden_states)
        pooler_output = self.pooler(x) if self.pooler is not None else pooled
        return ModelOutput(last_hidden_state=x, pooler_output=pooler_output, hidden_states=states)


class ViTForImageClassification(ViT):
    """ViT with a linear classifier on the pooled feature (timm's head, transformers' classifier)."""

    task = "image_classification"

    def build_head(self) -> None:
        c = self.config
        if c.n_labels < 1:
            raise ConfigError("n_labels: image_classification needs at least one class; use task 'base' for none")
        self.classifier = nn.Linear(c.d_model, c.n_labels)

    def forward(self, pixel_values, labels=None, output_hidden_states=False):
        """As ``ViT.forward``; ``labels`` (B,) class ids, or float targets (regression with one class,
        multi-label), the loss chosen as transformers chooses it."""
        x, pooled, states = self.features(pixel_values, output_hidden_states)
        logits = self.classifier(pooled)  # (B, n_labels)
        loss = None
        if labels is not None:
            if labels.shape[0] != pixel_values.shape[0]:
                raise ValueError(f"labels: {labels.shape[0]} rows for a batch of {pixel_values.shape[0]} images")
            loss = classification_loss(logits, labels, self.config.problem_type)
        pooler_output = self.pooler(x) if self.pooler is not None else pooled
        return ModelOutput(logits=logits, loss=loss, last_hidden_state=x, pooler_output=pooler_output,
                           hidden_states=states)  # fmt: skip
