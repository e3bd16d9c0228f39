"""Recipes: a YAML file names a model, data and training settings; ``finetune`` runs it.

    zoo finetune recipes/smollm2-lora-instruct.yaml train.steps=20 lora.r=4

Causal LMs train on plain text (``format: text``) or chat JSONL (``format: chat``, the loss on
the answer only); classifiers on ``text_label`` files, a Hugging Face dataset, or scikit-learn's
digits; encoder-decoders on translation pairs (``format: translation`` TSV, or ``number_words``
generated with num2words). Before and after training the recipe shows what changed: generated
answers and their exact-match rate for chat data, samples for text, accuracy for classifiers,
BLEU and chrF (sacrebleu) of beam-search translations for translation data.
"""

import contextlib
import dataclasses
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml
from torch import nn

from zoo.hub import check_save_target
from zoo.train import checkpoint as ckpt
from zoo.train import rundir
from zoo.train.config import Recipe, RecipeError, resolve_path
from zoo.train.data import (
    CausalLMTask,
    ClassificationTask,
    ContrastiveTask,
    Seq2SeqTask,
    audio_examples,
    chat_example,
    classification_examples,
    digits_examples,
    image_caption_examples,
    number_word_pairs,
    read_audio_clips,
    read_chat_file,
    read_image_captions,
    read_text_file,
    read_text_label_file,
    read_translation_file,
    save_tokenizer,
    text_examples,
    train_bpe_tokenizer,
    train_word_tokenizer,
    translation_examples,
)
from zoo.train.denoising import denoising_examples, reconstruction_report, split_sentences, train_denoising_tokenizer
from zoo.train.distributed import is_fsdp_sharded
from zoo.train.trainer import Trainer, TrainResult

CLASSIFICATION_FORMATS = ("text_label", "digits", "audio_label")
TRANSLATION_FORMATS = ("translation", "number_words")
SEQ2SEQ_FORMATS = (*TRANSLATION_FORMATS, "denoising")


@dataclass
class Prepared:
    """Everything a recipe builds before training."""

    model: nn.Module
    task: object
    train: list[dict]
    eval: list[dict]
    tokenizer: object | None = None
    pad_id: int = 0
    label_names: list[str] = field(default_factory=list)
    eval_chats: list[list[dict]] = field(default_factory=list)
    new_weights: list[str] = field(default_factory=list)
    eval_captions: list[str] = field(default_factory=list)  # image_caption: the held-out one per image
    eval_pairs: list[tuple[str, str]] = field(default_factory=list)  # translation: held-out (source, target)
    # denoising: noised texts to reconstruct, by set (held-out sentences; training ones, new noise)
    denoise_eval: dict[str, list[dict]] = field(default_factory=dict)


@dataclass
class FinetuneResult:
    train: TrainResult
    before: dict
    after: dict
    outputs: dict[str, Path]


# --- building ------------------------------------------------------------------------------


def _is_classification(recipe: Recipe) -> bool:
    d = recipe.data
    return d.format in CLASSIFICATION_FORMATS or (d.format == "hf" and d.label_field is not None)


def _split(examples: list, fraction: float, seed: int) -> tuple[list, list]:
    """Hold out ``fraction`` of ``examples`` (a seeded choice, the same on every run)."""
    if not fraction or len(examples) < 2:
        return examples, []
    order = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = max(1, round(len(examples) * fraction))
    held = set(order[:n_eval])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


def _hf_rows(recipe: Recipe) -> list[dict]:
    import datasets

    d = recipe.data
    try:
        ds = datasets.load_dataset(d.hf_name, d.hf_config, split=d.hf_split)
    except Exception as err:  # network, unknown name, wrong split: say which key
        raise RecipeError(f"data.hf_name: cannot load {d.hf_name!r} split {d.hf_split!r} ({err})") from err
    for key in (d.text_field, d.label_field):
        if key is not None and key not in ds.column_names:
            name = "data.text_field" if key == d.text_field else "data.label_field"
            raise RecipeError(f"{name}: dataset {d.hf_name!r} has no column {key!r}; it has {ds.column_names}")
    if d.max_examples:
        ds = ds.select(range(min(d.max_examples, len(ds))))
    return list(ds)


