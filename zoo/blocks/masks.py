"""One function builds every attention mask: causal, sliding window and key padding."""

import torch


def attention_mask(
    q_idx: torch.Tensor,
    k_idx: torch.Tensor,
    key_valid: torch.Tensor | None = None,
    causal: bool = False,
    window: int | None = None,
) -> torch.Tensor | None:
    """A boolean mask, True where a query may attend a key.

    Args:
        q_idx: (T,) sequence index of each query (its place in the whole sequence, cache included).
        k_idx: (S,) sequence index of each key.
        key_valid: (B, S) False at padding keys, or None.
        causal: a query sees only keys at or before its index.
        window: if set, a query sees only the last ``window`` keys up to itself
            (``q - k < window``), as Mistral's sliding window.

    Returns:
        (B or 1, 1, T, S) bool, or None when nothing is masked (also when a single query sees
        every key, as in a decoding step without padding: attention then runs unmasked). A query
        row left with no key (a padding query under left padding) is opened to all keys, so
        softmax stays finite; its output is never used.
    """
    mask = None
    if causal or window is not None:
        diff = q_idx[:, None] - k_idx[None, :]  # (T, S)
        mask = diff >= 0 if causal else torch.ones_like(diff, dtype=torch.bool)
        if window is not None:
            mask = mask & (diff < window) if causal else mask & (diff.abs() < window)
        mask = mask[None, None]  # (1, 1, T, S)
    if key_valid is not None:
        pad = key_valid.bool()[:, None, None, :]  # (B, 1, 1, S)
        mask = pad if mask is None else mask & pad
    if mask is None or (q_idx.shape[0] == 1 and bool(mask.all())):
        return None
    return mask | ~mask.any(dim=-1, keepdim=True)
