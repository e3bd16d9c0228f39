"""The four common training failures, each shown failing and then fixed, on small GPTs:

- **exploding**: SGD with momentum at a high learning rate, without and with gradient-norm
  clipping (``grad_clip``, the training loop's ``train.grad_clip``).
- **vanishing**: a deep GPT with and without its residual connections (GPT's ``residual``
  switch); per-layer gradient norms at initialisation and during training.
- **warmup**: the same model and learning rate with and without a linear warmup
  (``train.warmup_steps``).
- **memory**: one training step of the training loop itself at a batch, then with gradient
  accumulation (``train.micro_batch_size``) and activation checkpointing
  (``train.activation_checkpointing``): measured peak memory beside ``zoo info``'s plan, and the
  accumulated gradient against the big batch's.

``docs/debugging.md`` shows a real default run.
"""

import ctypes
import ctypes.util
import dataclasses
import gc
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

import zoo
from zoo.debug import layer_grad_norm_report
from zoo.info import training_memory
from zoo.study import register
from zoo.study.common import (
    DEFAULT_TEXT,
    CharCorpus,
    Run,
    fixed_batches,
    layer_norms_only,
    lm_batches,
    mean_loss,
    train,
    write_long_csv,
)
from zoo.train import CausalLMTask, TrainConfig, Trainer

PARTS = ("exploding", "vanishing", "warmup", "memory")


@dataclass
class Settings:
    """Settings of `zoo study pitfalls` (override any with key=value).

    Attributes:
        parts: which demonstrations to run, any of exploding, vanishing, warmup, memory.
        d_model, n_heads: the width of the trained GPTs (exploding, vanishing, warmup).
        batch_size, seq_len: tokens per training step of those.
        seed: initialisation and data order, the same for both arms of a part.
        data: the text to model, one character per token.
        log_every: steps between logged rows.
        explode_layers, explode_steps, explode_lr, explode_momentum: the SGD runs.
        explode_clip: the clipped run's maximum gradient norm.
        vanish_layers, vanish_steps, vanish_lr, vanish_warmup: the AdamW runs with and without
            residual connections.
        warmup_layers, warmup_train_steps, warmup_lr: the AdamW runs with and without warmup.
        warmup: warmup steps of the warmup arm.
        memory_d_model, memory_layers, memory_batch_size, memory_seq_len: the model and step whose
            memory is measured.
        memory_micro_batch_size: the micro-batch of the accumulation arms.
    """

    parts: list[str] = field(default_factory=lambda: list(PARTS))
    d_model: int = 64
    n_heads: int = 4
    batch_size: int = 16
    seq_len: int = 64
    seed: int = 0
    data: str = DEFAULT_TEXT
    log_every: int = 10
    explode_layers: int = 4
    explode_steps: int = 200
    explode_lr: float = 1.0
    explode_momentum: float = 0.9
    explode_clip: float = 1.0
    vanish_layers: int = 12
    vanish_steps: int = 100
    vanish_lr: float = 1e-3
    vanish_warmup: int = 20
    warmup_layers: int = 4
    warmup_train_steps: int = 200
    warmup_lr: float = 1e-2
    warmup: int = 50
    memory_d_model: int = 128
    memory_layers: int = 4
    memory_batch_size: int = 32
    memory_seq_len: int = 256
    memory_micro_batch_size: int = 8


def _check(s: Settings) -> None:
    unknown = [p for p in s.parts if p not in PARTS]
    if unknown or not s.parts:
        raise ValueError(f"parts: {unknown or s.parts} are not parts; choose from {', '.join(PARTS)}")
    if s.memory_batch_size % s.memory_micro_batch_size:
        raise ValueError(
            f"memory_micro_batch_size: {s.memory_micro_batch_size} does not divide "
            f"memory_batch_size={s.memory_batch_size}"
        )
    if s.warmup < 1:
        raise ValueError(f"warmup: the warmup arm needs at least 1 warmup step, got {s.warmup}")
    if s.warmup_train_steps < s.warmup:
        raise ValueError(f"warmup: {s.warmup} warmup steps are more than warmup_train_steps={s.warmup_train_steps}")