def translation_pairs(recipe: Recipe) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, eval) (source, target) pairs of a translation recipe; eval is ``data.eval`` or a
    seeded ``eval_fraction`` of train."""
    d = recipe.data
    try:
        if d.format == "number_words":
            pairs = number_word_pairs(d.n_pairs, d.max_number, d.source_lang, d.target_lang, recipe.train.seed)
        else:
            pairs = read_translation_file(resolve_path(d.train))
        held = read_translation_file(resolve_path(d.eval)) if d.eval else None
    except ValueError as err:
        raise RecipeError(str(err) if str(err).startswith("data.") else f"data.train: {err}") from err
    return (pairs, held) if held is not None else _split(pairs, d.eval_fraction, recipe.train.seed)


def build_tokenizer(recipe: Recipe, run_dir: Path):
    """The recipe's tokenizer; ``bpe:N`` trains one on the training text (kept in run_dir/tokenizer)."""
    from zoo.hub import resolve_checkpoint
    from zoo.tokenizer import load_tokenizer

    spec = recipe.tokenizer
    if recipe.data.format in ("digits", "audio_label"):
        return None
    if spec is None:
        if recipe.model.path is None:
            raise RecipeError(
                "tokenizer: model.name builds a random model with no tokenizer; set tokenizer to a path "
                "or to bpe:N to train an N-token BPE on the training text"
            )
        return load_tokenizer(resolve_checkpoint(recipe.model.path))
    saved = run_dir / "tokenizer"
    if spec == "words":
        if recipe.data.format not in TRANSLATION_FORMATS:
            raise RecipeError(
                f"tokenizer: words builds a word-level vocabulary of translation pairs (data.format: "
                f"{' or '.join(TRANSLATION_FORMATS)}), not of {recipe.data.format!r} data"
            )
        if recipe.train.resume and (saved / "tokenizer.json").is_file():
            return load_tokenizer(saved)
        train, _ = translation_pairs(recipe)
        # One vocabulary for both languages: the Transformer shares its embeddings between them.
        tokenizer = train_word_tokenizer([text for pair in train for text in pair])
        if os.environ.get("RANK", "0") == "0":
            save_tokenizer(tokenizer, saved)
        return tokenizer
    match = re.fullmatch(r"bpe:(\d+)", spec)
    if match is None:
        try:
            return load_tokenizer(resolve_checkpoint(spec))
        except ValueError as err:
            raise RecipeError(f"tokenizer: {err}") from err
    if recipe.train.resume and (saved / "tokenizer.json").is_file():
        return load_tokenizer(saved)  # the vocabulary the checkpoints were trained with
    if recipe.data.format == "image_caption":
        # The captions, and the prompts zero-shot evaluation builds from the labels.
        rows = read_image_captions(recipe.data.train)
        texts = [c for r in rows for c in r["captions"]] + [f"a photo of a {r['label']}." for r in rows]
    elif recipe.data.format == "denoising":
        tokenizer = train_denoising_tokenizer(split_sentences(read_text_file(recipe.data.train)), int(match.group(1)))
        if os.environ.get("RANK", "0") == "0":
            save_tokenizer(tokenizer, saved)
        return tokenizer
    elif recipe.data.format == "text":
        texts = read_text_file(recipe.data.train)
    else:
        raise RecipeError(
            f"tokenizer: bpe:N trains on plain text or captions (data.format: text or image_caption), "
            f"not {recipe.data.format!r}"
        )
    if int(match.group(1)) <= 257:  # byte-level BPE starts from 256 bytes plus <|endoftext|>
        raise RecipeError(f"tokenizer: {spec} is too small; a byte-level BPE has 257 tokens before any merge")
    tokenizer = train_bpe_tokenizer(texts, int(match.group(1)))
    if os.environ.get("RANK", "0") == "0":  # every process trains the same one; the first keeps it
        save_tokenizer(tokenizer, saved)
    return tokenizer


def _audio_clips(value: str, key: str) -> list:
    try:
        return read_audio_clips(resolve_path(value))
    except ValueError as err:
        raise RecipeError(f"{key}: {err}") from err


def _has_labels(config) -> bool:
    """Whether the family has a classifier head sized by ``n_labels`` (every family names it so)."""
    return "n_labels" in type(config).field_names()


def _with_new_head(model: nn.Module, task: str, num_labels: int | None) -> tuple[nn.Module, list[str]]:
    """The same family built for ``task``, the checkpoint's weights loaded into it; what the
    checkpoint lacks (the new head) keeps its fresh initialisation. Returns (model, new weights)."""
    from zoo.lora import with_task

    config = model.config
    if num_labels is not None and _has_labels(config):
        config = config.replace(n_labels=num_labels)
    try:
        return with_task(model, task, config)
    except ValueError as err:
        raise RecipeError(f"model.{err}") from err


def _head_weights(model: nn.Module) -> list[str]:
    """A freshly built classifier's head: its parameters that the family's bare model lacks."""
    from zoo.registry import FAMILIES

    family = FAMILIES[model.family]
    if model.task == "causal_lm" or "base" not in family.tasks or model.task == "base":
        return []
    with torch.device("meta"):
        trunk = family.model_class("base")(model.config)
    return sorted(set(dict(model.named_parameters())) - set(dict(trunk.named_parameters())))


