"""BART's text infilling (Lewis et al. 2019, section 2.2): spans of text, their lengths drawn from a
Poisson distribution (lambda 3), are each replaced by a single mask token; a zero-length span
inserts a mask. The model learns to reconstruct the original, including how many tokens each mask
stands for. As in fairseq's implementation the spans cover whole words, and ``ratio`` of them
(30% in the paper) are masked.
"""

import random

import numpy as np


def text_infilling(
    words: list[list[int]],
    mask_id: int,
    rng: random.Random,
    ratio: float = 0.3,
    poisson_lambda: float = 3.0,
) -> list[int]:
    """Noise one text: ``words`` (each word's token ids, in order) -> the token ids with spans masked.

    Exactly ``round(ratio * len(words))`` words are masked (at most all but one, so some text
    always stays), in spans whose lengths are Poisson(``poisson_lambda``) draws (the last one cut
    to fit). Every span becomes one ``mask_id`` and spans never touch (two masks in a row would
    hide where one span ends), so the result always holds at least one mask and one word when
    there are two words or more.

    Args:
        words: the text as words, each a non-empty list of token ids.
        mask_id: the tokenizer's mask token.
        rng: the random source (one per data set and epoch, so runs repeat).
        ratio: fraction of the words to mask, in [0, 1).
        poisson_lambda: mean span length.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio: must be in [0, 1), got {ratio!r}")
    if not poisson_lambda > 0:
        raise ValueError(f"poisson_lambda: must be > 0, got {poisson_lambda!r}")
    if not words or any(not w for w in words):
        raise ValueError("words: a text of at least one word, each word at least one token")
    n = len(words)
    to_mask = min(round(ratio * n), n - 1)
    np_rng = np.random.default_rng(rng.getrandbits(63))
    lengths: list[int] = []
    while sum(lengths) < to_mask or not lengths:  # at least one span: a zero-length one inserts a mask
        lengths.append(int(np_rng.poisson(poisson_lambda)))
    lengths[-1] -= sum(lengths) - to_mask
    kept = n - to_mask
    # Each span sits in its own gap between kept words (kept + 1 gaps): spans never touch. More
    # spans than gaps: the extra ones join others (the masked word count stays exact).
    while len(lengths) > kept + 1:
        extra = lengths.pop(rng.randrange(len(lengths)))
        lengths[rng.randrange(len(lengths))] += extra
    gaps = sorted(rng.sample(range(kept + 1), len(lengths)))
    span_at = dict(zip(gaps, lengths, strict=True))
    out: list[int] = []
    i = 0
    for gap in range(kept + 1):
        if gap in span_at:
            out.append(mask_id)
            i += span_at[gap]  # the masked words
        if gap < kept:
            out.extend(words[i])
            i += 1
    return out


def split_words(ids: list[int], starts_word) -> list[list[int]]:
    """Token ids -> words: a new word begins at each id for which ``starts_word(id)`` is true
    (a byte-level BPE marks a leading space with 'Ġ')."""
    words: list[list[int]] = []
    for t in ids:
        if not words or starts_word(t):
            words.append([])
        words[-1].append(t)
    return words
