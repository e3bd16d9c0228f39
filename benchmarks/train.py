"""Training-step speed and memory of zoo's trainer against a plain transformers loop, same weights.

    .venv/bin/python benchmarks/train.py                 # GPT-2 124M, batch 4 x 256, fp32, CPU
    .venv/bin/python benchmarks/train.py --rounds 2 --steps 1   # a quicker look

One training step is forward, loss, backward, gradient clipping to norm 1.0 and an AdamW step,
on the same GPT-2 124M weights (zoo's random init, exported to a transformers directory):

- zoo runs ``Trainer.train_step`` (the loop every recipe uses: collation, target counting,
  exact accumulation bookkeeping, clipping, the optimizer and schedule);
- transformers runs ``GPT2LMHeadModel(input_ids, labels=...)``, ``loss.backward()``,
  ``clip_grad_norm_``, ``AdamW.step``, which is what its Trainer does per step at its core.

The libraries alternate ``--rounds`` times, ``--steps`` steps each, in one process (which goes
first alternates too); the speed ratio is taken within each round, where both runs are close in
time, and the median over rounds is reported (a shared machine's speed drifts a lot). Peak memory is measured in a fresh
child process per library: resident memory at its highest during two steps, above the level
after the model is built (activations, gradients and AdamW state). It prints a table and writes
it to docs/results/train.md (``--out``).
"""

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import zoo  # noqa: E402
from zoo.train import CausalLMTask, TrainConfig, Trainer  # noqa: E402

LR, CLIP = 1e-4, 1.0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def make_models(tmp: Path):
    import transformers

    torch.manual_seed(0)
    ours = zoo.create_model("gpt2")
    zoo.save_pretrained(ours, tmp / "gpt2", format="hf")
    theirs = transformers.GPT2LMHeadModel.from_pretrained(tmp / "gpt2", attn_implementation="sdpa")
    return ours, theirs


class ZooStep:
    """zoo's trainer, one optimizer step per call, on a fixed batch."""

    def __init__(self, model, ids: torch.Tensor, run_dir: Path):
        examples = [{"input_ids": row, "labels": row.clone()} for row in ids]
        cfg = TrainConfig(steps=10**6, batch_size=len(examples), lr=LR, grad_clip=CLIP, weight_decay=0.0,
                          schedule="constant", progress="none", tensorboard=False, device="cpu")  # fmt: skip
        self.trainer = Trainer(model, CausalLMTask(), examples, cfg, run_dir, shuffle=False)

    def __call__(self) -> float:
        return self.trainer.train_step()["loss"]


class TransformersStep:
    def __init__(self, model, ids: torch.Tensor):
        self.model, self.ids = model.train(), ids
        self.opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)

    def __call__(self) -> float:
        loss = self.model(input_ids=self.ids, labels=self.ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), CLIP)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach())


class PeakRSS:
    """Highest resident memory while inside, sampled every millisecond by a thread."""

    def __enter__(self):
        self.peak, self.running = rss_bytes(), True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()


def child(library: str, weights: Path, batch: int, seq: int) -> None:
    """Build one library's model only, and measure its two steps' memory above that."""
    ids = torch.randint(0, 50257, (batch, seq), generator=torch.Generator().manual_seed(1))
    with tempfile.TemporaryDirectory() as tmp:
        if library == "zoo":
            step = ZooStep(zoo.from_pretrained(weights), ids, Path(tmp))
        else:
            import transformers

            step = TransformersStep(transformers.GPT2LMHeadModel.from_pretrained(weights), ids)
        base = rss_bytes()
        with PeakRSS() as peak:
            for _ in range(2):
                step()
        print(json.dumps({"peak_mb": (peak.peak - base) / 2**20}))


def peak_memory(library: str, weights: Path, batch: int, seq: int) -> dict:
    cmd = [sys.executable, __file__, "--child", library, "--weights", str(weights), "--batch", str(batch),
           "--seq", str(seq)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq", type=int, default=256)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps", type=int, default=1, help="timed steps per library per round")
    p.add_argument("--out", default=str(ROOT / "docs" / "results" / "train.md"))
    p.add_argument("--child", choices=["zoo", "transformers"], help=argparse.SUPPRESS)
    p.add_argument("--weights", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    if args.child:
        child(args.child, args.weights, args.batch, args.seq)
        return

    with tempfile.TemporaryDirectory() as tmp:
        ours, theirs = make_models(Path(tmp))
        ids = torch.randint(0, 50257, (args.batch, args.seq), generator=torch.Generator().manual_seed(1))
        steps = {"zoo": ZooStep(ours, ids, Path(tmp) / "run"), "transformers": TransformersStep(theirs, ids)}
        first = {name: step() for name, step in steps.items()}  # warm-up; the same weights give the same loss
        print(f"first-step loss: zoo {first['zoo']:.5f}, transformers {first['transformers']:.5f}")
        rates: dict[str, list[float]] = {name: [] for name in steps}
        for r in range(args.rounds):
            order = list(steps) if r % 2 == 0 else list(reversed(steps))
            for name in order:
                start = time.perf_counter()
                for _ in range(args.steps):
                    steps[name]()
                rates[name].append(args.steps * args.batch * args.seq / (time.perf_counter() - start))
            print(f"round {r + 1}: " + ", ".join(f"{n} {rates[n][-1]:,.0f} tok/s" for n in steps), flush=True)
        del ours, theirs, steps
        memory = {name: peak_memory(name, Path(tmp) / "gpt2", args.batch, args.seq) for name in rates}
    median = {name: statistics.median(v) for name, v in rates.items()}
    # Each round's two runs are neighbours in time, so their ratio cancels most of the drift of a
    # shared machine; the median of those ratios is the number to read.
    ratios = [z / t for z, t in zip(rates["zoo"], rates["transformers"], strict=True)]
    ratio = statistics.median(ratios)

    lines = [
        f"GPT-2 124M training step (forward, loss, backward, clip, AdamW), batch {args.batch} x {args.seq}, "
        f"fp32, CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads), "
        f"torch {torch.__version__}; median of {args.rounds} alternating rounds of {args.steps} steps; "
        "peak memory in a fresh process per library.",
        "",
        "| library | tokens/s (median) | all rounds | peak memory above the model |",
        "| --- | ---: | --- | ---: |",
    ]
    for name in rates:
        all_rounds = ", ".join(f"{v:,.0f}" for v in rates[name])
        lines.append(f"| {name} | {median[name]:,.0f} | {all_rounds} | {memory[name]['peak_mb']:,.0f} MB |")
    lines += [
        "",
        f"zoo / transformers per round: {', '.join(f'{r:.2f}' for r in ratios)}; "
        f"median **{ratio:.2f}x** tokens/s (target >= 1.15x).",
    ]
    table = "\n".join(lines)
    print("\n" + table)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("# Training-step benchmark\n\nWritten by `benchmarks/train.py`.\n\n" + table + "\n")


if __name__ == "__main__":
    main()