def _text_tower_for(tokenizer, text: dict) -> dict:
    """A random two-tower model's text tower sized for the recipe's tokenizer: its vocabulary, and
    pooling at the tokenizer's end-of-text (a trained BPE's is id 0, not the highest id)."""
    text.setdefault("vocab_size", tokenizer.vocab_size)
    if tokenizer.eos_token_id is not None:
        text.setdefault("pool", "eos")
        text.setdefault("eos_token_id", tokenizer.eos_token_id)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is not None:
        text.setdefault("pad_token_id", pad)
    return text


def _loads_sharded(recipe: Recipe, num_labels: int | None) -> bool:
    """Under FSDP with several processes, a zoo-format checkpoint loads straight into each
    process's shards (``load_sharded_pretrained``) unless the recipe changes the model after
    loading it (LoRA adapters, a new or resized head): those need the whole model first."""
    from zoo.hub import ZOO_CONFIG, read_architecture, resolve_checkpoint

    if int(os.environ.get("WORLD_SIZE", "1")) < 2 or recipe.train.strategy != "fsdp" or recipe.lora.enabled:
        return False
    path = resolve_checkpoint(recipe.model.path)
    if not (path.is_dir() and (path / ZOO_CONFIG).is_file()):
        return False
    _, task, config, _ = read_architecture(path)
    resize = num_labels is not None and _has_labels(config) and config.n_labels != num_labels
    return (recipe.model.task is None or recipe.model.task == task) and not resize


def build_model(recipe: Recipe, tokenizer, num_labels: int | None) -> tuple[nn.Module, list[str]]:
    """A registered variant with fresh weights (``model.name``) or a checkpoint (``model.path``).

    A checkpoint whose task differs from ``model.task`` (a bare encoder for a classifier) gets a
    new, randomly initialised head. Returns (model, names of the weights that are new)."""
    import zoo
    from zoo.registry import get_variant

    m = recipe.model
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[m.dtype]
    new_weights: list[str] = []
    if m.name is not None:
        variant = get_variant(m.name)
        overrides = dict(m.overrides)
        if tokenizer is not None and "vocab_size" in type(variant.config).field_names():
            overrides.setdefault("vocab_size", tokenizer.vocab_size)
        if num_labels is not None and _has_labels(variant.config):
            overrides.setdefault("n_labels", num_labels)
        if tokenizer is not None and "decoder_start_token_id" in type(variant.config).field_names():
            # An encoder-decoder trained from scratch speaks the tokenizer's special tokens; the
            # decoder starts from the pad token, as Marian's do.
            overrides.setdefault("pad_token_id", tokenizer.pad_token_id)
            overrides.setdefault("eos_token_id", tokenizer.eos_token_id)
            overrides.setdefault("decoder_start_token_id", tokenizer.pad_token_id)
        if tokenizer is not None and "text" in type(variant.config).field_names():
            overrides["text"] = _text_tower_for(tokenizer, dict(overrides.get("text") or {}))
        try:
            model = zoo.create_model(m.name, task=m.task, **overrides)
        except ValueError as err:
            raise RecipeError(f"model.overrides: {err}") from err
        model = model.to(dtype)
        new_weights = _head_weights(model)
    elif _loads_sharded(recipe, num_labels):
        from zoo.train.distributed import load_sharded_pretrained, setup

        model = load_sharded_pretrained(m.path, setup(recipe.train.device), dtype=dtype)
    else:
        model = zoo.from_pretrained(m.path, dtype=dtype)
        resize = (
            m.task == model.task and num_labels is not None and getattr(model.config, "n_labels", None) != num_labels
        )
        if m.task is not None and (m.task != model.task or resize):  # a new head, or one resized to the data
            model, new_weights = _with_new_head(model, m.task, num_labels)
    vocab = getattr(model.config, "vocab_size", None)
    if tokenizer is not None and vocab is not None and tokenizer.vocab_size > vocab:
        raise RecipeError(
            f"model.overrides.vocab_size: the tokenizer has {tokenizer.vocab_size} tokens, the model only {vocab}"
        )
    if num_labels is not None and _has_labels(model.config) and model.config.n_labels != num_labels:
        raise RecipeError(
            f"model: the model's head has {model.config.n_labels} classes (n_labels), the data has "
            f"{num_labels}; set model.task for a new head of {num_labels} classes on the checkpoint"
        )
    return model, new_weights