@register("pitfalls", "exploding and vanishing gradients, no warmup, out of memory: each failing, then fixed", Settings)
def run(s: Settings, out: Path, log) -> dict:
    _check(s)
    corpus = CharCorpus.from_file(s.data)
    train_ids, val_ids = corpus.split()
    val = fixed_batches(lm_batches(val_ids, s.batch_size, s.seq_len, seed=12345), 4)
    summary, runs = {}, {}

    def gpt(n_layers: int, **overrides):
        torch.manual_seed(s.seed)
        return zoo.create_model(
            "gpt2-tiny", vocab_size=len(corpus.vocab), max_seq_len=s.seq_len, d_model=s.d_model, n_heads=s.n_heads,
            n_layers=n_layers, d_ff=4 * s.d_model, **overrides,
        )  # fmt: skip

    def batches():
        return lm_batches(train_ids, s.batch_size, s.seq_len, s.seed)

    def evaluate(m):
        return {"val_loss": mean_loss(m, val)}

    if "exploding" in s.parts:
        part = {}
        for clip in (None, s.explode_clip):
            arm = "exploding: no clipping" if clip is None else f"exploding: clip {clip:g}"
            # Every step logged (training loss only): a blow-up takes a few steps.
            r = train(
                gpt(s.explode_layers), batches(), s.explode_steps, s.explode_lr, grad_clip=clip, log_every=1,
                sgd_momentum=s.explode_momentum,
            )  # fmt: skip
            runs[arm] = r
            part["clipped" if clip else "unclipped"] = _summary(r, "loss")
            log(f"  {arm:<26} {_line(r, 'loss')}")
        summary["exploding"] = part

    if "vanishing" in s.parts:
        part = {}
        for residual in (True, False):
            arm = f"vanishing: {'with' if residual else 'without'} residual"
            model = gpt(s.vanish_layers, residual=residual)
            r = train(
                model, batches(), s.vanish_steps, s.vanish_lr, warmup=s.vanish_warmup, log_every=s.log_every,
                evaluate=evaluate, inspect=lambda m, step: {"layer_grad_norm": layer_norms_only(m)},
            )  # fmt: skip
            runs[arm] = r
            init, last = r.rows[0]["layer_grad_norm"], r.rows[-1]["layer_grad_norm"]
            part["residual" if residual else "no_residual"] = {
                **_summary(r, "val_loss"),
                # The last step's gradients are still on the model (the loop ends after backward).
                "layer_grad_norm_report": layer_grad_norm_report(model),
                "layer_grad_norm_init": init,
                "layer_grad_norm_final": last,
                "first_over_last_init": init[0] / init[-1],
                "first_over_last_final": last[0] / last[-1],
            }
            log(f"  {arm:<26} {_line(r, 'val_loss')}; first/last layer grad norm {init[0] / init[-1]:.3g} at step 0, "
                f"{last[0] / last[-1]:.3g} at step {r.rows[-1]['step']}")  # fmt: skip
        summary["vanishing"] = part

    if "warmup" in s.parts:
        part = {}
        for warm in (0, s.warmup):
            arm = f"warmup: {warm} warmup steps" if warm else "warmup: no warmup"
            r = train(
                gpt(s.warmup_layers), batches(), s.warmup_train_steps, s.warmup_lr, warmup=warm,
                log_every=s.log_every, evaluate=evaluate,
            )  # fmt: skip
            runs[arm] = r
            part["warmup" if warm else "no_warmup"] = _summary(r, "val_loss")
            log(f"  {arm:<26} {_line(r, 'val_loss')}")
        # How much sooner: the step at which the warmup run first reached the loss the run without
        # warmup ended on.
        target = part["no_warmup"]["final_loss"]
        reached = [step for step, v in part["warmup"]["loss"].items() if None not in (v, target) and v <= target]
        part["warmup_steps_to_no_warmup_final_loss"] = reached[0] if reached else None
        summary["warmup"] = part

    if runs:
        write_long_csv(out / "values.csv", runs)
        plot(out, runs)
    if "memory" in s.parts:
        summary["memory"] = memory_part(s, out, log)
        plot_memory(out / "memory.png", summary["memory"])
    report(out / "report.md", s, summary)
    log((out / "report.md").read_text())
    return summary


def _largest_grad_norm(r: Run) -> float:
    """The largest finite gradient norm logged (a diverged run's last one is NaN or Inf)."""
    return max((row["grad_norm"] for row in r.rows if math.isfinite(row["grad_norm"])), default=math.nan)


