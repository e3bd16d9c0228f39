"""LLaMA, Mistral and Mixtral parity with transformers, both directions, on tiny random non-square models.

Every case goes through ``run_parity``: the reference saves itself, zoo loads the directory, a
padded batch (unpadded, left- and right-padded rows) is compared at fp32 and bf16, then zoo
exports back and transformers loads that strictly.
"""

import copy
from types import SimpleNamespace

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import zoo
from tests.conftest import randomize_
from zoo.convert import rename
from zoo.families.llama import convert as llama_convert
from zoo.lm import positions_from_mask
from zoo.parity import padded_token_batch, run_parity

BASE = dict(vocab_size=211, max_position_embeddings=64, bos_token_id=0, eos_token_id=1, pad_token_id=None)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 32}  # fmt: skip

CASES = {
    # GQA 4:2, head_dim 16 != 48 / 4, biases on attention and MLP, untied head, llama3 RoPE scaling
    # (an original context of 32 puts a band of head_dim 16's frequencies in each of the three regimes).
    "llama-gqa-bias-llama3rope": (
        transformers.LlamaConfig,
        dict(hidden_size=48, intermediate_size=104, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=16, attention_bias=True, mlp_bias=True, tie_word_embeddings=False,
             rope_theta=10000.0, rope_scaling=LLAMA3_ROPE),
    ),
    # MQA (one key/value head for six query heads), tied embeddings, linear RoPE scaling.
    "llama-mqa-tied-linear": (
        transformers.LlamaConfig,
        dict(hidden_size=48, intermediate_size=88, num_hidden_layers=2, num_attention_heads=6,
             num_key_value_heads=1, tie_word_embeddings=True, rope_theta=500.0,
             rope_scaling={"rope_type": "linear", "factor": 4.0}),
    ),
    # Plain multi-head attention.
    "llama-mha": (
        transformers.LlamaConfig,
        dict(hidden_size=40, intermediate_size=72, num_hidden_layers=3, num_attention_heads=5,
             num_key_value_heads=5, tie_word_embeddings=False),
    ),
    # A sliding window of 5 over 12-token rows: the window cuts; GQA 6:2.
    "mistral-window": (
        transformers.MistralConfig,
        dict(hidden_size=48, intermediate_size=100, num_hidden_layers=2, num_attention_heads=6,
             num_key_value_heads=2, head_dim=8, sliding_window=5, tie_word_embeddings=False),
    ),
    # 4 experts, top 2, GQA 4:2, head_dim 12 != 32 / 4, a window of 6: logits and the aux loss.
    "mixtral-window": (
        transformers.MixtralConfig,
        dict(hidden_size=32, intermediate_size=56, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=12, num_local_experts=4, num_experts_per_tok=2, sliding_window=6,
             router_aux_loss_coef=0.02, tie_word_embeddings=False),
    ),
    # 5 experts, top 3, no window, tied.
    "mixtral-top3": (
        transformers.MixtralConfig,
        dict(hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=1, num_local_experts=5, num_experts_per_tok=3, sliding_window=None,
             tie_word_embeddings=True),
    ),
}  # fmt: skip


def _reference(case: str, **overrides):
    config_cls, kwargs = CASES[case]
    config = config_cls(**copy.deepcopy({**BASE, **kwargs, **overrides}))  # transformers edits rope dicts in place
    model_cls = {"llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM,
                 "mixtral": transformers.MixtralForCausalLM}[config.model_type]  # fmt: skip
    return randomize_(model_cls(config))


def _save(case: str, path, **overrides):
    _reference(case, **overrides).save_pretrained(path)
    return path


