"""Training data: examples, padding, the order each step draws them in, and the task's loss.

An example is a dict of unpadded tensors (``input_ids`` and ``labels`` for a causal LM,
``input_ids``, ``pixel_values`` or ``input_features`` plus ``label`` for classifiers). ``collate`` pads a list of
them into a batch. ``StepSampler`` says which examples optimizer step ``s`` uses, as a pure
function of the number of examples consumed, so a resumed run draws exactly what the
uninterrupted run would have drawn.
"""

import json
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional as F

IGNORE = -100  # label value the loss skips: prompt tokens, padding


# --- batching ------------------------------------------------------------------------------


def collate(examples: list[dict], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Pad token sequences on the right to the longest one; stack everything else.

    ``input_ids`` -> (B, T) padded with ``pad_id``, plus ``attention_mask`` (B, T) of 1/0;
    ``labels`` -> (B, T) padded with -100; ``label`` -> (B,); ``pixel_values`` -> (B, C, H, W);
    ``input_features`` -> (B, n_mels, frames).
    """
    batch: dict[str, torch.Tensor] = {}
    if "input_ids" in examples[0]:
        T = max(len(e["input_ids"]) for e in examples)
        ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
        mask = torch.zeros((len(examples), T), dtype=torch.long)
        for i, e in enumerate(examples):
            n = len(e["input_ids"])
            ids[i, :n], mask[i, :n] = e["input_ids"], 1
        batch["input_ids"], batch["attention_mask"] = ids, mask
        if "labels" in examples[0]:
            # As long as input_ids for a causal LM; an encoder-decoder's targets have their own length.
            T_labels = max(len(e["labels"]) for e in examples)
            labels = torch.full((len(examples), T_labels), IGNORE, dtype=torch.long)
            for i, e in enumerate(examples):
                labels[i, : len(e["labels"])] = e["labels"]
            batch["labels"] = labels
    if "pixel_values" in examples[0]:
        batch["pixel_values"] = torch.stack([e["pixel_values"] for e in examples])
    if "input_features" in examples[0]:
        batch["input_features"] = torch.stack([e["input_features"] for e in examples])
    if "label" in examples[0]:
        batch["label"] = torch.tensor([int(e["label"]) for e in examples], dtype=torch.long)
    return batch


class StepSampler:
    """The examples of each optimizer step: a seeded permutation per epoch, read in order.

    Args:
        n: dataset size.
        batch_size: examples per optimizer step (all processes together).
        seed: permutation seed; epoch e uses ``seed + e``.
        shuffle: False reads the data in file order.
    """

    def __init__(self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True):
        if n < 1:
            raise ValueError("data: the training set is empty")
        self.n, self.batch_size, self.seed, self.shuffle = n, batch_size, seed, shuffle
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            if self.shuffle:
                g = torch.Generator().manual_seed(self.seed + epoch)
                self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}
            else:
                self._perms = {epoch: list(range(self.n))}
        return self._perms[epoch]

    def batch(self, samples_seen: int) -> list[int]:
        """The global batch that starts after ``samples_seen`` examples (it may cross an epoch)."""
        out = []
        for pos in range(samples_seen, samples_seen + self.batch_size):
            out.append(self._perm(pos // self.n)[pos % self.n])
        return out

    def position(self, samples_seen: int) -> dict:
        return {"samples_seen": samples_seen, "epoch": samples_seen // self.n, "offset": samples_seen % self.n}


def split_for_rank(indices: list[int], rank: int, world: int, micro_batch_size: int | None) -> list[list[int]]:
    """This process's share of a global batch, cut into micro-batches (the last may be smaller)."""
    if len(indices) % world:
        raise ValueError(f"batch_size: {len(indices)} examples do not split evenly over {world} processes")
    per = len(indices) // world
    mine = indices[rank * per : (rank + 1) * per]
    size = micro_batch_size or per
    return [mine[i : i + size] for i in range(0, per, size)]


# --- tasks: how a batch becomes a loss -----------------------------------------------------


class CausalLMTask:
    """Next-token prediction; the loss is summed over real target tokens, so the trainer can
    divide by the number of targets in the whole accumulated (and distributed) batch."""

    name = "causal_lm"

    def inputs(self, batch: dict) -> dict:
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def targets(self, batch: dict) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def loss_sum(self, output, batch: dict) -> torch.Tensor:
        # Position t predicts token t+1. Shifting the labels (and ignoring the last position)
        # instead of slicing the logits keeps the (B*T, vocab) view free of a copy: the logits
        # are the largest tensor of a small model's step.
        labels = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)  # (B, T)
        logits = output.logits.flatten(0, 1)  # (B*T, vocab), a view
        return F.cross_entropy(logits.float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")

    def correct(self, output, batch: dict) -> int:
        labels = batch["labels"][:, 1:]
        hit = (output.logits[:, :-1].argmax(-1) == labels) & (labels != IGNORE)
        return int(hit.sum())


class Seq2SeqTask:
    """An encoder-decoder's teacher-forced translation loss: the model shifts ``labels`` right
    into its decoder inputs, and its logits at t predict ``labels`` at t. Summed over real target
    tokens, with ``label_smoothing`` (the Transformer paper's 0.1) spread over the vocabulary."""

    name = "seq2seq_lm"

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def inputs(self, batch: dict) -> dict:
        return {k: batch[k] for k in ("input_ids", "attention_mask", "labels")}

    def targets(self, batch: dict) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def loss_sum(self, output, batch: dict) -> torch.Tensor:
        return F.cross_entropy(output.logits.flatten(0, 1).float(), batch["labels"].flatten(), ignore_index=IGNORE,
                               reduction="sum", label_smoothing=self.label_smoothing)  # fmt: skip

    def correct(self, output, batch: dict) -> int:
        labels = batch["labels"]
        return int(((output.logits.argmax(-1) == labels) & (labels != IGNORE)).sum())


class ClassificationTask:
    """One label per example (sequence or image classification); logits (B, n_labels)."""

    name = "classification"

    def inputs(self, batch: dict) -> dict:
        if "pixel_values" in batch:
            return {"pixel_values": batch["pixel_values"]}
        if "input_features" in batch:
            return {"input_features": batch["input_features"]}
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}

    def targets(self, batch: dict) -> int:
        return len(batch["label"])

    def loss_sum(self, output, batch: dict) -> torch.Tensor:
        return F.cross_entropy(output.logits.float(), batch["label"], reduction="sum")

    def correct(self, output, batch: dict) -> int:
        return int((output.logits.argmax(-1) == batch["label"]).sum())


