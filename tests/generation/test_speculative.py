"""Speculative decoding: greedy output identical to the target's own, sampling keeping the
target's distribution (the accept/reject rule, checked statistically on a tiny vocabulary)."""

import copy

import pytest
import torch

import zoo
from tests.conftest import randomize_
from zoo.speculative import accept_drafts, layer_skip_draft, quantized_draft, speculative_generate


@pytest.fixture(scope="module")
def pair():
    target = randomize_(zoo.create_model("llama-tiny", n_layers=3, max_seq_len=96), seed=1, std=0.3)
    draft = randomize_(zoo.create_model("llama-tiny", n_layers=1, d_model=32, d_ff=64, max_seq_len=96), seed=2)
    return target, draft


def _prompt(seed: int, T: int = 7) -> torch.Tensor:
    return torch.randint(0, 211, (1, T), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("k", [1, 3, 5])
def test_greedy_is_the_targets_own(pair, k):
    target, draft = pair
    for seed in range(3):
        ids = _prompt(seed)
        alone = target.generate(ids, max_new_tokens=24)
        out, stats = speculative_generate(target, draft, ids, max_new_tokens=24, k=k)
        assert torch.equal(out, alone)
        assert stats.target_forwards <= 24 and stats.drafted >= stats.accepted


def test_a_draft_that_is_the_target_accepts_everything(pair):
    target, _ = pair
    out, stats = speculative_generate(target, target, _prompt(0), max_new_tokens=21, k=4)
    assert torch.equal(out, target.generate(_prompt(0), max_new_tokens=21))
    assert stats.acceptance_rate == 1.0 and stats.target_forwards == 5  # 5 tokens a forward, then 1


def test_streams_each_verified_round(pair):
    """The streamer gets every new token, in order, by the end of the round that verified it:
    several arrive between two target forwards when drafts are accepted."""
    target = pair[0]
    twin = copy.deepcopy(target)  # the target's own copy drafts: every draft accepted
    got, forwards_seen = [], []
    counting = target.forward

    def counted(*args, **kwargs):
        forwards_seen.append(len(got))
        return counting(*args, **kwargs)

    target.forward = counted
    try:
        out, stats = speculative_generate(target, twin, _prompt(0), max_new_tokens=21, k=4, streamer=got.append)
    finally:
        del target.forward
    assert torch.cat(got).tolist() == out[0, 7:].tolist()
    # prefill, then one verification per round: 0 tokens streamed before the first round, 5 more each round
    assert forwards_seen == [0, 0, 5, 10, 15, 20] and stats.target_forwards == 5


def test_layer_skip_draft_shares_the_weights(pair):
    target, _ = pair
    draft = layer_skip_draft(target, 1)
    assert len(draft.layers) == 1 and len(target.layers) == 3 and draft.layers[0] is target.layers[0]
    out, _ = speculative_generate(target, draft, _prompt(4), max_new_tokens=16, k=3)
    assert torch.equal(out, target.generate(_prompt(4), max_new_tokens=16))
    with pytest.raises(ValueError, match="n_layers: a layer-skip draft needs 1 to 2 layers"):
        layer_skip_draft(target, 3)


def test_eos_stops_and_sampling_runs(pair):
    target, draft = pair
    alone = target.generate(_prompt(1), max_new_tokens=10)
    eos = int(alone[0, 7 + 3])  # the fourth new token
    out, _ = speculative_generate(target, draft, _prompt(1), max_new_tokens=10, k=3, eos_token_id=eos)
    assert out.shape[1] <= 7 + 4 and int(out[0, -1]) == eos
    a, _ = speculative_generate(target, draft, _prompt(1), max_new_tokens=12, do_sample=True, temperature=0.8, seed=3)
    b, _ = speculative_generate(target, draft, _prompt(1), max_new_tokens=12, do_sample=True, temperature=0.8, seed=3)
    assert torch.equal(a, b) and a.shape == (1, 19)


def test_bad_arguments(pair):
    target, draft = pair
    with pytest.raises(ValueError, match="draft: vocab_size 173 differs"):
        speculative_generate(target, zoo.create_model("mistral-tiny"), _prompt(0))
    with pytest.raises(ValueError, match="sliding-window"):
        speculative_generate(zoo.create_model("mistral-tiny"), zoo.create_model("mistral-tiny"), _prompt(0, 3) % 173)
    with pytest.raises(ValueError, match="one row"):
        speculative_generate(target, draft, torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="only used when sampling"):
        speculative_generate(target, draft, _prompt(0), temperature=0.5)


def _tv(samples: torch.Tensor, probs: torch.Tensor) -> float:
    counts = torch.bincount(samples, minlength=probs.numel()).float()
    return 0.5 * (counts / counts.sum() - probs).abs().sum().item()


def test_accept_reject_keeps_the_target_distribution():
    """Target p and draft q far apart on 6 tokens; 40000 independent rounds of k = 2 drafts. The
    first emitted token must follow p[0], and the second (when the first draft was kept) p[1].
    Sampling noise in the total variation is about 0.01; a rule that always keeps the draft,
    resamples from p instead of the residual, or accepts with p/q unclipped, is off by > 0.1."""
    g = torch.Generator().manual_seed(0)
    N = 40000
    p = torch.tensor([[0.5, 0.2, 0.1, 0.1, 0.05, 0.05], [0.05, 0.05, 0.1, 0.1, 0.2, 0.5], [1 / 6] * 6])
    q = torch.tensor([[0.1, 0.1, 0.1, 0.2, 0.2, 0.3], [0.3, 0.3, 0.1, 0.1, 0.1, 0.1]])
    drafts = torch.stack([torch.multinomial(q[i], N, replacement=True, generator=g) for i in range(2)], dim=1)
    accepted, token = accept_drafts(p.expand(N, -1, -1), q.expand(N, -1, -1), drafts, g)
    first = torch.where(accepted >= 1, drafts[:, 0], token)
    reached = accepted >= 1
    second = torch.where(accepted[reached] >= 2, drafts[reached, 1], token[reached])
    assert _tv(first, p[0]) < 0.02, _tv(first, p[0])
    assert _tv(second, p[1]) < 0.03, _tv(second, p[1])
    # the acceptance rate is sum(min(p, q)) per position
    assert abs(reached.float().mean().item() - torch.minimum(p[0], q[0]).sum().item()) < 0.01


def test_a_quantized_copy_of_the_target_is_a_draft_that_is_almost_always_right(pair):
    """``quantized_draft``: the target's own layers at int8 (a copy; the target keeps its float
    weights and the draft shares its embedding). Greedy output is the target's, and the draft is
    accepted far more often than an unrelated small model (0-1% here); at int4 too, less often.
    (A tiny random model's logits are closer to ties than a trained one's: SmolLM2 accepts its
    int8 and Q4_1 drafts 92-100% of the time, docs/generation.md.)"""
    _, unrelated = pair
    model = zoo.create_model("llama-tiny", n_layers=3, max_seq_len=96, d_model=64, d_ff=128)
    target = randomize_(model, seed=5, std=0.1)
    draft = quantized_draft(target, "int8")
    assert isinstance(target.layers[0].mlp.down, torch.nn.Linear) and draft.embed is target.embed
    assert draft.layers[0] is not target.layers[0] and "int8" in repr(draft.layers[0].mlp.down)
    rates = {}
    for name, d in (("int8", draft), ("int4", quantized_draft(target, "int4")), ("unrelated", unrelated)):
        accepted = drafted = 0
        for seed in range(3):
            ids = _prompt(seed)
            out, stats = speculative_generate(target, d, ids, max_new_tokens=24, k=4)
            assert torch.equal(out, target.generate(ids, max_new_tokens=24))
            accepted, drafted = accepted + stats.accepted, drafted + stats.drafted
        rates[name] = accepted / drafted
    assert rates["int8"] >= 0.85 and rates["int4"] >= rates["unrelated"] + 0.25 and rates["int8"] > rates["int4"]
    with pytest.raises(ValueError, match="model: a quantized draft is made from a decoder-only zoo model"):
        quantized_draft(torch.nn.Linear(2, 2))
    # A width that 8-bit blocks of 32 do not divide (48): the draft's head is per-channel int8 instead.
    narrow = randomize_(zoo.create_model("llama-tiny", n_layers=2, max_seq_len=96, d_model=48, d_ff=96), seed=6)
    draft = quantized_draft(narrow, "int8")
    assert draft.lm_head.kind == "int8" and draft.lm_head.input_copies == 1
    assert draft.layers[0].mlp.down.kind == "int8"
    out, _ = speculative_generate(narrow, draft, _prompt(1), max_new_tokens=12, k=3)
    assert torch.equal(out, narrow.generate(_prompt(1), max_new_tokens=12))
