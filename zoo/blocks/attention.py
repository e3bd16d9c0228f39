"""Multi-head attention: MHA, GQA and MQA; self or cross; masks, additive bias, RoPE, KV cache.

Two backends compute the same thing: ``"sdpa"`` calls torch's scaled_dot_product_attention
(flash or memory-efficient kernels where the device has them) and ``"eager"`` writes the
softmax out, so the attention weights can be kept for inspection.
"""

import torch
from torch import nn
from torch.nn import functional as F

from zoo.blocks.cache import ContextCache, KVCache
from zoo.blocks.position import apply_rope

BACKENDS = ("sdpa", "eager")


class Attention(nn.Module):
    """Scaled dot-product attention with separate q/k/v/o projections.

    Args:
        d_model: width of the input (queries).
        n_heads: query heads.
        n_kv_heads: key/value heads; ``n_heads`` for MHA, fewer for GQA, 1 for MQA.
        head_dim: channels per head (default ``d_model // n_heads``).
        bias: biases on q/k/v projections.
        out_bias: bias on the output projection (default: same as ``bias``).
        q_bias, k_bias, v_bias: override ``bias`` for one projection (Whisper: queries and
            values with bias, keys without).
        kv_dim: width of the keys' source for cross-attention (default ``d_model``).
        dropout: dropout on attention weights, in training only.
        scale: score scale (default ``head_dim ** -0.5``; T5 uses 1.0).
        backend: ``"sdpa"`` or ``"eager"``.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_kv_heads: int | None = None,
        head_dim: int | None = None,
        bias: bool = True,
        out_bias: bool | None = None,
        kv_dim: int | None = None,
        dropout: float = 0.0,
        scale: float | None = None,
        backend: str = "sdpa",
        q_bias: bool | None = None,
        k_bias: bool | None = None,
        v_bias: bool | None = None,
    ):
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if head_dim is None:
            if d_model % n_heads:
                raise ValueError(f"d_model: {d_model} is not divisible by n_heads={n_heads}")
            head_dim = d_model // n_heads
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads: n_heads={n_heads} is not divisible by n_kv_heads={n_kv_heads}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.scale = head_dim**-0.5 if scale is None else scale
        self.dropout = dropout
        self.backend = backend
        self.keep_weights = False  # set True (eager backend) to keep the last attention map
        self.weights: torch.Tensor | None = None
        kv_dim = d_model if kv_dim is None else kv_dim

        def pick(override: bool | None) -> bool:
            return bias if override is None else override

        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=pick(q_bias))
        self.k_proj = nn.Linear(kv_dim, n_kv_heads * head_dim, bias=pick(k_bias))
        self.v_proj = nn.Linear(kv_dim, n_kv_heads * head_dim, bias=pick(v_bias))
        self.o_proj = nn.Linear(n_heads * head_dim, d_model, bias=bias if out_bias is None else out_bias)
        self.qkv_proj: nn.Module | None = None  # see fuse_qkv
        self.qkv_sizes = (n_heads * head_dim, n_kv_heads * head_dim, n_kv_heads * head_dim)

    def fuse_qkv(self, qkv_proj: nn.Module) -> None:
        """Compute q, k and v with one projection to ``sum(qkv_sizes)`` outputs (inference: one
        matmul instead of three, for a decoding step's few rows). q_proj, k_proj and v_proj are
        removed; cross-attention (keys from another source) cannot use it."""
        self.qkv_proj = qkv_proj
        del self.q_proj, self.k_proj, self.v_proj

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        if name not in BACKENDS:
            raise ValueError(f"attn_backend: unknown attention backend {name!r}; choose one of {', '.join(BACKENDS)}")
        self._backend = name

    def _heads(self, x: torch.Tensor, n: int) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, n, self.head_dim).transpose(1, 2)  # (B, n, T, head_dim)

    def forward(
        self,
        x: torch.Tensor,
        *,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        rope: tuple[torch.Tensor, torch.Tensor] | None = None,
        cache: KVCache | None = None,
        context_cache: ContextCache | None = None,
        layer_idx: int = 0,
    ) -> torch.Tensor:
        """Attend from x (B, T, d_model) to itself, or to ``context`` (B, S, kv_dim).

        Args:
            mask: bool, broadcastable to (B, H, T, S), True where attention is allowed
                (see ``zoo.blocks.attention_mask``).
            bias: additive float scores, broadcastable to (B, H, T, S) (relative positions, ALiBi).
            rope: (cos, sin) from ``RotaryEmbedding``, applied to queries and keys.
            cache: a KVCache; this layer's keys/values are appended and all are attended.
            context_cache: cross-attention only: the context's keys and values, projected on the
                first call and reused after (``context`` is then not read again).
            layer_idx: which of the caches' layers this is.
        """
        if context_cache is not None and context is None:
            raise ValueError("context_cache: only cross-attention (with a context) has a context cache")
        if context is None:
            q, k, v = self.project(x, rope)
        else:
            q = self._heads(self.q_proj(x), self.n_heads)  # (B, H, T, hd)
            if context_cache is not None and context_cache.filled(layer_idx):
                k, v = context_cache.get(layer_idx)  # (B, Hkv, S, hd) each
            else:
                k = self._heads(self.k_proj(context), self.n_kv_heads)  # (B, Hkv, S, hd)
                v = self._heads(self.v_proj(context), self.n_kv_heads)  # (B, Hkv, S, hd)
                if context_cache is not None:
                    context_cache.store(layer_idx, k, v)
            if rope is not None:
                q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return self.o_proj(self.attend(q, k, v, mask=mask, bias=bias, cache=cache, layer_idx=layer_idx))

    def project(
        self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Self-attention's queries (B, H, T, hd), keys and values (B, Hkv, T, hd) of x (B, T,
        d_model), RoPE applied: the part of ``forward`` before the cache (a compiled decoding step
        runs it as one graph with the norm before it, ``zoo.compile_decoding``)."""
        if self.qkv_proj is not None:
            q, k, v = self.qkv_proj(x).split(self.qkv_sizes, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, k, v = self._heads(q, self.n_heads), self._heads(k, self.n_kv_heads), self._heads(v, self.n_kv_heads)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        return q, k, v

    def attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        mask: torch.Tensor | None = None,
        bias: torch.Tensor | None = None,
        cache: KVCache | None = None,
        layer_idx: int = 0,
    ) -> torch.Tensor:
        """Append k, v to the cache (if any) and attend: (B, T, H * hd), before ``o_proj``."""
        B, _, T, _ = q.shape
        if cache is not None:
            k, v = cache.update(layer_idx, k, v)
        if self.backend == "eager" or self.keep_weights:
            out = self._eager(q, k, v, mask, bias)
        else:
            out = self._sdpa(q, k, v, mask, bias)
        return out.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim)  # (B, T, H * hd)

    def _sdpa(self, q, k, v, mask, bias):
        attn_mask = mask
        if bias is not None:
            attn_mask = bias if mask is None else bias.masked_fill(~mask, float("-inf"))
            attn_mask = attn_mask.to(q.dtype)
        return F.scaled_dot_product_attention(
            q,
            k,
            v,
            attn_mask=attn_mask,
            dropout_p=self.dropout if self.training else 0.0,
            scale=self.scale,
            enable_gqa=self.n_kv_heads != self.n_heads,
        )

    def _eager(self, q, k, v, mask, bias):
        if self.n_kv_heads != self.n_heads:
            repeat = self.n_heads // self.n_kv_heads
            k = k.repeat_interleave(repeat, dim=1)  # (B, H, S, hd)
            v = v.repeat_interleave(repeat, dim=1)
        scores = (q @ k.transpose(-2, -1)) * self.scale  # (B, H, T, S)
        if bias is not None:
            scores = scores + bias
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        weights = scores.float().softmax(dim=-1).to(q.dtype)
        if self.keep_weights:
            self.weights = weights.detach()
        weights = F.dropout(weights, self.dropout, self.training)
        return weights @ v  # (B, H, T, hd)
