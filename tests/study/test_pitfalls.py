"""`zoo study pitfalls` on a small setting, and the residual switch it rests on.

The bounds were set from three seeds of the small setting (measured: without clipping the SGD run
diverges by step 5, with clipping it trains; without residuals the first layer's gradient is
1e-3 to 4e-8 of the last layer's after 30 steps, with them 1.1 to 5.4x)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zoo
from tests.conftest import randomize_
from zoo.blocks import Attention, TransformerLayer, make_mlp, make_norm
from zoo.config import ConfigError
from zoo.study import StudyError, run_study

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["d_model=32", "n_heads=2", "batch_size=8", "seq_len=32", "log_every=5",
         "explode_layers=2", "explode_steps=30", "vanish_layers=6", "vanish_steps=30", "vanish_warmup=5",
         "warmup_layers=2", "warmup_train_steps=20", "warmup=10"]  # fmt: skip


def quiet(*args):
    pass


def _layer(prenorm: bool, residual: bool) -> TransformerLayer:
    layer = TransformerLayer(
        attn=Attention(16, 4), mlp=make_mlp("gelu", 16, 28), norm1=make_norm("layernorm", 16),
        norm2=make_norm("layernorm", 16), prenorm=prenorm, residual=residual,
    )  # fmt: skip
    return randomize_(layer, seed=0)


@pytest.mark.parametrize("prenorm", [True, False])
def test_without_residual_the_sublayer_output_replaces_x(prenorm):
    layer, x = _layer(prenorm, residual=False), torch.randn(2, 5, 16)
    if prenorm:
        expected = layer.mlp(layer.norm2(layer.attn(layer.norm1(x))))
    else:
        expected = layer.norm2(layer.mlp(layer.norm1(layer.attn(x))))
    torch.testing.assert_close(layer(x), expected, atol=1e-6, rtol=0)
    with_skip = _layer(prenorm, residual=True)
    assert (with_skip(x) - layer(x)).abs().max() > 1e-2  # same weights: the switch changes the computation


def test_gpt_residual_switch_is_a_checked_config_field():
    model = zoo.create_model("gpt2-tiny", n_layers=2, residual=False)
    assert all(not layer.residual for layer in model.layers)
    assert zoo.create_model("gpt2-tiny", n_layers=2).layers[0].residual
    with pytest.raises(ConfigError, match="residual"):
        zoo.create_model("gpt2-tiny", residual="no")
    # transformers' GPT-2 has no such switch: saving in its format says so instead of losing it.
    from zoo.families.gpt.convert import config_to_hf

    with pytest.raises(ConfigError, match="residual"):
        config_to_hf(model.config, "causal_lm")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pitfalls")
    return run_study("pitfalls", [*SMALL, "parts=[exploding,vanishing,warmup]"], out, log=quiet), out


def test_exploding_gradients_are_fixed_by_clipping(small_run):
    summary, out = small_run
    e = summary["exploding"]
    blown = e["unclipped"]
    assert blown["diverged"] and blown["steps_run"] < 30  # stopped: NaN, or 1.5x the first loss
    assert blown["final_loss"] is None or blown["final_loss"] > 1.5 * blown["loss"][0]
    clipped = e["clipped"]
    assert not clipped["diverged"] and clipped["steps_run"] == 30
    assert clipped["final_loss"] < clipped["loss"][0] - 0.5
    assert clipped["max_grad_norm"] < 10
    for name in ("exploding.png", "vanishing.png", "warmup.png", "values.csv", "report.md"):
        assert (out / name).stat().st_size > 0
    # NaN losses are written as null: summary.json is strict JSON.
    json.loads((out / "summary.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c} in summary.json"))


def test_gradients_vanish_without_residuals(small_run):
    v = small_run[0]["vanishing"]
    assert len(v["residual"]["layer_grad_norm_final"]) == 6
    report = v["no_residual"]["layer_grad_norm_report"].splitlines()  # the last step's, one line per layer
    assert [line.split()[0] for line in report if line.split()[0].startswith("layers.")] == [
        f"layers.{i}" for i in range(6)
    ]
    assert float(report[[line.split()[0] for line in report].index("layers.0")].split()[1]) == pytest.approx(
        v["no_residual"]["layer_grad_norm_final"][0], rel=1e-3
    )
    assert v["no_residual"]["first_over_last_final"] < 1e-2
    assert v["residual"]["first_over_last_final"] > 0.5
    # At initialisation the norms keep both stacks' gradients of one size: the collapse comes with training.
    assert v["no_residual"]["first_over_last_init"] > 0.1 and v["residual"]["first_over_last_init"] > 0.5


def test_warmup_arms_share_the_start_and_differ_in_the_learning_rate(small_run):
    # The benefit of warmup needs the default's model (docs/debugging.md); at this size the two
    # arms end within noise of each other, so only what the comparison rests on is checked.
    summary, out = small_run
    w = summary["warmup"]
    assert w["warmup"]["loss"][0] == w["no_warmup"]["loss"][0]
    lines = (out / "values.csv").read_text().splitlines()
    lr0 = {line.split(",")[0]: float(line.split(",")[3]) for line in lines if ",0,lr," in line}
    assert lr0["warmup: no warmup"] == pytest.approx(1e-2)
    assert lr0["warmup: 10 warmup steps"] == pytest.approx(1e-3)


def test_accumulation_and_checkpointing_lower_the_measured_peak(tmp_path):
    # In a process of its own: threads other tests leave behind would skew mallinfo2.
    small = ["parts=[memory]", "n_heads=2", "memory_d_model=64", "memory_layers=2", "memory_batch_size=8",
             "memory_seq_len=128", "memory_micro_batch_size=2"]  # fmt: skip
    code = (
        "import json, sys; from zoo.study import run_study;"
        f"s = run_study('pitfalls', {small!r}, sys.argv[1], log=lambda *a: None); print(json.dumps(s['memory']))"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert run.returncode == 0, run.stderr[-2000:]
    mem = json.loads(run.stdout.strip().splitlines()[-1])
    full, micro, ckpt, both = mem["arms"]
    assert micro["micro_batch_size"] == 2 and ckpt["checkpointing"] and both["checkpointing"]
    for arm in mem["arms"]:  # zoo info's plan is what a step measures
        assert 0.8 < arm["measured_peak_bytes"] / arm["planned_peak_bytes"] < 1.5, arm
    assert micro["measured_peak_bytes"] < 0.5 * full["measured_peak_bytes"]
    assert ckpt["measured_peak_bytes"] < 0.8 * full["measured_peak_bytes"]
    assert both["measured_peak_bytes"] < min(micro["measured_peak_bytes"], ckpt["measured_peak_bytes"])
    # Accumulating four micro-batches gives the big batch's gradient (float32 rounding apart).
    for arm, diff in mem["relative_grad_difference"].items():
        assert diff < 1e-5, arm


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(StudyError, match="explode_lr"):
        run_study("pitfalls", ["explode_lr=fast"], tmp_path, log=quiet)
    with pytest.raises(ValueError, match="parts"):
        run_study("pitfalls", ["parts=[exploding,oom]"], tmp_path, log=quiet)
    with pytest.raises(ValueError, match="warmup"):
        run_study("pitfalls", ["warmup=0"], tmp_path, log=quiet)
    with pytest.raises(ValueError, match="memory_micro_batch_size"):
        run_study("pitfalls", ["parts=[memory]", "memory_batch_size=8", "memory_micro_batch_size=3"], tmp_path)


def test_zoo_info_plans_a_registered_model_from_a_fresh_process():
    # docs/debugging.md's first command; in a fresh process the registry starts empty.
    run = subprocess.run(
        [sys.executable, "-m", "zoo.cli", "info", "gpt2-tiny", "--batch", "8", "--seq-len", "64"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert "training memory, batch 8 x 64 tokens" in run.stdout and "with checkpointing" in run.stdout
