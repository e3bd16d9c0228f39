"""Run directories: nothing zoo did not write is deleted, a resume is checked before anything is
written, one run at a time, and a full disk during a checkpoint is a CheckpointWriteError."""

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import file_size_limit
from tests.train.conftest import config, lm_examples, tiny_gpt
from zoo.hub import CheckpointError, CheckpointWriteError
from zoo.train import CausalLMTask, Trainer
from zoo.train import checkpoint as ckpt
from zoo.train.config import load_recipe
from zoo.train.recipes import finetune
from zoo.train.rundir import LOCK, MARKER, RunDirError

ROOT = Path(__file__).resolve().parents[2]


def _digest(directory: Path) -> dict[str, str]:
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file() and p.name != LOCK}  # fmt: skip


def _user_files(directory: Path) -> None:
    (directory / "checkpoints").mkdir(parents=True)
    (directory / "checkpoints" / "mywork.pt").write_bytes(b"months of work")
    (directory / "tb" / "other_run").mkdir(parents=True)
    (directory / "tb" / "other_run" / "events").write_bytes(b"another run's curves")


@pytest.mark.parametrize("resume", [False, True])
def test_a_directory_that_is_not_a_zoo_run_is_refused_untouched(run_dir, resume):
    _user_files(run_dir)
    before = _digest(run_dir)
    with pytest.raises(RunDirError, match=rf"out_dir: {run_dir} is not empty and is not a zoo run directory"):
        Trainer(tiny_gpt(), CausalLMTask(), lm_examples(8), config(steps=1, resume=resume), run_dir).fit()
    assert _digest(run_dir) == before and not (run_dir / MARKER).exists()


def test_resume_false_removes_only_what_zoo_wrote(run_dir):
    data = lm_examples(8)
    Trainer(tiny_gpt(), CausalLMTask(), data, config(steps=2, save_every=1), run_dir).fit()
    (run_dir / "tb").mkdir()
    (run_dir / "tb" / "events.out.tfevents.1.host").write_bytes(b"as TensorBoard names them")
    (run_dir / "checkpoints" / "mywork.pt").write_bytes(b"mine")
    (run_dir / "tb" / "other_run").mkdir()
    (run_dir / "tb" / "other_run" / "events").write_bytes(b"mine too")
    (run_dir / "notes.txt").write_text("mine as well")
    old_events = sorted((run_dir / "tb").glob("events.out.tfevents.*"))
    Trainer(tiny_gpt(), CausalLMTask(), data, config(steps=1, resume=False), run_dir).fit()
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["mywork.pt", "step-00000001"]
    assert (run_dir / "tb" / "other_run" / "events").read_bytes() == b"mine too"
    assert (run_dir / "notes.txt").exists() and old_events and not any(p.exists() for p in old_events)


def test_resume_into_a_checkpoint_of_another_model_is_refused_by_name(run_dir):
    data = lm_examples(8)
    Trainer(tiny_gpt(), CausalLMTask(), data, config(steps=2), run_dir).fit()
    before = _digest(run_dir)
    other = tiny_gpt(n_layers=1, d_model=32, n_heads=2)
    with pytest.raises(CheckpointError, match=r"written by a different model or recipe") as err:
        Trainer(other, CausalLMTask(), data, config(steps=3), run_dir).fit()
    message = str(err.value)
    assert "model config n_layers: the checkpoint's is 2, this run's 1" in message
    assert "embed.weight: the checkpoint's shape is (211, 48), this run's (211, 32)" in message
    assert _digest(run_dir) == before


def test_a_resumed_recipe_of_another_model_writes_nothing(tmp_path):
    """recipe.yaml is the record of what the checkpoints are: it must not be rewritten first."""
    out = tmp_path / "run"
    fast = [f"out_dir={out}", "train.progress=none", "train.tensorboard=false", "train.steps=1",
            "data.max_len=16", "train.batch_size=4", "sample.prompts=[]"]  # fmt: skip
    small = "model.overrides={n_layers: 1, d_model: 32, n_heads: %d}"
    finetune(load_recipe(ROOT / "recipes" / "gpt2-text.yaml", [*fast, small % 2]), log=lambda *a: None)
    before = _digest(out)
    other = load_recipe(
        ROOT / "recipes" / "gpt2-text.yaml", [*fast, "model.overrides={n_layers: 1, d_model: 32, n_heads: 4}"]
    )
    with pytest.raises(CheckpointError, match=r"model config n_heads: the checkpoint's is 2, this run's 4"):
        finetune(other, log=lambda *a: None)
    assert _digest(out) == before


def test_a_second_run_into_a_locked_directory_names_the_first(run_dir):
    # Another process takes the lock with zoo's own code (rundir.py needs only the standard
    # library, loaded from its file so the holder starts without importing torch).
    script = (
        "import importlib.util, sys; spec = importlib.util.spec_from_file_location('rundir', sys.argv[1]);"
        "rundir = importlib.util.module_from_spec(spec); spec.loader.exec_module(rundir); rundir.claim(sys.argv[2]);"
        "ctx = rundir.locked(sys.argv[2]); ctx.__enter__(); print('held', flush=True); sys.stdin.read()"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script, str(ROOT / "zoo" / "train" / "rundir.py"), str(run_dir)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunDirError, match=rf"{run_dir} is in use by another zoo run \(pid {holder.pid}, host "):
            Trainer(tiny_gpt(), CausalLMTask(), lm_examples(8), config(steps=1), run_dir).fit()
        assert not (run_dir / "metrics.csv").exists()
    finally:
        holder.communicate("")  # closes its stdin: it exits, and the kernel drops its lock
    result = Trainer(tiny_gpt(), CausalLMTask(), lm_examples(8), config(steps=1), run_dir).fit()
    assert result.status == "finished"


def test_a_full_disk_during_a_checkpoint_is_a_checkpoint_write_error(run_dir):
    data = lm_examples(8)
    Trainer(tiny_gpt(), CausalLMTask(), data, config(steps=2), run_dir).fit()
    good = run_dir / "checkpoints" / "step-00000002"
    before = _digest(good)
    # The checkpoint's model file alone is ~100 KB: safetensors' real write fails half way.
    with file_size_limit(30_000), pytest.raises(CheckpointWriteError, match=r"writing step 3 failed .*step-00000002"):
        Trainer(tiny_gpt(), CausalLMTask(), data, config(steps=3), run_dir).fit()
    assert ckpt.latest_checkpoint(run_dir / "checkpoints") == good and _digest(good) == before
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))


def test_a_run_of_an_older_zoo_is_refused_with_how_to_adopt_it(run_dir):
    (run_dir / "checkpoints" / "step-00000001").mkdir(parents=True)
    (run_dir / "checkpoints" / "step-00000001" / "trainer.json").write_text("{}")
    (run_dir / "recipe.yaml").write_text("out_dir: run\n")
    with pytest.raises(RunDirError, match=rf"from before run markers, `touch {run_dir / MARKER}` adopts it"):
        Trainer(tiny_gpt(), CausalLMTask(), lm_examples(8), config(steps=1), run_dir).fit()
