"""Why sine and cosine: four ways to tell a transformer where a token is, on a task that needs it.

Reversing a sequence (``3 1 4 1 5 | 5 1 4 1 3``) cannot be done without positions: the answer's
i-th token is the input's (L - i)-th. The same small GPT is trained at length L with learned
positions (GPT-2), the fixed sinusoidal table of "Attention Is All You Need", rotary embeddings
(RoPE, LLaMA), or none at all (a causal decoder can still count, from the mask alone), then tested
at L, 2L and 4L. A learned table has never trained the rows past 2L + 1; the sinusoidal table
and RoPE are defined at every position, RoPE through relative offsets only.

Two plots show the encodings themselves: the sinusoidal table, and RoPE's defining property, that
the score between a query rotated to position m and a key rotated to position n depends only on
m - n (so every diagonal of the score matrix is constant).
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

import zoo
from zoo.blocks.position import RotaryEmbedding, apply_rope, sinusoidal_table
from zoo.study import register
from zoo.study.common import Run, plot_curves, train, write_long_csv

ARMS = ("learned", "sinusoidal", "rope", "none")


@dataclass
class Settings:
    """Settings of `zoo study positions` (override any with key=value).

    Attributes:
        arms: which encodings: learned, sinusoidal, rope, none.
        length: the training length L (digits before the separator).
        test_lengths: lengths tested, as multiples of L.
        n_symbols: distinct digits.
        d_model, n_heads, n_layers: the model of every arm.
        steps, lr, warmup, batch_size: training.
        seed: initialisation and data, the same for every arm.
        eval_sequences: test sequences per length.
        log_every: steps between logged rows.
    """

    arms: list[str] = field(default_factory=lambda: list(ARMS))
    length: int = 8
    test_lengths: list[int] = field(default_factory=lambda: [1, 2, 4])
    n_symbols: int = 10
    d_model: int = 64
    n_heads: int = 4
    n_layers: int = 3
    steps: int = 800
    lr: float = 1e-3
    warmup: int = 50
    batch_size: int = 64
    seed: int = 0
    eval_sequences: int = 256
    log_every: int = 50


def reversal_batch(n: int, length: int, n_symbols: int, g: torch.Generator) -> dict:
    """``length`` random digits, the separator (id n_symbols), then the digits reversed; the loss
    counts only the reversed half."""
    x = torch.randint(0, n_symbols, (n, length), generator=g)
    sep = torch.full((n, 1), n_symbols)
    ids = torch.cat([x, sep, x.flip(-1)], dim=1)  # (n, 2L + 1)
    labels = ids.clone()
    labels[:, : length + 1] = -100
    return {"input_ids": ids, "labels": labels}


@torch.no_grad()
def accuracy(model: nn.Module, batch: dict, length: int) -> tuple[float, float]:
    """(token accuracy, whole-sequence accuracy) of the reversed half, each token predicted from
    the true tokens before it."""
    model.eval()
    logits = model(batch["input_ids"]).logits  # (n, 2L + 1, vocab)
    model.train()
    pred = logits[:, length:-1].argmax(-1)  # the predictions of tokens L + 1 .. 2L
    right = pred == batch["input_ids"][:, length + 1 :]
    return float(right.float().mean()), float(right.all(-1).float().mean())


def build(arm: str, s: Settings) -> nn.Module:
    max_len = 2 * s.length * max(s.test_lengths) + 1
    torch.manual_seed(s.seed)
    model = zoo.create_model(
        "gpt2-tiny", vocab_size=s.n_symbols + 1, max_seq_len=max_len, d_model=s.d_model, n_heads=s.n_heads,
        n_layers=s.n_layers, d_ff=4 * s.d_model, position=arm,
    )  # fmt: skip
    return model


@register("positions", "learned vs sinusoidal vs RoPE vs no positions, trained at L, tested at 2L and 4L", Settings)
def run(s: Settings, out: Path, log) -> dict:
    bad = [a for a in s.arms if a not in ARMS]
    if bad or not s.arms:
        raise ValueError(f"arms: unknown {bad}; choose from {', '.join(ARMS)}")
    if s.length < 1 or not s.test_lengths or min(s.test_lengths) < 1:
        raise ValueError("length, test_lengths: need a positive length and multiples of it")
    g = torch.Generator().manual_seed(s.seed)
    tests = {
        k: reversal_batch(s.eval_sequences, k * s.length, s.n_symbols, torch.Generator().manual_seed(1000 + k))
        for k in s.test_lengths
    }
    runs: dict[str, Run] = {}
    results = []
    for arm in s.arms:
        model = build(arm, s)

        def evaluate(m, length=s.length):
            return {f"token_acc_{k}L": accuracy(m, tests[k], k * length)[0] for k in s.test_lengths}

        runs[arm] = train(
            model, lambda: reversal_batch(s.batch_size, s.length, s.n_symbols, g), s.steps, s.lr,
            warmup=s.warmup, schedule="cosine", log_every=s.log_every, evaluate=evaluate,
        )  # fmt: skip
        row = {"arm": arm}
        for k in s.test_lengths:
            tok, seq = accuracy(model, tests[k], k * s.length)
            row[f"token_acc_{k}L"], row[f"seq_acc_{k}L"] = round(tok, 4), round(seq, 4)
        results.append(row)
        log(f"  {arm:<11} " + "  ".join(f"{k * s.length}: {row[f'token_acc_{k}L']:.3f}" for k in s.test_lengths))
    write_long_csv(out / "values.csv", runs)
    plot_curves(out / "train_loss.png", runs, "loss", f"training loss (reversal, L={s.length})", "loss")
    plot_length(out / "accuracy_vs_length.png", results, s)
    rope_dev = plot_encodings(out / "encodings.png", s)
    report(out / "report.md", s, results, rope_dev)
    return {"results": results, "rope_max_diagonal_spread": rope_dev}


def plot_length(path: Path, results: list[dict], s: Settings) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    lengths = [k * s.length for k in s.test_lengths]
    for row in results:
        ax.plot(lengths, [row[f"token_acc_{k}L"] for k in s.test_lengths], marker="o", label=row["arm"])
    ax.axhline(1 / s.n_symbols, color="grey", ls=":", label="chance")
    ax.axvline(s.length, color="grey", ls="--", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(x) for x in lengths])
    ax.set_xlabel("sequence length (trained at the dashed line)")
    ax.set_ylabel("token accuracy of the reversed half")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rope_scores(head_dim: int = 32, n: int = 48, seed: int = 0) -> torch.Tensor:
    """Scores <R(m) q, R(n) k> for one random q and k rotated to every pair of positions: (n, n)."""
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(2, head_dim, generator=g)
    cos, sin = RotaryEmbedding(head_dim)(torch.arange(n)[None])  # (1, 1, n, head_dim)
    qs = apply_rope(q.expand(1, 1, n, head_dim), cos, sin)[0, 0]  # (n, head_dim)
    ks = apply_rope(k.expand(1, 1, n, head_dim), cos, sin)[0, 0]
    return qs @ ks.T  # (n, n): row m (query position), column n (key position)


def diagonal_spread(scores: torch.Tensor) -> float:
    """The largest max - min along any diagonal: 0 when the score depends only on m - n."""
    n = scores.shape[0]
    return max(float(d.max() - d.min()) for d in (scores.diagonal(o) for o in range(-n + 1, n)))


def plot_encodings(path: Path, s: Settings) -> float:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = sinusoidal_table(2 * s.length * max(s.test_lengths) + 1, s.d_model)
    scores = rope_scores()
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    im = axes[0].imshow(table.T.numpy(), aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
    axes[0].set_xlabel("position")
    axes[0].set_ylabel("channel (even: sin, odd: cos)")
    axes[0].set_title("sinusoidal table: a wavelength per channel pair")
    fig.colorbar(im, ax=axes[0])
    im = axes[1].imshow(scores.numpy(), cmap="viridis")
    axes[1].set_xlabel("key position n")
    axes[1].set_ylabel("query position m")
    axes[1].set_title("RoPE: <R(m)q, R(n)k> is constant along diagonals")
    fig.colorbar(im, ax=axes[1])
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return diagonal_spread(scores)


def report(path: Path, s: Settings, results: list[dict], rope_dev: float) -> None:
    lengths = [k * s.length for k in s.test_lengths]
    lines = [
        "# zoo study positions",
        "",
        f"Reversal of {s.n_symbols}-symbol sequences, trained at L={s.length} for {s.steps} steps; GPT "
        f"d_model {s.d_model}, {s.n_layers} layers, {s.n_heads} heads. Token accuracy of the reversed half "
        "(whole-sequence accuracy in brackets), teacher-forced.",
        "",
        "| positions | " + " | ".join(f"length {n}" for n in lengths) + " |",
        "|---|" + "---|" * len(lengths),
    ]
    for row in results:
        cells = [f"{row[f'token_acc_{k}L']:.3f} ({row[f'seq_acc_{k}L']:.2f})" for k in s.test_lengths]
        lines.append(f"| {row['arm']} | " + " | ".join(cells) + " |")
    lines += ["", f"RoPE: the largest spread of a score along one diagonal is {rope_dev:.2e} (0 in exact arithmetic)."]
    path.write_text("\n".join(lines) + "\n")
