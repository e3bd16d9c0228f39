"""What a run prints: plain progress lines when nobody watches a terminal; a warmup warning."""

import io

import pytest

from tests.train.conftest import config, lm_examples, tiny_gpt
from zoo.train import CausalLMTask, Trainer
from zoo.train.config import RecipeWarning, recipe_from_dict
from zoo.train.metrics import Progress


def test_progress_prints_plain_lines_when_its_stream_is_not_a_terminal():
    stream = io.StringIO()  # like a log file: isatty() is False
    progress = Progress(6, 2, True, "tok/s", every=2, stream=stream)
    for _ in range(4):
        progress.update(1.5, 1e-3, 100.0)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and len(lines) == 2
    assert lines[0].startswith("train:  67% 4/6 [") and lines[1].startswith("train: 100% 6/6 [")
    assert lines[1].endswith("loss=1.5000 lr=1.00e-03 tok/s=100]")


def test_a_training_run_logs_plain_lines_to_a_non_terminal(run_dir, capsys):
    Trainer(tiny_gpt(), CausalLMTask(), lm_examples(8), config(steps=4, log_every=2, progress="tqdm"), run_dir).fit()
    err = capsys.readouterr().err  # captured: not a terminal
    assert "\r" not in err
    assert [line.split()[2] for line in err.splitlines() if line.startswith("train:")] == ["2/4", "4/4"]


def test_steps_shorter_than_the_warmup_warn():
    with pytest.warns(RecipeWarning, match=r"train.steps=10 is shorter than train.warmup_steps=40: .* stops at 25%"):
        recipe_from_dict({"model": {"name": "gpt2-tiny"}, "data": {"format": "digits"},
                          "train": {"steps": 10, "warmup_steps": 40}})  # fmt: skip


def test_the_cli_prints_the_warning_as_one_line(tmp_path):
    """In a process of its own: under pytest, warnings are recorded rather than printed."""
    import subprocess
    import sys

    (tmp_path / "r.yaml").write_text(
        "model: {name: gpt2-tiny}\ndata: {format: digits}\ntrain: {steps: 2, warmup_steps: 5}\n"
    )
    run = subprocess.run(
        [sys.executable, "-m", "zoo.cli", "finetune", str(tmp_path / "r.yaml"), "--print-config"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    err = run.stderr
    assert err.startswith("zoo: warning: train.steps=2 is shorter than train.warmup_steps=5") and err.count("\n") == 1
