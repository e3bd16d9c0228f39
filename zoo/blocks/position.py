"""Position encodings: learned absolute, sinusoidal, rotary (RoPE, with scaling), T5 relative buckets."""

import math

import torch
from torch import nn
from torch.nn import functional as F


class LearnedPositions(nn.Module):
    """A learned absolute position table (GPT-2, BERT, ViT, BART).

    Args:
        max_seq_len: number of positions the table serves.
        d_model: embedding width.
        offset: rows before position 0: the table has ``max_seq_len + offset`` rows and position
            p reads row p + offset (BART's 2, a leftover of fairseq's padding-aware positions).
    """

    def __init__(self, max_seq_len: int, d_model: int, offset: int = 0):
        super().__init__()
        if offset < 0:
            raise ValueError(f"offset: must be >= 0, got {offset}")
        self.max_seq_len, self.offset = max_seq_len, offset
        self.weight = nn.Parameter(torch.zeros(max_seq_len + offset, d_model))
        nn.init.normal_(self.weight, std=0.02)

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions (B, T) or (T,) integers -> (…, T, d_model)."""
        # A meta tensor (shapes only, as zoo info plans memory with) has no values to check.
        if positions.numel() and not positions.is_meta and int(positions.max()) >= self.max_seq_len:
            raise ValueError(
                f"max_seq_len: position {int(positions.max())} is past the model's {self.max_seq_len} "
                "learned positions; shorten the input"
            )
        return self.weight[positions + self.offset if self.offset else positions]


def resize_position_grid(
    table: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int], antialias: bool = True
) -> torch.Tensor:
    """Resample a 2-D grid of learned positions to another grid size, bicubically.

    A vision transformer trained on one image size can then read another: the table is seen
    as an image with ``d_model`` channels and resized, as timm's ``resample_abs_pos_embed``
    does. timm resamples with ``antialias=True`` (a Keys kernel with a=-0.5, widened when
    shrinking); transformers' ViT with plain bicubic (a=-0.75): the two differ, so callers pick.

    Args:
        table: (old_h * old_w, d_model) positions of the patches, row-major; no class token.
        old_grid: (old_h, old_w) the table was trained for.
        new_grid: (new_h, new_w) wanted.
        antialias: timm's resampling (True) or transformers' (False).

    Returns:
        (new_h * new_w, d_model); ``table`` itself when the grids are equal.
    """
    if tuple(old_grid) == tuple(new_grid):
        return table
    (old_h, old_w), (new_h, new_w) = old_grid, new_grid
    if table.shape[0] != old_h * old_w:
        raise ValueError(f"table: {table.shape[0]} positions do not form the {old_h}x{old_w} grid")
    d_model = table.shape[-1]
    grid = table.float().reshape(1, old_h, old_w, d_model).permute(0, 3, 1, 2)  # (1, d_model, old_h, old_w)
    grid = F.interpolate(grid, size=(new_h, new_w), mode="bicubic", align_corners=False, antialias=antialias)
    return grid.permute(0, 2, 3, 1).reshape(new_h * new_w, d_model).to(table.dtype)  # (new_h * new_w, d_model)


SINUSOID_LAYOUTS = ("interleaved", "halves")


def sinusoidal_table(
    max_seq_len: int, d_model: int, base: float = 10000.0, layout: str = "interleaved"
) -> torch.Tensor:
    """The fixed table of "Attention Is All You Need": angle pos / base^(2i / d_model) for the
    i-th pair of channels, i = 0 .. ceil(d_model / 2) - 1.

    Args:
        layout: ``"interleaved"``: sin on even, cos on odd channels, as the paper writes it
            (PE(pos, 2i) = sin, PE(pos, 2i+1) = cos). ``"halves"``: [sin | cos], all the sines
            first, as transformers' MarianSinusoidalPositionalEmbedding stores it (with an odd
            width the sines get the extra channel there too). Same frequencies either way.
            tensor2tensor and fairseq also use halves, but with another frequency ladder (see
            ``timing_signal``).

    Returns (max_seq_len, d_model) float32, computed in float64 (Marian's table is numpy's).
    """
    if layout not in SINUSOID_LAYOUTS:
        raise ValueError(f"layout: unknown sinusoid layout {layout!r}; choose one of {', '.join(SINUSOID_LAYOUTS)}")
    position = torch.arange(max_seq_len, dtype=torch.float64)[:, None]
    freqs = base ** (-torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)  # (ceil(d_model / 2),)
    angles = position * freqs  # (max_seq_len, ceil(d_model / 2))
    sin, cos = angles.sin(), angles[:, : d_model // 2].cos()
    if layout == "halves":
        return torch.cat([sin, cos], dim=1).float()
    table = torch.zeros(max_seq_len, d_model, dtype=torch.float64)
    table[:, 0::2], table[:, 1::2] = sin, cos
    return table.float()


def timing_signal(max_seq_len: int, d_model: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """tensor2tensor's ``get_timing_signal_1d``, as Whisper's encoder uses it: [sin | cos] halves.

    Unlike ``sinusoidal_table`` the channels are not interleaved: the first d_model / 2 are sines,
    the last d_model / 2 cosines, and the d_model / 2 timescales run geometrically from 1 to
    exactly ``max_timescale`` (log step ``log(max_timescale) / (d_model / 2 - 1)``).

    Returns (max_seq_len, d_model).
    """
    if d_model % 2 or d_model < 4:
        raise ValueError(f"d_model: the timing signal needs an even width of at least 4, got {d_model}")
    half = d_model // 2
    inv_timescales = torch.exp(-math.log(max_timescale) / (half - 1) * torch.arange(half, dtype=torch.float32))
    scaled = torch.arange(max_seq_len, dtype=torch.float32)[:, None] * inv_timescales  # (max_seq_len, half)
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


class SinusoidalPositions(nn.Module):
    """The fixed table of Vaswani et al. 2017 (``sinusoidal_table``), looked up by position.

    Nothing to train, and defined at every position up to ``max_seq_len``.

    Args:
        max_seq_len: rows of the table.
        d_model: its width.
        rms: the table's root mean square. The paper adds entries in [-1, 1] to embeddings
            scaled up by sqrt(d_model); a model whose embeddings start small (GPT's std 0.02)
            scales the table down to match instead, or it drowns the tokens.
        layout: ``"interleaved"`` (the paper) or ``"halves"`` ([sin | cos], Marian); see
            ``sinusoidal_table``.
    """

    def __init__(self, max_seq_len: int, d_model: int, rms: float | None = None, layout: str = "interleaved"):
        super().__init__()
        self.max_seq_len, self.d_model, self.rms, self.layout = max_seq_len, d_model, rms, layout
        self.register_buffer("table", self._table(), persistent=False)

    def _table(self) -> torch.Tensor:
        table = sinusoidal_table(self.max_seq_len, self.d_model, layout=self.layout)
        if self.rms is not None:
            table = table * (self.rms / table.pow(2).mean().sqrt())
        return table

    def _apply(self, fn, recurse=True):
        # The table is recomputed whenever the module is moved or cast, then given the new
        # device and dtype: a cast to bf16 and back would otherwise leave it rounded, and
        # `to_empty` after meta-device init would leave garbage in this non-persistent buffer,
        # which no checkpoint restores.
        super()._apply(fn, recurse)
        self.table = self._table().to(device=self.table.device, dtype=self.table.dtype)
        return self

    def forward(self, positions: torch.Tensor) -> torch.Tensor:
        """positions (B, T) or (T,) integers -> (..., T, d_model)."""
        if positions.numel() and not positions.is_meta and int(positions.max()) >= self.max_seq_len:
            raise ValueError(
                f"max_seq_len: position {int(positions.max())} is past the model's {self.max_seq_len} "
                "sinusoidal positions; shorten the input"
            )
        return self.table[positions]


def rope_inv_freq(rotary_dim: int, theta: float, scaling: dict | None = None) -> torch.Tensor:
    """Inverse frequencies for RoPE, with optional ``linear`` or ``llama3`` scaling.

    ``scaling`` follows the Hugging Face ``rope_scaling`` dict: ``{"rope_type": "linear",
    "factor": f}`` or ``{"rope_type": "llama3", "factor", "low_freq_factor",
    "high_freq_factor", "original_max_position_embeddings"}``.
    """
    inv_freq = 1.0 / (theta ** (torch.arange(0, rotary_dim, 2, dtype=torch.float32) / rotary_dim))
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type"))
    factor = float(scaling["factor"])
    if kind == "linear":
        return inv_freq / factor
    if kind == "llama3":
        low, high = float(scaling["low_freq_factor"]), float(scaling["high_freq_factor"])
        old_len = float(scaling["original_max_position_embeddings"])
        wavelen = 2 * math.pi / inv_freq
        # Long wavelengths (low frequencies) are slowed by `factor`, short ones kept, and the
        # band between is blended smoothly (Llama 3.1's long-context recipe).
        scaled = torch.where(wavelen > old_len / low, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old_len / high) & (wavelen <= old_len / low)
        return torch.where(medium, blended, scaled)
    raise ValueError(f"rope_scaling: unknown rope_type {kind!r}; choose 'linear' or 'llama3'")


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021) in the half-split layout of GPT-NeoX/LLaMA.

    Args:
        rotary_dim: how many channels of each head rotate (the first ``rotary_dim``; the
            rest pass through, as in partial-rotary models). Usually ``head_dim``.
        theta: the base of the frequency ladder.
        scaling: optional ``rope_scaling`` dict (see ``rope_inv_freq``).
    """

    def __init__(self, rotary_dim: int, theta: float = 10000.0, scaling: dict | None = None):
        super().__init__()
        if rotary_dim % 2:
            raise ValueError(f"rotary_dim: must be even, got {rotary_dim}")
        self.rotary_dim, self.theta, self.scaling = rotary_dim, theta, scaling
        self.register_buffer("inv_freq", rope_inv_freq(rotary_dim, theta, scaling), persistent=False)

    def _apply(self, fn, recurse=True):
        # The frequencies are recomputed, in fp32, whenever the module is moved or cast: casting
        # to bf16 would round them (position x rounded frequency drifts by whole radians at long
        # context), and `to_empty` after meta-device init would leave garbage in this
        # non-persistent buffer, which no checkpoint restores. The buffer follows the device only.
        super()._apply(fn, recurse)
        self.inv_freq = rope_inv_freq(self.rotary_dim, self.theta, self.scaling).to(self.inv_freq.device)
        return self

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """positions (B, T) -> cos, sin, each (B, 1, T, rotary_dim), ready to broadcast over heads."""
        freqs = positions[..., None].float() * self.inv_freq  # (B, T, rotary_dim / 2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (B, T, rotary_dim)
        return emb.cos()[:, None], emb.sin()[:, None]


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, H, T, head_dim) by cos/sin (B, 1, T, rotary_dim)."""
    rot = cos.shape[-1]
    x_rot, x_pass = x[..., :rot], x[..., rot:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    out = (x_rot.float() * cos + rotated.float() * sin).to(x.dtype)
    return torch.cat((out, x_pass), dim=-1) if x_pass.shape[-1] else out


def relative_position_bucket(
    relative_position: torch.Tensor, bidirectional: bool, n_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5's bucketing: exact buckets for small offsets, log-spaced buckets up to max_distance."""
    buckets = torch.zeros_like(relative_position)
    if bidirectional:
        n_buckets //= 2
        buckets = buckets + (relative_position > 0).long() * n_buckets
        distance = relative_position.abs()
    else:
        distance = -torch.clamp(relative_position, max=0)
    max_exact = n_buckets // 2
    is_small = distance < max_exact
    large = (
        max_exact
        + (
            torch.log(distance.float().clamp(min=1) / max_exact)
            / math.log(max_distance / max_exact)
            * (n_buckets - max_exact)
        ).long()
    )
    large = torch.clamp(large, max=n_buckets - 1)
    return buckets + torch.where(is_small, distance, large)


class RelativePositionBias(nn.Module):
    """T5-style learned bias per (head, relative-position bucket), added to attention scores.

    Args:
        n_heads: number of attention heads.
        n_buckets: number of buckets.
        max_distance: offsets beyond this share the last bucket.
        bidirectional: encoder (True) or causal decoder (False) bucketing.
    """

    def __init__(self, n_heads: int, n_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True):
        super().__init__()
        self.n_buckets, self.max_distance, self.bidirectional = n_buckets, max_distance, bidirectional
        self.embedding = nn.Embedding(n_buckets, n_heads)

    def forward(self, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
        """q_idx (T,), k_idx (S,) absolute indices -> additive bias (1, H, T, S)."""
        relative = k_idx[None, :] - q_idx[:, None]  # (T, S)
        buckets = relative_position_bucket(relative, self.bidirectional, self.n_buckets, self.max_distance)
        return self.embedding(buckets).permute(2, 0, 1)[None]  # (1, H, T, S)
