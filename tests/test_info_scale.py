"""zoo info's planning figures against what a real model on the CPU actually holds."""

import ctypes
import ctypes.util
import gc
from pathlib import Path

import pytest
import torch

import zoo
from zoo.cli import main
from zoo.info import (
    compute_plan,
    kv_cache_bytes_per_token,
    model_info,
    saved_activation_bytes,
    training_memory,
)

SMALL = {
    "gpt2-tiny": dict(d_model=128, n_layers=3, n_heads=4, d_ff=512),
    "llama-tiny": dict(d_model=128, n_layers=3, n_heads=4, n_kv_heads=2, d_ff=384),
}
B, T = 4, 64


class _MallInfo2(ctypes.Structure):
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(n, ctypes.c_size_t) for n in names.split()]


_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_libc.mallinfo2.restype = _MallInfo2


def malloc_in_use() -> int:
    """Bytes glibc has handed out and not taken back (heap chunks and mmapped blocks)."""
    info = _libc.mallinfo2()
    return info.uordblks + info.hblkhd


def measured_forward_bytes(model, ids) -> int:
    """Memory a training forward leaves allocated (what backward will need), measured.

    On one thread: mallinfo2 counts the main arena (and mmapped blocks) only, so an allocation
    made by an intra-op worker thread in its own arena would go unseen."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        gc.collect()
        base = malloc_in_use()
        out = model(ids, labels=ids)
        gc.collect()
        grown = malloc_in_use() - base
        del out
    finally:
        torch.set_num_threads(threads)
    return grown


def pair(name):
    torch.manual_seed(0)
    real = zoo.create_model(name, **SMALL[name]).train()
    with torch.device("meta"):
        meta = zoo.create_model(name, **SMALL[name])
    return real, meta


@pytest.mark.parametrize("name", list(SMALL))
def test_meta_count_equals_the_real_forward(name):
    real, meta = pair(name)
    on_meta = saved_activation_bytes(meta, B, T)
    on_cpu = saved_activation_bytes(real, B, T)
    # The only difference: the integer ids and labels the CPU forward saves (cross-entropy's target).
    assert abs(on_meta - on_cpu) / on_cpu < 0.01


def _measure_in_a_fresh_process(name: str) -> tuple[int, int]:
    """(bytes kept by a training forward, the same with checkpointing), measured in a process of
    its own: in the suite's process, threads other tests leave behind (writers, samplers) allocate
    and free memory while the measurement runs."""
    import json
    import subprocess
    import sys

    code = (
        "import json, torch, sys; sys.path.insert(0, '.');"
        "from tests.test_info_scale import pair, measured_forward_bytes, B, T;"
        f"real, _ = pair({name!r}); ids = torch.randint(0, real.config.vocab_size, (B, T));"
        "measured_forward_bytes(real, ids);"  # one-time allocations (kernel caches) out of the way
        "full = measured_forward_bytes(real, ids); real.set_gradient_checkpointing(True);"
        "print(json.dumps([full, measured_forward_bytes(real, ids)]))"
    )
    root = Path(__file__).resolve().parent.parent
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    return tuple(json.loads(run.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize("name", list(SMALL))
def test_activation_estimate_matches_measured_memory(name):
    _, meta = pair(name)
    plan = training_memory(meta, B, T)
    full, kept = _measure_in_a_fresh_process(name)
    # Measured includes what autograd does not save (the logits, the loss, allocator rounding).
    assert 0.85 < full / plan.activations < 1.15, (full, plan.activations)
    assert 0.85 < kept / plan.activations_checkpointed < 1.15, (kept, plan.activations_checkpointed)
    assert plan.activations_checkpointed < plan.checkpointed_peak < plan.activations


def test_weights_gradients_and_adamw_state_match_a_real_step():
    real, meta = pair("llama-tiny")
    plan = training_memory(meta, B, T)
    ids = torch.randint(0, real.config.vocab_size, (B, T))
    opt = torch.optim.AdamW(real.parameters(), lr=1e-3)
    real(ids, labels=ids).loss.backward()
    opt.step()
    params = list(real.parameters())
    assert plan.weights == sum(p.numel() * p.element_size() for p in params)
    assert plan.gradients == sum(p.grad.numel() * p.grad.element_size() for p in params)
    moments = [t for s in opt.state.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert plan.optimizer == sum(t.numel() * t.element_size() for t in moments)


def test_bf16_halves_weights_and_kv_cache():
    with torch.device("meta"):
        m32 = zoo.create_model("llama-tiny", **SMALL["llama-tiny"])
        m16 = zoo.create_model("llama-tiny", **SMALL["llama-tiny"]).to(torch.bfloat16)
    assert training_memory(m16, B, T).weights * 2 == training_memory(m32, B, T).weights
    c = m32.config  # 2 (k and v) x layers x kv heads x head_dim x 4 bytes
    assert kv_cache_bytes_per_token(c) == 2 * c.n_layers * c.n_kv_heads * c.head_dim * 4
    assert kv_cache_bytes_per_token(c, torch.bfloat16) * 2 == kv_cache_bytes_per_token(c)


def test_compute_plan_uses_chinchilla_and_throughput():
    with torch.device("meta"):
        model = zoo.create_model("llama-tiny")
    info = model_info(model, "llama-tiny")
    plan = compute_plan(info, throughput=1e12)
    assert plan.tokens == plan.chinchilla_tokens == 20 * info.params
    assert plan.flops == plan.tokens * info.flops_per_token_train
    assert plan.seconds == pytest.approx(plan.flops / 1e12)
    assert compute_plan(info, tokens=1000).flops == 1000 * info.flops_per_token_train
    with pytest.raises(ValueError, match="throughput"):
        compute_plan(info, throughput=0)


def test_moe_on_meta_assumes_balanced_routing():
    with torch.device("meta"):
        moe = zoo.create_model("mixtral-tiny")
    assert training_memory(moe, 2, 16).activations > 0


def test_zoo_info_prints_the_plan(capsys):
    assert main(["info", "llama-3-8b", "--batch", "2", "--seq-len", "1024", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "training memory, batch 2 x 1024 tokens, bfloat16" in out
    assert "weights                  15.0 GiB" in out  # 8.03e9 parameters x 2 bytes
    assert "KV cache per token:       128.0 KiB" in out  # 2 x 32 layers x 8 kv heads x 128 x 2 bytes
    assert "compute-optimal (Chinchilla, 20 tokens/parameter): 1.61e+11 tokens" in out
    assert main(["info", "gpt2", "--batch", "0"]) == 2