def _check_task(recipe: Recipe, model: nn.Module) -> object:
    if recipe.data.format == "image_caption":
        if not (hasattr(model, "encode_image") and hasattr(model, "encode_text")):
            raise RecipeError(f"data.format: image_caption trains an image-text model (CLIP), not {model.task!r}")
        return ContrastiveTask()
    if hasattr(model, "encode_image") and hasattr(model, "encode_text"):
        raise RecipeError(f"data.format: an image-text model trains on image_caption data, not {recipe.data.format!r}")
    is_seq2seq = getattr(model, "task", "") == "seq2seq_lm"
    if (recipe.data.format in SEQ2SEQ_FORMATS) != is_seq2seq:
        raise RecipeError(
            f"data.format: translation data or text to denoise ({', '.join(SEQ2SEQ_FORMATS)}) trains an "
            f"encoder-decoder; data.format is {recipe.data.format!r} and the model's task {model.task!r}"
        )
    if is_seq2seq:
        return Seq2SeqTask(recipe.train.label_smoothing)
    if recipe.train.label_smoothing:
        raise RecipeError("train.label_smoothing: only encoder-decoders (translation data) use it")
    wants_classes = _is_classification(recipe)
    is_lm = getattr(model, "task", "") == "causal_lm"
    if wants_classes and is_lm:
        raise RecipeError(
            f"model.task: data.format {recipe.data.format!r} needs a classifier, the model is a causal LM"
        )
    if not wants_classes and not is_lm:
        raise RecipeError(
            f"data.format: {recipe.data.format!r} is language-model data, the model's task is {model.task!r}"
        )
    return ClassificationTask() if wants_classes else CausalLMTask()


def prepare(recipe: Recipe) -> Prepared:
    """Build tokenizer, data and model, and check they fit together, before any training."""
    d, seed = recipe.data, recipe.train.seed
    run_dir = Path(recipe.out_dir)
    tokenizer = build_tokenizer(recipe, run_dir)
    label_names: list[str] = []
    eval_chats: list[list[dict]] = []
    train_raw = eval_raw = None
    eval_pairs: list[tuple[str, str]] = []
    denoise_eval: dict[str, list[dict]] = {}
    if d.format in TRANSLATION_FORMATS:
        train_pairs, eval_pairs = translation_pairs(recipe)
        train = translation_examples(tokenizer, train_pairs, d.max_len)
        eval_ = translation_examples(tokenizer, eval_pairs, d.max_len)
    elif d.format == "denoising":
        train_texts = split_sentences(read_text_file(d.train))
        eval_texts = split_sentences(read_text_file(d.eval)) if d.eval else None
        if eval_texts is None:
            train_texts, eval_texts = _split(train_texts, d.eval_fraction, seed)
        noise = {"ratio": d.mask_ratio, "poisson_lambda": d.poisson_lambda}
        try:
            train = denoising_examples(tokenizer, train_texts, d.max_len, seed, d.noise_copies, **noise)
            eval_ = denoising_examples(tokenizer, eval_texts, d.max_len, seed + 1, 1, **noise)
            n = recipe.sample.eval_examples
            denoise_eval = {
                "held-out sentences": eval_[:n],
                "training sentences, new noise": denoising_examples(tokenizer, train_texts[:n], d.max_len, seed + 2),
            }
        except ValueError as err:
            raise RecipeError(str(err)) from err
    elif d.format == "text":
        train = text_examples(tokenizer, read_text_file(d.train), d.max_len)
        eval_ = text_examples(tokenizer, read_text_file(d.eval), d.max_len) if d.eval else None
    elif d.format == "chat":
        train_raw = read_chat_file(d.train, d.system)
        eval_raw = read_chat_file(d.eval, d.system) if d.eval else None
        if eval_raw is None:
            train_raw, eval_raw = _split(train_raw, d.eval_fraction, seed)
        train = [chat_example(tokenizer, c, d.max_len) for c in train_raw]
        eval_ = [chat_example(tokenizer, c, d.max_len) for c in eval_raw]
        eval_chats = eval_raw
    elif d.format == "text_label":
        rows = read_text_label_file(d.train)
        eval_rows = read_text_label_file(d.eval) if d.eval else []
        label_names = sorted({label for _, label in rows + eval_rows})
        index = {name: i for i, name in enumerate(label_names)}
        train = classification_examples(tokenizer, [(t, index[lbl]) for t, lbl in rows], d.max_len)
        eval_ = classification_examples(tokenizer, [(t, index[lbl]) for t, lbl in eval_rows], d.max_len) or None
    elif d.format == "digits":
        train, eval_, label_names = None, None, [str(i) for i in range(10)]
    elif d.format == "audio_label":
        train_raw = _audio_clips(d.train, "data.train")
        eval_raw = _audio_clips(d.eval, "data.eval") if d.eval else None
        label_names = sorted({c[2] for c in train_raw + (eval_raw or [])}, key=lambda s: (len(s), s))
        train = eval_ = None  # features need the model's n_mels: built below
    elif d.format == "image_caption":
        rows = read_image_captions(d.train)
        train, eval_, label_names = None, None, [r["label"] for r in rows]
    else:  # hf
        rows = _hf_rows(recipe)
        if d.label_field is None:
            train = text_examples(tokenizer, [r[d.text_field] for r in rows], d.max_len)
        else:
            raw = [r[d.label_field] for r in rows]
            label_names = sorted({str(v) for v in raw}, key=lambda s: (len(s), s))
            index = {name: i for i, name in enumerate(label_names)}
            pairs = [(r[d.text_field], index[str(v)]) for r, v in zip(rows, raw, strict=True)]
            train = classification_examples(tokenizer, pairs, d.max_len)
        eval_ = None
    num_labels = len(label_names) if _is_classification(recipe) else None
    if num_labels is not None and num_labels < 2:
        raise RecipeError(f"data.train: every example has the label {label_names}; a classifier needs at least two")
    torch.manual_seed(seed)  # the same initial weights on every process and every run
    model, new_weights = build_model(recipe, tokenizer, num_labels)
    task = _check_task(recipe, model)
    if d.format == "digits":
        c = model.config
        size = getattr(c, "image_size", d.image_size)
        channels = getattr(c, "in_channels", getattr(c, "n_channels", 3))
        train = digits_examples(size, channels)
    if d.format == "audio_label":
        index = {name: i for i, name in enumerate(label_names)}
        train = audio_examples(train_raw, index, model.config.n_mels, d.audio_seconds)
        eval_ = audio_examples(eval_raw, index, model.config.n_mels, d.audio_seconds) if eval_raw else None
    eval_captions: list[str] = []
    if d.format == "image_caption":
        from zoo.families.clip.zero_shot import augment_transform, image_transform, tokenize

        c = model.config
        train, eval_, eval_captions = image_caption_examples(
            rows, lambda texts: tokenize(tokenizer, texts, c), image_transform(c), augment_transform(c),
            d.crops, d.eval_crops, seed,
        )  # fmt: skip
    if eval_ is None and d.format != "chat":
        train, eval_ = _split(train, d.eval_fraction, seed)
    if d.max_examples and len(train) > d.max_examples:
        train = train[: d.max_examples]
    if not train:
        raise RecipeError(f"data.train: no training examples in {d.train or d.hf_name or d.format}")
    if label_names:
        model.label_names = list(label_names)  # into zoo.json and the HF export's id2label
    if recipe.lora.enabled:
        from zoo.lora import apply_lora

        lo = recipe.lora
        # A new head starts random: it must train and be saved with the adapter (PEFT's
        # modules_to_save), or the adapted model classifies with noise.
        train_also = [*lo.train_also, *(w for w in new_weights if w not in lo.train_also)]
        try:
            apply_lora(model, lo.targets, lo.r, lo.alpha, lo.dropout, train_also)
        except ValueError as err:
            raise RecipeError(f"lora.{err}") from err
    pad_id = 0
    if tokenizer is not None:
        pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
    return Prepared(model, task, train, eval_ or [], tokenizer, pad_id, label_names, eval_chats, new_weights,
                    eval_captions, eval_pairs, denoise_eval)  # fmt: skip


