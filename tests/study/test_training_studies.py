"""The training studies (norm, positions, sweep, moe) on small settings: what they write, and the
pieces each finding rests on."""

import csv
import json
import math

import pytest
import torch

import zoo
from zoo.study import StudyError, positions, run_study, sweep
from zoo.study import moe as moe_study
from zoo.study.common import lm_batches, train


def quiet(*args):
    pass


def test_norm_study_writes_every_arm(tmp_path):
    small = ["depths=[2]", "steps=6", "log_every=3", "warmup=2", "d_model=32", "seq_len=32", "batch_size=4"]
    summary = run_study("norm", small, tmp_path, log=quiet)
    assert [a["arm"] for a in summary["arms"]] == [
        "pre-LN warmup L=2", "pre-LN no warmup L=2", "post-LN warmup L=2", "post-LN no warmup L=2"
    ]  # fmt: skip
    assert json.loads((tmp_path / "summary.json").read_text())["settings"]["depths"] == [2]
    for name in ("values.csv", "val_loss_L2.png", "init_grad_norms.png", "report.md"):
        assert (tmp_path / name).stat().st_size > 0
    rows = list(csv.DictReader(open(tmp_path / "values.csv")))
    metrics = {r["metric"] for r in rows}
    assert {"loss", "val_loss", "grad_norm", "layer_grad_norm[0]", "layer_grad_norm[1]", "layer_act_rms[1]"} <= metrics
    # Same seed, same weights: the warmup and no-warmup arms share their step-0 gradients.
    a = summary["arms"]
    assert a[0]["init_grad_norm_last_layer"] == a[1]["init_grad_norm_last_layer"]
    assert a[0]["init_grad_norm_last_layer"] != a[2]["init_grad_norm_last_layer"]  # pre-LN vs post-LN differ


def test_a_run_that_blows_up_is_marked_diverged():
    torch.manual_seed(0)
    model = zoo.create_model("gpt2-tiny", vocab_size=20, max_seq_len=16)
    ids = torch.arange(2000) % 20  # a pattern a model learns at once
    run = train(model, lm_batches(ids, 8, 16, seed=0), steps=40, lr=30.0, log_every=5)
    assert run.diverged and run.rows[-1]["step"] < 40
    calm = train(zoo.create_model("gpt2-tiny", vocab_size=20, max_seq_len=16), lm_batches(ids, 8, 16, 0), 10, 1e-2)
    assert not calm.diverged and calm.rows[-1]["loss"] < calm.rows[0]["loss"]


def test_reversal_batches_mask_the_question():
    b = positions.reversal_batch(3, 5, 10, torch.Generator().manual_seed(0))
    ids, labels = b["input_ids"], b["labels"]
    assert ids.shape == (3, 11) and (ids[:, 5] == 10).all()
    assert torch.equal(ids[:, 6:], ids[:, :5].flip(-1))
    assert (labels[:, :6] == -100).all() and torch.equal(labels[:, 6:], ids[:, 6:])


def test_rope_scores_depend_only_on_the_offset():
    scores = positions.rope_scores(head_dim=16, n=40)
    assert positions.diagonal_spread(scores) < 1e-4
    # An absolute encoding fails the same check: add the sinusoidal table to q and k instead.
    table = positions.sinusoidal_table(40, 16)
    q, k = torch.randn(2, 16, generator=torch.Generator().manual_seed(0))
    assert positions.diagonal_spread((q + table) @ (k + table).T) > 0.5


def test_positions_study_runs_each_arm(tmp_path):
    overrides = ["arms=[learned,sinusoidal,rope,none]", "steps=8", "length=3", "eval_sequences=8", "log_every=4",
                 "d_model=32", "n_layers=1", "batch_size=8"]  # fmt: skip
    summary = run_study("positions", overrides, tmp_path, log=quiet)
    assert [r["arm"] for r in summary["results"]] == ["learned", "sinusoidal", "rope", "none"]
    for r in summary["results"]:
        assert all(0 <= r[f"token_acc_{k}L"] <= 1 for k in (1, 2, 4))
    assert summary["rope_max_diagonal_spread"] < 1e-4
    for name in ("accuracy_vs_length.png", "encodings.png", "train_loss.png", "report.md", "values.csv"):
        assert (tmp_path / name).stat().st_size > 0
    with pytest.raises(ValueError, match=r"arms: unknown \['alibi'\]"):
        run_study("positions", ["arms=[alibi]"], tmp_path, log=quiet)