class ContrastiveTask:
    """Image-text pairs (CLIP): the symmetric contrastive loss over the batch's similarity matrix.

    Examples carry the ``label`` of the image they were cut from; every caption of the same image
    counts as a positive (soft targets spread over them), so two crops of one photo in a batch are
    not pushed apart as negatives. ``correct`` counts images whose most similar text is one of theirs.
    """

    name = "contrastive"

    def inputs(self, batch: dict) -> dict:
        return {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}

    def targets(self, batch: dict) -> int:
        return len(batch["pixel_values"])

    @staticmethod
    def _positives(batch: dict) -> torch.Tensor:
        label = batch["label"]
        return (label[:, None] == label[None, :]).float()  # (B, B) 1 where image i and text j share a photo

    def loss_sum(self, output, batch: dict) -> torch.Tensor:
        logits = output.logits_per_image.float()  # (B images, B texts)
        same = self._positives(batch)
        target = same / same.sum(dim=1, keepdim=True)  # symmetric, so it serves both directions
        per_image = F.cross_entropy(logits, target, reduction="sum")
        per_text = F.cross_entropy(logits.t(), target, reduction="sum")
        return (per_image + per_text) / 2

    def correct(self, output, batch: dict) -> int:
        best = output.logits_per_image.argmax(dim=-1)  # (B,) the text each image is closest to
        return int(self._positives(batch)[torch.arange(len(best)), best].sum())


# --- datasets ------------------------------------------------------------------------------


def text_examples(tokenizer, texts: list[str], max_len: int) -> list[dict]:
    """Documents joined with the end-of-text token, cut into ``max_len``-token blocks."""
    eos = tokenizer.eos_token_id
    ids: list[int] = []
    for text in texts:
        ids += tokenizer.encode(text, add_special_tokens=False)
        if eos is not None:
            ids.append(eos)
    out = []
    for start in range(0, len(ids), max_len):
        block = torch.tensor(ids[start : start + max_len], dtype=torch.long)
        if len(block) >= 2:
            out.append({"input_ids": block, "labels": block.clone()})
    return out


