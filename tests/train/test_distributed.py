"""torchrun, 2 processes on CPU with gloo: DDP and FSDP2 give the losses of one process with the
same global batch; and the CLI saves and exits cleanly on a real SIGTERM, then resumes."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from zoo.train.config import recipe_from_dict
from zoo.train.metrics import read_metrics
from zoo.train.recipes import finetune

ROOT = Path(__file__).resolve().parents[2]
STORIES = str(ROOT / "recipes" / "data" / "zoo_stories.txt")


def _recipe_yaml(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(
        f"""
model: {{name: gpt2-tiny, overrides: {{dropout: 0.0}}}}
tokenizer: bpe:300
data: {{format: text, train: {STORIES}, max_len: 24, eval_fraction: 0.05}}
train: {{steps: 3, batch_size: 8, micro_batch_size: 2, lr: 3.0e-3, progress: none, tensorboard: false, device: cpu}}
"""
    )
    return path


def _env() -> dict:
    # One thread per process: two processes on a shared 2-core machine must not oversubscribe it.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _losses(run_dir: Path) -> list[float]:
    return [float(r["loss"]) for r in read_metrics(run_dir / "metrics.csv")]


@pytest.fixture(scope="module")
def single_process_losses(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("single")
    import yaml

    data = yaml.safe_load(_recipe_yaml(tmp).read_text())
    data["out_dir"] = str(tmp / "run")
    finetune(recipe_from_dict(data), log=lambda *a: None)
    return _losses(tmp / "run")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, single_process_losses, strategy):
    recipe = _recipe_yaml(tmp_path)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    args = [str(recipe), f"out_dir={tmp_path / 'run'}", f"train.strategy={strategy}"]
    cmd = [*torchrun, "-m", "zoo.cli", "finetune", *args]
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "2 process(es) on cpu" in proc.stdout
    losses = _losses(tmp_path / "run")
    assert len(losses) == 3
    assert losses == pytest.approx(single_process_losses, rel=1e-5, abs=1e-6)
    assert (tmp_path / "run" / "checkpoints" / "step-00000003" / "trainer.json").is_file()


def test_cli_saves_on_sigterm_and_resumes(tmp_path):
    recipe = _recipe_yaml(tmp_path)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "zoo.cli", "finetune", str(recipe), f"out_dir={run}", "train.steps=100000"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while len(read_metrics(run / "metrics.csv")) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else ""
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    assert "stopped by SIGTERM at step" in out + err
    saved = [p.name for p in (run / "checkpoints").iterdir()]
    assert len(saved) == 1 and saved[0].startswith("step-")
    step = int(saved[0][5:])
    assert len(read_metrics(run / "metrics.csv")) >= step >= 2

    again = [*cmd[:-1], f"train.steps={step + 1}"]
    resumed = subprocess.run(again, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resumed from {run / 'checkpoints' / saved[0]} (step {step}" in resumed.stdout
    assert [int(r["step"]) for r in read_metrics(run / "metrics.csv")] == list(range(1, step + 2))
