"""What the training studies share: a character-level corpus, one small training loop that logs
what a study looks at, a long-format CSV of every logged value, and line plots.

The loop is deliberately plain (AdamW from zoo.train.optim, its warmup schedules, optional
clipping, no checkpoints): a study compares arms that differ in one switch, and everything else
(data order, initialisation seed, steps, learning rate) is the same across arms.
"""

import csv
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

import zoo
from zoo.debug import layer_grad_norms
from zoo.train.optim import build_optimizer, build_scheduler

REPO = Path(zoo.__file__).resolve().parent.parent
DEFAULT_TEXT = "recipes/data/zoo_stories.txt"  # the project's own 10 KB of plain English


@dataclass
class CharCorpus:
    """A text as character ids; the vocabulary is its distinct characters."""

    ids: torch.Tensor
    vocab: list[str]

    @classmethod
    def from_file(cls, path: str, key: str = "data") -> "CharCorpus":
        p = Path(path)
        if not p.is_absolute() and not p.exists():
            p = REPO / path
        if not p.is_file():
            raise ValueError(f"{key}: no text file at {path!r} (relative paths are tried from the repository root)")
        text = p.read_text(encoding="utf-8")
        if len(text) < 1000:
            raise ValueError(f"{key}: {path!r} holds {len(text)} characters; a study needs at least 1000")
        vocab = sorted(set(text))
        index = {c: i for i, c in enumerate(vocab)}
        return cls(torch.tensor([index[c] for c in text]), vocab)

    def split(self, train_fraction: float = 0.9) -> tuple[torch.Tensor, torch.Tensor]:
        cut = int(len(self.ids) * train_fraction)
        return self.ids[:cut], self.ids[cut:]


def lm_batches(ids: torch.Tensor, batch_size: int, seq_len: int, seed: int) -> Callable[[], dict]:
    """A function giving random windows of ``ids`` as LM batches, the same sequence for every arm."""
    if len(ids) <= seq_len + 1:
        raise ValueError(f"seq_len: {seq_len} is longer than the text ({len(ids)} tokens)")
    g = torch.Generator().manual_seed(seed)

    def next_batch() -> dict:
        starts = torch.randint(0, len(ids) - seq_len, (batch_size,), generator=g)
        x = torch.stack([ids[s : s + seq_len] for s in starts.tolist()])  # (B, T)
        return {"input_ids": x, "labels": x}

    return next_batch


def fixed_batches(next_batch: Callable[[], dict], n: int) -> list[dict]:
    return [next_batch() for _ in range(n)]


@torch.no_grad()
def mean_loss(model: nn.Module, batches: list[dict]) -> float:
    model.eval()
    losses = [float(model(**b).loss) for b in batches]
    model.train()
    return sum(losses) / len(losses)


class ActivationNorms:
    """RMS of each layer's output (per token, averaged), recorded on every forward while active."""

    def __init__(self, layers: nn.ModuleList):
        self.values: list[float] = [0.0] * len(layers)
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(layers)]

    def _hook(self, i: int):
        def hook(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            self.values[i] = float(out.detach().float().pow(2).mean(-1).sqrt().mean())

        return hook

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def layer_norms_only(model: nn.Module) -> list[float]:
    """Gradient norm of each ``layers.N`` in order (what is outside the stack left out)."""
    return [n for name, n in layer_grad_norms(model) if name.startswith("layers.") and name[7:].isdigit()]


@dataclass
class Run:
    """What a training run logged: one dict per logged step, and whether it diverged."""

    rows: list[dict]
    diverged: bool
    seconds: float


def train(
    model: nn.Module,
    next_batch: Callable[[], dict],
    steps: int,
    lr: float,
    warmup: int = 0,
    schedule: str = "constant",
    grad_clip: float | None = None,
    log_every: int = 10,
    evaluate: Callable[[nn.Module], dict] | None = None,
    inspect: Callable[[nn.Module, int], dict] | None = None,
    sgd_momentum: float | None = None,
) -> Run:
    """Train with AdamW (or SGD with momentum ``sgd_momentum``, when given); log loss, learning
    rate and gradient norm every ``log_every`` steps (plus ``inspect(model, step)`` after
    backward, ``evaluate(model)`` at log steps).

    A run whose loss turns NaN/Inf, or climbs past 1.5x its first loss after the first tenth
    of training, is marked diverged and stopped: the rest of its curve would only be noise.

    Runs on one thread: these models are small enough that a second thread costs more in
    synchronisation than it gives (5x slower on a busy 2-core machine, measured).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(
            model, next_batch, steps, lr, warmup, schedule, grad_clip, log_every, evaluate, inspect, sgd_momentum
        )
    finally:
        torch.set_num_threads(threads)


def _train(model, next_batch, steps, lr, warmup, schedule, grad_clip, log_every, evaluate, inspect, momentum) -> Run:
    model.train()
    if momentum is None:
        opt = build_optimizer(model, lr=lr, weight_decay=0.0)
    else:  # SGD's step is the gradient itself: what clipping bounds (Adam normalises it already)
        opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    sched = build_scheduler(opt, total=steps, warmup=warmup, schedule=schedule, min_ratio=0.1)
    rows, first, diverged, start = [], None, False, time.perf_counter()
    for step in range(steps + 1):
        batch = next_batch()
        loss = model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        params = [p for p in model.parameters() if p.grad is not None]
        norm = float(torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip else float("inf")))
        value = float(loss.detach())
        first = value if first is None else first
        bad = not math.isfinite(value) or (step > steps // 10 and value > 1.5 * first)
        if step % log_every == 0 or step == steps or bad:
            row = {"step": step, "loss": value, "lr": sched.get_last_lr()[0], "grad_norm": norm}
            if inspect is not None:
                row.update(inspect(model, step))
            if evaluate is not None:
                row.update(evaluate(model))
            rows.append(row)
        if bad:
            diverged = True
            break
        if step < steps:
            opt.step()
            sched.step()
    return Run(rows, diverged, time.perf_counter() - start)


def write_long_csv(path: Path, runs: dict[str, Run]) -> None:
    """Every logged value as one row: arm, step, metric, value."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["arm", "step", "metric", "value"])
        for arm, run in runs.items():
            for row in run.rows:
                for key, value in row.items():
                    if key == "step":
                        continue
                    values = value if isinstance(value, list) else [value]
                    for i, v in enumerate(values):
                        metric = f"{key}[{i}]" if isinstance(value, list) else key
                        w.writerow([arm, row["step"], metric, f"{v:.6g}"])


def plot_curves(path: Path, runs: dict[str, Run], key: str, title: str, ylabel: str, log_y: bool = False) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm, run in runs.items():
        xs = [r["step"] for r in run.rows if key in r]
        ys = [r[key] for r in run.rows if key in r]
        ax.plot(xs, ys, label=arm + (" (diverged)" if run.diverged else ""))
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
