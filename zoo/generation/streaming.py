"""TextStreamer: a streamer that writes one row's text as its tokens arrive."""

from collections.abc import Callable

import torch


class TextStreamer:
    """A ``streamer`` for ``generate`` that writes the text of one row as its tokens arrive.

    Args:
        tokenizer: a ``zoo.tokenizer.Tokenizer`` (anything with ``decode(ids)``).
        write: receives each new piece of text (default: print to stdout at once).

    Each step decodes the tokens so far and writes what was not written yet; a piece that ends
    inside a multi-byte character waits for the token that completes it.
    """

    def __init__(self, tokenizer, write: Callable[[str], None] | None = None):
        self.tokenizer = tokenizer
        self.write = write or (lambda text: print(text, end="", flush=True))
        self.ids: list[int] = []
        self.written = 0

    def __call__(self, tokens: torch.Tensor) -> None:
        if tokens.numel() != 1:
            raise ValueError(f"streamer: TextStreamer writes one row, got a batch of {tokens.numel()}")
        self.ids.append(int(tokens))
        text = self.tokenizer.decode(self.ids)
        if not text.endswith("\ufffd"):  # U+FFFD: the bytes of a character are still arriving
            self.write(text[self.written :])
            self.written = len(text)
