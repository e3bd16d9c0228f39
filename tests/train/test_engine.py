"""The training loop: exact accumulation, groups and schedules, clipping, checkpointing of
activations, mixed precision, resume after SIGTERM, NaN reports, atomic checkpoints, debug."""

import errno
import hashlib
import itertools
import math
import os
import signal

import pytest
import torch

from tests.train.conftest import config, lm_examples, tiny_gpt
from zoo.train import CausalLMTask, Trainer, TrainingDiverged
from zoo.train import checkpoint as ckpt
from zoo.train.metrics import read_metrics
from zoo.train.optim import lr_factor, param_groups


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _accumulated_grads(run_dir, micro_batch_size):
    data = lm_examples(5, seed=3, min_len=3, max_len=20)
    model = tiny_gpt()
    trainer = Trainer(model, CausalLMTask(), data, config(batch_size=5, micro_batch_size=micro_batch_size), run_dir)
    batches = trainer.micro_batches(0)
    total = sum(trainer.task.targets(b) for b in batches)
    trainer.accumulate(batches, total)
    return _grads(model), batches, trainer


def test_accumulation_equals_the_large_batch_with_padding_and_uneven_micro_batches(tmp_path):
    big, big_batches, _ = _accumulated_grads(tmp_path / "a", None)
    small, small_batches, trainer = _accumulated_grads(tmp_path / "b", 2)
    assert [len(b["input_ids"]) for b in small_batches] == [2, 2, 1]  # uneven
    lengths = {b["input_ids"].shape[1] for b in small_batches}
    assert len(lengths) > 1 and (small_batches[0]["attention_mask"] == 0).any()  # padded differently
    assert len(big_batches) == 1
    for name in big:
        torch.testing.assert_close(small[name], big[name], atol=1e-6, rtol=1e-5, msg=name)

    # The check can fail: a mean per micro-batch (what a naive loop does) weights tokens unequally.
    trainer.optimizer.zero_grad(set_to_none=True)
    for b in small_batches:
        out = trainer.model(**trainer.task.inputs(b))
        (trainer.task.loss_sum(out, b) / trainer.task.targets(b) / len(small_batches)).backward()
    naive = _grads(trainer.model)
    worst = max(float((naive[n] - big[n]).abs().max() / big[n].abs().max()) for n in big)
    assert worst > 1e-2


def test_weight_decay_groups_skip_norms_biases_and_embeddings():
    model = tiny_gpt()
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert "layers.0.attn.q_proj.weight" in decayed and "layers.1.mlp.down.weight" in decayed
    for name in ("embed.weight", "pos.weight", "layers.0.norm1.weight", "layers.0.attn.q_proj.bias", "norm.bias"):
        assert name not in decayed, name
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_schedules():
    total, warmup, floor = 20, 4, 0.1
    cos = [lr_factor(s, total, warmup, "cosine", floor) for s in range(total)]
    lin = [lr_factor(s, total, warmup, "linear", floor) for s in range(total)]
    assert cos[:4] == [0.25, 0.5, 0.75, 1.0] and lin[:4] == cos[:4]
    assert cos[4] == 1.0 and math.isclose(cos[-1], floor) and math.isclose(lin[-1], floor)
    assert all(a >= b for a, b in itertools.pairwise(cos[4:]))  # decays monotonically
    quarter = warmup + (total - warmup - 1) // 4
    assert cos[quarter] > lin[quarter]  # cosine stays high longer
    assert [lr_factor(s, total, 0, "constant", floor) for s in (0, 10, 19)] == [1.0, 1.0, 1.0]


def test_trainer_follows_the_schedule_and_logs_lr(run_dir):
    cfg = config(steps=6, warmup_steps=2, schedule="linear", min_lr_ratio=0.0, lr=1e-2)
    Trainer(tiny_gpt(), CausalLMTask(), lm_examples(12), cfg, run_dir).fit()
    lrs = [float(r["lr"]) for r in read_metrics(run_dir / "metrics.csv")]
    expected = [1e-2 * lr_factor(s, 6, 2, "linear", 0.0) for s in range(6)]
    assert lrs == pytest.approx(expected, rel=1e-5)


def test_clipping_caps_the_global_norm_and_reports_the_norm_before(run_dir):
    trainer = Trainer(tiny_gpt(), CausalLMTask(), lm_examples(6), config(grad_clip=0.01), run_dir)
    batches = trainer.micro_batches(0)
    trainer.accumulate(batches, sum(trainer.task.targets(b) for b in batches))
    before = float(torch.cat([p.grad.flatten() for p in trainer.model.parameters()]).norm())
    reported = trainer._clip()
    after = float(torch.cat([p.grad.flatten() for p in trainer.model.parameters()]).norm())
    assert reported == pytest.approx(before, rel=1e-5) and before > 0.1
    assert after == pytest.approx(0.01, rel=1e-4)