def _summary(r: Run, key: str) -> dict:
    """``key``: the loss the part logs (``loss``, the training batch's, or ``val_loss``)."""

    def finite(v: float) -> float | None:  # NaN and Inf are not JSON: null
        return v if math.isfinite(v) else None

    values = [row[key] for row in r.rows]
    return {
        "diverged": r.diverged,
        "steps_run": r.rows[-1]["step"],
        "loss_kind": key,
        "final_loss": finite(values[-1]),
        "best_loss": min(v for v in values if math.isfinite(v)),
        "max_grad_norm": _largest_grad_norm(r),
        "final_grad_norm": finite(r.rows[-1]["grad_norm"]),
        "loss": {row["step"]: finite(row[key]) for row in r.rows},
        "seconds": round(r.seconds, 1),
    }


def _num(v: float | None, spec: str) -> str:
    return "NaN" if v is None else format(v, spec)


def _line(r: Run, key: str) -> str:
    last = r.rows[-1]
    end = f"DIVERGED at step {last['step']}" if r.diverged else f"{key.replace('_', ' ')} {last[key]:.3f}"
    return f"{end}, largest grad norm {_largest_grad_norm(r):.3g}"


# --- memory ----------------------------------------------------------------------------------


class _MallInfo2(ctypes.Structure):
    names = "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost"
    _fields_ = [(n, ctypes.c_size_t) for n in names.split()]


