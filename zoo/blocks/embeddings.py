"""Input checks shared by token embeddings."""

import torch


def check_token_ids(ids: torch.Tensor, vocab_size: int, name: str = "input_ids", field: str = "vocab_size") -> None:
    """Raise a named error when an id falls outside [0, vocab_size)."""
    if ids.numel() == 0:
        raise ValueError(f"{name}: empty input; give at least one token")
    low, high = int(ids.min()), int(ids.max())
    if low < 0 or high >= vocab_size:
        bad = high if high >= vocab_size else low
        raise ValueError(f"{name}: id {bad} is outside the model's {field}={vocab_size}")
