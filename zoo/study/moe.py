"""A dense model vs a mixture of experts of equal active parameters, with and without the
load-balancing loss.

A top-k router sends each token to k of E experts, so a MoE layer with expert width d_ff and
top_k = 1 runs as many weights per token as a dense MLP of width d_ff, while holding E times
the parameters. Its router learns from the task loss alone unless a balancing loss (Switch
Transformer, Fedus et al. 2021; Mixtral's form here) pushes the token share towards uniform: the
known failure without it is that routing collapses onto a few experts, which then do all the
work while the others stop learning. This study trains the dense model and the MoE with and
without the loss on the same data and logs loss curves and each expert's share of tokens per
layer over training.
"""

import math
from dataclasses import dataclass
from pathlib import Path

import torch

import zoo
from zoo.study import register
from zoo.study.common import (
    DEFAULT_TEXT,
    CharCorpus,
    Run,
    fixed_batches,
    lm_batches,
    mean_loss,
    plot_curves,
    train,
    write_long_csv,
)


@dataclass
class Settings:
    """Settings of `zoo study moe` (override any with key=value).

    Attributes:
        n_experts, top_k: the mixture; the dense arm's MLP is top_k experts wide.
        d_ff: each expert's hidden width.
        balance_coef: weight of the load-balancing loss in the balanced arm.
        d_model, n_layers, n_heads: the rest of every arm (a LLaMA-style model).
        steps, lr, warmup, batch_size, seq_len: training.
        seed: initialisation and data order, the same for every arm.
        data: the text to model, one character per token.
        log_every: steps between logged rows.
    """

    n_experts: int = 8
    top_k: int = 1
    d_ff: int = 128
    balance_coef: float = 0.01
    d_model: int = 64
    n_layers: int = 2
    n_heads: int = 4
    steps: int = 400
    lr: float = 3e-3
    warmup: int = 20
    batch_size: int = 16
    seq_len: int = 64
    seed: int = 0
    data: str = DEFAULT_TEXT
    log_every: int = 10


def expert_shares(model) -> list[list[float]]:
    """Per MoE layer, each expert's share of the (token, slot) routings of the last forward."""
    shares = []
    for logits in model.router_logits():
        k = model.config.top_k
        chosen = logits.float().topk(k, dim=-1).indices  # (N, k)
        counts = torch.bincount(chosen.flatten(), minlength=logits.shape[-1]).float()
        shares.append((counts / counts.sum()).tolist())
    return shares


def balance(shares: list[float]) -> float:
    """Normalised entropy of a token-share vector: 1 when uniform, 0 when one expert gets all."""
    h = -sum(p * math.log(p) for p in shares if p > 0)
    return h / math.log(len(shares))