# --- before / after ------------------------------------------------------------------------


def generate_texts(model: nn.Module, tokenizer, prompts: list[list[int]], max_new_tokens: int) -> list[str]:
    """Greedy continuations of a batch of token-id prompts (left-padded, one ``zoo.generate`` call)."""
    from zoo.generation import generate

    stops = sorted(_stop_ids(tokenizer))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p) :], mask[i, T - len(p) :] = torch.tensor(p), 1
    device = next(model.parameters()).device
    if T >= model.config.max_seq_len:
        raise RecipeError(
            f"sample: a prompt of {T} tokens leaves no room to generate in the model's max_seq_len="
            f"{model.config.max_seq_len}; shorten sample.prompts (or the chat examples)"
        )
    max_new_tokens = min(max_new_tokens, model.config.max_seq_len - T)
    was_training = model.training
    model.eval()
    try:
        out = generate(model, ids.to(device), mask.to(device), max_new_tokens=max_new_tokens, eos_token_id=stops,
                       pad_token_id=pad)  # fmt: skip
    finally:
        model.train(was_training)
    texts = []
    for row in out[:, T:].tolist():
        end = next((i for i, t in enumerate(row) if t in stops), len(row))
        texts.append(tokenizer.decode(row[:end]))
    return texts


def translate(model: nn.Module, tokenizer, sources: list[str], max_new_tokens: int, num_beams: int = 1,
              length_penalty: float = 1.0, batch_size: int = 64) -> list[str]:  # fmt: skip
    """An encoder-decoder's translations of ``sources`` (right-padded batches, ``zoo.generate``
    with the model's end token), decoded without the start token and what follows the end token."""
    from zoo.generation import generate

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    device = next(model.parameters()).device
    limit = model.config.max_seq_len
    beams = {"num_beams": num_beams, "length_penalty": length_penalty} if num_beams > 1 else {}
    was_training = model.training
    model.eval()
    out_texts = []
    try:
        for start in range(0, len(sources), batch_size):
            batch = tokenizer(sources[start : start + batch_size], add_special_tokens=False)
            ids = torch.cat([batch["input_ids"], torch.full((len(batch["input_ids"]), 1), pad)], dim=1)
            mask = torch.cat([batch["attention_mask"], torch.zeros(len(ids), 1, dtype=torch.long)], dim=1)
            lengths = mask.sum(1)
            ids[torch.arange(len(ids)), lengths] = eos  # each source ends in the end token, as in training
            mask[torch.arange(len(ids)), lengths] = 1
            new = min(max_new_tokens, limit - 1) if limit is not None else max_new_tokens
            out = generate(model, ids[:, :limit].to(device), mask[:, :limit].to(device), max_new_tokens=new,
                           eos_token_id=eos, pad_token_id=pad, **beams)  # fmt: skip
            for row in out[:, 1:].tolist():
                end = row.index(eos) if eos in row else len(row)
                out_texts.append(tokenizer.decode(row[:end]))
    finally:
        model.train(was_training)
    return out_texts