@pytest.mark.parametrize("case", CASES)
def test_parity_both_directions(case, tmp_path):
    # bf16 for the dense cases only: in bf16, two experts' router probabilities that differ by less
    # than its rounding step tie, and zoo and transformers may then route a token differently
    # (seen on mixtral-top3: 0.08682 vs 0.08682), a discrete jump no tolerance describes.
    moe = case.startswith("mixtral")
    report = run_parity(_save(case, tmp_path), dtypes=("float32",) if moe else ("float32", "bfloat16"))
    assert report.ok, report.table()
    assert {r.direction for r in report.rows} == {"load into zoo", "export to reference"}
    compared = {(r.direction, r.output) for r in report.rows if r.dtype == "float32"}
    expected = {"logits", "last_hidden_state"} | ({"aux_loss"} if moe else set())
    assert compared == {(d, o) for d in ("load into zoo", "export to reference") for o in expected}
    assert all(r.max_abs_diff <= 1e-5 for r in report.rows if r.dtype == "float32"), report.table()


def test_configs_map_to_zoo_switches(tmp_path):
    """The cases exercise what they claim: scaling, windows and experts reach zoo's config."""
    configs = {case: zoo.from_pretrained(_save(case, tmp_path / case)).config for case in CASES}
    c = configs["llama-gqa-bias-llama3rope"]
    assert (c.n_heads, c.n_kv_heads, c.head_dim, c.attn_bias, c.mlp_bias) == (4, 2, 16, True, True)
    assert c.rope_scaling == LLAMA3_ROPE and not c.tie_embeddings
    c = configs["llama-mqa-tied-linear"]
    assert c.n_kv_heads == 1 and c.tie_embeddings and c.rope_scaling == {"rope_type": "linear", "factor": 4.0}
    assert configs["mistral-window"].sliding_window == 5
    c = configs["mixtral-window"]
    assert (c.n_experts, c.top_k, c.sliding_window, c.aux_loss_coef) == (4, 2, 6, 0.02)
    assert (configs["mixtral-top3"].n_experts, configs["mixtral-top3"].top_k) == (5, 3)


def _reference_logits(model, inputs):
    mask = inputs["attention_mask"]
    with torch.no_grad():
        return model(**inputs, position_ids=positions_from_mask(mask)).logits[mask.bool()]


@pytest.mark.parametrize("case", ["mistral-window", "mixtral-window", "llama-gqa-bias-llama3rope"])
def test_the_compared_inputs_exercise_the_switch(case):
    """Without its window (or its RoPE scaling) the reference gives other logits on the parity batch,
    so the parity rows above would notice if zoo ignored the switch."""
    model = _reference(case)
    # The batch run_parity builds (seed 0) for a model of this vocabulary.
    shape = SimpleNamespace(config=SimpleNamespace(vocab_size=BASE["vocab_size"], max_seq_len=64))
    inputs = padded_token_batch(shape, torch.Generator().manual_seed(0))
    if case == "llama-gqa-bias-llama3rope":
        other = _reference(case, rope_scaling=None)
    else:
        other = _reference(case, sliding_window=None)
    assert (_reference_logits(model, inputs) - _reference_logits(other, inputs)).abs().max() > 1e-2


def test_parity_fails_when_a_mapping_is_wrong(tmp_path, monkeypatch):
    """Swap the two norms' mapping (every shape still fits): the parity tool must notice."""
    path = _save("llama-mha", tmp_path)
    right = llama_convert.rules

    def wrong(config, task):
        out = [r for r in right(config, task) if "layernorm" not in r.src[0]]
        out.append(rename("model.layers.{i}.input_layernorm.weight", "layers.{i}.norm2.weight"))
        out.append(rename("model.layers.{i}.post_attention_layernorm.weight", "layers.{i}.norm1.weight"))
        return out

    monkeypatch.setattr(zoo.registry.FAMILIES["llama"], "rules", wrong)
    report = run_parity(path, dtypes=("float32",), roundtrip=False)
    assert not report.ok


def test_parity_fails_when_experts_gate_and_up_are_swapped(tmp_path, monkeypatch):
    path = _save("mixtral-window", tmp_path)
    right = llama_convert.rules

    def wrong(config, task):
        out = []
        for r in right(config, task):
            if r.src[0].endswith(".w1.weight"):
                r = rename(r.src[0], r.dst[0].replace(".gate.", ".up."))
            elif r.src[0].endswith(".w3.weight"):
                r = rename(r.src[0], r.dst[0].replace(".up.", ".gate."))
            out.append(r)
        return out

    monkeypatch.setattr(zoo.registry.FAMILIES["llama"], "rules", wrong)
    report = run_parity(path, dtypes=("float32",), roundtrip=False)
    assert not report.ok
    assert {r.output for r in report.rows if not r.ok} >= {"logits"}


