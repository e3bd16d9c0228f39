"""zoo.compile_decoding: decoding steps through torch.compile (inductor, the CPU backend users get)
compute what the eager steps compute, are really the path taken, and only where they apply."""

import pytest
import torch
from torch._dynamo.utils import counters

import zoo
from tests.conftest import randomize_
from tests.generation.conftest import padded_prompts
from tests.generation.test_decoding import _decode_logits


def _models():
    """Each structure the compiled step must serve: GPT-2 (LayerNorm, biases, learned positions,
    tied head), LLaMA (RMSNorm, RoPE, GQA, SwiGLU, head_dim != d_model / n_heads), Mixtral (a
    mixture of experts after the compiled attention part, sliding window: a rolling cache) and
    an int4 LLaMA (fused q/k/v and gate/up QuantLinear, bf16 matmuls)."""
    gpt2 = randomize_(zoo.create_model("gpt2-tiny"), seed=1)
    llama = randomize_(zoo.create_model("llama-tiny"), seed=2)
    mixtral = randomize_(zoo.create_model("mixtral-tiny"), seed=3)
    int4 = zoo.quantize(randomize_(zoo.create_model("llama-tiny", d_model=64, head_dim=16, d_ff=96), seed=4), "int4")
    return {"gpt2": gpt2, "llama": llama, "mixtral": mixtral, "llama-int4": int4}


@pytest.fixture(scope="module")
def models():
    return {name: m.eval() for name, m in _models().items()}


def _count_calls(model) -> dict:
    """Wrap every layer's compiled parts to count their calls."""
    calls = {"enter": 0, "leave": 0}

    def counted(fn, key):
        def wrapper(*args):
            calls[key] += 1
            return fn(*args)

        return wrapper

    for layer in model.layers:
        enter, leave = layer._decoding_parts
        layer._decoding_parts = (counted(enter, "enter"), counted(leave, "leave"))
    return calls


@pytest.mark.parametrize("name", ["gpt2", "llama", "mixtral", "llama-int4"])
def test_compiled_steps_match_eager_ones(models, name):
    """Step by step on a left-padded batch (so the padding mask reaches attention): the compiled
    step's logits equal the eager step's (fp32 within 1e-5; int4, whose compiled graph may round
    its bf16 casts in another order, within 1% of the logits' scale) and greedy decoding chooses
    the same tokens. The counters prove the compiled parts ran, once per layer and step (for
    Mixtral the attention part only: its experts' routing is data, run eagerly), and that each
    part was compiled once for both layers and all steps (dynamo's count of graphs)."""
    model = models[name]
    V = model.config.vocab_size
    ids, mask = padded_prompts(V, seed=7)
    follow = torch.randint(0, V, (3, 10), generator=torch.Generator().manual_seed(8))
    with torch.inference_mode():
        eager = _decode_logits(model, ids, mask, follow, use_cache=True)
        eager_tokens = model.generate(ids, mask, max_new_tokens=12)
        served = zoo.compile_decoding(model)
        graphs = counters["stats"]["unique_graphs"]
        try:
            calls = _count_calls(model)
            compiled = _decode_logits(model, ids, mask, follow, use_cache=True)
            # One graph per part for all layers and steps: the second layer and later steps reuse it.
            assert counters["stats"]["unique_graphs"] - graphs == (1 if name == "mixtral" else 2)
            steps = follow.shape[1]  # the first logits are the prompt's prefill, eager
            assert calls["enter"] == steps * served == steps * len(model.layers)
            assert calls["leave"] == (0 if name == "mixtral" else calls["enter"])  # a mixture of experts: eager
            compiled_tokens = model.generate(ids, mask, max_new_tokens=12)
        finally:
            zoo.compile_decoding(model, enabled=False)
    scale = eager.abs().max()
    tolerance = 1e-2 * scale if name.endswith("int4") else 1e-5
    assert (compiled - eager).abs().max() <= tolerance
    assert torch.equal(compiled_tokens, eager_tokens)


def test_compiled_parts_only_serve_inference_decoding_steps(models):
    """The prompt's prefill (T > 1), a step with gradients on, a model in training mode and a layer
    keeping its attention map all run eagerly; ``enabled=False`` turns the compiled step off."""
    model = models["llama"]
    zoo.compile_decoding(model)
    try:
        calls = _count_calls(model)
        ids = torch.randint(0, model.config.vocab_size, (1, 5))
        cache = model.new_cache(1, 16)
        with torch.no_grad():
            model(ids, cache=cache)  # prefill
        assert calls["enter"] == 0
        model(ids[:, :1], cache=cache)  # gradients on
        assert calls["enter"] == 0
        model.train()
        with torch.no_grad():
            model(ids[:, :1], cache=cache)
        model.eval()
        assert calls["enter"] == 0
        with torch.no_grad():
            model(ids[:, :1], cache=cache)
        assert calls["enter"] == len(model.layers)
    finally:
        model.eval()
        zoo.compile_decoding(model, enabled=False)
    with torch.no_grad():
        model(ids[:, :1], cache=cache)
    assert calls["enter"] == len(model.layers)  # unchanged: the parts are no longer called
    assert all(layer._decoding_parts is None for layer in model.layers)


def test_beam_search_and_sampling_through_compiled_steps(models):
    """Beam search (its cache reordered every step, 2 beams a row: a new batch size, compiled
    again) and seeded sampling give what they give eagerly."""
    model = models["llama"]
    ids, mask = padded_prompts(model.config.vocab_size, seed=9)
    options = [dict(num_beams=2, max_new_tokens=8), dict(do_sample=True, top_k=20, seed=3, max_new_tokens=8)]
    with torch.inference_mode():
        eager = [model.generate(ids, mask, **o) for o in options]
        zoo.compile_decoding(model)
        try:
            calls = _count_calls(model)
            compiled = [model.generate(ids, mask, **o) for o in options]
        finally:
            zoo.compile_decoding(model, enabled=False)
    assert calls["enter"] > 0
    for a, b in zip(eager, compiled, strict=True):
        assert torch.equal(a, b)


def test_models_it_cannot_serve_are_refused_by_name():
    """An encoder-decoder's decoder layers have cross-attention, its encoder none to decode: a
    named error, not a silent eager run."""
    with pytest.raises(ValueError, match=r"compile: .*cross-attention"):
        zoo.compile_decoding(zoo.create_model("t5-tiny"))
    with pytest.raises(ValueError, match=r"compile: .*no transformer layers"):
        zoo.compile_decoding(torch.nn.Linear(2, 2))
