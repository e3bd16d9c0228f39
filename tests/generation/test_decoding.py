"""Cache vs recompute, sampling, streaming and min_new_tokens on a tiny random GPT-2."""

import pytest
import torch

import zoo
from tests.conftest import randomize_
from tests.generation.conftest import GPT2, padded_prompts
from zoo.generation import Decoder, stream

V = GPT2["vocab_size"]


def _decode_logits(model, ids, mask, follow: torch.Tensor, use_cache: bool) -> torch.Tensor:
    """Logits of every step while feeding the tokens ``follow`` (B, N): (N + 1, B, vocab)."""
    decoder = Decoder(model, ids, mask, max_new_tokens=follow.shape[1], use_cache=use_cache)
    out = [decoder.logits()]
    for tokens in follow.T:
        decoder.append(tokens)
        out.append(decoder.logits())
    return torch.stack(out)


@pytest.mark.parametrize(
    "overrides",
    [dict(), dict(position="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=2, sliding_window=5)],
    ids=["gpt2", "rope-gqa-sliding-window"],
)
def test_cached_and_uncached_logits_agree(gpt2_pair, overrides):
    """The static cache (and the rolling cache, with a window far shorter than the sequence)
    gives the logits of recomputing the whole prefix, within 1e-5, on a left-padded batch."""
    _, model = gpt2_pair
    if overrides:
        model = randomize_(zoo.create_model("gpt2-tiny", **overrides), seed=4)
    ids, mask = padded_prompts(V, seed=5)
    follow = torch.randint(0, V, (3, 14), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        cached = _decode_logits(model, ids, mask, follow, use_cache=True)
        full = _decode_logits(model, ids, mask, follow, use_cache=False)
    assert (cached - full).abs().max() < 1e-5
    assert cached.std() > 0.1  # real logits, not a degenerate model
    if overrides:  # the rolling cache stays bounded by the window
        decoder = Decoder(model, ids, mask, max_new_tokens=14)
        decoder.logits()
        assert decoder.cache.keys[0].shape[2] == 5


def test_generate_without_cache_gives_the_same_tokens(gpt2_pair):
    _, model = gpt2_pair
    ids, mask = padded_prompts(V, seed=7)
    for options in (dict(), dict(num_beams=3)):
        cached = model.generate(ids, mask, max_new_tokens=15, **options)
        recomputed = model.generate(ids, mask, max_new_tokens=15, use_cache=False, **options)
        assert torch.equal(cached, recomputed)


def test_sampling_with_a_seed_is_reproducible(gpt2_pair):
    _, model = gpt2_pair
    ids, mask = padded_prompts(V, seed=8)
    options = dict(max_new_tokens=16, do_sample=True, temperature=1.5)
    a = model.generate(ids, mask, seed=11, **options)
    b = model.generate(ids, mask, seed=11, **options)
    c = model.generate(ids, mask, seed=12, **options)
    d = model.generate(ids, mask, generator=torch.Generator().manual_seed(11), **options)
    assert torch.equal(a, b) and torch.equal(a, d)
    assert not torch.equal(a, c)
    greedy = model.generate(ids, mask, max_new_tokens=16)
    assert not torch.equal(a, greedy)  # it does sample


def test_top_k_1_and_tiny_top_p_equal_greedy(gpt2_pair):
    _, model = gpt2_pair
    ids, mask = padded_prompts(V, seed=9)
    greedy = model.generate(ids, mask, max_new_tokens=16)
    for options in (dict(top_k=1), dict(top_p=1e-6), dict(top_k=1, temperature=3.0)):
        assert torch.equal(model.generate(ids, mask, max_new_tokens=16, do_sample=True, seed=0, **options), greedy)


def test_sampled_tokens_stay_in_the_top_k(gpt2_pair):
    _, model = gpt2_pair
    ids, mask = padded_prompts(V, seed=10)
    k = 3
    out = model.generate(ids, mask, max_new_tokens=12, do_sample=True, top_k=k, temperature=5.0, seed=1)
    T = ids.shape[1]
    full_mask = torch.cat([mask, torch.ones(3, out.shape[1] - T, dtype=mask.dtype)], dim=1)
    with torch.no_grad():
        logits = model(out, attention_mask=full_mask).logits  # (B, L, V): step t's scores at T - 1 + t
    top = logits[:, T - 1 : -1].topk(k, dim=-1).indices  # (B, new, k)
    chosen = out[:, T:]
    assert (top == chosen[..., None]).any(-1).all()
    assert (top[..., 0] != chosen).any()  # the high temperature did pick non-greedy tokens


def test_min_new_tokens_holds_the_end_token_back(gpt2_pair):
    _, model = gpt2_pair
    ids, mask = padded_prompts(V, seed=1)
    free = model.generate(ids, mask, max_new_tokens=20)[:, ids.shape[1] :]
    eos = int(free[0, 0])  # the very first token of row 0 would end it at once
    early = model.generate(ids, mask, max_new_tokens=20, eos_token_id=eos)[:, ids.shape[1] :]
    assert early[0, 0] == eos
    held = model.generate(ids, mask, max_new_tokens=20, eos_token_id=eos, pad_token_id=1, min_new_tokens=6)
    assert not (held[:, ids.shape[1] : ids.shape[1] + 6] == eos).any()


def test_stream_yields_the_tokens_generate_returns(gpt2_pair):
    _, model = gpt2_pair
    ids, mask = padded_prompts(V, seed=12)
    options = dict(max_new_tokens=10, do_sample=True, top_p=0.9, seed=3)
    full = model.generate(ids, mask, **options)
    steps = list(stream(model, ids, mask, **options))
    assert len(steps) == 10 and torch.equal(torch.stack(steps, dim=1), full[:, ids.shape[1] :])
    seen = []
    assert torch.equal(model.generate(ids, mask, streamer=seen.append, **options), full)
    assert torch.equal(torch.stack(seen, dim=1), full[:, ids.shape[1] :])


def test_stream_is_lazy_and_stops_at_the_end_token(gpt2_pair):
    _, model = gpt2_pair
    ids = torch.randint(1, V, (1, 5), generator=torch.Generator().manual_seed(13))
    free = model.generate(ids, max_new_tokens=8)[0, 5:]
    stop_at = next(i for i in range(1, 8) if free[i] not in free[:i])  # a token first seen at step stop_at
    steps = stream(model, ids, max_new_tokens=8, eos_token_id=int(free[stop_at]))
    first = next(steps)  # available before the later steps are computed
    tokens = torch.cat([first, *steps])
    assert torch.equal(tokens, free[: stop_at + 1])


def test_outputs_are_ordinary_tensors_and_autograd_stays_on_between_steps(gpt2_pair):
    """Decoding runs in inference mode inside each step only: results can feed training later,
    and a loop over ``stream`` keeps the caller's grad mode."""
    _, model = gpt2_pair
    ids, mask = padded_prompts(V, seed=14)
    for options in (dict(), dict(num_beams=2)):
        assert not model.generate(ids, mask, max_new_tokens=3, **options).is_inference()
    for tokens in stream(model, ids, mask, max_new_tokens=3):
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        assert not tokens.is_inference()


def test_decoding_kernels_by_batch_size_and_always_restored(gpt2_pair):
    """Up to 8 rows the linear layers run through oneDNN (zoo.blocks.onednn), nothing copied;
    more rows store the weights column-major (MKL's faster layout for them); both undone after
    the call, also when it is interrupted."""
    from zoo.blocks import onednn

    _, model = gpt2_pair
    before = {name: (p, p.detach().clone()) for name, p in model.named_parameters()}
    q = model.layers[0].attn.q_proj
    ids, mask = padded_prompts(V, seed=15)
    big_ids, big_mask = ids.repeat(3, 1), mask.repeat(3, 1)  # 9 rows
    during = []

    def look(tokens):
        during.append((q.weight.is_contiguous(), "forward" in q.__dict__))

    model.generate(big_ids, big_mask, max_new_tokens=3, streamer=look)
    model.generate(ids, mask, max_new_tokens=3, streamer=look)
    model.generate(ids[:1], max_new_tokens=3, streamer=look)
    routed = (True, onednn.available())
    assert during == [(False, False)] * 3 + [routed] * 6  # (in, out) storage for 9 rows; oneDNN for 3 and 1

    def interrupt(tokens):
        raise KeyboardInterrupt

    for batch in ((big_ids, big_mask), (ids, mask)):
        with pytest.raises(KeyboardInterrupt):
            model.generate(*batch, max_new_tokens=3, streamer=interrupt)
    for name, p in model.named_parameters():
        original, values = before[name]
        assert p is original and p.is_contiguous() and torch.equal(p, values)
    assert not any("forward" in m.__dict__ for m in model.modules()) and onednn._active == 0


def test_batched_decoding_inside_inference_mode_leaves_the_weights_trainable(gpt2_pair):
    """The column-major copies are made outside inference mode even when the caller is in it:
    inference tensors as weights could never be trained again ("Inference tensors cannot be
    saved for backward"). Found by the compiled-decoding tests."""
    _, model = gpt2_pair
    ids, mask = padded_prompts(V, seed=16)
    ids, mask = ids.repeat(3, 1), mask.repeat(3, 1)  # 9 rows: the column-major path
    with torch.inference_mode():
        model.generate(ids, mask, max_new_tokens=2)
    assert not any(p.is_inference() for p in model.parameters())
    model(ids, attention_mask=mask, labels=ids).loss.backward()
    model.zero_grad(set_to_none=True)
