"""The LLaMA family on its own: published sizes, config checks, the MoE losses, sliding windows,
the KV cache, and the errors bad configs and checkpoints get."""

import json
import re

import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from tests.conftest import randomize_
from zoo.blocks import router_z_loss
from zoo.cli import main as zoo_cli
from zoo.config import ConfigError
from zoo.convert import ConversionError
from zoo.families.llama import Llama, LlamaConfig
from zoo.families.llama.convert import config_from_hf, config_to_hf
from zoo.hub import CheckpointError
from zoo.lm import lm_loss

# Parameter counts of the public checkpoints (the safetensors totals their model cards list).
PUBLISHED = {
    "llama-2-7b": 6_738_415_616,  # "6.74B"
    "llama-3-8b": 8_030_261_248,  # "8.03B"
    "llama-3.2-1b": 1_235_814_400,  # "1.24B"
    "mistral-7b-v0.1": 7_241_732_096,  # "7.24B"
    "mixtral-8x7b-v0.1": 46_702_792_704,  # "46.7B"
    "smollm2-135m": 134_515_008,  # "134.5M"
    "smollm2-135m-instruct": 134_515_008,
}


@pytest.mark.parametrize("name", PUBLISHED)
def test_parameter_counts_match_the_published_ones(name):
    with torch.device("meta"):  # shapes only: 47B parameters take no memory
        model = zoo.create_model(name)
    assert model.num_parameters() == PUBLISHED[name]


def test_zoo_info_and_list_as_a_user_runs_them(capsys):
    assert zoo_cli(["info", "mixtral-8x7b-v0.1"]) == 0
    out = capsys.readouterr().out
    assert "46,702,792,704 (46702.8M)" in out
    # Two of eight experts per token: 12.9B active parameters as published (12,879,925,248 with the
    # 131M embedding), and the FLOPs count those, 2N + 2 n_layers n_ctx d_attn.
    active = 12_879_925_248 - 32000 * 4096
    assert f"active per token:         {active:,}" in out
    assert f"FLOPs/token forward:      {2 * active + 2 * 32 * 32768 * 4096:,}" in out
    assert "layers.0.mlp.experts.7.down.weight" in out and "layers.0.mlp.router.weight" in out
    assert zoo_cli(["list", "llama*"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]  # under the header
    assert listed == ["llama-2-7b", "llama-3-8b", "llama-3.2-1b", "llama-tiny"]


def test_variants_cite_their_public_config():
    v = zoo.get_variant("mistral-7b-v0.1")
    assert v.family == "llama" and v.source == "https://huggingface.co/mistralai/Mistral-7B-v0.1/blob/main/config.json"
    assert v.config.sliding_window == 4096 and v.config.n_experts is None
    assert zoo.get_variant("llama-3.2-1b").config.rope_scaling["rope_type"] == "llama3"


@pytest.mark.parametrize("name", [*PUBLISHED, "llama-tiny", "mistral-tiny", "mixtral-tiny"])
def test_config_round_trips_through_the_transformers_format_and_json(name):
    config = zoo.get_variant(name).config
    assert config_from_hf(config_to_hf(config, "causal_lm")) == config
    assert LlamaConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config  # zoo.json


def test_transformers_model_type_follows_the_switches():
    types = {n: config_to_hf(zoo.get_variant(n).config, "causal_lm")["model_type"] for n in PUBLISHED}
    assert types["llama-3-8b"] == types["smollm2-135m"] == "llama"
    assert types["mistral-7b-v0.1"] == "mistral" and types["mixtral-8x7b-v0.1"] == "mixtral"


def test_head_dim_defaults_to_d_model_over_n_heads_and_is_stored():
    assert LlamaConfig(d_model=96, n_heads=6).head_dim == 16
    assert LlamaConfig(d_model=96, n_heads=6, head_dim=24).head_dim == 24
    assert LlamaConfig.from_dict(LlamaConfig(d_model=96, n_heads=6).to_dict()).head_dim == 16


@pytest.mark.parametrize(
    "overrides,message",
    [
        (dict(n_kv_heads=3), "n_kv_heads: n_heads=4 is not divisible by n_kv_heads=3"),
        (dict(head_dim=15), "head_dim: RoPE rotates channel pairs, so head_dim must be even, got 15"),
        (dict(n_experts=2, top_k=3), "top_k: 3 experts per token, but n_experts=2"),
        (dict(sliding_window=0), "sliding_window: must be a positive integer, got 0"),
        (dict(rope_scaling={"rope_type": "yarn", "factor": 2.0}), "rope_scaling: rope_type 'yarn' is not supported"),
        (dict(rope_scaling={"rope_type": "llama3", "factor": 8.0}), "rope_scaling: rope_type 'llama3' needs low_freq"),
        (dict(norm_eps=0.0), "norm_eps: must be positive, got 0.0"),
        (dict(aux_loss_coef=-1.0), "aux_loss_coef: must be >= 0, got -1.0"),
        (dict(attn_dropout=1.0), "attn_dropout: must be in [0, 1), got 1.0"),
    ],
)
def test_bad_config_values_name_the_field(overrides, message):
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        zoo.create_model("llama-tiny", **overrides)


@pytest.mark.parametrize(
    "hf,message",
    [
        (dict(hidden_act="gelu"), "hidden_act: the checkpoint's MLP uses 'gelu'"),
        (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope_scaling: the checkpoint uses rope_type"),
        (dict(model_type="mixtral", num_local_experts=4, router_jitter_noise=0.1), "router_jitter_noise: 0.1"),
    ],
)
def test_unreadable_transformers_configs_name_the_field(hf, message):
    base = dict(model_type="llama", vocab_size=99, hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                intermediate_size=40)  # fmt: skip
    with pytest.raises(ConfigError, match="^" + re.escape(message)):
        config_from_hf({**base, **hf})


def test_switches_without_a_transformers_equivalent_refuse_to_export(tmp_path):
    model = zoo.create_model("mistral-tiny", attn_bias=True)
    with pytest.raises(ConfigError, match=r"^attn_bias: transformers' mistral has no such biases"):
        model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path, format="zoo")  # zoo's own format keeps every switch
    assert zoo.from_pretrained(tmp_path).config.attn_bias


def _batch(vocab: int, seed: int = 0, length: int = 16):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (3, length), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :5] = 0  # left padding
    mask[2, -4:] = 0  # right padding
    return ids, mask


