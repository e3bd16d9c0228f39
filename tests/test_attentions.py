"""output_attentions=True on every family: equal to transformers' eager attention weights, from a
model that runs on SDPA, whose backend is unchanged afterwards."""

import pytest
import torch
import transformers

import zoo
from tests.conftest import randomize_
from zoo.lm import positions_from_mask

VOCAB = 211


def padded_ids(B=3, T=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    mask[2, -3:] = 0  # right padding
    return ids, mask


def compare(theirs, ours, mask=None):
    """Per layer, (B, H, T, S) weights equal on every real query row (a padding query's row is
    arbitrary in both: its output is never used)."""
    assert len(ours) == len(theirs) > 0
    for layer, (t, o) in enumerate(zip(theirs, ours, strict=True)):
        assert o.shape == t.shape, (layer, o.shape, t.shape)
        rows = mask.bool()[:, None, :, None].expand_as(o) if mask is not None else torch.ones_like(o, dtype=torch.bool)
        diff = (o - t).abs()[rows].max()
        assert diff < 1e-5, f"layer {layer}: max |diff| {diff:.2e}"


def reference_and_zoo(cls, config, path):
    ref = randomize_(cls(config))
    ref.save_pretrained(path)
    ref = cls.from_pretrained(path, attn_implementation="eager").eval()
    ours = zoo.from_pretrained(path)
    assert all(m.backend == "sdpa" for m in ours.modules() if hasattr(m, "backend"))
    return ref, ours


@pytest.mark.parametrize(
    ("cls", "config"),
    [
        (transformers.GPT2LMHeadModel, transformers.GPT2Config(vocab_size=VOCAB, n_embd=48, n_layer=2, n_head=4)),
        (
            transformers.LlamaForCausalLM,  # GQA 6:2 with head_dim 8 != 48 / 6, RoPE at T >= 12
            transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=48, intermediate_size=88, num_hidden_layers=2,
                                     num_attention_heads=6, num_key_value_heads=2, head_dim=8),
        ),
        (
            transformers.MistralForCausalLM,  # a window of 5 that cuts 12-token rows
            transformers.MistralConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=56, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, sliding_window=5),
        ),
        (
            transformers.BertModel,
            transformers.BertConfig(vocab_size=VOCAB, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=104, max_position_embeddings=40),
        ),
    ],
    ids=["gpt2", "llama-gqa", "mistral-window", "bert"],
)  # fmt: skip
def test_text_families_match_transformers_eager(tmp_path, cls, config):
    ref, ours = reference_and_zoo(cls, config, tmp_path)
    ids, mask = padded_ids()
    # zoo's decoders count positions over real tokens only; give transformers the same positions.
    extra = {"position_ids": positions_from_mask(mask)} if ours.task == "causal_lm" else {}
    with torch.no_grad():
        theirs = ref(input_ids=ids, attention_mask=mask, output_attentions=True, **extra).attentions
        out = ours(ids, attention_mask=mask, output_attentions=True)
    compare(theirs, out.attentions, mask)
    assert out.attentions[0].shape == (3, config.num_attention_heads, 12, 12)
    # Every weight row of a real query sums to 1 and puts nothing on padding keys.
    w = out.attentions[-1]
    assert torch.allclose(w[0].sum(-1), torch.ones(()), atol=1e-5)
    assert w[1, :, 4:, :4].abs().max() == 0
    # Recorded for that call only: the backend is unchanged and nothing is kept on the model.
    attn = [m for m in ours.modules() if isinstance(m, zoo.blocks.attention.Attention)]
    assert all(m.backend == "sdpa" and not m.keep_weights and m.weights is None for m in attn)
    assert ours(ids, attention_mask=mask).attentions is None


def test_vit_matches_transformers_eager(tmp_path):
    config = transformers.ViTConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=108,
                                    image_size=40, patch_size=8)  # fmt: skip
    ref, ours = reference_and_zoo(transformers.ViTModel, config, tmp_path)
    pixels = torch.randn(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = ref(pixel_values=pixels, output_attentions=True).attentions
        out = ours(pixel_values=pixels, output_attentions=True)
    compare(theirs, out.attentions)
    assert out.attentions[0].shape == (2, 4, 26, 26)  # 25 patches and the class token


def test_the_mapping_check_can_fail(tmp_path):
    """Swapping two heads' query rows changes those heads' maps: compare() must notice."""
    config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=48, n_layer=1, n_head=4)
    ref, ours = reference_and_zoo(transformers.GPT2LMHeadModel, config, tmp_path)
    with torch.no_grad():
        q = ours.layers[0].attn.q_proj.weight
        q[:12], q[12:24] = q[12:24].clone(), q[:12].clone()
    ids, mask = padded_ids()
    with torch.no_grad():
        theirs = ref(input_ids=ids, attention_mask=mask, position_ids=positions_from_mask(mask), output_attentions=True)
        out = ours(ids, attention_mask=mask, output_attentions=True)
    with pytest.raises(AssertionError, match="layer 0"):
        compare(theirs.attentions, out.attentions, mask)


def test_cached_decoding_gives_maps_over_past_and_new_keys():
    model = zoo.create_model("llama-tiny", n_layers=2).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 9))
    with torch.no_grad():
        full = model(ids, output_attentions=True).attentions
        cache = model.new_cache(1, 16)
        model(ids[:, :8], cache=cache)
        step = model(ids[:, 8:], cache=cache, output_attentions=True).attentions
    assert step[0].shape == (1, 4, 1, 9)  # one new query over the 8 cached keys and its own
    assert torch.allclose(step[1], full[1][:, :, 8:9], atol=1e-5)


def test_a_failing_forward_restores_the_model():
    model = zoo.create_model("gpt2-tiny")
    with pytest.raises(ValueError, match="input_ids"):
        model(torch.tensor([[10**6]]), output_attentions=True)
    attn = [m for m in model.modules() if isinstance(m, zoo.blocks.attention.Attention)]
    assert not any(m.keep_weights for m in attn)
    assert model(torch.tensor([[1, 2]]), output_attentions=True).attentions[0].shape == (1, 4, 2, 2)
