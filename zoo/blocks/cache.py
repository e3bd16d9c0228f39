"""Key/value caches for incremental decoding: a preallocated static cache, a rolling window, and
the cross-attention cache of an encoder-decoder.

A cache belongs to one model call sequence. ``advance`` registers the new tokens once per
forward and returns the key layout every layer will see; each attention layer then calls
``update`` with its own keys and values. ``ContextCache`` is different in kind: it holds keys and
values of a fixed context (the encoder's output), projected once and read at every step.
"""

import torch


class KVCache:
    """Cache of past keys and values for every layer.

    Args:
        n_layers: number of attention layers that use the cache.
        batch_size: rows in the batch.
        n_kv_heads: key/value heads per layer.
        head_dim: channels per head.
        max_len: the most tokens the sequence will hold (prompt plus new tokens).
        window: if set, a rolling cache: only the last ``window`` keys are kept, so memory is
            bounded by the window rather than the sequence (sliding-window models).
        dtype, device: of the stored tensors.

    The static cache preallocates ``(B, n_kv_heads, max_len, head_dim)`` per layer and writes
    in place; the rolling cache keeps at most ``window`` keys per layer.
    """

    def __init__(
        self,
        n_layers: int,
        batch_size: int,
        n_kv_heads: int,
        head_dim: int,
        max_len: int,
        window: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ):
        self.window, self.max_len, self.n_layers = window, max_len, n_layers
        self.length = 0  # tokens seen so far
        self._start = 0
        self._new = 0
        shape = (batch_size, n_kv_heads, 0 if window else max_len, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(n_layers)]
        # Which stored slots hold real tokens (False at padding) and their sequence indices.
        self.valid = torch.zeros(batch_size, 0 if window else max_len, dtype=torch.bool, device=device)
        self.index = torch.arange(0 if window else max_len, device=device)

    @property
    def batch_size(self) -> int:
        return self.valid.shape[0]

    def advance(
        self, n_new: int, new_valid: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Register ``n_new`` tokens; return (q_idx (T,), k_idx (S,), key_valid (B, S)) for this step."""
        if self.length + n_new > self.max_len and self.window is None:
            raise ValueError(
                f"max_len: the cache holds {self.max_len} tokens; {self.length} are stored and {n_new} more do not fit"
            )
        device = self.valid.device
        if new_valid is None:
            new_valid = torch.ones(self.batch_size, n_new, dtype=torch.bool, device=device)
        q_idx = torch.arange(self.length, self.length + n_new, device=device)
        self._start, self._new = self.length, n_new
        if self.window is None:
            self.valid[:, self.length : self.length + n_new] = new_valid.bool()
            end = self.length + n_new
            k_idx, key_valid = self.index[:end], self.valid[:, :end]
        else:
            k_idx = torch.cat([self.index, q_idx])
            key_valid = torch.cat([self.valid, new_valid.bool()], dim=1)
            keep = self.window
            self.index, self.valid = k_idx[-keep:], key_valid[:, -keep:]
        self.length += n_new
        return q_idx, k_idx, key_valid

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store this step's k, v (B, H, T, D) for ``layer``; return all keys and values to attend."""
        if self.window is None:
            end = self._start + self._new
            self.keys[layer][:, :, self._start : end] = k
            self.values[layer][:, :, self._start : end] = v
            return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]
        k_all = torch.cat([self.keys[layer], k], dim=2)
        v_all = torch.cat([self.values[layer], v], dim=2)
        self.keys[layer], self.values[layer] = k_all[:, :, -self.window :], v_all[:, :, -self.window :]
        return k_all, v_all

    def truncate(self, length: int) -> None:
        """Forget every token after the first ``length`` (speculative decoding rejects drafted
        tokens). Static cache only: the slots past ``length`` are overwritten by the next writes;
        a rolling window has already dropped what the shorter sequence would keep."""
        if self.window is not None:
            raise ValueError("cache: a rolling-window cache cannot be truncated; it keeps only the last window keys")
        if not 0 <= length <= self.length:
            raise ValueError(f"length: the cache holds {self.length} tokens; cannot truncate to {length}")
        self.length = length

    def reorder(self, rows: torch.Tensor) -> None:
        """Select batch rows (beam search): every stored tensor is indexed by ``rows``."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.valid = self.valid.index_select(0, rows)

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)


class ContextCache:
    """Keys and values of cross-attention over a fixed context (an encoder's output), per layer.

    Filled by each cross-attention layer on its first call (``store``) and read, unprojected, on
    every later call (``get``): the encoder's keys and values are projected once per generate
    call instead of once per step. Kept apart from the self-attention ``KVCache``, which grows
    each step; beam search reorders both (``reorder``).

    Args:
        n_layers: number of cross-attention layers.
    """

    def __init__(self, n_layers: int):
        self.n_layers = n_layers
        self.keys: list[torch.Tensor | None] = [None] * n_layers
        self.values: list[torch.Tensor | None] = [None] * n_layers

    def filled(self, layer: int) -> bool:
        return self.keys[layer] is not None

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Keep ``layer``'s context keys and values (B, H, S, D)."""
        self.keys[layer], self.values[layer] = k, v

    def get(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``layer``'s keys and values (B, H, S, D), as stored."""
        if self.keys[layer] is None:
            raise ValueError(f"cache: cross-attention layer {layer} has no stored keys yet")
        return self.keys[layer], self.values[layer]

    def reorder(self, rows: torch.Tensor) -> None:
        """Select batch rows (beam search), as ``KVCache.reorder``."""
        self.keys = [None if k is None else k.index_select(0, rows) for k in self.keys]
        self.values = [None if v is None else v.index_select(0, rows) for v in self.values]

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values if t is not None)