def test_moe_loss_adds_the_weighted_aux_loss_and_exposes_it():
    model = randomize_(zoo.create_model("mixtral-tiny", aux_loss_coef=0.25))
    ids, mask = _batch(157)
    labels = ids.masked_fill(mask == 0, -100)
    out = model(ids, attention_mask=mask, labels=labels)
    assert out.aux_loss is not None and out.aux_loss.requires_grad
    torch.testing.assert_close(out.loss, lm_loss(out.logits, labels) + 0.25 * out.aux_loss)
    # A dense model has no aux loss and its loss is the LM loss alone.
    dense = randomize_(zoo.create_model("llama-tiny"))
    out = dense(ids.clamp(max=210), labels=ids.clamp(max=210))
    assert out.aux_loss is None and torch.equal(out.loss, lm_loss(out.logits, ids.clamp(max=210)))


def test_aux_loss_ignores_padding_tokens():
    """Changing what sits under the padding changes the router logits there, not the aux loss."""
    model = randomize_(zoo.create_model("mixtral-tiny"))
    ids, mask = _batch(157)
    other = ids.clone()
    other[mask == 0] = (other[mask == 0] + 7) % 157
    with torch.no_grad():
        a = model(ids, attention_mask=mask).aux_loss
        b = model(other, attention_mask=mask).aux_loss
        unmasked = model(ids).aux_loss
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert abs(a - unmasked) > 1e-4  # the mask really changes which tokens count


def test_router_z_loss_joins_the_loss_when_switched_on():
    base = randomize_(zoo.create_model("mixtral-tiny"))
    with_z = zoo.create_model("mixtral-tiny", router_z_loss_coef=0.1)
    with_z.load_state_dict(base.state_dict())
    ids, _ = _batch(157)
    with torch.no_grad():
        plain = base(ids, labels=ids).loss
        out = with_z(ids, labels=ids)
        z = router_z_loss(with_z.router_logits())
    assert z > 0
    torch.testing.assert_close(out.loss, plain + 0.1 * z)


def test_gradient_checkpointing_keeps_the_aux_loss_gradients():
    """Router logits are kept from inside checkpointed layers; the aux loss still reaches the router."""
    model = randomize_(zoo.create_model("mixtral-tiny", aux_loss_coef=0.5)).train()
    ids, mask = _batch(157)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.set_gradient_checkpointing(checkpointing)
        model(ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100)).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    assert grads[0]["layers.0.mlp.router.weight"].abs().sum() > 0
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=0, msg=name)