def _malloc_in_use():
    """A function giving the bytes glibc has handed out and not taken back (heap chunks and
    mmapped blocks); None where there is no glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallinfo2.restype = _MallInfo2
    except (OSError, AttributeError):
        return None

    def in_use() -> int:
        info = libc.mallinfo2()
        return info.uordblks + info.hblkhd

    return in_use


class PeakMemory:
    """The most memory in use during a step, sampled after every module's forward (the
    recomputation under checkpointing included) and as each parameter's gradient lands in
    backward: the points where saved activations and gradients pile up. Allocator bytes, not
    resident pages (glibc keeps freed pages, so the resident size overstates what a step needs).
    On one thread: mallinfo2 sees the main arena only."""

    def __init__(self, model: torch.nn.Module, in_use):
        self.in_use, self.peak, self.base = in_use, 0, 0
        self._handles = [m.register_forward_hook(lambda *a: self.sample()) for m in model.modules()]
        self._handles += [p.register_post_accumulate_grad_hook(lambda p: self.sample()) for p in model.parameters()]

    def sample(self) -> None:
        self.peak = max(self.peak, self.in_use())

    def __enter__(self) -> "PeakMemory":
        gc.collect()
        self.base = self.peak = self.in_use()
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()

    @property
    def bytes(self) -> int:
        return self.peak - self.base


def memory_part(s: Settings, out: Path, log) -> dict:
    """One optimizer step of the training loop (zoo.train.Trainer) per arm: the big batch, micro-
    batches with accumulation, checkpointing, both. Measured on a second step (the first
    allocates AdamW's state) beside ``training_memory``'s plan (what ``zoo info`` prints)."""
    in_use = _malloc_in_use()
    B, T, mb = s.memory_batch_size, s.memory_seq_len, s.memory_micro_batch_size
    shape = dict(vocab_size=256, max_seq_len=T, d_model=s.memory_d_model, n_heads=s.n_heads,
                 n_layers=s.memory_layers, d_ff=4 * s.memory_d_model)  # fmt: skip
    g = torch.Generator().manual_seed(s.seed)
    data = [{"input_ids": (x := torch.randint(0, 256, (T,), generator=g)), "labels": x.clone()} for _ in range(B)]
    with torch.device("meta"):
        meta = zoo.create_model("gpt2-tiny", **shape)
    arms, grads = [], {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for micro, ckpt in ((None, False), (mb, False), (None, True), (mb, True)):
            name = f"batch {B}" if micro is None else f"{B // micro} x micro-batch {micro}"
            name += " + checkpointing" if ckpt else ""
            torch.manual_seed(s.seed)
            model = zoo.create_model("gpt2-tiny", **shape)
            cfg = TrainConfig(steps=2, batch_size=B, micro_batch_size=micro, activation_checkpointing=ckpt,
                              lr=1e-3, progress="none", tensorboard=False, seed=s.seed)  # fmt: skip
            trainer = Trainer(model, CausalLMTask(), data, cfg, out / "memory-run")
            # The accumulated gradient of step 1, before the optimizer moves anything.
            batches = trainer.micro_batches(0)
            trainer.accumulate(batches, sum(trainer.task.targets(b) for b in batches))
            grads[name] = [p.grad.clone() for p in model.parameters()]
            trainer.optimizer.zero_grad(set_to_none=True)
            trainer.train_step()
            measured = None
            if in_use is not None:
                with PeakMemory(model, in_use) as peak:
                    trainer.train_step()
                measured = peak.bytes
            plan = training_memory(meta, micro or B, T)
            planned = plan.gradients + (plan.checkpointed_peak if ckpt else plan.activations)
            arms.append({"arm": name, "micro_batch_size": micro or B, "checkpointing": ckpt,
                         "measured_peak_bytes": measured, "planned_activations_bytes": planned - plan.gradients,
                         "planned_peak_bytes": planned})  # fmt: skip
            shown = "n/a (needs glibc)" if measured is None else f"{measured / 2**20:.1f} MiB"
            log(f"  memory: {name:<34} measured {shown}, planned {planned / 2**20:.1f} MiB")
            del trainer, model
    finally:
        torch.set_num_threads(threads)
    full = grads[arms[0]["arm"]]

    def relative_difference(other):
        """|g_accumulated - g_big| / |g_big| over all parameters' gradients as one vector (per
        tensor, a bias whose true gradient is zero, as the key bias's is, would divide noise by noise)."""
        diff = sum(float((a - b).pow(2).sum()) for a, b in zip(other, full, strict=True))
        return (diff / sum(float(b.pow(2).sum()) for b in full)) ** 0.5

    return {
        "model": shape,
        "batch_size": B,
        "seq_len": T,
        "arms": arms,
        "relative_grad_difference": {a["arm"]: relative_difference(grads[a["arm"]]) for a in arms[1:]},
        "plan": {k: v for k, v in dataclasses.asdict(training_memory(meta, B, T)).items() if k != "dtype"},
    }


# --- plots and report ------------------------------------------------------------------------


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot(out: Path, runs: dict[str, Run]) -> None:
    plt = _pyplot()
    groups = {}
    for arm, r in runs.items():
        groups.setdefault(arm.split(":")[0], {})[arm.split(": ")[1]] = r
    for part, arms in groups.items():
        fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
        for name, r in arms.items():
            label = name + (" (diverged)" if r.diverged else "")
            key = "loss" if part == "exploding" else "val_loss"
            left.plot([row["step"] for row in r.rows], [row[key] for row in r.rows], label=label)
            if part == "vanishing":
                init, last = r.rows[0]["layer_grad_norm"], r.rows[-1]["layer_grad_norm"]
                (line,) = right.plot(range(len(init)), init, ls="--", marker="o", ms=3, label=f"{name}, step 0")
                right.plot(range(len(last)), last, color=line.get_color(), marker="o", ms=3,
                           label=f"{name}, step {r.rows[-1]['step']}")  # fmt: skip
            else:
                right.plot([row["step"] for row in r.rows], [row["grad_norm"] for row in r.rows], label=label)
        kind = "training loss" if part == "exploding" else "validation loss"
        left.set(xlabel="step", ylabel=kind, title=f"{part}: {kind}")
        if part == "vanishing":
            right.set(xlabel="layer (0 = nearest the input)", ylabel="gradient norm", title="per-layer gradient norm")
        else:
            right.set(xlabel="step", ylabel="gradient norm (before clipping)", title=f"{part}: gradient norm")
        right.set_yscale("log")
        if part == "exploding":  # a loss in the millions beside one near 2
            left.set_yscale("log")
        for ax in (left, right):
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / f"{part}.png", dpi=110)
        plt.close(fig)


