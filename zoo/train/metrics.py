"""What a run reports: a progress bar, metrics.csv, TensorBoard events, and loss.png at the end."""

import csv
import math
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm

COLUMNS = ("step", "epoch", "loss", "lr", "grad_norm", "throughput", "eval_loss", "eval_accuracy", "elapsed_s")


class MetricsLog:
    """Rows of per-step metrics to ``metrics.csv`` (and TensorBoard under ``tb/``).

    On resume, rows after the checkpoint's step are dropped: those steps run again.

    Args:
        run_dir: where metrics.csv and tb/ go.
        start_step: the step the run resumes from (0 for a fresh run).
        tensorboard: also write TensorBoard event files.
        throughput_unit: ``tokens/s`` or ``examples/s``, recorded in the CSV's header comment.
    """

    def __init__(self, run_dir: Path, start_step: int, tensorboard: bool, throughput_unit: str):
        self.path = Path(run_dir) / "metrics.csv"
        self.unit = throughput_unit
        kept = [r for r in read_metrics(self.path) if int(r["step"]) <= start_step] if start_step else []
        self._file = self.path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=COLUMNS)
        self._writer.writeheader()
        for row in kept:
            self._writer.writerow({k: row.get(k, "") for k in COLUMNS})
        self._file.flush()
        self._tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a previous run wrote after the checkpoint it resumes from.
            self._tb = SummaryWriter(str(Path(run_dir) / "tb"), purge_step=start_step + 1 if start_step else None)

    def write(self, row: dict) -> None:
        self._writer.writerow({k: _fmt(row.get(k)) for k in COLUMNS})
        self._file.flush()
        if self._tb is not None:
            for key, value in row.items():
                if key not in ("step", "epoch", "elapsed_s") and value is not None:
                    tag = f"train/{key}" if not key.startswith("eval_") else f"eval/{key[5:]}"
                    if key == "throughput":
                        tag = f"train/{self.unit.replace('/', '_per_')}"
                    self._tb.add_scalar(tag, value, row["step"])

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def plot_metrics(metrics_csv: str | Path, out_png: str | Path, title: str = "") -> Path | None:
    """Loss (train and eval) and learning rate against step, from metrics.csv; None without rows."""
    rows = read_metrics(metrics_csv)
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def series(key):
        pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key)]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, ax = plt.subplots(figsize=(7, 4))
    steps, loss = series("loss")
    ax.plot(steps, loss, label="train loss", color="tab:blue", lw=1.2)
    e_steps, e_loss = series("eval_loss")
    if e_steps:
        ax.plot(e_steps, e_loss, "o-", label="eval loss", color="tab:orange", ms=4)
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    if loss and min(loss) > 0 and max(loss) / min(loss) > 20:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    lr_ax = ax.twinx()
    lr_steps, lr = series("lr")
    lr_ax.plot(lr_steps, lr, "--", color="tab:gray", lw=1, label="learning rate")
    lr_ax.set_ylabel("learning rate")
    lines = ax.get_lines() + lr_ax.get_lines()
    ax.legend(lines, [ln.get_label() for ln in lines], loc="upper right")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


class Progress:
    """A tqdm bar over optimizer steps with loss, lr and throughput; tqdm adds the ETA.

    When its stream is not a terminal (a log file, CI, ``| tee``), a bar redrawn with carriage
    returns is unreadable: it prints one plain line per ``every`` steps instead (tqdm's own
    format, without the bar).
    """

    def __init__(self, total: int, initial: int, enabled: bool, unit: str, desc: str = "train", every: int = 1,
                 stream=None):  # fmt: skip
        self.unit, self.desc, self.total, self.every = unit, desc, total, every
        self.stream = stream or sys.stderr
        self.plain = enabled and not self.stream.isatty()
        self.n, self.initial, self.start = initial, initial, time.monotonic()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True,
                        disable=not enabled or self.plain, file=self.stream)  # fmt: skip

    def update(self, loss: float, lr: float, throughput: float) -> None:
        loss_text = f"{loss:.4f}" if math.isfinite(loss) else str(loss)
        postfix = f"loss={loss_text} lr={lr:.2e} {self.unit}={throughput:,.0f}"
        self.n += 1
        if self.plain:
            if self.n % self.every == 0 or self.n == self.total:
                # tqdm's rate and ETA, over the steps this run did (a resumed run starts later).
                line = tqdm.format_meter(self.n, self.total, time.monotonic() - self.start, prefix=self.desc,
                                         unit="step", postfix=postfix, ncols=0, initial=self.initial)  # fmt: skip
                print(line, file=self.stream, flush=True)
            return
        self.bar.set_postfix_str(postfix, refresh=False)
        self.bar.update(1)

    def write(self, text: str) -> None:
        if self.bar.disable:
            print(text, flush=True)
        else:
            tqdm.write(text)

    def close(self) -> None:
        self.bar.close()
