"""The `zoo` command line, run in-process as a user would run it: list, info, parity, errors."""

import json
import re

import pytest
import torch
import transformers

import zoo
from tests.conftest import randomize_
from zoo.cli import main
from zoo.convert import rename
from zoo.families.gpt import convert as gpt_convert

CONFIG = dict(vocab_size=211, n_positions=64, n_embd=48, n_layer=2, n_head=4, n_inner=104)


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list_everything(capsys):
    code, out, err = run(capsys, "list")
    assert code == 0 and not err
    header, *lines = out.splitlines()
    assert header.split() == ["NAME", "FAMILY", "TASK", "PARAMS", "SOURCE"]
    assert [line.split()[0] for line in lines] == zoo.list_models()
    gpt2 = next(line for line in lines if line.split()[0] == "gpt2")
    assert gpt2.split()[1:] == ["gpt", "causal_lm", "124.4M",
                                "https://huggingface.co/openai-community/gpt2/blob/main/config.json"]  # fmt: skip


def test_list_as_json(capsys):
    code, out, _ = run(capsys, "list", "gpt2*", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == zoo.list_models("gpt2*")
    assert rows[0] | {"parameters": _reference_gpt2_parameters()} == rows[0] and rows[0]["family"] == "gpt"


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out == f"zoo {zoo.__version__}\n"


def test_list_with_a_glob(capsys):
    code, out, _ = run(capsys, "list", "gpt2*")
    assert code == 0
    names = [line.split()[0] for line in out.splitlines()[1:]]
    assert names == zoo.list_models("gpt2*")
    assert {"gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"} <= set(names)


def test_list_with_no_match_exits_1(capsys):
    code, out, err = run(capsys, "list", "nothing-like-this*")
    assert code == 1 and not out and "no registered model matches 'nothing-like-this*'" in err


def _number(out: str, label: str) -> int:
    match = re.search(rf"{label}:\s+([\d,]+)", out)
    assert match, f"no {label!r} line in:\n{out}"
    return int(match.group(1).replace(",", ""))


def _reference_gpt2_parameters() -> int:
    """GPT-2 (124M) counted in transformers, on the meta device (no memory)."""
    with torch.device("meta"):
        ref = transformers.GPT2LMHeadModel(transformers.GPT2Config())
    return sum(p.numel() for p in ref.parameters())  # tied: the shared matrix is counted once


def test_info_gpt2_counts_and_flops(capsys):
    code, out, _ = run(capsys, "info", "gpt2")
    assert code == 0
    params = _number(out, "parameters")
    assert params == _reference_gpt2_parameters() == 124_439_808
    # Kaplan et al.: N excludes the token and position embeddings; forward = 2N + 2 n_layers n_ctx d_attn.
    vocab, ctx, d, n_layers = 50257, 1024, 768, 12
    n = params - vocab * d - ctx * d
    assert _number(out, "non-embedding parameters") == n
    forward = 2 * n + 2 * n_layers * ctx * d
    assert _number(out, "FLOPs/token forward") == forward
    assert _number(out, "FLOPs/token training") == 3 * forward
    # Shapes of the first layer only, in zoo's names.
    assert re.search(r"layers\.0\.attn\.q_proj\.weight\s+\(768, 768\)", out)
    assert re.search(r"layers\.0\.mlp\.up\.weight\s+\(3072, 768\)", out)
    assert "layers.1." not in out


def test_info_context_changes_only_the_attention_term(capsys):
    _, short, _ = run(capsys, "info", "gpt2-medium", "--context", "512")
    _, long, _ = run(capsys, "info", "gpt2-medium", "--context", "2048")
    diff = _number(long, "FLOPs/token forward") - _number(short, "FLOPs/token forward")
    assert diff == 2 * 24 * (2048 - 512) * 1024  # 2 n_layers Δn_ctx d_attn


@pytest.fixture
def hf_gpt2_dir(tmp_path):
    model = randomize_(transformers.GPT2LMHeadModel(transformers.GPT2Config(**CONFIG)))
    model.save_pretrained(tmp_path)
    return tmp_path


def test_parity_passes_on_a_tiny_random_gpt2(capsys, hf_gpt2_dir):
    code, out, _ = run(capsys, "parity", str(hf_gpt2_dir))
    assert code == 0, out
    assert out.strip().endswith("parity: ok")
    rows = [line for line in out.splitlines() if line.endswith(" ok") and "logits" in line]
    assert {r.split("  ")[0] for r in rows} >= {"load into zoo", "export to reference"}
    assert any("bfloat16" in r for r in rows) and any("float32" in r for r in rows)


def test_parity_exits_1_above_tolerance(capsys, hf_gpt2_dir, monkeypatch):
    """A wrong rule that still loads (the attention and MLP output biases swapped, both (48,))."""
    right = gpt_convert.rules

    def wrong(config, task):
        out = [r for r in right(config, task) if not r.src[0].endswith(("attn.c_proj.bias", "mlp.c_proj.bias"))]
        out.append(rename("transformer.h.{i}.attn.c_proj.bias", "layers.{i}.mlp.down.bias"))
        out.append(rename("transformer.h.{i}.mlp.c_proj.bias", "layers.{i}.attn.o_proj.bias"))
        return out

    monkeypatch.setattr(zoo.registry.FAMILIES["gpt"], "rules", wrong)
    code, out, _ = run(capsys, "parity", str(hf_gpt2_dir), "--dtype", "float32", "--no-roundtrip")
    assert code == 1
    assert "FAIL" in out and out.strip().endswith("parity: FAILED (above tolerance)")


@pytest.mark.parametrize(
    "argv,message",
    [
        (["info", "gpt3"], "zoo info: error: unknown model 'gpt3'; did you mean gpt2"),
        (["parity", "/no/such/dir"], "zoo parity: error: /no/such/dir: no such file or directory"),
    ],
)
def test_errors_print_one_line_and_exit_2(capsys, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and not out
    assert err.count("\n") == 1 and err.startswith(message), err


def test_parity_on_a_directory_that_is_not_a_checkpoint(capsys, tmp_path):
    code, _, err = run(capsys, "parity", str(tmp_path))
    assert code == 2 and err.count("\n") == 1
    assert "not a checkpoint directory (no config.json or zoo.json in it)" in err


def test_usage_errors_exit_2(capsys):
    for argv in ([], ["frobnicate"], ["parity", "x", "--dtype", "float16"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
    capsys.readouterr()


def _leaf_keys(cls, prefix=""):
    import dataclasses
    import typing

    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _leaf_keys(hints[f.name], f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}"


def test_finetune_print_config_shows_every_key_with_type_and_default(capsys):
    from pathlib import Path

    from zoo.train.config import Recipe

    recipe = Path(__file__).resolve().parents[2] / "recipes" / "gpt2-text.yaml"
    code, out, _ = run(capsys, "finetune", str(recipe), "train.steps=7", "--print-config")
    assert code == 0
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:] if line and not line.startswith(" ")}
    missing = [k for k in _leaf_keys(Recipe) if k not in rows]
    assert not missing, missing
    assert rows["train.steps"] == ["train.steps", "int", "100", "7", "*"]
    assert rows["train.precision"][:3] == ["train.precision", "fp32", "|"]  # the choices
    assert rows["lora.r"] == ["lora.r", "int", "8", "8"]
    assert "peak learning rate." in out  # each key's line from the docs
