"""What is particular to T5 beyond parity (tests/parity/test_t5.py): its dtypes (float16 refused,
bfloat16 working where float16 overflows), config.json's tie/rescale switches across transformers
versions, feed_forward_proj names, cached decoding, LoRA and checkpointing by module name, and the
tokenizer error of a sentencepiece-only directory."""

import pytest
import torch

import zoo
from tests.conftest import randomize_
from zoo.config import ConfigError
from zoo.families.t5 import T5Config
from zoo.families.t5.convert import config_from_hf, config_to_hf
from zoo.lora import apply_lora
from zoo.tokenizer import load_tokenizer

HF = dict(vocab_size=99, d_model=32, d_kv=6, d_ff=40, num_layers=2, num_heads=4)


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 99, (2, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 7:] = 0
    return ids, mask, torch.randint(2, 99, (2, 6), generator=g)


def overflowing_model():
    """A tiny v1.1 model whose feed-forward outputs pass float16's 65,504 (the public checkpoints'
    failure): the MLP's output projection scaled up, the residual stream with it."""
    model = randomize_(zoo.create_model("t5-v1_1-tiny"), seed=4)
    with torch.no_grad():
        for layer in (*model.encoder_layers, *model.decoder_layers):
            layer.mlp.down.weight.mul_(3e4)
    return model


def test_float16_is_refused_by_name_bfloat16_works_where_float16_overflows():
    model = overflowing_model()
    ids, mask, dec = batch()
    peak = []
    hook = model.encoder_layers[0].mlp.register_forward_hook(lambda m, i, o: peak.append(o.abs().max().item()))
    with torch.no_grad():
        ref = model(ids, mask, decoder_input_ids=dec).logits
    hook.remove()
    assert peak[0] > 65504 and torch.isfinite(ref).all()  # fp32 holds it; float16 could not
    with torch.no_grad():
        bf16 = model.to(torch.bfloat16)(ids, mask, decoder_input_ids=dec).logits.float()
    assert torch.isfinite(bf16).all()
    # The norms bring the stream back to unit scale, so bf16's ~3 digits hold on the logits.
    assert (bf16 - ref).norm() < 0.05 * ref.norm(), ((bf16 - ref).norm() / ref.norm()).item()
    with pytest.raises(ValueError, match=r"^dtype: T5 does not run in float16"):
        model.half()(ids, mask, decoder_input_ids=dec)
    with pytest.raises(ValueError, match=r"^dtype: T5 does not run in float16"):
        model.half().generate(ids, mask, max_new_tokens=2)
    model.float()
    with pytest.raises(ValueError, match=r"^dtype: T5 does not run in float16"):
        with torch.autocast("cpu", dtype=torch.float16):
            model(ids, mask, decoder_input_ids=dec)
    encoder = zoo.create_model("t5-tiny", task="encoder").half()
    with pytest.raises(ValueError, match=r"^dtype: T5 does not run in float16"):
        encoder(ids, mask)


def test_tiny_bfloat16_matches_float32():
    model = randomize_(zoo.create_model("t5-tiny"), seed=5)
    ids, mask, dec = batch(1)
    with torch.no_grad():
        ref = model(ids, mask, decoder_input_ids=dec)
        low = model.to(torch.bfloat16)(ids, mask, decoder_input_ids=dec)
    for name in ("logits", "encoder_last_hidden_state"):
        a, b = getattr(low, name).float(), getattr(ref, name)
        assert (a - b).abs().max() < 0.05 * b.abs().max(), name


@pytest.mark.parametrize(
    ("hf", "tied", "scaled"),
    [
        ({}, True, True),  # the Hub's t5-small: tie_word_embeddings unset (True)
        ({"tie_word_embeddings": False}, False, False),  # the Hub's flan-t5 and t5-v1_1 files
        ({"tie_word_embeddings": True, "scale_decoder_outputs": False}, False, False),  # v1.1 saved by transformers 5
        ({"tie_word_embeddings": True, "scale_decoder_outputs": True}, True, True),  # v1.0 saved by transformers 5
    ],
)
def test_tie_and_rescale_from_every_config_json(hf, tied, scaled):
    c = config_from_hf({**HF, **hf})
    assert (c.tie_embeddings, c.scale_decoder_outputs) == (tied, scaled)
    back = config_to_hf(c, "seq2seq_lm")
    assert (back["tie_word_embeddings"], back["scale_decoder_outputs"]) == (tied, scaled)
    assert config_from_hf(back) == c