def read_text_file(path: str | Path) -> list[str]:
    """Paragraphs (blank-line separated) of a plain text file."""
    text = Path(path).read_text(encoding="utf-8")
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def read_chat_file(path: str | Path, system: str | None = None) -> list[list[dict]]:
    """JSONL of ``{"messages": [{"role", "content"}, ...]}`` or ``{"prompt": ..., "response": ...}``."""
    conversations = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({err})") from err
        if isinstance(row, dict) and isinstance(row.get("messages"), list):
            messages = list(row["messages"])
            if not all(isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in messages):
                raise ValueError(f"{path}:{lineno}: each message must be {{'role': ..., 'content': '...'}}")
        elif isinstance(row, dict) and "prompt" in row and "response" in row:
            messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
        else:
            raise ValueError(f"{path}:{lineno}: expected a 'messages' list or 'prompt' and 'response' keys")
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError(f"{path}:{lineno}: the last message must be the assistant's answer (the one learned)")
        if system and messages[0].get("role") != "system":
            messages = [{"role": "system", "content": system}, *messages]
        conversations.append(messages)
    return conversations


def chat_example(tokenizer, messages: list[dict], max_len: int) -> dict:
    """Render with the chat template; labels are -100 on the prompt, so only the answer is learned.

    The prompt (everything up to the assistant's turn, with the generation prompt) is
    tokenized on its own and the answer appended, which is exactly what the model sees when
    it generates from that prompt.
    """
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True)
    full = tokenizer.apply_chat_template(messages, add_generation_prompt=False)
    if not full.startswith(prompt):
        raise ValueError(
            "chat_template: the rendered conversation does not start with the rendered prompt, so the "
            "prompt cannot be masked; this template re-renders earlier turns"
        )
    prompt_ids = tokenizer.encode(prompt, add_special_tokens=False)
    answer_ids = tokenizer.encode(full[len(prompt) :], add_special_tokens=False)
    ids = (prompt_ids + answer_ids)[:max_len]
    labels = ([IGNORE] * len(prompt_ids) + answer_ids)[:max_len]
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}


def read_text_label_file(path: str | Path) -> list[tuple[str, str]]:
    """TSV: ``text<TAB>label`` per line."""
    rows = []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        text, sep, label = line.rpartition("\t")
        if not sep or not text.strip() or not label.strip():
            raise ValueError(f"{path}:{lineno}: expected 'text<TAB>label', got {line[:60]!r}")
        rows.append((text.strip(), label.strip()))
    return rows


def classification_examples(tokenizer, rows: list[tuple[str, int]], max_len: int) -> list[dict]:
    out = []
    for text, label in rows:
        ids = tokenizer.encode(text)[:max_len]
        out.append({"input_ids": torch.tensor(ids, dtype=torch.long), "label": label})
    return out