def translation_report(model: nn.Module, tokenizer, pairs: list[tuple[str, str]], s) -> dict:
    """BLEU and chrF (sacrebleu, corpus level) of the model's translations of held-out pairs."""
    import sacrebleu

    pairs = pairs[: s.eval_examples]
    hypotheses = translate(model, tokenizer, [src for src, _ in pairs], s.max_new_tokens, s.num_beams,
                           s.length_penalty)  # fmt: skip
    references = [[tgt for _, tgt in pairs]]
    exact = sum(h == tgt for h, (_, tgt) in zip(hypotheses, pairs, strict=True)) / len(pairs)
    return {
        "bleu": sacrebleu.corpus_bleu(hypotheses, references).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, references).score,
        "exact_match": exact,
        "exact_by_task": exact_by_task(pairs, hypotheses),
        "translations": hypotheses,
        "search": f"beam search, {s.num_beams} beams, length penalty {s.length_penalty}"
        if s.num_beams > 1
        else "greedy",
    }


_TASK_PREFIX = re.compile(r"^([^\s:]+): ")


def exact_by_task(pairs: list[tuple[str, str]], hypotheses: list[str]) -> dict[str, tuple[float, int]]:
    """Exact match per task, for T5-style multitask pairs whose sources start with a prefix
    ("reverse: k q m" is task "reverse"): task -> (exact-match rate, pairs). Empty unless every
    source has a prefix."""
    tasks = [_TASK_PREFIX.match(src) for src, _ in pairs]
    if not pairs or not all(tasks):
        return {}
    hits: dict[str, list[bool]] = {}
    for task, (_, tgt), hyp in zip(tasks, pairs, hypotheses, strict=True):
        hits.setdefault(task.group(1), []).append(hyp == tgt)
    return {task: (sum(h) / len(h), len(h)) for task, h in sorted(hits.items())}


def _normalise(text: str) -> str:
    return re.sub(r"[\s.!?]+$", "", text.strip().lower())


def _stop_ids(tokenizer) -> set[int]:
    stops = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|eot_id|>", "<|endoftext|>", "</s>"):
        stops.add(tokenizer.backend.token_to_id(token))
    return {s for s in stops if s is not None}


def show(recipe: Recipe, prep: Prepared, trainer: Trainer) -> dict:
    """What the recipe reports before and after training (see the module docstring)."""
    s = recipe.sample
    report: dict = {}
    report.update(trainer.evaluate(prep.eval) if prep.eval else {})
    tok = prep.tokenizer
    if prep.eval_chats:
        chats = prep.eval_chats[: s.eval_examples]
        prompts = [tok.encode(tok.apply_chat_template(c[:-1], add_generation_prompt=True), add_special_tokens=False)
                   for c in chats]  # fmt: skip
        answers = [a.strip() for a in generate_texts(trainer.model, tok, prompts, s.max_new_tokens)]
        hits = sum(_normalise(a) == _normalise(c[-1]["content"]) for a, c in zip(answers, chats, strict=True))
        report["exact_match"] = hits / len(chats)
        report["answers"] = answers
    if prep.eval_captions:
        from zoo.families.clip.zero_shot import retrieval_report

        report.update(retrieval_report(trainer.model, tok, prep.label_names, prep.eval, prep.eval_captions))
    if prep.denoise_eval:
        report["reconstruction"] = {
            name: reconstruction_report(trainer.model, tok, examples, s.max_new_tokens, s.num_beams, s.length_penalty)
            for name, examples in prep.denoise_eval.items()
        }
        return report
    if prep.eval_pairs:
        report.update(translation_report(trainer.model, tok, prep.eval_pairs, s))
        if s.prompts:
            translations = translate(trainer.model, tok, s.prompts, s.max_new_tokens, s.num_beams, s.length_penalty)
            report["samples"] = [f"{p} -> {t}" for p, t in zip(s.prompts, translations, strict=True)]
        return report
    if s.prompts and tok is not None:
        prompts = [tok.encode(p, add_special_tokens=False) for p in s.prompts]
        continuations = generate_texts(trainer.model, tok, prompts, s.max_new_tokens)
        report["samples"] = [p + c for p, c in zip(s.prompts, continuations, strict=True)]
    return report


