"""Logits processing on hand-made distributions, and against transformers' processors."""

import math

import pytest
import torch
from transformers.generation import logits_process as hf

from zoo.generation import GenerationConfig, _Processor, apply_repetition_penalty, apply_top_k, apply_top_p

INF = float("-inf")


def _logits(probs) -> torch.Tensor:
    return torch.tensor([[math.log(p) for p in probs]])


@pytest.mark.parametrize(
    "p, kept",
    [
        (0.4, {0}),  # the most likely token alone holds 0.5 >= 0.4
        (0.5, {0}),  # exactly reaching p is enough
        (0.7, {0, 1}),  # 0.5 + 0.3 = 0.8 >= 0.7; the 0.15 token is tail
        (0.85, {0, 1, 2}),  # 0.8 < 0.85, so the 0.15 token is needed
        (0.99, {0, 1, 2, 3}),
        (1.0, {0, 1, 2, 3}),
    ],
)
def test_top_p_keeps_exactly_the_nucleus(p, kept):
    probs = [0.5, 0.3, 0.15, 0.05]
    order = [2, 0, 3, 1]  # shuffled positions in the vocabulary
    scores = torch.full((1, 4), 0.0)
    for rank, pos in enumerate(order):
        scores[0, pos] = math.log(probs[rank])
    out = apply_top_p(scores, p)
    kept_positions = {order[r] for r in kept}
    for pos in range(4):
        if pos in kept_positions:
            assert out[0, pos] == scores[0, pos]  # kept scores are untouched
        else:
            assert out[0, pos] == INF


def test_top_p_keeps_the_top_token_even_below_p_and_handles_ties():
    assert (apply_top_p(_logits([0.9, 0.1]), 1e-9) == torch.tensor([[math.log(0.9), INF]])).all()
    uniform = apply_top_p(torch.zeros(1, 4), 0.6)  # 0.25 each: three are needed to reach 0.6
    assert int((uniform == 0).sum()) == 3


def test_top_p_matches_transformers_on_random_rows():
    scores = 3 * torch.randn(6, 97, generator=torch.Generator().manual_seed(0))
    for p in (0.3, 0.8, 0.95):
        ref = hf.TopPLogitsWarper(p)(None, scores)
        assert torch.equal(apply_top_p(scores, p), ref)


def test_top_k_keeps_the_k_best_and_their_ties():
    scores = torch.tensor([[1.0, 5.0, 3.0, 5.0, 2.0]])
    assert torch.equal(apply_top_k(scores, 3), torch.tensor([[INF, 5.0, 3.0, 5.0, INF]]))
    assert torch.equal(apply_top_k(scores, 1), torch.tensor([[INF, 5.0, INF, 5.0, INF]]))
    assert torch.equal(apply_top_k(scores, 10), scores)


def test_repetition_penalty_divides_positive_and_multiplies_negative_scores():
    scores = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    seq = torch.tensor([[0, 1, 1]])
    assert torch.equal(apply_repetition_penalty(scores, seq, 2.0), torch.tensor([[1.0, -2.0, 0.5, 3.0]]))
    # Left padding (position 0 here) does not count as a previous token.
    out = apply_repetition_penalty(scores, seq, 2.0, start=torch.tensor([1]))
    assert torch.equal(out, torch.tensor([[2.0, -2.0, 0.5, 3.0]]))
    # A penalty below 1 rewards repeats.
    assert torch.equal(apply_repetition_penalty(scores, seq, 0.5), torch.tensor([[4.0, -0.5, 0.5, 3.0]]))


def test_repetition_penalty_matches_transformers():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(4, 50, generator=g)
    seq = torch.randint(0, 50, (4, 12), generator=g)
    start = torch.tensor([0, 3, 5, 11])
    ref = hf.RepetitionPenaltyLogitsProcessor(1.3, prompt_ignore_length=start)(seq, scores.clone())
    assert torch.equal(apply_repetition_penalty(scores, seq, 1.3, start), ref)


def test_processing_order_matches_transformers():
    """Repetition penalty, min_new_tokens, temperature, top-k, top-p: one pipeline, transformers' order."""
    g = torch.Generator().manual_seed(2)
    scores = 2 * torch.randn(3, 61, generator=g)
    seq = torch.randint(0, 61, (3, 9), generator=g)
    config = GenerationConfig(
        do_sample=True, temperature=0.6, top_k=20, top_p=0.8, repetition_penalty=1.2, min_new_tokens=5,
        eos_token_id=[4, 7], max_new_tokens=10,
    )  # fmt: skip
    ours = _Processor(config, prompt_len=6, start=None, device="cpu")(scores, seq)
    ref = hf.LogitsProcessorList(
        [
            hf.RepetitionPenaltyLogitsProcessor(1.2),
            hf.MinNewTokensLengthLogitsProcessor(6, 5, [4, 7]),
            hf.TemperatureLogitsWarper(0.6),
            hf.TopKLogitsWarper(20),
            hf.TopPLogitsWarper(0.8),
        ]
    )(seq, scores.clone())
    assert torch.equal(ours, ref)
    assert torch.isinf(ours).any() and torch.isfinite(ours).any()  # the filters did act


def test_min_new_tokens_bans_end_tokens_until_enough_are_new():
    scores = torch.randn(2, 30, generator=torch.Generator().manual_seed(3))
    seq = torch.zeros(2, 9, dtype=torch.long)
    config = GenerationConfig(min_new_tokens=5, eos_token_id=[4, 7], max_new_tokens=10)
    early = _Processor(config, prompt_len=5, start=None, device="cpu")(scores, seq)  # 4 new tokens
    assert (early[:, [4, 7]] == INF).all()
    assert torch.equal(early[:, [0, 1, 2, 3, 5, 6, 8]], scores[:, [0, 1, 2, 3, 5, 6, 8]])
    late = _Processor(config, prompt_len=4, start=None, device="cpu")(scores, seq)  # 5 new tokens
    assert torch.equal(late, scores)
