"""Heads, depth and width at a fixed budget of training tokens; grouped-query attention's price.

Every arm trains a small GPT on the same characters, in the same order, for the same number of
tokens, changing one of: depth (n_layers), width (d_model, with d_ff = 4 d_model), the number of
heads at a fixed width, and the number of key/value heads (MHA -> GQA -> MQA). It records the
final validation loss against non-embedding parameters, training FLOPs (`zoo info`'s count: 6N
plus attention, per token, times the tokens) and wall time, and each arm's KV-cache bytes per
token, which is what grouped-query attention buys.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch

import zoo
from zoo.info import kv_cache_bytes_per_token, model_info
from zoo.study import register
from zoo.study.common import DEFAULT_TEXT, CharCorpus, fixed_batches, lm_batches, mean_loss, train


@dataclass
class Settings:
    """Settings of `zoo study sweep` (override any with key=value).

    Attributes:
        depths: n_layers to try (at ``base_width``, ``base_heads``).
        widths: d_model values to try (at ``base_depth``).
        heads: head counts to try (at the base width and depth).
        kv_heads: key/value head counts to try with ``base_heads`` query heads (GQA, MQA).
        base_depth, base_width, base_heads: the point every axis varies from.
        steps, lr, warmup, batch_size, seq_len: the token budget and its schedule.
        seed: initialisation and data order, the same for every arm.
        data: the text to model, one character per token.
    """

    depths: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    widths: list[int] = field(default_factory=lambda: [32, 64, 128])
    heads: list[int] = field(default_factory=lambda: [1, 2, 8])
    kv_heads: list[int] = field(default_factory=lambda: [2, 1])
    base_depth: int = 2
    base_width: int = 64
    base_heads: int = 4
    steps: int = 300
    lr: float = 3e-3
    warmup: int = 20
    batch_size: int = 16
    seq_len: int = 64
    seed: int = 0
    data: str = DEFAULT_TEXT


def arms(s: Settings) -> dict[str, dict]:
    """Arm name -> (n_layers, d_model, n_heads, n_kv_heads); the base point appears once."""
    base = dict(n_layers=s.base_depth, d_model=s.base_width, n_heads=s.base_heads, n_kv_heads=None)
    out = {"base": base}
    for d in s.depths:
        out.setdefault(f"depth {d}", base | {"n_layers": d})
    for w in s.widths:
        out.setdefault(f"width {w}", base | {"d_model": w})
    for h in s.heads:
        out.setdefault(f"heads {h}", base | {"n_heads": h})
    for kv in s.kv_heads:
        out.setdefault(f"kv heads {kv}", base | {"n_kv_heads": kv})
    # The base point under another name is the same run: keep one.
    seen, unique = set(), {}
    for name, a in out.items():
        key = tuple(a.values())
        if key not in seen:
            seen.add(key)
            unique[name] = a
    for name, a in unique.items():
        if a["d_model"] % a["n_heads"]:
            raise ValueError(f"{name}: d_model {a['d_model']} is not divisible by n_heads {a['n_heads']}")
        if a["n_kv_heads"] is not None and a["n_heads"] % a["n_kv_heads"]:
            raise ValueError(f"kv_heads: {a['n_kv_heads']} does not divide n_heads={a['n_heads']}")
    return unique


@register("sweep", "heads, depth and width at a fixed token budget: loss vs parameters, FLOPs, time", Settings)
def run(s: Settings, out: Path, log) -> dict:
    corpus = CharCorpus.from_file(s.data)
    train_ids, val_ids = corpus.split()
    val = fixed_batches(lm_batches(val_ids, s.batch_size, s.seq_len, seed=12345), 4)
    tokens = (s.steps + 1) * s.batch_size * s.seq_len
    results = []
    for name, a in arms(s).items():
        torch.manual_seed(s.seed)
        model = zoo.create_model(
            "gpt2-tiny", vocab_size=len(corpus.vocab), max_seq_len=s.seq_len, d_ff=4 * a["d_model"], **a
        )
        info = model_info(model, name, context=s.seq_len)
        run_ = train(model, lm_batches(train_ids, s.batch_size, s.seq_len, s.seed), s.steps, s.lr,
                     warmup=s.warmup, schedule="cosine", log_every=s.steps)  # fmt: skip
        row = {
            "arm": name, **a,
            "non_embedding_params": info.non_embedding_params,
            "train_flops": info.flops_per_token_train * tokens,
            "seconds": round(run_.seconds, 2),
            "kv_cache_bytes_per_token": kv_cache_bytes_per_token(model.config),
            "final_val_loss": round(mean_loss(model, val), 4),
            "diverged": run_.diverged,
        }  # fmt: skip
        results.append(row)
        n, loss = row["non_embedding_params"], row["final_val_loss"]
        log(f"  {name:<12} N={n:>8,}  val loss {loss:.3f}  {row['seconds']} s")
    write_table(out / "values.csv", results)
    plot(out / "loss_vs_compute.png", results)
    report(out / "report.md", s, results, tokens)
    return {"tokens_per_arm": tokens, "results": results}


def write_table(path: Path, results: list[dict]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(results[0]))
        w.writeheader()
        w.writerows(results)


def plot(path: Path, results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.3))
    for ax, key, label in zip(
        axes,
        ("non_embedding_params", "train_flops", "seconds"),
        ("non-embedding parameters", "training FLOPs", "wall time (s)"),
        strict=True,
    ):
        for group, marker in (("depth", "o"), ("width", "s"), ("heads", "^"), ("kv heads", "v"), ("base", "*")):
            pts = [r for r in results if r["arm"].startswith(group)]
            if group == "heads":
                pts = [r for r in pts if not r["arm"].startswith("kv")]
            if pts:
                ax.scatter([r[key] for r in pts], [r["final_val_loss"] for r in pts], marker=marker, label=group, s=40)
                for r in pts:
                    ax.annotate(r["arm"].split()[-1], (r[key], r["final_val_loss"]), fontsize=7, xytext=(3, 3),
                                textcoords="offset points")  # fmt: skip
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel("final validation loss")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("same tokens for every arm")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(path: Path, s: Settings, results: list[dict], tokens: int) -> None:
    lines = [
        "# zoo study sweep",
        "",
        f"GPT on characters, {tokens:,} training tokens per arm ({s.steps} steps of {s.batch_size} x {s.seq_len}), "
        f"lr {s.lr}, cosine; base point: {s.base_depth} layers, d_model {s.base_width}, {s.base_heads} heads.",
        "",
        "| arm | layers | d_model | heads | kv heads | non-emb. params | train FLOPs | time (s) | KV bytes/token "
        "| val loss |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        kv = r["n_kv_heads"] or r["n_heads"]
        lines.append(
            f"| {r['arm']} | {r['n_layers']} | {r['d_model']} | {r['n_heads']} | {kv} | {r['non_embedding_params']:,} "
            f"| {r['train_flops']:.2e} | {r['seconds']} | {r['kv_cache_bytes_per_token']:,} "
            f"| {r['final_val_loss']:.3f} |"
        )
    path.write_text("\n".join(lines) + "\n")