def _saved_activation_bytes_and_grads(checkpointing: bool):
    model = tiny_gpt(n_layers=4).train()
    model.set_gradient_checkpointing(checkpointing)
    batch = {k: v for k, v in __import__("zoo.train.data", fromlist=["collate"]).collate(lm_examples(4)).items()}
    params = {p.data_ptr() for p in model.parameters()}
    seen, total = set(), 0

    def pack(t):
        nonlocal total
        key = (t.data_ptr(), t.numel(), t.dtype)
        if t.data_ptr() not in params and key not in seen:  # weights are memory anyway; count activations
            seen.add(key)
            total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    loss.backward()
    return total, _grads(model)


def test_activation_checkpointing_saves_memory_and_gives_equal_gradients():
    plain_bytes, plain = _saved_activation_bytes_and_grads(False)
    ckpt_bytes, checkpointed = _saved_activation_bytes_and_grads(True)
    assert ckpt_bytes < 0.5 * plain_bytes, (ckpt_bytes, plain_bytes)
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-6, rtol=1e-5, msg=name)


def test_activation_checkpointing_switch_reaches_the_model(run_dir):
    model = tiny_gpt()
    Trainer(model, CausalLMTask(), lm_examples(6), config(activation_checkpointing=True, steps=1), run_dir)
    assert model.gradient_checkpointing


def test_bf16_autocast_on_cpu_trains(run_dir):
    model = tiny_gpt()
    dtypes = []
    model.layers[0].attn.q_proj.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    result = Trainer(model, CausalLMTask(), lm_examples(12), config(precision="bf16", steps=8), run_dir).fit()
    assert set(dtypes) == {torch.bfloat16}
    assert model.layers[0].attn.q_proj.weight.dtype == torch.float32  # master weights stay fp32
    assert result.losses[-1] < result.losses[0]


def test_fp16_needs_cuda(run_dir):
    with pytest.raises(ValueError, match=r"train\.precision: fp16 needs a CUDA device"):
        Trainer(tiny_gpt(), CausalLMTask(), lm_examples(6), config(precision="fp16", device="cpu"), run_dir)


def test_compile_switch_gives_the_same_losses(tmp_path):
    data = lm_examples(12)
    eager = Trainer(tiny_gpt(), CausalLMTask(), data, config(steps=3), tmp_path / "a").fit()
    trainer = Trainer(tiny_gpt(), CausalLMTask(), data, config(steps=3, compile=True, compile_backend="eager"),
                      tmp_path / "b")  # fmt: skip
    assert isinstance(trainer.forward_module, torch._dynamo.eval_frame.OptimizedModule)
    compiled = trainer.fit()
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-5)


class _SignalOnCall(CausalLMTask):
    """Sends a real signal to this process during the n-th forward (as `kill` would)."""

    def __init__(self, call: int, signum=signal.SIGTERM):
        self.call, self.calls, self.signum = call, 0, signum

    def loss_sum(self, output, batch):
        self.calls += 1
        if self.calls == self.call:
            os.kill(os.getpid(), self.signum)
        return super().loss_sum(output, batch)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_resume_after_signal_gives_the_same_losses(tmp_path, signum):
    data = lm_examples(10, seed=1)
    cfg = config(steps=6, batch_size=4, micro_batch_size=2)
    full = Trainer(tiny_gpt(dropout=0.1), CausalLMTask(), data, cfg, tmp_path / "full").fit()

    first = Trainer(tiny_gpt(dropout=0.1), _SignalOnCall(5, signum), data, cfg, tmp_path / "cut").fit()
    assert first.status == "interrupted" and first.step == 3  # the signal came in step 3; it finished and saved
    assert first.checkpoint.name == "step-00000003"
    # A different initialisation: the resumed run must take its weights from the checkpoint.
    second = Trainer(tiny_gpt(seed=5, dropout=0.1), CausalLMTask(), data, cfg, tmp_path / "cut").fit()
    assert second.status == "finished" and second.step == 6
    assert first.losses + second.losses == full.losses  # bit-identical: weights, Adam moments, RNG, data order
    assert [int(r["step"]) for r in read_metrics(tmp_path / "cut" / "metrics.csv")] == [1, 2, 3, 4, 5, 6]


def test_resume_false_starts_fresh(run_dir):
    data = lm_examples(8)
    Trainer(tiny_gpt(), CausalLMTask(), data, config(steps=2), run_dir).fit()
    again = Trainer(tiny_gpt(), CausalLMTask(), data, config(steps=2, resume=False), run_dir).fit()
    assert again.step == 2 and len(again.losses) == 2


class _PoisonBeforeCall(CausalLMTask):
    """Puts a NaN into layers.1.mlp.up's bias just before the n-th training forward."""

    def __init__(self, model, call: int):
        self.model, self.call, self.calls = model, call, 0

    def inputs(self, batch):
        self.calls += torch.is_grad_enabled()  # the debug shape trace runs a no-grad forward first
        if self.calls == self.call:
            with torch.no_grad():
                self.model.layers[1].mlp.up.bias[3] = float("nan")
        return super().inputs(batch)


