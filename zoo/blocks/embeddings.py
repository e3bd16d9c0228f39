"""Input checks shared by token embeddings, and the patch embedding of vision transformers."""

import torch
from torch import nn


def check_token_ids(ids: torch.Tensor, vocab_size: int, name: str = "input_ids", field: str = "vocab_size") -> None:
    """Raise a named error when an id falls outside [0, vocab_size), or ids are not integers."""
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer token ids (torch.long), got {ids.dtype}")
    if ids.numel() == 0:
        raise ValueError(f"{name}: empty input; give at least one token")
    if ids.is_meta:
        return  # shapes only (zoo info's memory count): there are no values to check
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = high if high >= vocab_size else low
        raise ValueError(f"{name}: id {bad} is outside the model's {field}={vocab_size}")


class PatchEmbedding(nn.Module):
    """Cut an image into non-overlapping square patches and project each to ``d_model`` (ViT).

    A convolution whose kernel and stride are the patch size does both at once.

    Args:
        patch_size: side of a square patch, in pixels.
        in_channels: channels of the input image.
        d_model: width of each patch embedding.
        bias: whether the projection carries a bias.
    """

    def __init__(self, patch_size: int, in_channels: int, d_model: int, bias: bool = True):
        super().__init__()
        self.patch_size, self.in_channels = patch_size, in_channels
        self.proj = nn.Conv2d(in_channels, d_model, kernel_size=patch_size, stride=patch_size, bias=bias)

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """pixel_values (B, C, H, W) -> patches (B, H/p * W/p, d_model) and the grid (H/p, W/p)."""
        if pixel_values.dim() != 4:
            raise ValueError(
                f"pixel_values: expected shape (batch, channels, height, width), got {tuple(pixel_values.shape)}"
            )
        _, C, H, W = pixel_values.shape
        if C != self.in_channels:
            raise ValueError(f"pixel_values: {C} channels, but the model's in_channels={self.in_channels}")
        p = self.patch_size
        if H % p or W % p:
            raise ValueError(f"pixel_values: image size {H}x{W} is not divisible by the model's patch_size={p}")
        # Images usually arrive as fp32; a bf16 model reads them in its own dtype.
        x = self.proj(pixel_values.to(self.proj.weight.dtype))  # (B, d_model, H/p, W/p)
        return x.flatten(2).transpose(1, 2), (H // p, W // p)  # (B, H/p * W/p, d_model)
