"""The one training loop every recipe uses.

    trainer = Trainer(model, CausalLMTask(), train_examples, TrainConfig(steps=100), "runs/x")
    result = trainer.fit()

Each optimizer step draws ``batch_size`` examples (over all processes), cuts this process's
share into micro-batches, and runs forward/backward on each. The loss of a micro-batch is its
*sum* over target tokens divided by the number of target tokens in the whole step, counted
over every micro-batch and every process before the first forward. The accumulated gradient
is then exactly the gradient of the big batch's mean loss, however the padding and the
micro-batch sizes fall (a mean per micro-batch would weight a short micro-batch's tokens more).
"""

import contextlib
import dataclasses
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from zoo.debug import NonFiniteWatch, ShapeTrace, grad_norm_table, grad_norms, nonfinite_parameters
from zoo.train import checkpoint as ckpt
from zoo.train import rundir
from zoo.train.config import TrainConfig
from zoo.train.data import StepSampler, collate, split_for_rank
from zoo.train.distributed import World, is_fsdp_sharded, setup, shard_fsdp, wrap_ddp
from zoo.train.metrics import MetricsLog, Progress, plot_metrics
from zoo.train.optim import build_optimizer, build_scheduler


class TrainingDiverged(RuntimeError):
    """The loss or the gradient went NaN/Inf; ``report`` says where, ``report_path`` holds it."""

    def __init__(self, message: str, report: str, report_path: Path | None):
        super().__init__(message)
        self.report, self.report_path = report, report_path


@dataclass
class TrainResult:
    """What ``fit`` returns.

    Attributes:
        status: ``finished`` or ``interrupted`` (SIGTERM / Ctrl-C: saved, then stopped).
        step: optimizer steps done.
        losses: the training loss of every step this call ran, in order.
        checkpoint: the last checkpoint written.
        eval: the last evaluation's metrics.
    """

    status: str
    step: int
    losses: list[float] = field(default_factory=list)
    checkpoint: Path | None = None
    eval: dict = field(default_factory=dict)


_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def _items(batch: dict) -> int:
    """What throughput counts: real tokens, or examples for image batches."""
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else len(batch["label"])


