"""fp32 products of a few rows on CPU: MKL (F.linear, nn.Linear's layout and column-major) against
oneDNN (torch.ops.mkldnn._linear_pointwise), on GPT-2 124M's weight shapes.

    .venv/bin/python benchmarks/linear_kernels.py --threads 2

A decoding step multiplies each weight by 1 row (batch 1), a few rows (a small batch, or
speculative decoding's verification of k + 1 tokens) or more (a prefill). The layers' weights are
12 copies of one GPT-2 layer's four matrices (340 MB, far more than the caches, as in a real
step); the output projection is 50257 x 768 (154 MB). For each number of rows: the median time
of the whole set of products, in alternating order, and the bytes read per second. This is what
zoo.blocks.onednn's choice (oneDNN up to 8 rows) rests on. Writes docs/results/linear_kernels.md.
"""

import argparse
import statistics
import time
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
LAYER = [(2304, 768), (768, 768), (3072, 768), (768, 3072)]  # qkv, o, fc, proj (out, in)


def onednn(x, w):
    return torch.ops.mkldnn._linear_pointwise(x, w, None, "none", [], "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 2, 4, 7, 8, 16, 32])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "linear_kernels.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sets = {
        "12 GPT-2 layers (48 matrices, 340 MB)": [torch.randn(o, i) * 0.02 for o, i in LAYER * 12],
        "output projection 50257 x 768 (154 MB)": [torch.randn(50257, 768) * 0.02],
    }
    kernels = {
        "MKL, F.linear": lambda x, w, wt: F.linear(x, w),
        "MKL, column-major weight": lambda x, w, wt: F.linear(x, wt),
        "oneDNN": lambda x, w, wt: onednn(x, w),
    }
    lines = [
        f"| weights | rows | {' | '.join(f'{k} (ms)' for k in kernels)} | oneDNN vs F.linear |",
        "|---|---|" + "---|" * len(kernels) + "---|",
    ]
    for title, weights in sets.items():
        column_major = [w.t().contiguous().t() for w in weights]
        n_bytes = sum(w.numel() * 4 for w in weights)
        for rows in args.rows:
            xs = {k: torch.randn(rows, k) for k in {w.shape[1] for w in weights}}
            for w in weights:  # the same products, as a check
                torch.testing.assert_close(onednn(xs[w.shape[1]], w), F.linear(xs[w.shape[1]], w), rtol=1e-4, atol=1e-5)
            times = {k: [] for k in kernels}
            with torch.inference_mode():
                for r in range(args.repeats + 1):
                    for name in kernels if r % 2 == 0 else reversed(list(kernels)):
                        fn = kernels[name]
                        start = time.perf_counter()
                        for w, wt in zip(weights, column_major, strict=True):
                            fn(xs[w.shape[1]], w, wt)
                        if r:  # the first round warms up (oneDNN builds its primitive per shape)
                            times[name].append(time.perf_counter() - start)
            med = {k: statistics.median(v) for k, v in times.items()}
            cells = " | ".join(f"{med[k] * 1e3:.1f} ({n_bytes / med[k] / 1e9:.0f} GB/s)" for k in kernels)
            lines.append(f"| {title} | {rows} | {cells} | {med['MKL, F.linear'] / med['oneDNN']:.2f}x |")
            print(lines[-1], flush=True)
    args.out.write_text(
        "# fp32 products of a few rows: MKL against oneDNN\n\n"
        "Written by `benchmarks/linear_kernels.py` (see docs/generation.md, Speed). "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {args.repeats} "
        "alternating rounds after one warm-up round; GB/s = weight bytes read per second.\n\n" + "\n".join(lines) + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
