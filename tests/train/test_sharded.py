"""Sharded checkpoints (torch.distributed.checkpoint) on one process: the layout, an exact resume,
the trainer state, a kill in the middle of a sharded save, and `zoo export` of a run."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import zoo
from zoo.train import Trainer, rundir
from zoo.train import checkpoint as ckpt
from zoo.train.data import CausalLMTask

from .conftest import config, lm_examples, tiny_gpt

ROOT = Path(__file__).resolve().parents[2]


def test_sharded_checkpoint_layout_and_exact_resume(tmp_path):
    data = lm_examples(10, seed=1)
    cfg = config(steps=4, batch_size=4, micro_batch_size=2, save_every=2, checkpoint_format="sharded")
    full = Trainer(tiny_gpt(dropout=0.1), CausalLMTask(), data, cfg, tmp_path / "full")
    losses = full.fit().losses
    saved = tmp_path / "full" / "checkpoints" / "step-00000002"
    assert sorted(p.name for p in saved.iterdir()) == ["rng.safetensors", "shards", "trainer.json"]
    assert {p.name for p in (saved / "shards").iterdir()} == {".metadata", "__0_0.distcp"}
    assert not list((tmp_path / "full" / "checkpoints").glob(".tmp-*"))
    shapes = ckpt.sharded_shapes(saved)
    assert shapes["model.layers.0.attn.q_proj.weight"] == tuple(full.model.layers[0].attn.q_proj.weight.shape)
    assert "optimizer.state.layers.0.attn.q_proj.weight.exp_avg" in shapes

    cut = rundir.claim(tmp_path / "cut")
    shutil.copytree(saved, cut / "checkpoints" / saved.name)
    # Another initialisation: the weights, AdamW moments, scheduler, RNG and data position must
    # all come from the checkpoint for the losses to be bit-identical (dropout is on).
    second = Trainer(tiny_gpt(seed=7, dropout=0.1), CausalLMTask(), data, cfg, cut)
    second.load(cut / "checkpoints" / saved.name)
    assert (second.step, second.samples_seen, second.scheduler.last_epoch) == (2, 8, 2)
    moments = second.optimizer.state[second.model.layers[0].attn.q_proj.weight]["exp_avg"]
    assert moments.abs().sum() > 0
    assert second.fit().losses == losses[2:]


def test_a_corrupt_metadata_pickle_is_refused(tmp_path):
    data = lm_examples(6)
    Trainer(tiny_gpt(), CausalLMTask(), data, config(steps=1, checkpoint_format="sharded"), tmp_path / "run").fit()
    saved = tmp_path / "run" / "checkpoints" / "step-00000001"
    import pickle

    (saved / "shards" / ".metadata").write_bytes(pickle.dumps(os.system))  # would run a command if unpickled
    with pytest.raises(ValueError, match=r"\.metadata: not readable DCP metadata .*posix.system"):
        ckpt.sharded_shapes(saved)


_KILLED_SAVE = """
import sys, time
from pathlib import Path
import torch.distributed.checkpoint as dcp
from zoo.train import Trainer
from zoo.train.data import CausalLMTask
from tests.train.conftest import config, lm_examples, tiny_gpt

real_save = dcp.save
calls = []

def save_then_hang(state, **kw):
    real_save(state, **kw)
    calls.append(1)
    if len(calls) == 2:  # the second checkpoint: its shards are written, it is not in place yet
        print("IN-SAVE", flush=True)
        time.sleep(600)