def test_mixtral_fused_expert_layout_loads_the_same(tmp_path):
    """transformers 5's in-memory layout (experts.gate_up_proj / down_proj) is read as well as the
    per-expert one save_pretrained writes; both give the same model."""
    per_expert = _save("mixtral-window", tmp_path / "per_expert")
    state = load_file(per_expert / "model.safetensors")
    assert any(".block_sparse_moe.experts.0.w1.weight" in k for k in state)
    fused_dir = tmp_path / "fused"
    fused_dir.mkdir()
    fused = {k: v for k, v in state.items() if ".block_sparse_moe." not in k}
    for i in range(2):
        moe = f"model.layers.{i}.block_sparse_moe"
        w = [{n: state[f"{moe}.experts.{e}.{n}.weight"] for n in ("w1", "w2", "w3")} for e in range(4)]
        fused[f"model.layers.{i}.mlp.gate.weight"] = state[f"{moe}.gate.weight"]
        fused[f"model.layers.{i}.mlp.experts.gate_up_proj"] = torch.stack([torch.cat([x["w1"], x["w3"]]) for x in w])
        fused[f"model.layers.{i}.mlp.experts.down_proj"] = torch.stack([x["w2"] for x in w])
    save_file(fused, fused_dir / "model.safetensors")
    (fused_dir / "config.json").write_text((per_expert / "config.json").read_text())
    a, b = zoo.from_pretrained(per_expert), zoo.from_pretrained(fused_dir)
    assert all(torch.equal(a.state_dict()[k], v) for k, v in b.state_dict().items())
    # transformers reads the fused layout too, and agrees.
    assert run_parity(fused_dir, dtypes=("float32",), roundtrip=False).ok


def test_export_writes_the_per_expert_layout_transformers_writes(tmp_path):
    model = randomize_(zoo.create_model("mixtral-tiny"))
    model.save_pretrained(tmp_path)
    theirs = set(load_file(_save("mixtral-window", tmp_path / "ref") / "model.safetensors"))
    ours = set(load_file(tmp_path / "model.safetensors"))
    layer0 = lambda keys: {k.split(".", 3)[-1] for k in keys if ".layers.0." in k}
    assert layer0(ours) == layer0(theirs) and "block_sparse_moe.experts.3.w3.weight" in layer0(ours)


def test_aux_loss_and_loss_match_transformers(tmp_path):
    """With labels, transformers' Mixtral loss is the LM loss plus router_aux_loss_coef x aux; so is zoo's."""
    path = _save("mixtral-window", tmp_path)
    ref = transformers.MixtralForCausalLM.from_pretrained(path).eval()
    model = zoo.from_pretrained(path)
    inputs = padded_token_batch(model, torch.Generator().manual_seed(3))
    mask = inputs["attention_mask"].bool()
    # A label counts where its token is real and so is the one before (whose logits predict it):
    # logits at padding positions are meaningless, and the two implementations fill them differently.
    predicted_from_real = mask & torch.cat([torch.ones_like(mask[:, :1]), mask[:, :-1]], dim=1)
    labels = inputs["input_ids"].masked_fill(~predicted_from_real, -100)
    with torch.no_grad():
        ours = model(**inputs, labels=labels)
        theirs = ref(**inputs, labels=labels, position_ids=positions_from_mask(inputs["attention_mask"]),
                     output_router_logits=True)  # fmt: skip
    assert abs(ours.aux_loss - theirs.aux_loss) < 1e-5
    assert abs(ours.loss - theirs.loss) < 1e-5
    assert model.config.aux_loss_coef == 0.02 and ours.aux_loss > 0
