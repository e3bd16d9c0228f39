"""Typed recipe configs: dataclasses loaded from YAML, with ``key=value`` overrides on dotted keys.

Every value is checked against its field's type before anything is built, and every error
names the dotted key (``train.lr: expected a number, got 'fast' (str)``); an unknown key gets
the close matches (``train.lrr: unknown key; did you mean train.lr?``).
"""

import dataclasses
import difflib
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class RecipeError(ValueError):
    """A recipe is wrong; the message starts with the dotted key."""


class RecipeWarning(UserWarning):
    """A recipe that runs but probably not as meant; the message starts with the dotted key."""


def _choices(*values: str, default: str) -> Any:
    return field(default=default, metadata={"choices": values})


@dataclass
class TrainConfig:
    """The ``train:`` section: everything the training loop does.

    Attributes:
        steps: optimizer steps.
        batch_size: examples per optimizer step, over all processes together.
        micro_batch_size: examples per forward/backward on one process; smaller than the
            per-process batch means gradient accumulation (None: the whole per-process batch).
        lr: peak learning rate.
        schedule: ``cosine`` (warmup then cosine decay), ``linear`` (warmup then linear decay),
            ``constant``, or ``inverse_sqrt`` (the Transformer paper's: linear warmup, then lr *
            sqrt(warmup_steps / step); ``lr`` is the peak, (d_model * warmup_steps)^-0.5 in the paper).
        warmup_steps: linear warmup from 0 to ``lr``.
        min_lr_ratio: where cosine and linear decay end, as a fraction of ``lr``.
        weight_decay: AdamW decay on matrices; norms, biases and embeddings get none.
        beta1, beta2, eps: AdamW's.
        grad_clip: clip the global gradient norm to this (None: measure it, never clip).
        label_smoothing: encoder-decoders (translation data): this much of each target's
            probability spread over the vocabulary (the Transformer paper's 0.1).
        precision: ``fp32``, ``bf16`` (autocast, CPU or GPU) or ``fp16`` (autocast + GradScaler, GPU only).
        activation_checkpointing: recompute each layer's activations in backward.
        compile: run the model through ``torch.compile``.
        compile_backend: torch.compile's backend (``inductor``; ``aot_eager`` to debug).
        strategy: under torchrun: ``ddp`` (replicated) or ``fsdp`` (FSDP2 ``fully_shard``, sharded).
        device: ``auto`` (CUDA if there is one), ``cpu`` or ``cuda``.
        seed: seeds model init, data order and dropout.
        log_every: steps between progress/metrics rows.
        eval_every: steps between evaluations on the eval split (None: only at the end).
        save_every: steps between checkpoints (None: only at the end and on interruption).
        keep_checkpoints: how many recent checkpoints to keep.
        checkpoint_format: ``sharded`` (torch.distributed.checkpoint: each process writes its own
            shards, no gather; loads on any number of processes), ``full`` (one process gathers
            and writes safetensors files), or ``auto``: sharded under FSDP with several
            processes, full otherwise. Either format resumes on any number of processes.
        resume: continue from the newest checkpoint in the run directory if there is one;
            ``false`` starts fresh and deletes that directory's old checkpoints and metrics.
        debug: shape trace of the first batch, NaN/Inf check after every module, per-parameter
            gradient norms at every log step, autograd anomaly detection.
        progress: ``tqdm`` (a progress bar) or ``none``.
        tensorboard: also write TensorBoard event files.
    """

    steps: int = 100
    batch_size: int = 8
    micro_batch_size: int | None = None
    lr: float = 3e-4
    schedule: str = _choices("cosine", "linear", "constant", "inverse_sqrt", default="cosine")
    warmup_steps: int = 0
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float | None = 1.0
    label_smoothing: float = 0.0
    precision: str = _choices("fp32", "bf16", "fp16", default="fp32")
    activation_checkpointing: bool = False
    compile: bool = False
    compile_backend: str = "inductor"
    strategy: str = _choices("ddp", "fsdp", default="ddp")
    device: str = _choices("auto", "cpu", "cuda", default="auto")
    seed: int = 0
    log_every: int = 1
    eval_every: int | None = None
    save_every: int | None = None
    keep_checkpoints: int = 2
    checkpoint_format: str = _choices("auto", "full", "sharded", default="auto")
    resume: bool = True
    debug: bool = False
    progress: str = _choices("tqdm", "none", default="tqdm")
    tensorboard: bool = True

    def check(self, prefix: str = "train") -> None:
        for name in ("steps", "batch_size", "micro_batch_size", "log_every", "eval_every", "save_every",
                     "keep_checkpoints"):  # fmt: skip
            value = getattr(self, name)
            if value is not None and value < 1:
                raise RecipeError(f"{prefix}.{name}: must be at least 1, got {value}")
        if self.warmup_steps < 0:
            raise RecipeError(f"{prefix}.warmup_steps: must be >= 0, got {self.warmup_steps}")
        if self.steps < self.warmup_steps:
            peak = self.steps / self.warmup_steps
            warnings.warn(
                f"{prefix}.steps={self.steps} is shorter than {prefix}.warmup_steps={self.warmup_steps}: the learning "
                f"rate stops at {peak:.0%} of {prefix}.lr and never decays",
                RecipeWarning,
                stacklevel=2,
            )
        if self.lr <= 0:
            raise RecipeError(f"{prefix}.lr: must be positive, got {self.lr}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise RecipeError(f"{prefix}.min_lr_ratio: must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise RecipeError(f"{prefix}.label_smoothing: must be in [0, 1), got {self.label_smoothing}")
        if self.schedule == "inverse_sqrt" and self.warmup_steps < 1:
            raise RecipeError(f"{prefix}.warmup_steps: the inverse_sqrt schedule needs warmup_steps >= 1")
        if self.grad_clip is not None and self.grad_clip <= 0:
            raise RecipeError(f"{prefix}.grad_clip: must be positive (or null for no clipping), got {self.grad_clip}")


@dataclass
class ModelSection:
    """The ``model:`` section.

    Attributes:
        name: a registered variant (``zoo list``), built with random weights and ``overrides``.
        path: or a checkpoint: a directory, a ``.gguf`` file, or ``pkg://package/file`` for a
            file shipped inside an installed Python package.
        overrides: config fields for ``name`` (``n_layers: 2``).
        task: which head (default: the variant's or checkpoint's).
        dtype: load the weights in this dtype (``float32`` or ``bfloat16``).
    """

    name: str | None = None
    path: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    task: str | None = None
    dtype: str = _choices("float32", "bfloat16", default="float32")


@dataclass
class DataSection:
    """The ``data:`` section.

    Attributes:
        format: ``text`` (plain text, cut into ``max_len`` blocks), ``chat`` (JSONL of
            ``{"messages": [...]}`` or ``{"prompt", "response"}``, rendered with the chat template,
            loss on the last answer only), ``text_label`` (TSV: text, tab, label), ``digits``
            (scikit-learn's bundled 8x8 digits), ``audio_label`` (labelled speech clips: a directory
            of ``LABEL.wav`` / ``LABEL-anything.wav`` files or an ``.npz`` of mu-law clips, turned into
            Whisper log-mel features), ``hf`` (a Hugging Face dataset by name) or
            ``image_caption`` (JSONL of ``{"image", "label", "captions"}``: contrastive image-text
            pairs for CLIP; the last caption of each image is held out, see ``zoo.train.data``),
            ``translation`` (TSV: source, tab, target; for encoder-decoders) or ``number_words``
            (translation pairs generated with num2words: ``n_pairs`` distinct numbers up to
            ``max_number`` written in ``source_lang`` and ``target_lang``), or ``denoising`` (a
            plain text file whose sentences an encoder-decoder learns to reconstruct from BART's
            text infilling: ``mask_ratio`` of the words masked in Poisson(``poisson_lambda``)
            spans, one mask each; ``noise_copies`` noised versions of each training sentence).
        train: the training file (text, chat, text_label, image_caption; audio_label: a directory or .npz).
        eval: an evaluation file (default: ``eval_fraction`` of ``train`` is held out).
        eval_fraction: held out of ``train`` when ``eval`` is not given.
        max_len: tokens per example (longer ones are cut).
        hf_name, hf_config, hf_split: the dataset for ``format: hf``.
        text_field, label_field: its columns (a label column makes it classification data).
        system: a system message put before each chat example.
        image_size: digits are upscaled to this size (the model's image size).
        max_examples: use at most this many training examples.
        audio_seconds: audio_label only: keep this many seconds of each clip's features (None:
            Whisper's whole 30 s window; a short window trains much faster on short clips).
        crops, eval_crops: image_caption: augmented crops of each image for training, and for
            evaluation (the first one the plain center crop, the others augmented with other seeds).
        n_pairs, max_number, source_lang, target_lang: number_words (num2words language codes).
        mask_ratio, poisson_lambda, noise_copies: denoising (see ``zoo.train.denoising``).
    """

    format: str = _choices("text", "chat", "text_label", "digits", "audio_label", "hf", "image_caption", "translation",
                           "number_words", "denoising", default="text")  # fmt: skip
    train: str | None = None
    eval: str | None = None
    eval_fraction: float = 0.1
    max_len: int = 128
    hf_name: str | None = None
    hf_config: str | None = None
    hf_split: str = "train"
    text_field: str = "text"
    label_field: str | None = None
    system: str | None = None
    image_size: int = 32
    max_examples: int | None = None
    audio_seconds: float | None = None
    crops: int = 8
    eval_crops: int = 2
    n_pairs: int = 2000
    max_number: int = 9999
    source_lang: str = "en"
    target_lang: str = "fr"
    mask_ratio: float = 0.3
    poisson_lambda: float = 3.0
    noise_copies: int = 8


@dataclass
class LoraSection:
    """The ``lora:`` section (see ``zoo.lora``).

    Attributes:
        enabled: freeze the model and train low-rank adapters instead.
        r: adapter rank.
        alpha: scale numerator; the update is ``(alpha / r) * B @ A``.
        dropout: dropout on the adapter's input.
        targets: module names (suffixes or globs) to adapt; the shared names work in every family.
        train_also: parameter names (globs) that stay trainable, e.g. a new classifier head.
        save_merged: also export the merged model at the end.
    """

    enabled: bool = False
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    targets: list[str] = field(default_factory=lambda: ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj"])
    train_also: list[str] = field(default_factory=list)
    save_merged: bool = False


@dataclass
class SampleSection:
    """The ``sample:`` section: what the recipe shows before and after training.

    Attributes:
        prompts: generate from these (causal LM); chat recipes wrap them in the chat template.
        max_new_tokens: length of each sample.
        eval_examples: chat recipes generate answers to this many held-out questions before and
            after and report the exact-match rate (eval loss and accuracy use the whole eval split);
            translation recipes translate this many held-out sources and report BLEU and chrF.
        num_beams, length_penalty: the search translation recipes evaluate with (beam search
            when num_beams > 1; see ``zoo.generate``).
    """

    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 32
    eval_examples: int = 32
    num_beams: int = 1
    length_penalty: float = 1.0


@dataclass
class Recipe:
    """A whole recipe: ``zoo finetune RECIPE.yaml key=value ...``.

    Attributes:
        out_dir: the run directory (checkpoints, metrics.csv, loss.png, TensorBoard, debug).
        tokenizer: a tokenizer path (checkpoint directory, ``.gguf``, ``pkg://``), ``bpe:N``
            to train an N-token byte-level BPE on the training text, or None for the model path's.
    """

    out_dir: str = "runs/default"
    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: str | None = None
    data: DataSection = field(default_factory=DataSection)
    lora: LoraSection = field(default_factory=LoraSection)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleSection = field(default_factory=SampleSection)

    def check(self) -> None:
        """Cross-field checks, and data files exist; raises RecipeError naming the key."""
        if (self.model.name is None) == (self.model.path is None):
            raise RecipeError("model: give exactly one of model.name (a registered variant) or model.path")
        if self.model.path is not None and self.model.overrides:
            raise RecipeError("model.overrides: only for model.name; a checkpoint's config comes with it")
        self.train.check()
        if self.data.max_len < 2:
            raise RecipeError(f"data.max_len: must be at least 2, got {self.data.max_len}")
        if not 0.0 <= self.data.eval_fraction < 1.0:
            raise RecipeError(f"data.eval_fraction: must be in [0, 1), got {self.data.eval_fraction}")
        needs_file = self.data.format in ("text", "chat", "text_label", "image_caption", "translation", "denoising")
        if not 0.0 <= self.data.mask_ratio < 1.0:
            raise RecipeError(f"data.mask_ratio: must be in [0, 1), got {self.data.mask_ratio}")
        if not self.data.poisson_lambda > 0:
            raise RecipeError(f"data.poisson_lambda: must be > 0, got {self.data.poisson_lambda}")
        if self.data.noise_copies < 1:
            raise RecipeError(f"data.noise_copies: must be at least 1, got {self.data.noise_copies}")
        if self.data.crops < 1 or self.data.eval_crops < 1:
            raise RecipeError(f"data.crops: crops and eval_crops must be at least 1, got "
                              f"{self.data.crops} and {self.data.eval_crops}")  # fmt: skip
        if needs_file and self.data.train is None:
            raise RecipeError(f"data.train: format {self.data.format!r} needs a training file")
        if self.data.format == "audio_label":
            for key in ("train", "eval"):
                value = getattr(self.data, key)
                if key == "train" and value is None:
                    raise RecipeError("data.train: format 'audio_label' needs a directory of .wav files or an .npz")
                if value is not None and not resolve_path(value).exists():
                    raise RecipeError(f"data.{key}: {value!r} does not exist")
            if self.data.audio_seconds is not None and not 0 < self.data.audio_seconds <= 30:
                raise RecipeError(f"data.audio_seconds: must be in (0, 30], got {self.data.audio_seconds}")
        if self.data.format == "hf" and not self.data.hf_name:
            raise RecipeError("data.hf_name: format 'hf' needs a dataset name")
        for key in ("train", "eval"):
            value = getattr(self.data, key)
            if value is not None and needs_file and not resolve_path(value).is_file():
                raise RecipeError(f"data.{key}: file {value!r} does not exist")
        if self.model.path is not None:
            from zoo.hub import resolve_checkpoint

            try:
                resolve_checkpoint(self.model.path)
            except ValueError as err:
                raise RecipeError(f"model.path: {err}") from err
        if self.lora.enabled and self.lora.r < 1:
            raise RecipeError(f"lora.r: must be at least 1, got {self.lora.r}")


def resolve_path(value: str, base_dir: Path | None = None) -> Path:
    """A recipe path: ``pkg://package/file`` inside an installed package, else a file path;
    a relative one is relative to ``base_dir`` (the recipe file's directory) when given."""
    if value.startswith("pkg://"):
        import importlib.util

        package, _, rest = value[len("pkg://") :].partition("/")
        spec = importlib.util.find_spec(package)
        if spec is None or not spec.submodule_search_locations:
            raise RecipeError(f"{value}: no installed package {package!r} (pip install it)")
        return Path(spec.submodule_search_locations[0]) / rest
    path = Path(value).expanduser()
    return base_dir / path if base_dir is not None and not path.is_absolute() else path


# --- loading -------------------------------------------------------------------------------


def _type_name(tp) -> str:
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it converted (int -> float, '1e-3' -> 0.001)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except RecipeError as err:
                errors.append(err)
        raise errors[0]
    if origin is list:
        (item,) = typing.get_args(tp)
        if isinstance(value, str):  # a single name where a list is expected: key=name on the command line
            value = [value]
        if not isinstance(value, list):
            raise RecipeError(f"{key}: expected a list, got {value!r} ({type(value).__name__})")
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a mapping (key: value), got {value!r} ({type(value).__name__})")
        return dict(value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise RecipeError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _build(cls, data: dict, prefix: str):
    if not isinstance(data, dict):
        raise RecipeError(f"{prefix or 'recipe'}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in fields:
            close = difflib.get_close_matches(str(key), fields, n=3, cutoff=0.6)
            where = f"{prefix}." if prefix else ""
            hint = f"; did you mean {', '.join(where + c for c in close)}?" if close else f"; keys: {', '.join(fields)}"
            raise RecipeError(f"{dotted}: unknown key{hint}")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value if value is not None else {}, dotted)
            continue
        value = _coerce(value, tp, dotted)
        choices = fields[key].metadata.get("choices")
        if choices and value not in choices:
            close = difflib.get_close_matches(str(value), choices, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RecipeError(f"{dotted}: unknown value {value!r}{hint}; choose one of {', '.join(choices)}")
        kwargs[key] = value
    return cls(**kwargs)


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"{dotted}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(items: list[str]) -> list[tuple[str, Any]]:
    """``["train.lr=1e-3", "lora.enabled=true"]`` -> [(key, value)]; values are read as YAML."""
    out = []
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise RecipeError(f"{item}: overrides are key=value with a dotted key, e.g. train.lr=1e-3")
        try:
            value = yaml.safe_load(text) if text else None
        except yaml.YAMLError:
            value = text
        out.append((key.strip(), value))
    return out


def recipe_from_dict(data: dict, overrides: list[str] | None = None, base_dir: Path | None = None) -> Recipe:
    """Build and check a Recipe from a dict plus ``key=value`` overrides."""
    data = dict(data or {})
    parsed = parse_overrides(overrides or [])
    for key, value in parsed:
        _set_dotted(data, key, value)
    recipe = _build(Recipe, data, "")
    if base_dir is not None:
        # A path written in the recipe file is relative to that file, so a recipe runs from any
        # directory; one typed on the command line is relative to where it is typed.
        typed = {key for key, _ in parsed}
        for dotted in _PATH_KEYS:
            section, _, key = dotted.rpartition(".")
            owner = getattr(recipe, section) if section else recipe
            value = getattr(owner, key)
            if not value or dotted in typed or value.startswith(("pkg://", "bpe:")):
                continue
            beside = resolve_path(value, base_dir)
            # A checkpoint named in the file that is not beside it may be a Hugging Face repo id.
            if dotted in ("data.train", "data.eval") or beside.exists():
                setattr(owner, key, str(beside))
    recipe.check()
    return recipe


# Recipe keys holding input paths. out_dir is not one: a run's outputs go where it is started.
_PATH_KEYS = ("data.train", "data.eval", "model.path", "tokenizer")


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML file, apply overrides, check everything (files included)."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"{path}: no such recipe file")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise RecipeError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise RecipeError(
            f"{path}: a recipe is a mapping of sections (model:, data:, train:), not a {type(data).__name__}"
        )
    return recipe_from_dict(data, overrides, base_dir=path.parent)


def _type_text(tp) -> str:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_text(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is not None:
        return str(tp).replace("typing.", "")
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _attribute_docs(cls) -> dict[str, str]:
    """``name: text`` lines of a dataclass's ``Attributes:`` docstring (``a, b: text`` names two)."""
    docs, current = {}, []
    for line in (cls.__doc__ or "").split("Attributes:")[-1].splitlines():
        m = re.match(r"\s{8}([\w, ]+): (.*)", line)
        if m:
            current = [n.strip() for n in m.group(1).split(",")]
            for name in current:
                docs[name] = m.group(2)
        elif line.startswith(" " * 12) and current:
            for name in current:
                docs[name] += " " + line.strip()
    return docs


def describe_recipe(recipe: Recipe) -> str:
    """Every recipe key with its type, default and this recipe's value (``zoo finetune --print-config``)."""
    rows = []

    def walk(cls, value, prefix):
        hints, docs = typing.get_type_hints(cls), _attribute_docs(cls)
        for f in dataclasses.fields(cls):
            dotted = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(hints[f.name]):
                walk(hints[f.name], getattr(value, f.name), dotted + ".")
                continue
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            choices = f.metadata.get("choices")
            kind = " | ".join(choices) if choices else _type_text(hints[f.name])
            rows.append((dotted, kind, repr(default), repr(getattr(value, f.name)), docs.get(f.name, "")))

    walk(Recipe, recipe, "")
    widths = [min(max(len(r[i]) for r in rows), 32) for i in range(4)]  # a long default overflows its column
    header = ("key", "type", "default", "value", "")
    lines = [f"{header[0]:<{widths[0]}}  {header[1]:<{widths[1]}}  {header[2]:<{widths[2]}}  value"]
    for key, kind, default, value, doc in rows:
        mark = "" if value == default else "  *"
        lines.append(f"{key:<{widths[0]}}  {kind:<{widths[1]}}  {default:<{widths[2]}}  {value}{mark}")
        if doc:
            lines.append(f"{'':<{widths[0]}}    {doc}")
    lines.append("(* differs from the default)")
    return "\n".join(lines)


def recipe_to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)
