"""Input checks shared by token embeddings; the patch embedding and image tokens of vision transformers."""

import torch
from torch import nn

from zoo.blocks.position import LearnedPositions, resize_position_grid


def embedding_tables(model: nn.Module) -> list[nn.Parameter]:
    """The lookup tables in a model: token embeddings (``nn.Embedding``) and learned position
    tables (``LearnedPositions``), each once. Parameter counts leave them out on request and
    AdamW does not decay them: a row is only trained when its token or position occurs."""
    tables = {}
    for module in model.modules():
        if isinstance(module, (nn.Embedding, LearnedPositions)):
            tables[id(module.weight)] = module.weight
    return list(tables.values())


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


class PatchTokens(nn.Module):
    """An image as a vision transformer's input sequence: a class token, then the patches, plus
    learned positions (ViT, and the image tower of CLIP).

    The position table is trained for one patch grid; images of other sizes get the patches'
    positions resampled (``resize_position_grid``) while the class token's stays as it is.

    Args:
        image_size: side of the square training images, in pixels.
        patch_size: side of a square patch.
        in_channels: channels of the input image.
        d_model: width of each token.
        patch_bias: whether the patch projection carries a bias (ViT's does, CLIP's not).
    """

    def __init__(
        self,
        image_size: int,
        patch_size: int,
        in_channels: int,
        d_model: int,
        patch_bias: bool = True,
    ):
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size: {image_size} is not divisible by patch_size={patch_size}")
        side = image_size // patch_size
        self.grid = (side, side)
        self.patch_embed = PatchEmbedding(patch_size, in_channels, d_model, bias=patch_bias)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d_model))
        self.pos = LearnedPositions(1 + side * side, d_model)  # the class token's, then the patches' row-major

    def positions(self, grid: tuple[int, int], antialias: bool = True) -> torch.Tensor:
        """The position table for a patch grid: (1 + h * w, d_model); ``antialias`` resamples as
        timm does (antialiased bicubic), False as transformers does (plain bicubic)."""
        table = self.pos.weight
        patches = resize_position_grid(table[1:], self.grid, grid, antialias)
        return torch.cat([table[:1], patches])

    def forward(self, pixel_values: torch.Tensor, antialias: bool = True) -> torch.Tensor:
        """pixel_values (B, C, H, W), H and W multiples of the patch size -> (B, 1 + h * w, d_model)."""
        x, grid = self.patch_embed(pixel_values)  # (B, h * w, d_model)
        cls = self.cls_token.expand(x.shape[0], -1, -1)  # (B, 1, d_model)
        return torch.cat([cls, x], dim=1) + self.positions(grid, antialias)  # (B, 1 + h * w, d_model)