dcp.save = save_then_hang
cfg = config(steps=5, batch_size=4, save_every=1, checkpoint_format="sharded")
Trainer(tiny_gpt(), CausalLMTask(), lm_examples(8), cfg, sys.argv[1]).fit()
"""


def test_a_kill_during_a_sharded_save_keeps_the_previous_checkpoint(tmp_path):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLED_SAVE, str(run)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    line = proc.stdout.readline()  # blocks until the child is inside its second save
    assert line.strip() == "IN-SAVE", proc.stderr.read() if proc.poll() is not None else line
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    checkpoints = run / "checkpoints"
    assert (checkpoints / ".tmp-step-00000002" / "shards" / "__0_0.distcp").is_file()  # killed mid-save
    assert ckpt.latest_checkpoint(checkpoints).name == "step-00000001"
    # The next run drops the partial write and resumes from step 1, through the sharded load.
    resumed = Trainer(tiny_gpt(seed=3), CausalLMTask(), lm_examples(8),
                      config(steps=2, batch_size=4, checkpoint_format="sharded"), run)  # fmt: skip
    result = resumed.fit()
    assert result.step == 2 and len(result.losses) == 1
    assert not list(checkpoints.glob(".tmp-*"))


def _export_cli(capsys, *args: str) -> tuple[int, str, str]:
    from zoo.cli import main

    code = main(["export", *args])
    out, err = capsys.readouterr()
    return code, out, err


def test_export_a_sharded_and_a_full_checkpoint(tmp_path, capsys):
    from zoo.train.export import export_run

    data = lm_examples(8)
    trainers = {}
    for fmt in ("sharded", "full"):
        t = Trainer(tiny_gpt(), CausalLMTask(), data, config(steps=2, checkpoint_format=fmt), tmp_path / fmt)
        t.fit()
        trainers[fmt] = t
    ids = torch.tensor([[5, 9, 17, 3, 40, 2]])
    for fmt, t in trainers.items():
        t.model.eval()
        expected = t.model(ids).logits
        out = export_run(tmp_path / fmt, tmp_path / f"out-{fmt}", format="zoo")
        exported = zoo.from_pretrained(out)
        assert torch.equal(exported(ids).logits, expected)
    assert not (tmp_path / "out-full" / "shards").exists()
    code, out, err = _export_cli(capsys, str(tmp_path / "sharded"), str(tmp_path / "hf"), "--format", "hf")
    assert code == 0, err
    assert "step-00000002 (sharded checkpoint)" in out
    import transformers

    reference = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").eval()
    torch.testing.assert_close(reference(ids).logits, trainers["sharded"].model(ids).logits, rtol=1e-5, atol=1e-5)


def test_export_errors_name_what_is_wrong(tmp_path, capsys):
    code, _, err = _export_cli(capsys, str(tmp_path / "nothing"), str(tmp_path / "out"))
    assert code == 2 and "no checkpoints" in err
    data = lm_examples(6)
    Trainer(tiny_gpt(), CausalLMTask(), data, config(steps=1), tmp_path / "run").fit()
    code, _, err = _export_cli(capsys, str(tmp_path / "run"), str(tmp_path / "out"), "--checkpoint", "7")
    assert code == 2 and "--checkpoint: no step 7" in err and "step-00000001" in err


def test_sharded_load_keeps_sinusoidal_positions():
    # A non-persistent buffer survives `to_empty` (what a meta-device sharded load does).
    with torch.device("meta"):
        model = zoo.create_model("gpt2-tiny", position="sinusoidal")
    model.to_empty(device="cpu")
    reference = zoo.create_model("gpt2-tiny", position="sinusoidal")
    assert torch.equal(model.pos.table, reference.pos.table)


def test_process_memory_ddp_and_fsdp_arithmetic(capsys):
    from zoo.cli import main
    from zoo.info import process_memory
    from zoo.lora import apply_lora

    with torch.device("meta"):
        model = zoo.create_model("gpt2-tiny")
    params = list(model.parameters())
    whole = sum(p.numel() * 4 for p in params)
    ddp = process_memory(model, 4, "ddp")
    assert (ddp.weights, ddp.gradients, ddp.optimizer, ddp.transient) == (whole, whole, 2 * whole, whole)
    fsdp = process_memory(model, 3, "fsdp")
    first_chunks = sum(torch.chunk(p, 3)[0].numel() * 4 for p in params)  # FSDP2 cuts dim 0 as torch.chunk
    assert fsdp.weights == fsdp.gradients == first_chunks and fsdp.optimizer == 2 * first_chunks
    layer = sum(p.numel() * 4 for p in model.layers[0].parameters())
    root = whole - sum(p.numel() * 4 for layer_ in model.layers for p in layer_.parameters())
    assert fsdp.transient == max(layer, root)
    apply_lora(model, ["attn.q_proj"], r=2)  # only the adapters train: their gradients and moments
    lora = process_memory(model, 2, "fsdp")
    trained = sum(torch.chunk(p, 2)[0].numel() * 4 for p in model.parameters() if p.requires_grad)
    assert lora.gradients == trained and lora.optimizer == 2 * trained < lora.weights

    assert main(["info", "gpt2-tiny", "--processes", "2"]) == 0
    out = capsys.readouterr().out
    assert "per process with 2 processes" in out and "FSDP2 (sharded)" in out
    assert main(["info", "gpt2-tiny", "--processes", "0"]) == 2
    assert "--processes: must be at least 1" in capsys.readouterr().err


def test_export_of_a_lora_run_is_what_finetune_saves(tmp_path, capsys):
    from safetensors.torch import load_file

    from zoo.cli import main
    from zoo.train.config import recipe_from_dict
    from zoo.train.recipes import finetune

    base = tmp_path / "base"
    zoo.save_pretrained(zoo.create_model("gpt2-tiny", vocab_size=300, dropout=0.0), base, format="zoo")
    run = tmp_path / "run"
    recipe = {
        "model": {"path": str(base)},
        "tokenizer": "bpe:300",
        "data": {"format": "text", "train": str(ROOT / "recipes/data/zoo_stories.txt"), "max_len": 24},
        "lora": {"enabled": True, "r": 2, "targets": ["attn.q_proj", "attn.v_proj"], "save_merged": True},
        "train": {"steps": 2, "batch_size": 4, "lr": 1e-2, "progress": "none", "tensorboard": False,
                  "checkpoint_format": "sharded"},
        "out_dir": str(run),
    }  # fmt: skip
    finetune(recipe_from_dict(recipe), log=lambda *a: None)
    assert (run / "checkpoints" / "step-00000002" / "shards").is_dir()

    assert main(["export", str(run), str(tmp_path / "merged")]) == 0
    ids = torch.tensor([[5, 9, 17, 3, 40, 2, 250]])
    expected = zoo.from_pretrained(run / "model")(ids).logits
    assert torch.equal(zoo.from_pretrained(tmp_path / "merged")(ids).logits, expected)
    assert zoo.load_tokenizer(tmp_path / "merged").vocab_size == 300

    assert main(["export", str(run), str(tmp_path / "adapter"), "--lora", "adapter"]) == 0
    ours = load_file(tmp_path / "adapter" / "adapter.safetensors")
    saved = load_file(run / "adapter" / "adapter.safetensors")
    assert ours.keys() == saved.keys() and all(torch.equal(ours[k], saved[k]) for k in saved)
    capsys.readouterr()
