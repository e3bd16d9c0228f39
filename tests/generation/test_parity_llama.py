"""Greedy and beam search equal transformers' generate on LLaMA, Mistral (a sliding window far
shorter than the output) and Mixtral weights, on left-padded batches."""

import pytest
import torch
import transformers

import zoo
from tests.conftest import randomize_
from tests.generation.conftest import padded_prompts
from tests.generation.test_parity_gpt2 import PAD, frequent_tokens, same_as_transformers

V = 211
BASE = dict(vocab_size=V, max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=None)
CASES = {
    # GQA 4:2, head_dim 16 != 48 / 4, untied head.
    "llama-gqa": (
        transformers.LlamaForCausalLM,
        transformers.LlamaConfig(**BASE, hidden_size=48, intermediate_size=104, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=16, tie_word_embeddings=False),
    ),
    # A window of 4 keys: prompts of up to 9 tokens and 20 new ones, so most steps cut it.
    "mistral-window": (
        transformers.MistralForCausalLM,
        transformers.MistralConfig(**BASE, hidden_size=48, intermediate_size=100, num_hidden_layers=2,
                                   num_attention_heads=6, num_key_value_heads=2, head_dim=8, sliding_window=4,
                                   tie_word_embeddings=False),
    ),
    "mixtral-window": (
        transformers.MixtralForCausalLM,
        transformers.MixtralConfig(**BASE, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=12, num_local_experts=4,
                                   num_experts_per_tok=2, sliding_window=6, tie_word_embeddings=True),
    ),
}  # fmt: skip


@pytest.fixture(scope="module", params=CASES, ids=CASES)
def pair(request, tmp_path_factory):
    model_cls, config = CASES[request.param]
    path = tmp_path_factory.mktemp(request.param)
    randomize_(model_cls(config), seed=3).save_pretrained(path)
    return request.param, model_cls.from_pretrained(path).eval(), zoo.from_pretrained(path)


def test_greedy_matches_transformers(pair):
    _, ref, model = pair
    ids, mask = padded_prompts(V, seed=4)
    assert same_as_transformers(ref, model, ids, mask, max_new_tokens=20, eos_token_id=None)
    eos = frequent_tokens(model, 4)
    assert same_as_transformers(ref, model, ids, mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=PAD)
    assert same_as_transformers(ref, model, ids, mask, max_new_tokens=20, eos_token_id=None, repetition_penalty=1.3)


def test_beam_search_matches_transformers(pair):
    _, ref, model = pair
    ids, mask = padded_prompts(V, seed=5)
    eos = frequent_tokens(model, 5)[0]
    assert same_as_transformers(ref, model, ids, mask, max_new_tokens=20, num_beams=3, eos_token_id=None)
    assert same_as_transformers(
        ref, model, ids, mask, max_new_tokens=20, num_beams=4, eos_token_id=eos, pad_token_id=PAD, length_penalty=0.5
    )


@pytest.mark.parametrize("pair", ["mistral-window", "mixtral-window"], indirect=True)
def test_the_window_matters_and_the_rolling_cache_stays_bounded(pair):
    """Without its window the same weights continue differently, so the window is exercised; the
    rolling cache holds no more than the window however long the output grows."""
    _, _, model = pair
    ids, mask = padded_prompts(V, seed=4)
    windowed = model.generate(ids, mask, max_new_tokens=20)
    full = type(model)(model.config.replace(sliding_window=None)).eval()
    full.load_state_dict(model.state_dict())
    assert not torch.equal(full.generate(ids, mask, max_new_tokens=20), windowed)
    seen = []
    original = model.new_cache

    def spy(*args, **kwargs):
        seen.append(original(*args, **kwargs))
        return seen[-1]

    model.new_cache = spy
    try:
        model.generate(ids, mask, max_new_tokens=20)
    finally:
        del model.new_cache
    assert max(k.shape[2] for k in seen[0].keys) <= model.config.sliding_window