def _print_comparison(prep: Prepared, before: dict, after: dict, log) -> None:
    log("\n=== before -> after training ===")
    if "eval_loss" in before:
        log(f"eval loss on {len(prep.eval)} held-out examples: {before['eval_loss']:.4f} -> {after['eval_loss']:.4f}")
    if prep.eval_captions:
        n, k = len(prep.label_names), len(prep.eval)
        log(f"in-batch image->text accuracy: {before['eval_accuracy']:.1%} -> {after['eval_accuracy']:.1%}")
        log(
            f"zero-shot accuracy over {n} classes ('a photo of a {{label}}.') on {k} held-out crops: "
            f"{before['zero_shot_accuracy']:.1%} -> {after['zero_shot_accuracy']:.1%} (chance {1 / n:.1%})"
        )
        log(f"text->image top-1 over {k} crops, {n} held-out captions: "
            f"{before['text_to_image_top1']:.1%} -> {after['text_to_image_top1']:.1%}")  # fmt: skip
    elif "reconstruction" in before:
        log(f"token accuracy (teacher-forced, held-out): {before['eval_accuracy']:.1%} -> {after['eval_accuracy']:.1%}")
        for name, b in before["reconstruction"].items():
            a, n = after["reconstruction"][name], len(b["references"])
            log(f"{name} ({n}): exact reconstructions {b['exact_match']:.0%} -> {a['exact_match']:.0%}, "
                f"chrF {b['chrf']:.1f} -> {a['chrf']:.1f}")  # fmt: skip
        a = after["reconstruction"]["held-out sentences"]
        for src, ref, hyp in list(zip(a["sources"], a["references"], a["reconstructions"], strict=True))[:4]:
            log(f"\n  noised:   {_clip(src, 160)}\n  original: {_clip(ref, 160)}\n  after:    {_clip(hyp, 160)} "
                f"[{'ok' if hyp == ref else '--'}]")  # fmt: skip
    elif prep.label_names and "eval_accuracy" in before:
        log(f"eval accuracy:  {before['eval_accuracy']:.1%} -> {after['eval_accuracy']:.1%}")
    if "bleu" in before:
        n = len(before["translations"])
        log(f"BLEU on {n} held-out sources ({after['search']}): {before['bleu']:.1f} -> {after['bleu']:.1f}")
        log(f"chrF on {n} held-out sources: {before['chrf']:.1f} -> {after['chrf']:.1f}")
        log(f"exact translations: {before['exact_match']:.0%} -> {after['exact_match']:.0%}")
        for task, (rate, n) in after["exact_by_task"].items():
            log(f"  {task + ':':<12} exact {before['exact_by_task'][task][0]:.0%} -> {rate:.0%} ({n} held out)")
        log(f"\n  {'source':<40}  {'reference':<40}  after")
        for (src, tgt), hyp in list(zip(prep.eval_pairs, after["translations"], strict=False))[:8]:
            log(f"  {_clip(src, 40):<40}  {_clip(tgt, 40):<40}  {_clip(hyp, 40)} [{'ok' if hyp == tgt else '--'}]")
    elif "exact_match" in before:
        n = len(before["answers"])
        log(f"exact-match answers on {n} held-out questions: {before['exact_match']:.0%} -> {after['exact_match']:.0%}")
        rows = [(c[-2]["content"], c[-1]["content"], b, a)
                for c, b, a in zip(prep.eval_chats, before["answers"], after["answers"], strict=False)]  # fmt: skip
        width = min(max(len(q) for q, *_ in rows), 48)
        log(f"\n  {'question':<{width}}  {'expected':<12}  {'before':<40}  after")
        for q, expected, b, a in rows:
            mark = "ok" if _normalise(a) == _normalise(expected) else "--"
            log(f"  {_clip(q, width):<{width}}  {_clip(expected, 12):<12}  {_clip(b, 40):<40}  {_clip(a, 30)} [{mark}]")
    for b, a in zip(before.get("samples", []), after.get("samples", []), strict=True):
        log(f"\n  before: {_clip(b, 200)}\n  after:  {_clip(a, 200)}")


def _clip(text: str, n: int = 120) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 3] + "..."


# --- the whole run -------------------------------------------------------------------------