def plot_memory(path: Path, mem: dict) -> None:
    plt = _pyplot()
    arms = mem["arms"]
    fig, ax = plt.subplots(figsize=(7, 3.8))
    xs = range(len(arms))
    mib = 2**20
    ax.bar([x - 0.2 for x in xs], [a["planned_peak_bytes"] / mib for a in arms], 0.4, label="planned (zoo info)")
    if all(a["measured_peak_bytes"] is not None for a in arms):
        ax.bar([x + 0.2 for x in xs], [a["measured_peak_bytes"] / mib for a in arms], 0.4, label="measured")
    ax.set_xticks(list(xs), [a["arm"].replace(" + ", "\n+ ") for a in arms], fontsize=8)
    ax.set_ylabel("MiB above the weights and AdamW state")
    ax.set_title(f"peak memory of one training step, batch {mem['batch_size']} x {mem['seq_len']} tokens")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def report(path: Path, s: Settings, summary: dict) -> None:
    lines = ["# zoo study pitfalls", ""]

    def rows(part: dict, names: dict) -> None:
        kind = "train" if next(iter(part.values()))["loss_kind"] == "loss" else "val"
        lines.extend([f"| arm | diverged | steps run | final {kind} loss | best {kind} loss | largest grad norm |",
                      "|---|---|---|---|---|---|"])  # fmt: skip
        for key, label in names.items():
            a = part[key]
            lines.append(
                f"| {label} | {'yes' if a['diverged'] else 'no'} | {a['steps_run']} | "
                f"{_num(a['final_loss'], '.3f')} | {a['best_loss']:.3f} | {a['max_grad_norm']:.3g} |"
            )
        lines.append("")

    if "exploding" in summary:
        lines += [f"## Exploding gradients: SGD (momentum {s.explode_momentum}) at lr {s.explode_lr}, "
                  f"{s.explode_layers} layers, {s.explode_steps} steps", ""]  # fmt: skip
        rows(summary["exploding"], {"unclipped": "no clipping", "clipped": f"grad_clip {s.explode_clip:g}"})
    if "vanishing" in summary:
        v = summary["vanishing"]
        lines += [f"## Vanishing gradients: {s.vanish_layers} layers, AdamW lr {s.vanish_lr}, "
                  f"{s.vanish_steps} steps", ""]  # fmt: skip
        rows(v, {"residual": "with residual", "no_residual": "without residual"})
        lines += ["| arm | first / last layer grad norm, step 0 | same, last step |", "|---|---|---|"]
        for key, label in (("residual", "with residual"), ("no_residual", "without residual")):
            lines.append(f"| {label} | {v[key]['first_over_last_init']:.3g} | {v[key]['first_over_last_final']:.3g} |")
        lines.append("")
        for key, label in (("residual", "with residual"), ("no_residual", "without residual")):
            lines += [f"`zoo.debug.layer_grad_norm_report` at step {v[key]['steps_run']}, {label}:", "", "```",
                      v[key]["layer_grad_norm_report"], "```", ""]  # fmt: skip
    if "warmup" in summary:
        lines += [f"## Warmup: {s.warmup_layers} layers, AdamW lr {s.warmup_lr}, {s.warmup_train_steps} steps", ""]
        w = summary["warmup"]
        rows(w, {"no_warmup": "no warmup", "warmup": f"{s.warmup} warmup steps"})
        if w["warmup_steps_to_no_warmup_final_loss"] is not None:
            lines += [f"With warmup the validation loss reached {w['no_warmup']['final_loss']:.3f}, where the run "
                      f"without warmup ended at step {s.warmup_train_steps}, by step "
                      f"{w['warmup_steps_to_no_warmup_final_loss']}.", ""]  # fmt: skip
    if "memory" in summary:
        m = summary["memory"]
        lines += [f"## Memory: one step of batch {m['batch_size']} x {m['seq_len']} tokens, "
                  f"d_model {s.memory_d_model}, {s.memory_layers} layers", "",
                  "| arm | planned peak (MiB) | measured peak (MiB) | gradient vs the big batch (relative L2 diff.) |",
                  "|---|---|---|---|"]  # fmt: skip
        for a in m["arms"]:
            measured = "n/a" if a["measured_peak_bytes"] is None else f"{a['measured_peak_bytes'] / 2**20:.1f}"
            diff = m["relative_grad_difference"].get(a["arm"])
            lines.append(f"| {a['arm']} | {a['planned_peak_bytes'] / 2**20:.1f} | {measured} | "
                         f"{'-' if diff is None else f'{diff:.2g}'} |")  # fmt: skip
        lines.append("")
    path.write_text("\n".join(lines))
