"""Several processes on CPU (gloo), each spawn shared by several checks: a pretrained model loaded
straight into FSDP2 shards, and two one-process "nodes" joined by a c10d rendezvous that resume
a one-process sharded checkpoint, whose own checkpoint one process then resumes (resharding
1 -> 2 -> 1), with the losses of one uninterrupted process throughout."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import zoo
from zoo.train import checkpoint as ckpt
from zoo.train import rundir
from zoo.train.config import recipe_from_dict
from zoo.train.metrics import read_metrics
from zoo.train.recipes import finetune

ROOT = Path(__file__).resolve().parents[2]
STORIES = str(ROOT / "recipes" / "data" / "zoo_stories.txt")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _env() -> dict:
    # One thread per process: two processes on a shared 2-core machine must not oversubscribe it.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sharded_load_reads_only_each_process_part(tmp_path):
    save = tmp_path / "save"
    zoo.save_pretrained(zoo.create_model("gpt2-tiny", n_layers=2), save, format="zoo")
    cmd = [*TORCHRUN, "--standalone", "--nproc_per_node", "2", str(ROOT / "tests/train/sharded_load_worker.py"),
           str(save), str(tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    total = sum(t.numel() for t in zoo.from_pretrained(save).state_dict().values())
    for r in ranks:
        assert r["max_diff"] == 0.0 and r["buffers_equal"]  # the shards hold exactly the saved weights
        for name, full in r["full_shapes"].items():
            rows = -(-full[0] // 2)  # FSDP2's dim-0 chunk
            expect = [min(rows, full[0] - r["rank"] * rows), *full[1:]]
            assert r["local_shapes"][name] == expect, name
            assert r["largest_read"][name] == expect, name  # no process read a whole tensor
        assert r["read_elements"] < 0.55 * total
    assert sum(r["read_elements"] for r in ranks) == total  # together, everything once (tied weights twice)
    assert ranks[0]["local_shapes"]["embed.weight"] == [106, 48]  # vocab 211: the chunks are uneven
    # zoo info's per-process FSDP2 figures are the first process's measured shard sizes; the
    # second process holds no more.
    assert ranks[0]["measured"] == ranks[0]["planned"]
    for key, planned in ranks[0]["planned"].items():
        assert ranks[1]["measured"][key] <= planned


def _recipe(run: Path, base: Path, **train) -> dict:
    return {
        "model": {"path": str(base)},
        "tokenizer": "bpe:300",
        "data": {"format": "text", "train": STORIES, "max_len": 24, "eval_fraction": 0.05},
        "train": {"steps": 4, "batch_size": 8, "micro_batch_size": 2, "lr": 3.0e-3, "progress": "none",
                  "tensorboard": False, "device": "cpu", "save_every": 1, "keep_checkpoints": 4,
                  "checkpoint_format": "sharded", **train},
        "out_dir": str(run),
    }  # fmt: skip


def _losses(run: Path) -> dict[int, float]:
    return {int(r["step"]): float(r["loss"]) for r in read_metrics(run / "metrics.csv")}


def _resume_in(source: Path, step: int, run: Path) -> None:
    """A new run directory holding ``source``'s checkpoint ``step`` (and its tokenizer)."""
    rundir.claim(run)
    name = f"step-{step:08d}"
    shutil.copytree(source / "checkpoints" / name, run / "checkpoints" / name)
    shutil.copytree(source / "tokenizer", run / "tokenizer")


def test_two_nodes_reshard_1_to_2_to_1_with_the_losses_of_one_process(tmp_path):
    base = tmp_path / "base"  # a pretrained model in zoo's format: the two nodes load it sharded
    zoo.save_pretrained(zoo.create_model("gpt2-tiny", vocab_size=300, dropout=0.0), base, format="zoo")
    one = tmp_path / "one"
    # Uninterrupted: steps 1-4, a sharded save after each.
    finetune(recipe_from_dict(_recipe(one, base)), log=lambda *a: None)
    reference = _losses(one)
    assert sorted(reference) == [1, 2, 3, 4]

    # 1 -> 2: two "nodes" of one process each (two torchrun commands, a c10d rendezvous on
    # 127.0.0.1) resume the one-process checkpoint of step 2 and train steps 3-4 with FSDP2.
    nodes = tmp_path / "nodes"
    _resume_in(one, 2, nodes)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(nodes, base, strategy="fsdp")))
    port = _free_port()
    rendezvous = ["--rdzv_backend", "c10d", "--rdzv_endpoint", f"127.0.0.1:{port}", "--rdzv_id", "zoo-test"]
    commands = [[*TORCHRUN, "--nnodes", "2", "--node_rank", str(rank), "--nproc_per_node", "1", *rendezvous,
                 "-m", "zoo.cli", "finetune", str(recipe)] for rank in (0, 1)]  # fmt: skip
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, "text": True}
    launched = [subprocess.Popen(c, cwd=tmp_path, env=_env(), **pipes) for c in commands]
    outputs = [p.communicate(timeout=300) for p in launched]
    for p, (_, err) in zip(launched, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    printed = "".join(out for out, _ in outputs)
    assert "2 process(es) on cpu" in printed and "resumed from" in printed and "(step 2," in printed
    assert f"{base}: loaded straight into FSDP2 shards" in printed
    two = _losses(nodes)
    assert sorted(two) == [3, 4]
    assert [two[3], two[4]] == pytest.approx([reference[3], reference[4]], rel=1e-5, abs=1e-6)
    step3 = nodes / "checkpoints" / "step-00000003"
    assert {p.name for p in (step3 / "shards").glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}
    assert ckpt.read_trainer_state(step3)["world_size"] == 2

    # 2 -> 1: one process (no process group: DCP's no_dist) resumes the two-process checkpoint.
    back = tmp_path / "back"
    _resume_in(nodes, 3, back)
    finetune(recipe_from_dict(_recipe(back, base)), log=lambda *a: None)
    assert _losses(back) == pytest.approx({4: reference[4]}, rel=1e-5, abs=1e-6)
