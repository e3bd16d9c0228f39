"""A Hugging Face repo id, read offline from a cache laid out the way huggingface_hub writes it:
``zoo.from_pretrained``, ``zoo info``, ``zoo parity`` and ``zoo generate`` take it alike."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

import zoo
from tests.conftest import randomize_
from zoo.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIG = dict(vocab_size=211, n_positions=64, n_embd=48, n_layer=2, n_head=4, n_inner=104)
COMMIT = "0123456789abcdef0123456789abcdef01234567"

SCRIPT = """
import sys, torch, zoo
from zoo.cli import main
model = zoo.from_pretrained("someone/tiny-gpt2")
torch.save(model(torch.arange(9)[None]).logits.detach(), sys.argv[1])
for argv in (["generate", "someone/tiny-gpt2", "--prompt", "w1 w2", "--max-new-tokens", "3"],
             ["info", "someone/not-cached"]):
    print("exit", argv[0], main(argv), flush=True)
"""


def _snapshot(cache: Path, repo_id: str) -> Path:
    """models--owner--name/{refs/main, snapshots/<commit>/}: huggingface_hub's cache layout."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    return repo / "snapshots" / COMMIT


def _populate(cache: Path) -> Path:
    snapshot = _snapshot(cache, "someone/tiny-gpt2")
    randomize_(transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG))).save_pretrained(snapshot)
    words = ["[UNK]", "<eos>", *[f"w{i}" for i in range(209)]]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(snapshot / "tokenizer.json"))
    (snapshot / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<eos>"}))
    return snapshot


def test_a_repo_id_loads_offline_from_the_cache_that_hf_hub_cache_names(tmp_path):
    """A fresh process with only the environment set, as a user runs it."""
    snapshot = _populate(tmp_path / "cache")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "cache"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "HF_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1"}  # fmt: skip
    run = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "logits.pt")], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert "exit generate 0" in run.stdout, run.stdout + run.stderr
    assert "exit info 2" in run.stdout  # a repo that is not cached is named, with the cache looked in
    assert f"someone/not-cached: no such file or directory, and not a model in the Hugging Face cache {tmp_path}" in (
        run.stderr
    )
    expected = zoo.from_pretrained(snapshot)(torch.arange(9)[None]).logits
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, atol=1e-5, rtol=0)


def test_zoo_info_and_parity_take_a_repo_id(tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants

    _populate(tmp_path / "cache")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["info", "someone/tiny-gpt2"]) == 0
    assert capsys.readouterr().out.startswith("someone/tiny-gpt2 (family gpt)")
    assert main(["parity", "someone/tiny-gpt2", "--dtype", "float32"]) == 0
    assert capsys.readouterr().out.strip().endswith("parity: ok")