def test_feed_forward_proj_names():
    assert config_from_hf({**HF, "feed_forward_proj": "gated-gelu"}).mlp == "geglu_tanh"  # gelu_new, as transformers
    assert config_from_hf({**HF, "feed_forward_proj": "gated-silu"}).mlp == "swiglu"
    assert config_from_hf({**HF, "feed_forward_proj": "gelu"}).mlp == "gelu"
    for kind in ("relu", "geglu_tanh", "swiglu", "gelu"):
        proj = config_to_hf(T5Config(mlp=kind), "seq2seq_lm")["feed_forward_proj"]
        assert config_from_hf({**HF, "feed_forward_proj": proj}).mlp == kind
    with pytest.raises(ConfigError, match=r"^mlp: transformers' T5 reads 'gated-gelu' as a gelu_new"):
        config_to_hf(T5Config(mlp="geglu"), "seq2seq_lm")
    with pytest.raises(ConfigError, match=r"^feed_forward_proj: 'gated-gelu-x' is not"):
        config_from_hf({**HF, "feed_forward_proj": "gated-gelu-x"})
    with pytest.raises(ConfigError, match=r"^feed_forward_proj: zoo has no MLP gated by 'relu'"):
        config_from_hf({**HF, "feed_forward_proj": "gated-relu"})
    with pytest.raises(ConfigError, match=r"^feed_forward_proj: T5 checkpoint uses 'tanh'"):
        config_from_hf({**HF, "feed_forward_proj": "tanh"})


def test_config_is_validated_by_field():
    with pytest.raises(ConfigError, match=r"^n_buckets: T5's bucketing needs at least 4"):
        T5Config(n_buckets=2)
    with pytest.raises(ConfigError, match=r"^mlp: unknown value 'gated-gelu'"):
        T5Config(mlp="gated-gelu")
    with pytest.raises(ConfigError, match=r"^decoder_start_token_id: 200 is outside vocab_size=99"):
        T5Config(vocab_size=99, decoder_start_token_id=200)
    assert T5Config(n_layers=3).n_decoder_layers == 3 and T5Config(n_layers=3).replace(n_layers=5).n_decoder_layers == 5
    with pytest.raises(ConfigError, match=r"^scale_decoder_outputs: transformers' T5 ties the head only"):
        config_to_hf(T5Config(scale_decoder_outputs=False), "seq2seq_lm")


def test_variants_mirror_their_public_configs():
    small, flan_large = zoo.get_variant("t5-small").config, zoo.get_variant("flan-t5-large").config
    assert (small.d_model, small.d_ff, small.n_heads, small.n_layers, small.mlp, small.tie_embeddings) == (
        512, 2048, 8, 6, "relu", True)  # fmt: skip
    assert (flan_large.d_ff, flan_large.n_heads, flan_large.n_layers, flan_large.mlp) == (2816, 16, 24, "geglu_tanh")
    assert not flan_large.tie_embeddings and not flan_large.scale_decoder_outputs
    with torch.device("meta"):
        n = zoo.create_model("t5-small").num_parameters()
    assert n == 60_506_624  # transformers' count for google-t5/t5-small (tied head counted once)
    from zoo.info import model_info

    with torch.device("meta"):
        info = model_info(zoo.create_model("t5-small"), "t5-small")
    assert info.context == 512 and info.flops_per_token_forward > 2 * 35_000_000  # no position limit: planned at 512


@pytest.mark.parametrize("name", ["t5-tiny", "t5-v1_1-tiny"])
def test_cached_generation_equals_uncached(name):
    model = randomize_(zoo.create_model(name), seed=6)
    ids, mask, _ = batch(2)
    for beams in (dict(), dict(num_beams=3, length_penalty=0.8)):
        cached = model.generate(ids, mask, max_new_tokens=8, eos_token_id=[], **beams)
        assert torch.equal(
            cached, model.generate(ids, mask, max_new_tokens=8, eos_token_id=[], use_cache=False, **beams)
        )


def test_lora_and_checkpointing_by_module_name():
    model = randomize_(zoo.create_model("t5-v1_1-tiny"), seed=7).train()
    ids, mask, dec = batch(3)
    labels = dec.clone()
    ref = model(ids, mask, labels=labels)
    adapted = apply_lora(model, ["attn.q_proj", "cross_attn.v_proj", "mlp.gate"], r=2)
    # q in 2 encoder + 1 decoder layers, the decoder's cross-attention v, the gate of all 3 MLPs.
    assert len(adapted) == 7 and "decoder_layers.0.cross_attn.v_proj" in adapted
    loss = model.set_gradient_checkpointing(True)(ids, mask, labels=labels).loss
    loss.backward()
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert (
        trained
        and all("lora" in n for n in trained)
        and all(p.grad is not None for n, p in model.named_parameters() if p.requires_grad)
    )
    assert torch.isfinite(ref.loss)


def test_a_sentencepiece_only_directory_says_what_to_add(tmp_path):
    (tmp_path / "spiece.model").write_bytes(b"\x00")
    with pytest.raises(ValueError, match=r"no tokenizer.json, only the sentencepiece model spiece.model; write"):
        load_tokenizer(tmp_path)
