"""Greedy and beam search token ids equal transformers' generate on the same GPT-2 weights."""

import functools
from collections import Counter

import pytest
import torch

import zoo
from tests.generation.conftest import GPT2, padded_prompts

V = GPT2["vocab_size"]
PAD = 2  # never an end token below; fills rows that have stopped


@functools.cache
def _free_run(model, seed: int) -> torch.Tensor:
    ids, mask = padded_prompts(model.config.vocab_size, seed=seed)
    return model.generate(ids, mask, max_new_tokens=20)[:, ids.shape[1] :]


def frequent_tokens(model, seed: int, n=2) -> list[int]:
    """Tokens greedy decoding of ``padded_prompts(seed)`` produces in the most rows: as end tokens
    they stop rows at different steps."""
    new = _free_run(model, seed)
    rows = Counter(t for row in new.tolist() for t in set(row))
    count = Counter(new.flatten().tolist())
    ranked = sorted(count, key=lambda t: (rows[t], count[t]), reverse=True)
    return [t for t in ranked if t != PAD][:n]


def same_as_transformers(ref, model, ids, mask, **options) -> bool:
    ours = model.generate(ids, mask, **options)
    theirs = ref.generate(ids, attention_mask=mask, do_sample=False, **options)
    assert ours.shape[1] > ids.shape[1]
    return ours.shape == theirs.shape and bool((ours == theirs).all())


GREEDY = {
    "no-eos": dict(eos_token_id=None),
    "eos": dict(eos_token_id="a", pad_token_id=PAD),
    "two-eos": dict(eos_token_id="ab", pad_token_id=PAD),
    "eos-pad-default": dict(eos_token_id="a"),
    "min-new-tokens": dict(eos_token_id="ab", pad_token_id=PAD, min_new_tokens=7),
    "repetition-penalty": dict(eos_token_id=None, repetition_penalty=1.4),
    "repetition-reward": dict(eos_token_id="a", pad_token_id=PAD, repetition_penalty=0.7),
}
BEAM = {
    "2-beams": dict(num_beams=2, eos_token_id="a", pad_token_id=PAD),
    "4-beams-two-eos": dict(num_beams=4, eos_token_id="ab", pad_token_id=PAD),
    "no-eos": dict(num_beams=3, eos_token_id=None),
    "length-penalty-0": dict(num_beams=3, eos_token_id="a", pad_token_id=PAD, length_penalty=0.0),
    "length-penalty-neg": dict(num_beams=3, eos_token_id="a", pad_token_id=PAD, length_penalty=-0.5),
    "early-stopping": dict(num_beams=3, eos_token_id="a", pad_token_id=PAD, early_stopping=True),
    "early-stopping-never": dict(num_beams=3, eos_token_id="a", pad_token_id=PAD, early_stopping="never"),
    "never-long": dict(num_beams=2, eos_token_id="a", pad_token_id=PAD, early_stopping="never", length_penalty=2.0),
    "min-new-repetition": dict(
        num_beams=3, eos_token_id="ab", pad_token_id=PAD, min_new_tokens=5, repetition_penalty=1.3
    ),
}


def _resolve(options: dict, eos: list[int]) -> dict:
    out = dict(options)
    if isinstance(out.get("eos_token_id"), str):  # "a" -> the most frequent token, "ab" -> the two most frequent
        picked = [eos["ab".index(c)] for c in out["eos_token_id"]]
        out["eos_token_id"] = picked[0] if len(picked) == 1 else picked
    return out


@pytest.mark.parametrize("options", GREEDY.values(), ids=GREEDY.keys())
def test_greedy_matches_transformers(gpt2_pair, options):
    ref, model = gpt2_pair
    ids, mask = padded_prompts(V, seed=1)
    options = _resolve(options, frequent_tokens(model, 1))
    assert same_as_transformers(ref, model, ids, mask, max_new_tokens=24, **options)


@pytest.mark.parametrize("options", BEAM.values(), ids=BEAM.keys())
def test_beam_search_matches_transformers(gpt2_pair, options):
    ref, model = gpt2_pair
    ids, mask = padded_prompts(V, seed=2)
    options = _resolve(options, frequent_tokens(model, 2))
    assert same_as_transformers(ref, model, ids, mask, max_new_tokens=20, **options)


def test_end_tokens_stop_rows_at_different_steps(gpt2_pair):
    """The eos cases above exercise stopping: rows end early and are filled with the pad token."""
    _, model = gpt2_pair
    ids, mask = padded_prompts(V, seed=1)
    eos = frequent_tokens(model, 1)[0]
    out = model.generate(ids, mask, max_new_tokens=24, eos_token_id=eos, pad_token_id=PAD)[:, ids.shape[1] :]
    ends = [(row == eos).nonzero().flatten()[0].item() for row in out if (row == eos).any()]
    assert len(set(ends)) >= 2, "end tokens should stop rows at different steps"
    for row in out:
        if (row == eos).any():
            first = (row == eos).nonzero().flatten()[0]
            assert (row[first + 1 :] == PAD).all()


def test_unpadded_single_prompt(gpt2_pair):
    ref, model = gpt2_pair
    ids = torch.randint(1, V, (1, 7), generator=torch.Generator().manual_seed(3))
    assert same_as_transformers(ref, model, ids, None, max_new_tokens=30, eos_token_id=None)
    assert same_as_transformers(ref, model, ids, None, max_new_tokens=30, eos_token_id=None, num_beams=3)


def test_parity_check_notices_wrong_positions_under_padding(gpt2_pair, monkeypatch):
    """If padding were counted in the positions (a classic left-padding bug), the padded rows
    would continue differently: the comparison above must notice."""
    ref, model = gpt2_pair
    ids, mask = padded_prompts(V, seed=1)
    assert same_as_transformers(ref, model, ids, mask, max_new_tokens=12, eos_token_id=None)
    monkeypatch.setattr(zoo.lm, "positions_from_mask", lambda m: torch.arange(m.shape[1]).expand(m.shape))
    assert not same_as_transformers(ref, model, ids, mask, max_new_tokens=12, eos_token_id=None)


def test_parity_check_notices_a_cache_left_in_beam_order(gpt2_pair, monkeypatch):
    """Beam search must move each beam's cached keys with it; a cache that ignores the reorder
    (a classic beam-search bug) must make the comparison fail."""
    ref, model = gpt2_pair
    ids, mask = padded_prompts(V, seed=2)
    options = dict(max_new_tokens=12, eos_token_id=None, num_beams=3)
    assert same_as_transformers(ref, model, ids, mask, **options)
    original = zoo.blocks.cache.KVCache.reorder

    def reorder_only_to_expand(self, rows):  # the prompt is still copied into the beams
        if rows.numel() != self.batch_size:
            original(self, rows)

    monkeypatch.setattr(zoo.blocks.cache.KVCache, "reorder", reorder_only_to_expand)
    assert not same_as_transformers(ref, model, ids, mask, **options)
