"""GPT-2 as a model: padded batches, eager vs sdpa, loss, hidden states and KV cache against transformers."""

import pytest
import torch
import transformers

import zoo
from tests.conftest import randomize_
from zoo.config import ConfigError
from zoo.families.gpt.convert import config_from_hf
from zoo.lm import positions_from_mask

CONFIG = dict(vocab_size=211, n_positions=64, n_embd=48, n_layer=2, n_head=4, n_inner=104)
# GPT-2 itself, and GPT-2 with modern parts swapped in: the padding logic must hold for all.
VARIANTS = {
    "gpt2": {},
    "rope-gqa-swiglu-rmsnorm": dict(position="rope", n_kv_heads=2, mlp="swiglu", norm="rmsnorm", bias=False),
    "sliding-window": dict(sliding_window=4),
    # GPT-1's post-LN layers without a final norm; GPT-3's dense layer 0 and banded layer 1.
    "post-ln": dict(prenorm=False, final_norm=False),
    "dense-and-banded": dict(sliding_window=4, window_layers=(1,)),
}


def _model(**overrides):
    return randomize_(zoo.create_model("gpt2-tiny", **overrides), seed=3)


def _ids(B=3, T=12, seed=0):
    return torch.randint(0, 211, (B, T), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def hf_gpt2(tmp_path):
    ref = randomize_(transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG)))
    ref.save_pretrained(tmp_path)
    return ref, zoo.from_pretrained(tmp_path)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_padded_batch_logits_equal_unpadded(variant):
    """Row 1 is left-padded by 4, row 2 right-padded by 3; each row's real tokens alone give the same logits."""
    model = _model(**VARIANTS[variant])
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    mask[2, -3:] = 0
    with torch.no_grad():
        batched = model(ids, attention_mask=mask).logits
        torch.testing.assert_close(batched[0], model(ids[:1]).logits[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(batched[1, 4:], model(ids[1:2, 4:]).logits[0], atol=1e-5, rtol=0)
        torch.testing.assert_close(batched[2, :-3], model(ids[2:3, :-3]).logits[0], atol=1e-5, rtol=0)
        # Without the mask, padding would leak in: the test can tell.
        assert (model(ids).logits[1, 4:] - batched[1, 4:]).abs().max() > 1e-3


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_eager_and_sdpa_agree_on_the_whole_model(variant):
    model = _model(**VARIANTS[variant])
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, :5] = 0
    with torch.no_grad():
        sdpa = model.set_attention_backend("sdpa")(ids, attention_mask=mask).logits
        eager = model.set_attention_backend("eager")(ids, attention_mask=mask).logits
    real = mask.bool()
    torch.testing.assert_close(eager[real], sdpa[real], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"^attn_backend: unknown attention backend 'flash'"):
        model.set_attention_backend("flash")


def test_loss_and_hidden_states_match_transformers(hf_gpt2):
    ref, model = hf_gpt2
    ids = _ids()
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    # Ignore padding labels, and the first real token of the left-padded row too: it is predicted
    # from a padding position, whose output neither implementation defines.
    labels = ids.masked_fill(mask == 0, -100)
    labels[1, 4] = -100
    with torch.no_grad():
        ours = model(ids, attention_mask=mask, labels=labels, output_hidden_states=True)
        theirs = ref(
            ids, attention_mask=mask, labels=labels, position_ids=positions_from_mask(mask), output_hidden_states=True
        )
    torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=0)
    assert len(ours.hidden_states) == len(theirs.hidden_states) == 3  # embeddings, after layer 0, after the norm
    real = mask.bool()
    for a, b in zip(ours.hidden_states, theirs.hidden_states, strict=True):
        torch.testing.assert_close(a[real], b[real], atol=1e-5, rtol=0)
    torch.testing.assert_close(ours.last_hidden_state, ours.hidden_states[-1], atol=0, rtol=0)


def test_embeddings_are_tied():
    model = _model()
    assert model.lm_head is None
    ids = _ids(B=1, T=6)
    out = model(ids, output_hidden_states=True)
    torch.testing.assert_close(out.logits, out.last_hidden_state @ model.embed.weight.T, atol=1e-5, rtol=0)
    untied = _model(tie_embeddings=False)
    assert untied.lm_head.weight.shape == (211, 48) and untied.lm_head.weight is not untied.embed.weight


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_kv_cache_decoding_equals_full_forward(variant):
    """Prefill a left-padded batch, then feed the rest one token at a time through the model's cache."""
    model = _model(**VARIANTS[variant])
    ids = _ids(B=2, T=11)
    mask = torch.ones_like(ids)
    mask[0, :3] = 0
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        cache = model.new_cache(batch_size=2, max_len=11)
        steps = [model(ids[:, :6], attention_mask=mask[:, :6], cache=cache).logits]
        for t in range(6, 11):
            steps.append(model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache).logits)
    incremental = torch.cat(steps, dim=1)
    real = mask.bool()
    torch.testing.assert_close(incremental[real], full[real], atol=1e-5, rtol=0)
    if VARIANTS[variant].get("sliding_window") and "window_layers" not in VARIANTS[variant]:
        assert cache.keys[0].shape[2] <= model.config.sliding_window  # the cache rolls


def test_gradient_checkpointing_gives_equal_gradients(monkeypatch):
    model = _model().train()
    ids = _ids()
    calls = []
    real_checkpoint = torch.utils.checkpoint.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", counting_checkpoint)

    def grads():
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    plain = grads()
    assert not calls
    model.set_gradient_checkpointing(True)
    checkpointed = grads()
    assert len(calls) == model.config.n_layers  # every layer really was checkpointed
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=0, msg=name)


def test_bare_gpt2model_checkpoint_loads(tmp_path):
    """openai-community/gpt2 itself is saved from GPT2Model: its keys have no "transformer." prefix."""
    base = randomize_(transformers.GPT2Model(transformers.GPT2Config(**CONFIG)))
    base.save_pretrained(tmp_path)
    model = zoo.from_pretrained(tmp_path)
    ids = _ids(B=2, T=7)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).last_hidden_state, base(ids).last_hidden_state, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "key,value",
    [("scale_attn_weights", False), ("scale_attn_by_inverse_layer_idx", True), ("add_cross_attention", True)],
)
def test_switches_zoo_lacks_are_refused(key, value):
    hf = transformers.GPT2Config(**CONFIG, **{key: value}).to_dict()
    with pytest.raises(ConfigError, match=rf"^{key}: GPT-2 checkpoint sets {key}={value}"):
        config_from_hf(hf)


def test_unmapped_activation_is_refused():
    with pytest.raises(ConfigError, match=r"^activation_function: GPT-2 checkpoint uses 'gelu_fast'"):
        config_from_hf(transformers.GPT2Config(**CONFIG, activation_function="gelu_fast").to_dict())