def test_sinusoidal_arm_uses_the_fixed_table_at_the_learned_scale():
    from zoo.blocks import SinusoidalPositions

    model = positions.build("sinusoidal", positions.Settings(length=4))
    assert isinstance(model.pos, SinusoidalPositions) and model.config.position == "sinusoidal"
    # The table itself, before scaling: Vaswani et al.'s sin on even channels, cos on odd ones.
    raw = SinusoidalPositions(9, 8).table
    assert torch.allclose(raw[3, 0::2], torch.sin(3 / 10000 ** (torch.arange(0, 8, 2) / 8)))
    assert torch.allclose(raw[3, 1::2], torch.cos(3 / 10000 ** (torch.arange(0, 8, 2) / 8)))
    assert abs(float(model.pos.table.pow(2).mean().sqrt()) - 0.02) < 1e-6
    assert not any("pos" in n for n, _ in model.named_parameters())  # nothing to train
    assert positions.build("none", positions.Settings()).pos is None


def test_moe_study_logs_expert_shares(tmp_path):
    small = [
        "steps=6",
        "log_every=3",
        "n_experts=4",
        "d_ff=32",
        "d_model=32",
        "n_heads=2",
        "seq_len=32",
        "batch_size=4",
    ]
    summary = run_study("moe", small, tmp_path, log=quiet)
    dense, balanced, free = summary["results"]
    assert dense["arm"] == "dense" and "final_expert_share" not in dense
    # Equal active parameters: the dense MLP is as wide as the top-k experts a token runs through.
    assert abs(balanced["active_params"] - dense["total_params"]) / dense["total_params"] < 0.02
    # Each of 2 layers adds 3 more SwiGLU experts (3 x d_model x d_ff each) and a router (d_model x 4).
    assert balanced["total_params"] - dense["total_params"] == 2 * (3 * 3 * 32 * 32 + 32 * 4)
    for layer in balanced["final_expert_share"] + free["final_expert_share"]:
        assert len(layer) == 4 and math.isclose(sum(layer), 1.0, abs_tol=2e-3)
    assert (tmp_path / "expert_share.png").stat().st_size > 0


def test_balance_is_normalised_entropy():
    assert moe_study.balance([0.25] * 4) == pytest.approx(1.0)
    assert moe_study.balance([1.0, 0, 0, 0]) == 0.0
    assert 0 < moe_study.balance([0.7, 0.1, 0.1, 0.1]) < 1


def test_sweep_arms_and_its_run(tmp_path):
    s = sweep.Settings(depths=[1, 2], widths=[64], heads=[2], kv_heads=[1])
    names = list(sweep.arms(s))
    assert names == ["base", "depth 1", "heads 2", "kv heads 1"]  # depth 2 and width 64 are the base
    with pytest.raises(ValueError, match="kv_heads: 3 does not divide n_heads=4"):
        sweep.arms(sweep.Settings(kv_heads=[3]))
    overrides = ["steps=2", "depths=[1]", "widths=[32]", "heads=[2]", "kv_heads=[1]", "seq_len=32", "batch_size=4"]
    summary = run_study("sweep", overrides, tmp_path, log=quiet)
    rows = {r["arm"]: r for r in summary["results"]}
    assert rows["kv heads 1"]["kv_cache_bytes_per_token"] * 4 == rows["base"]["kv_cache_bytes_per_token"]
    assert rows["depth 1"]["train_flops"] < rows["base"]["train_flops"]
    assert (tmp_path / "loss_vs_compute.png").stat().st_size > 0


def test_unknown_setting_is_named(tmp_path):
    with pytest.raises(StudyError, match="stepz"):
        run_study("norm", ["stepz=3"], tmp_path, log=quiet)