@register("moe", "dense vs mixture of experts (equal active parameters), with and without the balancing loss", Settings)
def run(s: Settings, out: Path, log) -> dict:
    if not 1 <= s.top_k <= s.n_experts:
        raise ValueError(f"top_k: must be between 1 and n_experts={s.n_experts}, got {s.top_k}")
    corpus = CharCorpus.from_file(s.data)
    train_ids, val_ids = corpus.split()
    val = fixed_batches(lm_batches(val_ids, s.batch_size, s.seq_len, seed=12345), 4)
    common = dict(vocab_size=len(corpus.vocab), max_seq_len=s.seq_len, d_model=s.d_model, n_layers=s.n_layers,
                  n_heads=s.n_heads, n_kv_heads=s.n_heads, head_dim=s.d_model // s.n_heads,
                  sliding_window=None)  # fmt: skip
    arms = {
        "dense": dict(n_experts=None, d_ff=s.top_k * s.d_ff),
        "MoE + balancing loss": dict(n_experts=s.n_experts, top_k=s.top_k, d_ff=s.d_ff, aux_loss_coef=s.balance_coef),
        "MoE, no balancing loss": dict(n_experts=s.n_experts, top_k=s.top_k, d_ff=s.d_ff, aux_loss_coef=0.0),
    }
    runs: dict[str, Run] = {}
    results = []
    for name, overrides in arms.items():
        torch.manual_seed(s.seed)
        model = zoo.create_model("mixtral-tiny", **common, **overrides)
        moe = overrides["n_experts"] is not None

        def inspect(m, step, moe=moe):
            return {"expert_share": [x for layer in expert_shares(m) for x in layer]} if moe else {}

        runs[name] = train(
            model, lm_batches(train_ids, s.batch_size, s.seq_len, s.seed), s.steps, s.lr, warmup=s.warmup,
            schedule="cosine", log_every=s.log_every, evaluate=lambda m: {"val_loss": mean_loss(m, val)},
            inspect=inspect,
        )  # fmt: skip
        last = runs[name].rows[-1]
        row = {
            "arm": name,
            "total_params": model.num_parameters(),
            "active_params": model.num_active_parameters() if hasattr(model, "num_active_parameters") else None,
            "final_val_loss": round(last["val_loss"], 4),
            "diverged": runs[name].diverged,
        }
        if moe:
            per_layer = [last["expert_share"][i * s.n_experts : (i + 1) * s.n_experts] for i in range(s.n_layers)]
            row["final_expert_share"] = [[round(x, 3) for x in layer] for layer in per_layer]
            row["final_balance"] = [round(balance(layer), 3) for layer in per_layer]
            row["max_share"] = round(max(max(layer) for layer in per_layer), 3)
        results.append(row)
        log(f"  {name:<24} val loss {row['final_val_loss']:.3f}" + (f"  balance {row['final_balance']}" if moe else ""))
    write_long_csv(out / "values.csv", runs)
    plot_curves(out / "val_loss.png", runs, "val_loss", "validation loss", "loss")
    plot_shares(out / "expert_share.png", runs, s)
    report(out / "report.md", s, results)
    return {"results": results}


def plot_shares(path: Path, runs: dict[str, Run], s: Settings) -> None:
    """Each expert's token share over training: one panel per (MoE arm, layer)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    moe_arms = [a for a in runs if a != "dense"]
    fig, axes = plt.subplots(len(moe_arms), s.n_layers, figsize=(4.5 * s.n_layers, 3.2 * len(moe_arms)), squeeze=False)
    for r, arm in enumerate(moe_arms):
        rows = runs[arm].rows
        steps = [row["step"] for row in rows]
        for layer in range(s.n_layers):
            ax = axes[r][layer]
            shares = [row["expert_share"][layer * s.n_experts : (layer + 1) * s.n_experts] for row in rows]
            ax.stackplot(steps, list(zip(*shares, strict=True)), labels=[f"expert {e}" for e in range(s.n_experts)])
            ax.set_ylim(0, 1)
            ax.set_title(f"{arm}, layer {layer}", fontsize=9)
            ax.set_xlabel("step")
            ax.set_ylabel("share of tokens")
    axes[0][-1].legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(path: Path, s: Settings, results: list[dict]) -> None:
    lines = [
        "# zoo study moe",
        "",
        f"LLaMA-style model, d_model {s.d_model}, {s.n_layers} layers; MoE: {s.n_experts} experts of width {s.d_ff}, "
        f"top-{s.top_k}; dense: an MLP of width {s.top_k * s.d_ff} (equal active parameters). {s.steps} steps, "
        f"lr {s.lr}, balancing-loss weight {s.balance_coef}.",
        "",
        "| arm | parameters (active) | final val loss | balance per layer (1 = uniform) | largest expert share |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        active = f" ({r['active_params']:,})" if r.get("active_params") else ""
        lines.append(
            f"| {r['arm']} | {r['total_params']:,}{active} | {r['final_val_loss']:.3f} | "
            f"{r.get('final_balance', '-')} | {r.get('max_share', '-')} |"
        )
    path.write_text("\n".join(lines) + "\n")
