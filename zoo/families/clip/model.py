"""CLIP (Radford et al. 2021): a causal text tower and a ViT image tower, contrasted in one space.

Both towers are stacks of the shared pre-LN ``TransformerLayer``. The text tower reads token
embeddings plus learned positions under a causal mask, normalises, and takes the sentence vector
at the end-of-text token: with a causal mask it is the one position that has seen the whole text.
The image tower is ViT's ``PatchTokens`` (patch embedding without bias, class token, positions)
with one more LayerNorm before the layers and the final norm on the pooled class token only.
Each tower's vector is projected (no bias) into ``embed_dim``; logits are cosine similarities
times ``exp(logit_scale)``.
"""

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from zoo.blocks import (
    Attention,
    LearnedPositions,
    PatchTokens,
    TransformerLayer,
    check_token_ids,
    make_mlp,
    make_norm,
    run_layers,
)
from zoo.blocks.masks import attention_mask as build_mask
from zoo.encoder import init_encoder_weights
from zoo.families.clip.config import CLIPConfig, CLIPTextConfig, CLIPVisionConfig
from zoo.modeling import ZooModel
from zoo.outputs import ModelOutput


@dataclass
class CLIPOutput(ModelOutput):
    """ModelOutput plus the contrastive fields (transformers' names).

    Attributes:
        logits_per_image: (n_images, n_texts) scaled cosine similarities.
        logits_per_text: (n_texts, n_images), its transpose.
        image_embeds, text_embeds: projected, L2-normalised embeddings.
        text_outputs, vision_outputs: each tower's ``last_hidden_state`` and ``pooler_output``.
    """

    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    text_outputs: ModelOutput | None = None
    vision_outputs: ModelOutput | None = None


def _layers(c: CLIPTextConfig | CLIPVisionConfig) -> nn.ModuleList:
    return nn.ModuleList(
        TransformerLayer(
            attn=Attention(c.d_model, c.n_heads, bias=True, dropout=c.attn_dropout),
            mlp=make_mlp(c.mlp, c.d_model, c.d_ff),
            norm1=make_norm("layernorm", c.d_model, c.norm_eps),
            norm2=make_norm("layernorm", c.d_model, c.norm_eps),
            prenorm=True,
        )
        for _ in range(c.n_layers)
    )