@pytest.mark.parametrize("debug", [False, True])
def test_nan_stops_with_a_report_and_keeps_the_last_good_checkpoint(run_dir, debug):
    model = tiny_gpt()
    cfg = config(steps=6, save_every=1, debug=debug)
    with pytest.raises(TrainingDiverged) as info:
        Trainer(model, _PoisonBeforeCall(model, 4), lm_examples(12), cfg, run_dir).fit()
    report = info.value.report
    assert "NaN/Inf at step 4" in report
    assert "first module whose output is not finite: layers.1.mlp.up (Linear)" in report
    assert "parameters holding NaN/Inf: layers.1.mlp.up.bias" in report
    assert info.value.report_path.read_text().strip() == report
    last = ckpt.latest_checkpoint(run_dir / "checkpoints")
    assert last.name == "step-00000003"
    weights = ckpt.load_checkpoint(last)["model"]
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_a_failed_checkpoint_write_keeps_the_previous_one(run_dir, monkeypatch):
    data = lm_examples(8)
    Trainer(tiny_gpt(), CausalLMTask(), data, config(steps=2, save_every=1), run_dir).fit()
    good = run_dir / "checkpoints" / "step-00000002"
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in good.iterdir()}

    real_save = ckpt.save_file

    def disk_full(tensors, filename, metadata=None):
        if filename.endswith("optimizer.safetensors"):
            with open(filename, "wb") as f:
                f.write(b"\x00" * 100)  # half a file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(ckpt, "save_file", disk_full)
    with pytest.raises(ckpt.CheckpointWriteError, match="step-00000002 is kept"):
        Trainer(tiny_gpt(), CausalLMTask(), data, config(steps=3, save_every=1), run_dir).fit()
    monkeypatch.setattr(ckpt, "save_file", real_save)

    assert ckpt.latest_checkpoint(run_dir / "checkpoints") == good
    assert {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in good.iterdir()} == digest
    assert not list((run_dir / "checkpoints").glob(".tmp-*"))
    assert not (run_dir / "checkpoints" / "step-00000003").exists()


def test_a_killed_write_leaves_only_a_temporary_directory_that_is_ignored(run_dir):
    data = lm_examples(8)
    Trainer(tiny_gpt(), CausalLMTask(), data, config(steps=2), run_dir).fit()
    partial = run_dir / "checkpoints" / ".tmp-step-00000009-123"  # as `kill -9` mid-write leaves it
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"garbage")
    assert ckpt.latest_checkpoint(run_dir / "checkpoints").name == "step-00000002"
    resumed = Trainer(tiny_gpt(), CausalLMTask(), data, config(steps=3), run_dir)
    result = resumed.fit()
    assert result.step == 3 and len(result.losses) == 1
    assert not partial.exists()


def test_debug_mode_writes_shape_trace_and_grad_norms(run_dir):
    model = tiny_gpt()
    trainer = Trainer(model, CausalLMTask(), lm_examples(8), config(steps=2, debug=True), run_dir)
    first = trainer.micro_batches(0)[0]["input_ids"]
    trainer.fit()
    trace = (run_dir / "debug" / "shapes.txt").read_text().splitlines()
    B, T = first.shape
    assert f"layers.0.attn.q_proj (Linear): (({B}, {T}, 48) float32) -> ({B}, {T}, 48) float32" in trace
    assert f"layers.1.mlp.up (Linear): (({B}, {T}, 48) float32) -> ({B}, {T}, 104) float32" in trace
    rows = (run_dir / "debug" / "grad_norms.csv").read_text().splitlines()[1:]
    names = {r.split(",")[1] for r in rows}
    assert names == {n for n, _ in model.named_parameters()}
    assert {r.split(",")[0] for r in rows} == {"1", "2"}
    assert all(float(r.split(",")[2]) > 0 for r in rows)


def test_metrics_tensorboard_and_plot(run_dir):
    data = lm_examples(12)
    cfg = config(steps=5, tensorboard=True, eval_every=2)
    result = Trainer(tiny_gpt(), CausalLMTask(), data, cfg, run_dir, eval_data=lm_examples(4, seed=9)).fit()
    rows = read_metrics(run_dir / "metrics.csv")
    assert rows[0]["step"] == "0" and rows[0]["eval_loss"] and not rows[0]["loss"]  # before training
    rows = rows[1:]
    assert [float(r["loss"]) for r in rows] == pytest.approx(result.losses)
    assert [r["step"] for r in rows if r["eval_loss"]] == ["2", "4", "5"]
    assert all(float(r["grad_norm"]) > 0 and float(r["throughput"]) > 0 for r in rows)
    png = (run_dir / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert list((run_dir / "tb").glob("events.out.tfevents.*"))
    assert result.losses[-1] < result.losses[0]