def _export(recipe: Recipe, prep: Prepared, trainer: Trainer, log) -> dict[str, Path]:
    """The run's products: LoRA adapter (and merged model), or the trained model (zoo format)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from zoo.hub import save_pretrained
    from zoo.lora import base_model, export_peft, merge_lora, save_adapter
    from zoo.registry import FAMILIES

    run_dir, out = Path(recipe.out_dir), {}
    full = get_model_state_dict(trainer.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if not trainer.world.is_main:
        return out
    if trainer.fsdp:  # sharded parameters: rebuild a plain copy from the gathered state
        raw = trainer.model
        model = FAMILIES[raw.family].model_class(raw.task)(raw.config)
        if recipe.lora.enabled:
            from zoo.lora import apply_lora

            apply_lora(model, **raw.lora_config)  # the same adapters and extra trained parameters
        model.label_names = prep.label_names
        model.load_state_dict(full)
    else:
        model = trainer.model
    if recipe.lora.enabled:
        base = recipe.model.path
        if base is None:  # a fresh model: the adapter means nothing without these exact base weights
            out["base model"] = save_pretrained(base_model(model), run_dir / "base", format="zoo")
            _save_tokenizer_beside(prep.tokenizer, run_dir / "base")
            base = "../base"  # relative to the adapter, so the run directory can move
        out["adapter"] = save_adapter(model, run_dir / "adapter", base=base)
        _save_tokenizer_beside(prep.tokenizer, run_dir / "adapter")
        try:
            out["PEFT adapter"] = export_peft(model, run_dir / "adapter", base=recipe.model.path)
        except ValueError as err:
            log(f"adapter: written in zoo's format only; PEFT's cannot express it ({err})")
        if recipe.lora.save_merged:
            out["merged model"] = save_pretrained(merge_lora(model), run_dir / "model", format="zoo")
            _save_tokenizer_beside(prep.tokenizer, run_dir / "model")
    else:
        out["model"] = save_pretrained(model, run_dir / "model", format="zoo")
        _save_tokenizer_beside(prep.tokenizer, run_dir / "model")
    if prep.label_names:
        (run_dir / "labels.json").write_text(json.dumps(prep.label_names) + "\n")
    return out


def _save_tokenizer_beside(tokenizer, directory: Path) -> None:
    """The tokenizer in the model's own directory: ``zoo generate DIR`` and from_pretrained users
    then need nothing else."""
    if tokenizer is not None:
        save_tokenizer(tokenizer, directory)


def finetune(recipe: Recipe, log=print) -> FinetuneResult:
    """Run a recipe end to end: build, show 'before', train, show 'after', export.

    The run directory is claimed (``zoo.train.rundir``: refused unless new, empty or zoo's) and
    locked for the whole run, before anything is written into it."""
    with contextlib.ExitStack() as stack:
        if os.environ.get("RANK", "0") == "0":  # the first process owns the directory
            rundir.claim(recipe.out_dir)
            stack.enter_context(rundir.locked(recipe.out_dir))
        return _finetune(recipe, log)


def _finetune(recipe: Recipe, log) -> FinetuneResult:
    run_dir = Path(recipe.out_dir)
    prep = prepare(recipe)
    trainer = Trainer(prep.model, prep.task, prep.train, recipe.train, run_dir, eval_data=prep.eval, pad_id=prep.pad_id)
    main = trainer.world.is_main
    if recipe.train.resume and (latest := ckpt.latest_checkpoint(run_dir / "checkpoints")) is not None:
        trainer.check_resumable(latest)  # before recipe.yaml is rewritten: the record must match the checkpoints
    for product in ("model", "base"):  # where _export saves: a refusal belongs before the training
        check_save_target(run_dir / product)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "recipe.yaml").write_text(yaml.safe_dump(dataclasses.asdict(recipe), sort_keys=False))
        n_train = sum(p.numel() for p in prep.model.parameters() if p.requires_grad)
        n_all = sum(p.numel() for p in prep.model.parameters())
        log(
            f"{type(prep.model).__name__} ({n_all / 1e6:.1f}M parameters, {n_train / 1e6:.2f}M trained) on "
            f"{len(prep.train)} examples ({len(prep.eval)} held out); {trainer.world.size} process(es) on "
            f"{trainer.world.device}; run directory {run_dir}"
        )
        if is_fsdp_sharded(prep.model):
            log(f"{recipe.model.path}: loaded straight into FSDP2 shards (each process read only its part)")
        if prep.new_weights and (recipe.model.path is not None or recipe.lora.enabled):
            trained = "; trained and saved with the adapter" if recipe.lora.enabled else ""
            log(f"new head, randomly initialised: {', '.join(prep.new_weights)}{trained}")
    before = show(recipe, prep, trainer)
    result = trainer.fit(log=log if main else lambda *a: None)
    if result.status == "interrupted":  # saved; the user wants the process back, not an evaluation
        return FinetuneResult(result, before, {}, {"checkpoint": result.checkpoint})
    after = show(recipe, prep, trainer)
    outputs = _export(recipe, prep, trainer, log)
    if main:
        _print_comparison(prep, before, after, log)
        outputs.update({"metrics": run_dir / "metrics.csv", "plot": run_dir / "loss.png"})
        if result.checkpoint is not None:
            outputs["checkpoint"] = result.checkpoint
        log("\n" + "\n".join(f"{k + ':':<14}{v}" for k, v in outputs.items()))
    return FinetuneResult(result, before, after, outputs)