def contrastive_loss(logits_per_image: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss: image i and text i are the pair; the mean of the two cross-entropies."""
    target = torch.arange(logits_per_image.shape[0], device=logits_per_image.device)
    logits = logits_per_image.float()
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target)) / 2


class CLIPTextTower(nn.Module):
    """Token and position embeddings, a causal pre-LN stack, a final norm, pooling at end-of-text."""

    def __init__(self, c: CLIPTextConfig):
        super().__init__()
        self.config = c
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = LearnedPositions(c.max_seq_len, c.d_model)
        self.layers = _layers(c)
        self.norm = make_norm("layernorm", c.d_model, c.norm_eps)
        self.gradient_checkpointing = False

    def pool_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) ids -> (B,) the end-of-text position of each row."""
        c = self.config
        if c.pool == "argmax":
            # The original CLIP's end-of-text is the highest id of its vocabulary; the first
            # occurrence of the row's highest id is where it ended.
            return input_ids.argmax(dim=-1)
        is_eos = input_ids == c.eos_token_id
        if not bool(is_eos.any(dim=-1).all()):
            rows = (~is_eos.any(dim=-1)).nonzero().flatten().tolist()
            raise ValueError(
                f"input_ids: rows {rows} have no end-of-text token (eos_token_id={c.eos_token_id}), where "
                "the text tower pools; the tokenizer must append it"
            )
        return is_eos.int().argmax(dim=-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> ModelOutput:
        """input_ids (B, T), T <= max_seq_len, each row with its end-of-text; attention_mask (B, T)
        1/0 or None -> last_hidden_state (B, T, d_model) after the final norm, pooler_output (B, d_model)."""
        c = self.config
        check_token_ids(input_ids, c.vocab_size)
        end = self.pool_index(input_ids)  # (B,) checked before any work
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device)
        x = self.embed(input_ids) + self.pos(positions)  # (B, T, d_model)
        # Causal: a token sees itself and what precedes it; padding keys are left out too.
        mask = build_mask(positions, positions, attention_mask, causal=True)
        x = run_layers(self.layers, x, checkpointing=self.gradient_checkpointing, mask=mask)
        x = self.norm(x)
        pooled = x[torch.arange(x.shape[0], device=x.device), end]  # (B, d_model)
        return ModelOutput(last_hidden_state=x, pooler_output=pooled)


class CLIPVisionTower(nn.Module):
    """ViT's patch tokens, a pre-layernorm, a pre-LN stack, the final norm on the class token."""

    def __init__(self, c: CLIPVisionConfig):
        super().__init__()
        self.config = c
        self.embed = PatchTokens(c.image_size, c.patch_size, c.in_channels, c.d_model, patch_bias=False)
        self.pre_norm = make_norm("layernorm", c.d_model, c.norm_eps)
        self.layers = _layers(c)
        self.norm = make_norm("layernorm", c.d_model, c.norm_eps)
        self.gradient_checkpointing = False

    def forward(self, pixel_values: torch.Tensor) -> ModelOutput:
        """pixel_values (B, C, H, W); other sizes than image_size get resampled positions.

        ``last_hidden_state`` is the last layer's output (before the final norm, which only the
        pooled class token gets, as in both references)."""
        x = self.pre_norm(self.embed(pixel_values, self.config.pos_resample_antialias))  # (B, 1 + h * w, d)
        x = run_layers(self.layers, x, checkpointing=self.gradient_checkpointing)
        return ModelOutput(last_hidden_state=x, pooler_output=self.norm(x[:, 0]))


class CLIPModel(ZooModel):
    """Both towers, their projections and the learned temperature (transformers' CLIPModel,
    open_clip's CLIP)."""

    family = "clip"
    task = "base"

    def __init__(self, config: CLIPConfig):
        super().__init__(config)
        c = config
        self.text = CLIPTextTower(c.text)
        self.vision = CLIPVisionTower(c.vision)
        self.text_proj = nn.Linear(c.text.d_model, c.embed_dim, bias=False)
        self.vision_proj = nn.Linear(c.vision.d_model, c.embed_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(c.logit_scale_init)))
        init_encoder_weights(self, c.init_std)
        with torch.no_grad():
            self.logit_scale.fill_(c.logit_scale_init)  # a scalar: init_encoder_weights set it to 1

    def set_gradient_checkpointing(self, enabled: bool = True) -> "CLIPModel":
        super().set_gradient_checkpointing(enabled)
        self.text.gradient_checkpointing = self.vision.gradient_checkpointing = enabled
        return self

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) ids ending in the end-of-text token -> (B, embed_dim) projected, not normalised."""
        return self.text_proj(self.text(input_ids, attention_mask).pooler_output)

    def encode_image(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) preprocessed images -> (B, embed_dim) projected, not normalised."""
        return self.vision_proj(self.vision(pixel_values).pooler_output)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        return_loss: bool = False,
    ) -> CLIPOutput:
        """Embed texts and/or images; with both, their scaled cosine similarities.

        Args:
            input_ids: (n_texts, T) token ids, each row with its end-of-text token.
            attention_mask: (n_texts, T) 1 for real tokens, 0 for padding.
            pixel_values: (n_images, C, H, W).
            return_loss: the symmetric contrastive loss, text i and image i being the pair.
        """
        if input_ids is None and pixel_values is None:
            raise ValueError("input_ids: give input_ids, pixel_values or both")
        out = CLIPOutput()
        if input_ids is not None:
            out.text_outputs = self.text(input_ids, attention_mask)
            out.text_embeds = F.normalize(self.text_proj(out.text_outputs.pooler_output), dim=-1)
        if pixel_values is not None:
            out.vision_outputs = self.vision(pixel_values)
            out.image_embeds = F.normalize(self.vision_proj(out.vision_outputs.pooler_output), dim=-1)
        if input_ids is not None and pixel_values is not None:
            out.logits_per_image = self.logit_scale.exp() * out.image_embeds @ out.text_embeds.t()  # (I, T)
            out.logits_per_text = out.logits_per_image.t()
            if return_loss:
                if input_ids.shape[0] != pixel_values.shape[0]:
                    raise ValueError(
                        f"return_loss: the loss pairs text i with image i; got {input_ids.shape[0]} texts "
                        f"and {pixel_values.shape[0]} images"
                    )
                out.loss = contrastive_loss(out.logits_per_image)
        elif return_loss:
            raise ValueError("return_loss: the contrastive loss needs both input_ids and pixel_values")
        return out
