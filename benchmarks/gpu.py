"""GPU benchmark: training MFU and decode speed of zoo beside transformers on the same configs.

    bash benchmarks/gpu.sh                                   # on a GPU machine: writes docs/results/gpu.md
    .venv/bin/python benchmarks/gpu.py --device cpu --tiny   # the same code on tiny sizes (tested)

- training: GPT-2 124M and a ~1B LLaMA config, random weights, one step = forward, loss,
  backward, clip to 1.0, AdamW (fused on CUDA), under bf16 autocast with SDPA attention; zoo's
  model optionally compiled (``--compile``); transformers' model built from the config zoo
  exports (same weights). MFU = 6 * parameters * tokens/s / the GPU's dense bf16 peak
  (``--peak-tflops``, default 989: an H100/H200 SXM), the usual 6N approximation (attention
  FLOPs left out).
- decoding: greedy tokens/s at batch 1 and 16 for zoo (static KV cache, bf16) and transformers
  (its default cache), 128 new tokens after a 32-token prompt; with ``--compile`` also zoo with
  its decoding steps compiled (``zoo.compile_decoding``; the warm-up call compiles).
"""

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import transformers

import zoo

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = {
    "gpt2-124m": ("gpt2", {}),
    "llama-1b": (
        "llama-tiny",
        dict(
            vocab_size=32000,
            max_seq_len=2048,
            d_model=2048,
            n_layers=16,
            n_heads=32,
            n_kv_heads=8,
            head_dim=64,
            d_ff=5632,
        ),
    ),
}
TINY = {"gpt2-124m": ("gpt2-tiny", {}), "llama-1b": ("llama-tiny", {})}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def build(name: str, tiny: bool, device: str, tmp: Path):
    variant, overrides = (TINY if tiny else CONFIGS)[name]
    torch.manual_seed(0)
    model = zoo.create_model(variant, **overrides)
    zoo.save_pretrained(model, tmp / name, format="hf")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp / name, attn_implementation="sdpa")
    return model.to(device), ref.to(device)


def train_speed(model, forward, batch: int, seq: int, steps: int, device: str, vocab: int) -> float:
    """Tokens per second of full training steps (after two warm-up steps)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.startswith("cuda"))
    ids = torch.randint(0, vocab, (batch, seq), device=device)
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        with torch.autocast(device.split(":")[0], dtype=torch.bfloat16):
            loss = forward(ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        if i >= 2:
            times.append(time.perf_counter() - start)
    return batch * seq / statistics.median(times)


def decode_speed(generate, batch: int, new: int, device: str, vocab: int) -> float:
    ids = torch.randint(0, vocab, (batch, 32), device=device)
    generate(ids, 2)
    sync(device)
    timed = []
    for n in (new, 1):
        start = time.perf_counter()
        generate(ids, n)
        sync(device)
        timed.append(time.perf_counter() - start)
    return batch * (new - 1) / (timed[0] - timed[1])


def bench_model(name: str, batch: int, seq: int, args, tmp: Path) -> list[str]:
    model, ref = build(name, args.tiny, args.device, tmp)
    vocab, n_params = model.config.vocab_size, model.num_parameters()
    step = torch.compile(model) if args.compile else model
    ours = train_speed(model, lambda ids: step(ids, labels=ids).loss, batch, seq, args.steps, args.device, vocab)
    theirs = train_speed(ref, lambda ids: ref(ids, labels=ids).loss, batch, seq, args.steps, args.device, vocab)
    peak = args.peak_tflops * 1e12
    lines = [
        f"| {name} ({n_params / 1e6:.0f}M) | training tokens/s (MFU), batch {batch} x {seq} | "
        f"{ours:.0f} ({6 * n_params * ours / peak:.1%}) | {theirs:.0f} ({6 * n_params * theirs / peak:.1%}) | "
        f"{ours / theirs:.2f}x |"
    ]
    model, ref = model.to(torch.bfloat16).eval(), ref.to(torch.bfloat16).eval()
    ref.generation_config.eos_token_id, ref.generation_config.pad_token_id = None, 0
    runs = {
        "zoo": lambda ids, n: model.generate(ids, max_new_tokens=n),
        "transformers": lambda ids, n: ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n),
    }
    speeds = {}
    for rows in (1, 16):
        z, h = speeds[rows] = [decode_speed(fn, rows, args.new_tokens, args.device, vocab) for fn in runs.values()]
        lines.append(f"| {name} | decode tokens/s, batch {rows}, bf16 | {z:.0f} | {h:.0f} | {z / h:.2f}x |")
    if args.compile:  # the same model with its decoding steps compiled (zoo.compile_decoding)
        zoo.compile_decoding(model)
        for rows in (1, 16):
            z, h = decode_speed(runs["zoo"], rows, args.new_tokens, args.device, vocab), speeds[rows][1]
            lines.append(
                f"| {name} | decode tokens/s, batch {rows}, bf16, compiled steps | {z:.0f} | {h:.0f} | {z / h:.2f}x |"
            )
    return lines


def main(argv: list[str] | None = None) -> list[str]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="tiny configs and sizes (the CPU test)")
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile zoo's model for training; rows with compiled decoding"
    )
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="dense bf16 peak of the GPU")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "gpu.md")
    args = parser.parse_args(argv)
    shapes = {"gpt2-124m": (16, 1024), "llama-1b": (4, 2048)}
    if args.tiny:
        shapes = dict.fromkeys(shapes, (2, 16))
        args.steps, args.new_tokens = 1, 4
    lines = ["| model | what | zoo | transformers | zoo / transformers |", "|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, (batch, seq) in shapes.items():
            lines += bench_model(name, batch, seq, args, Path(tmp))
            print("\n".join(lines[-3:]))
    device = torch.cuda.get_device_name() if args.device.startswith("cuda") else args.device
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# GPU benchmark\n\nWritten by `benchmarks/gpu.py` (`benchmarks/gpu.sh`). "
        f"{device}; torch {torch.__version__}; compile: {args.compile}; MFU against {args.peak_tflops:.0f} TFLOP/s.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    return lines


if __name__ == "__main__":
    main()
