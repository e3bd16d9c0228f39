"""BART's text infilling on its own: the masked ratio, Poisson(3) span lengths, spans that never
touch, and a result that is never empty."""

import itertools
import random
import statistics

import pytest

from zoo.train.denoising import split_words, text_infilling

MASK = 0


def _words(n: int) -> list[list[int]]:
    return [[10 + 2 * i, 11 + 2 * i] if i % 3 == 0 else [10 + 2 * i] for i in range(n)]  # some 2-token words


def _spans(words, noised) -> tuple[int, list[int]]:
    """(masked words, the number of words each mask replaced), reading the noised text against the original."""
    lengths, i, j = [], 0, 0
    while j < len(noised):
        if noised[j] == MASK:
            j += 1
            nxt = noised[j] if j < len(noised) else None
            start = i
            while i < len(words) and words[i][0] != nxt:
                i += 1
            lengths.append(i - start)
        else:
            assert noised[j : j + len(words[i])] == words[i]  # kept words are kept whole, in order
            j += len(words[i])
            i += 1
    assert i == len(words)
    return sum(lengths), lengths


def test_the_ratio_is_exact_and_spans_never_touch():
    rng = random.Random(0)
    for n in (2, 5, 10, 40):
        for _ in range(50):
            words = _words(n)
            noised = text_infilling(words, MASK, rng)
            masked, lengths = _spans(words, noised)
            assert masked == min(round(0.3 * n), n - 1)
            assert lengths, "at least one mask"
            assert all(a != MASK or b != MASK for a, b in itertools.pairwise(noised))
            assert any(t != MASK for t in noised)


def test_span_lengths_are_poisson_3():
    """Long texts: spans are rarely cut or merged, so their lengths follow the Poisson draws
    (mean 3, variance 3, about 5% zero-length insertions)."""
    rng = random.Random(1)
    lengths = []
    for _ in range(400):
        words = _words(200)
        lengths += _spans(words, text_infilling(words, MASK, rng))[1][:-1]  # the last span is cut to fit
    assert abs(statistics.mean(lengths) - 3) < 0.15
    assert abs(statistics.variance(lengths) - 3) < 0.4
    assert 0.03 < lengths.count(0) / len(lengths) < 0.08


def test_short_texts_are_never_empty_and_one_word_gets_an_insertion():
    rng = random.Random(2)
    for _ in range(20):
        noised = text_infilling([[7, 8]], MASK, rng)
        assert sorted(noised) == [MASK, 7, 8] and noised.count(MASK) == 1
        assert MASK in text_infilling(_words(2), MASK, rng)


def test_runs_repeat_with_the_seed_and_bad_settings_are_named():
    words = _words(30)
    assert text_infilling(words, MASK, random.Random(3)) == text_infilling(words, MASK, random.Random(3))
    with pytest.raises(ValueError, match=r"^ratio: must be in \[0, 1\)"):
        text_infilling(words, MASK, random.Random(0), ratio=1.0)
    with pytest.raises(ValueError, match=r"^words: a text of at least one word"):
        text_infilling([], MASK, random.Random(0))


def test_split_words_at_word_starts():
    assert split_words([5, 6, 7, 8, 9], lambda t: t in (5, 8)) == [[5, 6, 7], [8, 9]]
    assert split_words([6, 8], lambda t: t == 8) == [[6], [8]]  # the first token starts a word anyway
