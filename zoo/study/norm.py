"""Pre-LN vs post-LN: where the norm sits, with and without warmup, shallow and deep.

Xiong et al. 2020 ("On Layer Normalization in the Transformer Architecture") show that at
initialisation a post-LN transformer's gradients are largest near the output and that it needs a
learning-rate warmup, while pre-LN trains without one. Takase et al. 2022 find post-LN can end
better when shallow and is unstable when deep. This study trains the same small GPT (same data,
seed and steps) in every combination of: norm before or after each sub-layer (``prenorm``),
warmup or none, and two depths, at a learning rate where the difference shows, and logs loss,
per-layer gradient norms (at initialisation and during training), per-layer activation norms,
and whether the run diverged.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch

import zoo
from zoo.study import register
from zoo.study.common import (
    DEFAULT_TEXT,
    ActivationNorms,
    CharCorpus,
    Run,
    fixed_batches,
    layer_norms_only,
    lm_batches,
    mean_loss,
    plot_curves,
    train,
    write_long_csv,
)


@dataclass
class Settings:
    """Settings of `zoo study norm` (override any with key=value).

    Attributes:
        depths: the numbers of layers to compare, e.g. ``depths=[6,24]``.
        d_model, n_heads: the width of every arm.
        steps: optimizer steps per arm.
        lr: peak learning rate (AdamW); high enough that post-LN without warmup struggles.
        warmup: warmup steps in the warmup arms (linear, then constant).
        batch_size, seq_len: tokens per step.
        seed: initialisation and data order, the same for every arm.
        data: the text to model, one character per token.
        log_every: steps between logged rows.
    """

    depths: list[int] = field(default_factory=lambda: [6, 12])
    d_model: int = 64
    n_heads: int = 4
    steps: int = 300
    lr: float = 3e-3
    warmup: int = 100
    batch_size: int = 16
    seq_len: int = 64
    seed: int = 0
    data: str = DEFAULT_TEXT
    log_every: int = 10


def arm_name(prenorm: bool, warmup: bool, depth: int) -> str:
    return f"{'pre' if prenorm else 'post'}-LN {'warmup' if warmup else 'no warmup'} L={depth}"


@register("norm", "pre-LN vs post-LN, with and without warmup, at two depths", Settings)
def run(s: Settings, out: Path, log) -> dict:
    if not s.depths or any(d < 1 for d in s.depths):
        raise ValueError(f"depths: need positive layer counts, got {s.depths}")
    corpus = CharCorpus.from_file(s.data)
    train_ids, val_ids = corpus.split()
    val = fixed_batches(lm_batches(val_ids, s.batch_size, s.seq_len, seed=12345), 4)
    runs: dict[str, Run] = {}
    arms = []
    for depth in s.depths:
        for prenorm in (True, False):
            for warm in (True, False):
                name = arm_name(prenorm, warm, depth)
                torch.manual_seed(s.seed)
                # GPT-2's layers either way; post-LN ends each layer on its norm, so no final norm (GPT-1).
                model = zoo.create_model(
                    "gpt2-tiny", vocab_size=len(corpus.vocab), max_seq_len=s.seq_len, d_model=s.d_model,
                    n_heads=s.n_heads, n_layers=depth, d_ff=4 * s.d_model, prenorm=prenorm, final_norm=prenorm,
                )  # fmt: skip
                acts = ActivationNorms(model.layers)
                result = train(
                    model, lm_batches(train_ids, s.batch_size, s.seq_len, s.seed), s.steps, s.lr,
                    warmup=s.warmup if warm else 0, log_every=s.log_every,
                    evaluate=lambda m: {"val_loss": mean_loss(m, val)},
                    inspect=lambda m, step, acts=acts: {"layer_grad_norm": layer_norms_only(m),
                                                        "layer_act_rms": list(acts.values)},
                )  # fmt: skip
                acts.close()
                runs[name] = result
                last = result.rows[-1]
                arms.append({
                    "arm": name, "prenorm": prenorm, "warmup": warm, "depth": depth, "diverged": result.diverged,
                    "final_val_loss": last["val_loss"], "final_train_loss": last["loss"],
                    "best_val_loss": min(r["val_loss"] for r in result.rows),
                    "init_grad_norm_first_layer": result.rows[0]["layer_grad_norm"][0],
                    "init_grad_norm_last_layer": result.rows[0]["layer_grad_norm"][-1],
                    "seconds": round(result.seconds, 1),
                })  # fmt: skip
                log(f"  {name:<26} val loss {last['val_loss']:.3f}{'  DIVERGED' if result.diverged else ''}")
    write_long_csv(out / "values.csv", runs)
    for depth in s.depths:
        sub = {k: v for k, v in runs.items() if k.endswith(f"L={depth}")}
        plot_curves(out / f"val_loss_L{depth}.png", sub, "val_loss", f"validation loss, {depth} layers", "loss")
    plot_init_grads(out / "init_grad_norms.png", runs)
    report(out / "report.md", s, arms)
    return {"arms": arms, "vocab_size": len(corpus.vocab)}


def plot_init_grads(path: Path, runs: dict[str, Run]) -> Path:
    """Gradient norm per layer at initialisation (step 0), one line per arm with warmup (the
    no-warmup arms start from the same weights, so their step-0 gradients are the same)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for arm, run in runs.items():
        if "no warmup" in arm:
            continue
        norms = run.rows[0]["layer_grad_norm"]
        ax.plot(range(len(norms)), norms, marker="o", ms=3, label=arm.replace(" warmup", ""))
    ax.set_yscale("log")
    ax.set_xlabel("layer (0 = nearest the input)")
    ax.set_ylabel("gradient norm at initialisation")
    ax.set_title("per-layer gradient norm at step 0")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(path: Path, s: Settings, arms: list[dict]) -> None:
    lines = [
        "# zoo study norm",
        "",
        f"GPT, d_model {s.d_model}, {s.n_heads} heads, {s.steps} steps of {s.batch_size} x {s.seq_len} characters, "
        f"AdamW lr {s.lr}, warmup {s.warmup} steps in the warmup arms, seed {s.seed}.",
        "",
        "| arm | final val loss | best val loss | diverged | grad norm at init, first / last layer |",
        "|---|---|---|---|---|",
    ]
    for a in arms:
        lines.append(
            f"| {a['arm']} | {a['final_val_loss']:.3f} | {a['best_val_loss']:.3f} | {'yes' if a['diverged'] else 'no'} "
            f"| {a['init_grad_norm_first_layer']:.3g} / {a['init_grad_norm_last_layer']:.3g} |"
        )
    path.write_text("\n".join(lines) + "\n")
