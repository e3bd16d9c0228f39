"""Logits processing, in transformers' order: repetition penalty, then min_new_tokens (end tokens
banned), then the forced first and last tokens, then, when sampling, temperature, top-k and top-p."""

import torch
from torch.nn import functional as F

from zoo.generation.config import GenerationConfig

# Each takes and returns float scores (N, vocab).


def apply_repetition_penalty(
    scores: torch.Tensor, sequences: torch.Tensor, penalty: float, start: torch.Tensor | None = None
) -> torch.Tensor:
    """Penalise every token already in a row (CTRL's penalty, as transformers applies it): a
    positive score is divided by ``penalty``, a negative one multiplied, once per token.

    Args:
        scores: (N, V) next-token scores.
        sequences: (N, L) the tokens so far.
        penalty: > 1 discourages repeats, < 1 encourages them.
        start: (N,) first real position of each row; the left padding before it is not counted.
    """
    V = scores.shape[-1]
    ids = sequences
    if start is not None:
        before = torch.arange(ids.shape[1], device=ids.device)[None, :] < start[:, None]  # (N, L)
        ids = ids.masked_fill(before, V)  # column V is a dummy past the vocabulary
    padded = F.pad(scores, (0, 1))  # (N, V + 1)
    picked = padded.gather(1, ids)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return padded.scatter(1, ids, picked)[:, :V]


def apply_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest scores of each row (ties with the k-th kept too); the rest become -inf."""
    kth = scores.topk(min(k, scores.shape[-1]), dim=-1).values[:, -1:]  # (N, 1)
    return scores.masked_fill(scores < kth, float("-inf"))


def apply_top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probabilities sum to at
    least ``p``; the tail becomes -inf. A token is dropped when the tokens more likely than it
    already hold ``p``; the most likely token always stays."""
    ordered, order = scores.sort(dim=-1, descending=True)
    probs = ordered.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (N, V) probability of the tokens ranked above
    drop_sorted = mass_before >= p
    drop_sorted[:, 0] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def _force(scores: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """-inf everywhere but at ``tokens`` (K,), which get 0: (N, V) -> (N, V)."""
    return torch.full_like(scores, float("-inf")).index_fill(1, tokens, 0.0)


class _Processor:
    """The logits processing of one generate call, in transformers' order."""

    def __init__(self, config: GenerationConfig, prompt_len: int, start: torch.Tensor | None, device):
        self.c = config
        self.prompt_len = prompt_len
        self.start = start
        self.eos = torch.tensor(config.eos_token_id, device=device) if config.eos_token_id else None
        self.forced_bos = (
            torch.tensor(config.forced_bos_token_id, device=device) if config.forced_bos_token_id else None
        )
        self.forced_eos = (
            torch.tensor(config.forced_eos_token_id, device=device) if config.forced_eos_token_id else None
        )

    def changes_greedy(self, sequences: torch.Tensor) -> bool:
        """Whether this step's processing can change the argmax of the scores (greedy decoding
        may skip the logits only where it cannot)."""
        c, length = self.c, sequences.shape[1]
        return (
            c.repetition_penalty != 1.0
            or (self.eos is not None and length - self.prompt_len < c.min_new_tokens)
            or (self.forced_bos is not None and length == 1)
            or (self.forced_eos is not None and length == self.prompt_len + c.max_new_tokens - 1)
        )

    def __call__(self, scores: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
        c = self.c
        if c.repetition_penalty != 1.0:
            scores = apply_repetition_penalty(scores, sequences, c.repetition_penalty, self.start)
        if self.eos is not None and sequences.shape[1] - self.prompt_len < c.min_new_tokens:
            scores = scores.index_fill(1, self.eos, float("-inf"))
        # transformers' ForcedBOS/ForcedEOSTokenLogitsProcessor: when the sequence holds one token
        # (an encoder-decoder's start token), and when one place is left before prompt +
        # max_new_tokens, only the forced tokens stay possible, each with score 0.
        length = sequences.shape[1]
        if self.forced_bos is not None and length == 1:
            scores = _force(scores, self.forced_bos)
        if self.forced_eos is not None and length == self.prompt_len + c.max_new_tokens - 1:
            scores = _force(scores, self.forced_eos)
        if c.do_sample:
            if c.temperature != 1.0:
                scores = scores / c.temperature
            if c.top_k:
                scores = apply_top_k(scores, c.top_k)
            if c.top_p is not None and c.top_p < 1.0:
                scores = apply_top_p(scores, c.top_p)
        return scores