def digits_examples(image_size: int, channels: int = 3) -> list[dict]:
    """scikit-learn's bundled 8x8 handwritten digits (1,797 images, no download), scaled to
    ``image_size`` and normalised to [-1, 1]."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8) in [0, 1]
    images = F.interpolate(images, size=(image_size, image_size), mode="bilinear", align_corners=False)
    images = (images * 2 - 1).expand(-1, channels, -1, -1).contiguous()  # (N, C, S, S)
    return [{"pixel_values": img, "label": int(y)} for img, y in zip(images, digits.target, strict=True)]


def train_bpe_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE trained on ``texts`` (for models trained from scratch on your own text)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    from zoo.tokenizer import Tokenizer

    eos = "<|endoftext|>"
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[eos],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    return Tokenizer(tok, eos_token=eos, pad_token=eos)


def train_word_tokenizer(texts: list[str]):
    """A word-level tokenizer of ``texts`` whose spaces, hyphens and commas are tokens too, so
    decoding gives back the exact text ("quatre-vingt-dix" -> quatre, -, vingt, -, dix): for small
    closed vocabularies such as number words, where subwords would only lengthen the sequences."""
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as HFTokenizer

    from zoo.tokenizer import Tokenizer

    pad, eos, unk = "<pad>", "</s>", "<unk>"
    tok = HFTokenizer(models.WordLevel(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\-,]"), behavior="isolated")
    tok.decoder = decoders.Fuse()  # the separators are tokens: join without adding spaces
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=[pad, eos, unk], show_progress=False))
    return Tokenizer(tok, eos_token=eos, pad_token=pad)


def number_word_pairs(n_pairs: int, max_number: int, source_lang: str, target_lang: str, seed: int) -> list[tuple]:
    """``n_pairs`` distinct numbers in [0, max_number] written out by num2words in two languages:
    (source text, target text) pairs, a seeded choice (the same on every run)."""
    from num2words import num2words

    if n_pairs > max_number + 1:
        raise ValueError(f"data.n_pairs: {n_pairs} distinct numbers do not fit in [0, {max_number}]")
    numbers = torch.randperm(max_number + 1, generator=torch.Generator().manual_seed(seed))[:n_pairs].tolist()
    for field, lang in (("source_lang", source_lang), ("target_lang", target_lang)):
        try:
            num2words(0, lang=lang)
        except NotImplementedError as err:  # the error of whichever language num2words lacks
            raise ValueError(f"data.{field}: num2words cannot write {err}") from err
    return [(num2words(n, lang=source_lang), num2words(n, lang=target_lang)) for n in numbers]


def read_translation_file(path: str | Path) -> list[tuple[str, str]]:
    """A TSV of ``source<TAB>target`` lines (blank lines skipped)."""
    pairs = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"{path}:{i}: expected 'source<TAB>target', got {len(parts)} fields")
        pairs.append((parts[0].strip(), parts[1].strip()))
    return pairs


def translation_examples(tokenizer, pairs: list[tuple[str, str]], max_len: int) -> list[dict]:
    """(source, target) pairs -> ``input_ids`` (the source) and ``labels`` (the target), each
    ending in the end token and cut to ``max_len``."""
    eos = tokenizer.eos_token_id
    out = []
    for src, tgt in pairs:
        ids = [*tokenizer.encode(src, add_special_tokens=False)[: max_len - 1], eos]
        labels = [*tokenizer.encode(tgt, add_special_tokens=False)[: max_len - 1], eos]
        out.append({"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)})
    return out


def save_tokenizer(tokenizer, directory: Path) -> None:
    """tokenizer.json + tokenizer_config.json, readable by ``zoo.load_tokenizer``."""
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer.backend.save(str(directory / "tokenizer.json"))
    config = {"bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token, "pad_token": tokenizer.pad_token}
    if tokenizer.chat_template:
        config["chat_template"] = tokenizer.chat_template
    (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def read_audio_clips(path: str | Path) -> list[tuple[np.ndarray, int, str]]:
    """Labelled mono clips as (samples in [-1, 1], sampling rate, label).

    ``path`` is a directory of 16-bit mono WAV files named ``LABEL.wav`` or ``LABEL-anything.wav``,
    or an ``.npz`` with ``mu_law`` (uint8 codes of all clips, concatenated), ``offsets`` (clip
    boundaries), ``labels`` and ``sampling_rate`` (recipes/data/speech_digits/prepare.py writes one).
    """
    import wave

    import torchaudio

    path = Path(path)
    if path.is_dir():
        clips = []
        for f in sorted(path.glob("*.wav")):
            try:
                with wave.open(str(f)) as w:
                    if w.getsampwidth() != 2 or w.getnchannels() != 1:
                        raise ValueError(f"{f}: {8 * w.getsampwidth()}-bit, {w.getnchannels()} channels; "
                                         "expected 16-bit mono")  # fmt: skip
                    samples = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
                    clips.append((samples.astype(np.float32) / 32768, w.getframerate(), f.stem.split("-")[0]))
            except wave.Error as err:
                raise ValueError(f"{f}: not a readable WAV file ({err})") from err
        if not clips:
            raise ValueError(f"{path}: no .wav files in this directory")
        return clips
    if path.suffix != ".npz":
        raise ValueError(f"{path}: audio data is a directory of .wav files or an .npz of mu-law clips")
    with np.load(path) as data:
        missing = {"mu_law", "offsets", "labels", "sampling_rate"} - set(data.files)
        if missing:
            raise ValueError(f"{path}: the .npz lacks {', '.join(sorted(missing))}")
        audio = torchaudio.functional.mu_law_decoding(torch.from_numpy(data["mu_law"].astype(np.int64)), 256).numpy()
        bounds, rate = data["offsets"], int(data["sampling_rate"])
        return [(audio[a:b], rate, str(lbl)) for a, b, lbl in zip(bounds[:-1], bounds[1:], data["labels"], strict=True)]


def audio_examples(
    clips: list[tuple[np.ndarray, int, str]], index: dict[str, int], n_mels: int, seconds: float | None
) -> list[dict]:
    """Whisper log-mel features of each clip (``zoo.audio.log_mel_spectrogram``) with its class id;
    ``seconds`` is a shorter window than Whisper's 30 s (None), whose first frames it gives."""
    from zoo.audio import CHUNK_SECONDS, log_mel_spectrogram

    window = CHUNK_SECONDS if seconds is None else seconds
    features: list[torch.Tensor | None] = [None] * len(clips)
    # Clips of one rate go through the front end in batches (zero-padded to the window at their
    # own rate: each row keeps its own max, and padding stays at the floor).
    for rate in sorted({r for _, r, _ in clips}):
        rows = [i for i, (_, r, _) in enumerate(clips) if r == rate]
        n = round(window * rate)
        for start in range(0, len(rows), 32):
            chunk = rows[start : start + 32]
            batch = torch.zeros(len(chunk), n)
            for j, i in enumerate(chunk):
                x = torch.as_tensor(clips[i][0][:n])
                batch[j, : len(x)] = x
            for i, f in zip(chunk, log_mel_spectrogram(batch, rate, n_mels, seconds=window), strict=True):
                features[i] = f
    return [{"input_features": f, "label": index[label]} for f, (_, _, label) in zip(features, clips, strict=True)]