def test_sliding_window_limits_the_receptive_field():
    """Two layers with a window of 5 see at most 2 x 4 tokens back: the last position ignores a token
    12 places before it, which full attention does not."""
    model = randomize_(zoo.create_model("mistral-tiny", max_seq_len=64))
    full = zoo.create_model("mistral-tiny", sliding_window=None)
    full.load_state_dict(model.state_dict())
    ids = torch.randint(0, 173, (1, 16), generator=torch.Generator().manual_seed(0))
    changed = ids.clone()
    changed[0, 3] = (changed[0, 3] + 1) % 173
    with torch.no_grad():
        last = lambda m, x: m(x).logits[0, -1]
        assert torch.allclose(last(model, ids), last(model, changed), atol=1e-6)
        assert not torch.allclose(last(full, ids), last(full, changed), atol=1e-3)
        # Within the window the two agree exactly: positions 0..4 see the same keys.
        torch.testing.assert_close(model(ids).logits[0, :5], full(ids).logits[0, :5])


@pytest.mark.parametrize("name", ["llama-tiny", "mistral-tiny", "mixtral-tiny"])
def test_kv_cache_decoding_matches_the_full_forward(name):
    """Prefill then one token at a time through the cache (a rolling one under a sliding window)
    gives the logits of one full pass, padded rows included."""
    model = randomize_(zoo.create_model(name))
    ids, mask = _batch(model.config.vocab_size, length=14)
    mask[2, -4:] = 1  # decoding appends real tokens; padding stays on the left
    with torch.no_grad():
        full = model(ids, attention_mask=mask).logits
        cache = model.new_cache(3, 14)
        steps = [model(ids[:, :6], attention_mask=mask[:, :6], cache=cache).logits]
        for t in range(6, 14):
            steps.append(model(ids[:, t : t + 1], attention_mask=mask[:, : t + 1], cache=cache).logits)
    real = mask.bool()
    torch.testing.assert_close(torch.cat(steps, dim=1)[real], full[real], atol=1e-5, rtol=0)


def test_bf16_cast_keeps_exact_rope_frequencies():
    """Casting the model must not round RoPE's frequencies (bf16 keeps 8 bits of mantissa: at
    position 4000 a rounded frequency is off by radians)."""
    model = zoo.create_model("llama-tiny")
    exact = model.rope.inv_freq.clone()
    model.to(torch.bfloat16)
    assert model.rope.inv_freq.dtype == torch.float32 and torch.equal(model.rope.inv_freq, exact)
    assert model.embed.weight.dtype == torch.bfloat16
    # Built on the meta device and materialised with to_empty (as sharded training does), the
    # non-persistent frequencies, which no checkpoint carries, are recomputed rather than garbage.
    with torch.device("meta"):
        meta = zoo.create_model("llama-tiny")
    meta.to_empty(device="cpu")
    assert torch.equal(meta.rope.inv_freq, exact)


def test_corrupt_safetensors_get_a_checkpoint_error(tmp_path):
    model = randomize_(zoo.create_model("llama-tiny"))
    model.save_pretrained(tmp_path)
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"model.safetensors: not a readable safetensors file, truncated"):
        zoo.from_pretrained(tmp_path)


def test_checkpoint_that_does_not_fit_names_keys_and_shapes(tmp_path):
    model = randomize_(zoo.create_model("llama-tiny"))
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    state.pop("model.layers.1.mlp.up_proj.weight")
    state["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(16, 48)
    save_file(state, tmp_path / "model.safetensors")
    with pytest.raises(ConversionError) as err:
        zoo.from_pretrained(tmp_path)
    message = str(err.value)
    assert "key model.layers.1.mlp.up_proj.weight: it fills layers.1.mlp.up.weight (104, 48) in the model" in message
    assert "model.layers.0.self_attn.k_proj.weight gives layers.0.attn.k_proj.weight shape (16, 48)" in message


def test_model_is_built_from_the_shared_blocks():
    from zoo.blocks import MLP, Attention, MoE, RMSNorm, RotaryEmbedding

    model = zoo.create_model("mixtral-tiny")
    assert isinstance(model, Llama) and isinstance(model.rope, RotaryEmbedding)
    layer = model.layers[0]
    assert isinstance(layer.attn, Attention) and isinstance(layer.norm1, RMSNorm) and isinstance(layer.mlp, MoE)
    assert (layer.attn.n_heads, layer.attn.n_kv_heads, layer.attn.head_dim) == (4, 2, 12)
    assert isinstance(zoo.create_model("llama-tiny").layers[0].mlp, MLP)