class Trainer:
    """Train ``model`` on ``train_data`` for ``config.steps`` optimizer steps.

    Args:
        model: an unwrapped model (any ZooModel); moved to the device and wrapped here.
        task: turns a batch into a summed loss and a target count (``zoo.train.data`` tasks).
        train_data: a list of examples (dicts of unpadded tensors, see ``zoo.train.data``).
        config: the ``train:`` section of a recipe.
        run_dir: where checkpoints, metrics.csv, loss.png, tb/ and debug/ go.
        eval_data: examples to evaluate on at ``eval_every`` and at the end.
        pad_id: the token id used to pad ``input_ids`` (it is masked; any valid id works).
        shuffle: draw examples in a seeded random order (False: file order).
        save_model_state: ``"auto"`` saves only the trainable parameters when part of the
            model is frozen (LoRA: a few MB instead of the whole model), else everything.
    """

    def __init__(
        self,
        model: nn.Module,
        task,
        train_data: list[dict],
        config: TrainConfig,
        run_dir: str | Path,
        eval_data: list[dict] | None = None,
        pad_id: int = 0,
        shuffle: bool = True,
        save_model_state: str = "auto",
    ):
        config.check()
        self.config, self.task = config, task
        self.train_data, self.eval_data = train_data, eval_data or []
        self.run_dir = Path(run_dir)
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.pad_id, self.shuffle = pad_id, shuffle
        self.world: World = setup(config.device)
        if config.precision == "fp16" and self.world.device.type != "cuda":
            raise ValueError("train.precision: fp16 needs a CUDA device (its gradient scaler is CUDA-only); use bf16")
        if config.batch_size % self.world.size:
            raise ValueError(
                f"train.batch_size: {config.batch_size} does not split evenly over {self.world.size} processes"
            )
        self.model = model.to(self.world.device)
        self.model.train()
        if config.activation_checkpointing:
            if not hasattr(self.model, "set_gradient_checkpointing"):
                raise ValueError(f"train.activation_checkpointing: {type(model).__name__} does not support it")
            self.model.set_gradient_checkpointing(True)
        frozen = any(not p.requires_grad for p in self.model.parameters())
        self.trainable_only = frozen if save_model_state == "auto" else save_model_state == "trainable"
        self.trainable_names = [n for n, p in self.model.named_parameters() if p.requires_grad]

        self.fsdp = self.world.distributed and config.strategy == "fsdp"
        self.ddp = self.world.distributed and config.strategy == "ddp"
        self.ddp_module = None
        presharded = is_fsdp_sharded(self.model)  # loaded straight into its shards (load_sharded_pretrained)
        if presharded and not self.fsdp:
            raise ValueError("train.strategy: the model is already sharded with FSDP; train it with strategy fsdp")
        fmt = config.checkpoint_format
        self.sharded_checkpoints = fmt == "sharded" or (fmt == "auto" and self.fsdp)
        if self.fsdp:
            if not presharded:
                shard_fsdp(self.model, self.world)
            self.forward_module = self.model
        elif self.ddp:
            self.forward_module = self.ddp_module = wrap_ddp(self.model, self.world)
        else:
            self.forward_module = self.model
        if config.compile:
            self.forward_module = torch.compile(self.forward_module, backend=config.compile_backend)

        self.optimizer = build_optimizer(
            self.model, config.lr, config.weight_decay, (config.beta1, config.beta2), config.eps
        )
        self.scheduler = build_scheduler(
            self.optimizer, config.steps, config.warmup_steps, config.schedule, config.min_lr_ratio
        )
        self.scaler = torch.amp.GradScaler("cuda") if config.precision == "fp16" else None
        self.sampler = StepSampler(len(train_data), config.batch_size, config.seed, shuffle)
        self.step = 0
        self.samples_seen = 0
        self._stop_signal: str | None = None
        self._watch: NonFiniteWatch | None = None
        uses_tokens = "input_ids" in train_data[0] if train_data else True
        self.unit = "tok/s" if uses_tokens else "ex/s"

    # --- one step ----------------------------------------------------------------------------

    def _autocast(self):
        if self.config.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.world.device.type, dtype=_DTYPES[self.config.precision])

    def _to_device(self, batch: dict) -> dict:
        return {k: v.to(self.world.device, non_blocking=True) for k, v in batch.items()}

    def micro_batches(self, samples_seen: int) -> list[dict]:
        """This process's micro-batches for the step that starts after ``samples_seen`` examples."""
        indices = self.sampler.batch(samples_seen)
        groups = split_for_rank(indices, self.world.rank, self.world.size, self.config.micro_batch_size)
        return [self._to_device(collate([self.train_data[i] for i in g], self.pad_id)) for g in groups]

    def _sync_context(self, last: bool):
        """Gradients are reduced across processes only on the last micro-batch of a step."""
        if self.ddp and not last:
            return self.ddp_module.no_sync()
        if self.fsdp:
            self.model.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def accumulate(self, batches: list[dict], total_targets: float) -> tuple[float, int | None]:
        """Forward/backward every micro-batch, adding gradients; no optimizer step.

        Args:
            batches: this process's micro-batches of one step.
            total_targets: target tokens (or examples) in the whole step, over all processes.

        Returns (this process's summed loss, index of the first micro-batch whose loss was NaN/Inf).
        """
        # DDP and FSDP average gradients over processes; multiplying by the world size turns that
        # average back into the sum, so each target token weighs 1 / total_targets everywhere.
        scale = self.world.size / total_targets
        loss_sum, first_bad = 0.0, None
        for i, batch in enumerate(batches):
            with self._sync_context(last=i == len(batches) - 1):
                with self._autocast():
                    output = self.forward_module(**self.task.inputs(batch))
                    loss = self.task.loss_sum(output, batch)
                    aux = getattr(output, "aux_loss", None)
                    if aux is not None:  # mixture-of-experts balance loss, weighted by this micro-batch's share
                        loss = loss + self.model.config.aux_loss_coef * aux * self.task.targets(batch)
                value = float(loss.detach())
                if not math.isfinite(value) and first_bad is None:
                    first_bad = i
                loss_sum += value
                scaled = loss * scale
                (self.scaler.scale(scaled) if self.scaler is not None else scaled).backward()
        return loss_sum, first_bad

    def _clip(self) -> float:
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = self.config.grad_clip if self.config.grad_clip is not None else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    def train_step(self) -> dict:
        """One optimizer step; returns its metrics row. Raises TrainingDiverged on NaN/Inf."""
        t0 = time.perf_counter()
        batches = self.micro_batches(self.samples_seen)
        local_targets = sum(self.task.targets(b) for b in batches)
        local_tokens = sum(_items(b) for b in batches)
        total_targets, total_tokens = self.world.sum(local_targets, local_tokens)
        if total_targets == 0:
            raise ValueError(
                f"data: step {self.step + 1} has no target tokens (every label is -100); "
                "check data.max_len against the prompt lengths"
            )
        if self._watch is not None:
            self._watch.reset()
        loss_sum, bad = self.accumulate(batches, total_targets)
        grad_norm = self._clip()
        loss_total, any_bad = self.world.sum(loss_sum, float(bad is not None))
        loss = loss_total / total_targets
        grads_bad = not math.isfinite(grad_norm) and self.scaler is None  # fp16 overflow is the scaler's job
        if any_bad or grads_bad:
            self._diverged(loss, grad_norm, batches, bad)
        lr = self.optimizer.param_groups[0]["lr"]
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        if self.config.debug and (self.step + 1) % self.config.log_every == 0:
            self._write_grad_norms(self.step + 1)
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.samples_seen += self.config.batch_size
        if self.world.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - t0
        return {"step": self.step, "epoch": self.samples_seen / len(self.train_data), "loss": loss, "lr": lr,
                "grad_norm": grad_norm, "throughput": total_tokens / elapsed}  # fmt: skip

    # --- NaN / Inf ---------------------------------------------------------------------------

    def _first_bad_module(self, batches: list[dict], bad: int | None) -> str:
        if self._watch is not None and self._watch.first is not None:
            return f"{self._watch.first} ({self._watch.first_kind} in its output)"
        if bad is None:
            return "none: the forward pass was finite; the gradients went bad in backward"
        if self.fsdp:
            return "unknown (under FSDP the forward cannot be re-run on one process; run with train.debug=true)"
        with NonFiniteWatch(self.model) as watch, torch.no_grad(), self._autocast():
            self.model(**self.task.inputs(batches[bad]))
        if watch.first is None:
            return "none found on a re-run (the NaN came from randomness, e.g. dropout)"
        return f"{watch.first} ({watch.first_kind} in its output)"

    def _diverged(self, loss: float, grad_norm: float, batches: list[dict], bad: int | None) -> None:
        where = self._first_bad_module(batches, bad)
        last = ckpt.latest_checkpoint(self.ckpt_dir)
        norms = grad_norms(self.model)
        lines = [
            f"NaN/Inf at step {self.step + 1} (loss {loss}, gradient norm {grad_norm})",
            f"first module whose output is not finite: {where}",
            f"parameters holding NaN/Inf: {', '.join(nonfinite_parameters(self.model)) or 'none'}",
            f"rank: {self.world.rank} of {self.world.size}; micro-batch: {bad}",
            f"last good checkpoint: {last or 'none written yet'} (kept; this step was not saved)",
            "gradient norms, largest first:",
            grad_norm_table(norms),
        ]
        report = "\n".join(lines)
        path = None
        if self.world.is_main or bad is not None:
            path = self.run_dir / "debug" / f"nan_report.rank{self.world.rank}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(report + "\n")
        raise TrainingDiverged(f"training stopped: NaN/Inf at step {self.step + 1}; report in {path}", report, path)

    def _write_grad_norms(self, step: int) -> None:
        norms = grad_norms(self.model)
        if not self.world.is_main:
            return
        path = self.run_dir / "debug" / "grad_norms.csv"
        new = not path.exists()
        with path.open("a") as f:
            if new:
                f.write("step,parameter,grad_norm\n")
            f.writelines(f"{step},{name},{norm:.6g}\n" for name, norm in norms)

    # --- evaluation --------------------------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, examples: list[dict] | None = None) -> dict:
        """Mean loss and accuracy (next-token for LMs) over ``examples`` (default: the eval data).

        Every process evaluates the whole (small) eval set, so FSDP's collectives stay in step."""
        examples = self.eval_data if examples is None else examples
        if not examples:
            return {}
        self.model.eval()
        size = self.config.micro_batch_size or max(self.config.batch_size // self.world.size, 1)
        loss_sum = correct = targets = 0.0
        try:
            for start in range(0, len(examples), size):
                batch = self._to_device(collate(examples[start : start + size], self.pad_id))
                with self._autocast():
                    output = self.model(**self.task.inputs(batch))
                loss_sum += float(self.task.loss_sum(output, batch))
                correct += self.task.correct(output, batch)
                targets += self.task.targets(batch)
        finally:
            self.model.train()
        return {"eval_loss": loss_sum / max(targets, 1), "eval_accuracy": correct / max(targets, 1)}

    # --- checkpoints -------------------------------------------------------------------------

    def _state_options(self, **kwargs):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, cpu_offload=True, **kwargs)

    def save(self) -> Path | None:
        """Write a checkpoint of the current step (all processes call this). Full: the first
        process gathers and writes; sharded: every process writes its own shards."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        rng = {"torch": torch.get_rng_state()}
        if self.world.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.world.device)
        all_rng = self.world.gather(rng)
        rng_tensors = {f"rank{r}.{k}": v for r, states in enumerate(all_rng) for k, v in states.items()}
        trainer_state = {
            "step": self.step,
            "data": self.sampler.position(self.samples_seen),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "model_state": "trainable" if self.trainable_only else "full",
            "world_size": self.world.size,
            "config": dataclasses.asdict(self.config),
            "model": self._model_record(),
        }
        keep = self.config.keep_checkpoints
        if self.sharded_checkpoints:
            return ckpt.save_sharded_checkpoint(
                self.ckpt_dir, self.step, self._sharded_state(), rng_tensors, trainer_state, self.world, keep=keep
            )
        model_state = get_model_state_dict(self.model, options=self._state_options())
        if self.trainable_only:
            model_state = {k: v for k, v in model_state.items() if k in self.trainable_names}
        optim_state = get_optimizer_state_dict(self.model, self.optimizer, options=self._state_options())
        path = None
        if self.world.is_main:
            path = ckpt.save_checkpoint(
                self.ckpt_dir, self.step, model_state, optim_state, rng_tensors, trainer_state, keep=keep
            )
        self.world.barrier()
        return path

    def _sharded_state(self) -> dict:
        """{"model", "optimizer"} as torch.distributed.checkpoint reads and writes them: this
        process's shards (DTensors) under FSDP, whole tensors otherwise; keys are parameter names."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optim_state = get_state_dict(self.model, self.optimizer)
        if self.trainable_only:
            model_state = {k: v for k, v in model_state.items() if k in self.trainable_names}
        return {"model": model_state, "optimizer": optim_state}

    def _model_record(self) -> dict:
        """What a checkpoint records of the model, so a resume can tell it is the same one."""
        config = getattr(self.model, "config", None)
        return {
            "family": getattr(self.model, "family", type(self.model).__name__),
            "task": getattr(self.model, "task", None),
            "config": config.to_dict() if hasattr(config, "to_dict") else None,
        }

    def check_resumable(self, path: str | Path) -> None:
        """Raise CheckpointError naming every difference if the checkpoint at ``path`` was written
        for another model (family, task, config) or another set of trained parameters (LoRA
        targets, a new head); reads only its trainer.json and tensor headers, writes nothing."""
        from zoo.hub import CheckpointError

        path = Path(path)
        trainer_state = ckpt.read_trainer_state(path)
        problems = []
        recorded, current = trainer_state.get("model") or {}, self._model_record()
        for key in ("family", "task"):
            if key in recorded and recorded[key] != current[key]:
                problems.append(f"model {key}: the checkpoint's is {recorded[key]!r}, this run's {current[key]!r}")
        old, new = recorded.get("config") or {}, current["config"] or {}
        for key in sorted(set(old) | set(new)):
            if old and old.get(key) != new.get(key):
                problems.append(
                    f"model config {key}: the checkpoint's is {old.get(key)!r}, this run's {new.get(key)!r}"
                )
        saved = ckpt.model_shapes(path)
        if trainer_state.get("model_state") == "trainable":  # LoRA: the adapters (and any new head)
            params = dict(self.model.named_parameters())
            expected = {n: tuple(params[n].shape) for n in self.trainable_names}
        else:
            expected = {k: tuple(v.shape) for k, v in self.model.state_dict().items()}
        trainable = trainer_state.get("model_state") == "trainable"
        problems += [f"{k}: the checkpoint's shape is {saved[k]}, this run's {expected[k]}"
                     for k in sorted(set(saved) & set(expected)) if saved[k] != expected[k]]  # fmt: skip
        problems += [f"the checkpoint lacks {k} {expected[k]}" for k in sorted(set(expected) - set(saved))]
        extra = sorted(set(saved) - set(expected))
        problems += [f"the checkpoint has {k} {saved[k]}, which this run {'does not train' if trainable else 'lacks'}"
                     for k in extra]  # fmt: skip
        if problems:
            shown = "\n  ".join(problems[:12]) + (f"\n  ... {len(problems) - 12} more" if len(problems) > 12 else "")
            raise CheckpointError(
                f"{path}: written by a different model or recipe, so this run cannot resume from it:\n  {shown}\n"
                "Nothing was changed. Use another out_dir, or train.resume=false to start over in this one"
            )

    def load(self, path: str | Path) -> None:
        """Restore model, optimizer, scheduler, scaler, RNG and data position from a checkpoint
        (after ``check_resumable``: a checkpoint of another model is refused by name)."""
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        self.check_resumable(path)
        if ckpt.is_sharded(path):  # each process reads its own part, resharded to this run's processes
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

            trainer_state, rng_state = ckpt.read_trainer_state(path), ckpt.read_rng(path)
            state = self._sharded_state()
            ckpt.load_sharded(path, state)
            strict = StateDictOptions(strict=trainer_state["model_state"] == "full")
            set_state_dict(self.model, self.optimizer, model_state_dict=state["model"],
                           optim_state_dict=state["optimizer"], options=strict)  # fmt: skip
        else:
            state = ckpt.load_checkpoint(path)
            trainer_state, rng_state = state["trainer"], state["rng"]
            strict = trainer_state["model_state"] == "full"
            set_model_state_dict(self.model, state["model"], options=self._state_options(strict=strict))
            set_optimizer_state_dict(self.model, self.optimizer, state["optimizer"], options=self._state_options())
        self.scheduler.load_state_dict(trainer_state["scheduler"])
        if self.scaler is not None and trainer_state.get("scaler"):
            self.scaler.load_state_dict(trainer_state["scaler"])
        self.step = trainer_state["step"]
        self.samples_seen = trainer_state["data"]["samples_seen"]
        rank = self.world.rank
        if trainer_state["world_size"] == self.world.size and f"rank{rank}.torch" in rng_state:
            torch.set_rng_state(rng_state[f"rank{rank}.torch"])
            if self.world.device.type == "cuda" and f"rank{rank}.cuda" in rng_state:
                torch.cuda.set_rng_state(rng_state[f"rank{rank}.cuda"], self.world.device)
        else:  # a different number of processes: dropout cannot replay exactly, but stays seeded
            torch.manual_seed(self.config.seed + 1000 * rank + self.step)

    # --- signals -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _stop_on_signals(self):
        """SIGTERM or Ctrl-C ask the loop to save and stop after the current step; a second
        Ctrl-C stops at once (KeyboardInterrupt)."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def handler(signum, frame):
            if self._stop_signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._stop_signal = signal.Signals(signum).name

        previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    # --- the loop ----------------------------------------------------------------------------

    def _remove_previous_run(self) -> None:
        """``train.resume=false``: delete what an earlier run wrote here, and only that (the run
        directory carries zoo's marker; files zoo does not write are left where they are)."""
        for step in ckpt.list_checkpoints(self.ckpt_dir):
            shutil.rmtree(step)
        owned = [*self.run_dir.glob("tb/events.out.tfevents.*"), *self.run_dir.glob("debug/nan_report.rank*.txt")]
        names = ("metrics.csv", "loss.png", "debug/shapes.txt", "debug/grad_norms.csv")
        owned += [self.run_dir / name for name in names]
        for path in owned:
            path.unlink(missing_ok=True)

    def _prepare_run_dir(self) -> Path | None:
        """Resume from the newest checkpoint (train.resume) or start clean; returns what to load."""
        resume_from = None
        if self.world.is_main:
            ckpt.remove_partial_writes(self.ckpt_dir)
            if not self.config.resume:
                self._remove_previous_run()
        self.world.barrier()
        if self.config.resume:
            resume_from = ckpt.latest_checkpoint(self.ckpt_dir)
        return resume_from

    def fit(self, log=print) -> TrainResult:
        """Train to ``config.steps``; save on ``save_every``, at the end, and on SIGTERM/Ctrl-C.

        The run directory must be zoo's (``zoo.train.rundir``); it is locked while the run writes."""
        if not self.world.is_main:
            return self._fit(log)
        rundir.claim(self.run_dir)
        with rundir.locked(self.run_dir):
            return self._fit(log)

    def _fit(self, log) -> TrainResult:
        c = self.config
        resume_from = self._prepare_run_dir()
        if resume_from is not None:
            self.load(resume_from)
            if self.world.is_main:
                log(f"resumed from {resume_from} (step {self.step}, {self.samples_seen} examples seen)")
        else:
            torch.manual_seed(c.seed + 1000 * self.world.rank)  # dropout; each process its own stream
        main = self.world.is_main
        metrics = MetricsLog(self.run_dir, self.step, c.tensorboard, self.unit) if main else None
        progress = Progress(c.steps, self.step, main and c.progress == "tqdm", self.unit, every=c.log_every)
        result = TrainResult(status="finished", step=self.step)
        if c.debug:
            self._watch = NonFiniteWatch(self.model).__enter__()
            if self.step < c.steps:
                self._trace_shapes(progress)
        start = time.perf_counter()
        pending: list[dict] = []
        if self.step == 0 and self.eval_data and c.eval_every:  # where the eval curve starts
            result.eval = self.evaluate()
            pending.append({"step": 0, "lr": self.optimizer.param_groups[0]["lr"], **result.eval})
        try:
            with self._stop_on_signals():
                while self.step < c.steps:
                    row = self.train_step()
                    result.losses.append(row["loss"])
                    progress.update(row["loss"], row["lr"], row["throughput"])
                    pending.append(row)
                    at_end = self.step == c.steps
                    if self.eval_data and ((c.eval_every and self.step % c.eval_every == 0) or at_end):
                        result.eval = self.evaluate()
                        row.update(result.eval)
                    if main and (self.step % c.log_every == 0 or at_end or "eval_loss" in row):
                        for r in pending:
                            r["elapsed_s"] = time.perf_counter() - start
                            metrics.write(r)
                        pending.clear()
                    stop = self.world.any(self._stop_signal is not None)
                    if at_end or stop or (c.save_every and self.step % c.save_every == 0):
                        result.checkpoint = self.save()
                    if stop and not at_end:
                        result.status = "interrupted"
                        if main:
                            progress.write(
                                f"stopped by {self._stop_signal or 'another process'} at step {self.step}; "
                                f"checkpoint {result.checkpoint}; run the same command again to resume"
                            )
                        break
        finally:
            progress.close()
            if self._watch is not None:
                self._watch.__exit__()
                self._watch = None
            if metrics is not None:
                for r in pending:
                    metrics.write(r)
                metrics.close()
        if main:
            plot_metrics(self.run_dir / "metrics.csv", self.run_dir / "loss.png")
        if result.checkpoint is None:
            result.checkpoint = ckpt.latest_checkpoint(self.ckpt_dir)
        result.step = self.step
        return result

    def _trace_shapes(self, progress: Progress) -> None:
        batch = self.micro_batches(self.samples_seen)[0]
        self.model.eval()  # no dropout: the trace must not draw from the RNG the training replays
        try:
            with ShapeTrace(self.model) as trace, torch.no_grad(), self._autocast():
                if not self.fsdp:
                    self.model(**self.task.inputs(batch))
        finally:
            self.model.train()
        if self.fsdp or not self.world.is_main:
            return
        path = self.run_dir / "debug" / "shapes.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(trace.lines) + "\n")
        progress.write("shape trace of the first batch (also in debug/shapes.txt):\n" + "\n".join(trace.lines))