def read_image_captions(path: str | Path) -> list[dict]:
    """JSONL rows ``{"image": ..., "label": ..., "captions": [...]}``; ``image`` is a file path
    (relative to the JSONL file) or ``skimage:NAME`` for one of scikit-image's bundled sample images."""
    path = Path(path)
    rows = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{n}: not valid JSON ({err})") from err
        missing = [k for k in ("image", "label", "captions") if k not in row]
        if missing:
            raise ValueError(f"{path}:{n}: missing {', '.join(missing)} (each row needs image, label, captions)")
        if not isinstance(row["captions"], list) or len(row["captions"]) < 2:
            raise ValueError(f"{path}:{n}: captions needs at least two (the last is held out for evaluation)")
        rows.append({**row, "base": path.parent})
    if not rows:
        raise ValueError(f"{path}: no image-caption rows")
    return rows


def load_image(spec: str, base: Path | None = None):
    """``skimage:NAME`` -> that sample image as a numpy array (no download: the bundled ones);
    otherwise an image file, read with PIL."""
    if spec.startswith("skimage:"):
        import skimage.data

        name = spec.removeprefix("skimage:")
        if not hasattr(skimage.data, name):
            raise ValueError(f"image: scikit-image has no sample image {name!r}")
        return getattr(skimage.data, name)()
    from PIL import Image

    path = Path(spec) if base is None or Path(spec).is_absolute() else base / spec
    if not path.is_file():
        raise ValueError(f"image: file {path} does not exist")
    return Image.open(path).convert("RGB")


def image_caption_examples(
    rows: list[dict], tokenize, image_transform, augment, crops: int, eval_crops: int, seed: int
) -> tuple[list[dict], list[dict], list[str]]:
    """Training and evaluation examples from image-caption rows.

    Training: ``crops`` augmented crops of every image, each paired with one of its captions but
    the last (in turn). Evaluation: the plain center crop and ``eval_crops - 1`` crops augmented
    with other seeds, paired with the held-out last caption. Returns (train, eval, eval captions).

    Args:
        tokenize: list of texts -> {"input_ids", "attention_mask"} (B, T).
        image_transform, augment: image -> (C, H, W) tensor, the center crop and the random one.
    """
    train, eval_, held_out = [], [], []
    for label, row in enumerate(rows):
        image = load_image(row["image"], row.get("base"))
        captions = row["captions"]
        train_ids = tokenize(captions[:-1])
        eval_ids = tokenize(captions[-1:])
        for k in range(crops):
            torch.manual_seed(seed * 100_003 + label * 1009 + k)  # the torchvision transforms draw from it
            j = k % (len(captions) - 1)
            n = int(train_ids["attention_mask"][j].sum())
            train.append({"input_ids": train_ids["input_ids"][j, :n], "pixel_values": augment(image), "label": label})
        n = int(eval_ids["attention_mask"][0].sum())
        for k in range(eval_crops):
            torch.manual_seed(seed * 100_003 + label * 1009 + 500 + k)  # other seeds than training's
            pixels = image_transform(image) if k == 0 else augment(image)
            eval_.append({"input_ids": eval_ids["input_ids"][0, :n], "pixel_values": pixels, "label": label})
        held_out.append(captions[-1])
    return train, eval_, held_out
