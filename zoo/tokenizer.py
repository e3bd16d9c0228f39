"""Tokenizers: a thin layer over the `tokenizers` library, plus chat templates.

``load_tokenizer(path)`` reads a checkpoint directory's tokenizer.json (and the special tokens
and chat template of tokenizer_config.json), or a single-file format that registers a reader in
``TOKENIZER_LOADERS`` (the GGUF reader builds one from the file's metadata).
"""

import json
from collections.abc import Callable
from pathlib import Path

import torch
from tokenizers import Tokenizer as _HFTokenizer

TOKENIZER_LOADERS: dict[str, Callable[[Path], "Tokenizer"]] = {}


class Tokenizer:
    """Text <-> token ids, with the special tokens and chat template a checkpoint names.

    Args:
        tokenizer: a ``tokenizers.Tokenizer``.
        bos_token, eos_token, pad_token: special tokens by text (None if the model has none).
        chat_template: a Jinja template as in Hugging Face's tokenizer_config.json.
    """

    def __init__(
        self,
        tokenizer: _HFTokenizer,
        bos_token: str | None = None,
        eos_token: str | None = None,
        pad_token: str | None = None,
        chat_template: str | None = None,
    ):
        self.backend = tokenizer
        self.bos_token, self.eos_token, self.pad_token = bos_token, eos_token, pad_token
        self.chat_template = chat_template

    def _id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    @property
    def bos_token_id(self) -> int | None:
        return self._id(self.bos_token)

    @property
    def eos_token_id(self) -> int | None:
        return self._id(self.eos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._id(self.pad_token)

    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __call__(self, texts: str | list[str], add_special_tokens: bool = True) -> dict[str, torch.Tensor]:
        """Encode a batch as tensors padded on the right to its longest text: ``input_ids``,
        ``attention_mask`` (1 for real tokens, 0 for padding) and ``token_type_ids``, each (B, T),
        ready for ``model(**batch)``."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            raise ValueError("texts: empty batch; give at least one text")
        encodings = self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)
        longest = max(len(e.ids) for e in encodings)
        pad_id = self.pad_token_id
        if pad_id is None and any(len(e.ids) < longest for e in encodings):
            raise ValueError(
                "pad_token: this tokenizer has no padding token, so texts of different lengths cannot batch"
            )
        shape = (len(texts), longest)
        input_ids = torch.full(shape, pad_id or 0, dtype=torch.long)
        attention_mask = torch.zeros(shape, dtype=torch.long)
        token_type_ids = torch.zeros(shape, dtype=torch.long)
        for row, e in enumerate(encodings):
            n = len(e.ids)
            input_ids[row, :n] = torch.tensor(e.ids)
            attention_mask[row, :n] = 1
            token_type_ids[row, :n] = torch.tensor(e.type_ids)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """Render ``messages`` ([{"role": ..., "content": ...}]) with the model's chat template."""
        if not self.chat_template:
            raise ValueError("chat_template: this tokenizer has no chat template; pass plain text instead")
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        # Sandboxed, as transformers renders templates: a template comes from a checkpoint.
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_template_error
        return env.from_string(self.chat_template).render(
            messages=messages,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )


def _raise_template_error(message: str) -> None:
    raise ValueError(f"chat_template: {message}")


def _token_text(value) -> str | None:
    if isinstance(value, dict):  # {"content": "<s>", ...} in older tokenizer_config.json files
        return value.get("content")
    return value


# What an older BART or RoBERTa directory (vocab.json + merges.txt, no tokenizer.json) means by its
# special tokens when tokenizer_config.json does not say.
_ROBERTA_SPECIALS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<unk>"}


def _byte_level_bpe(path: Path, config: dict) -> _HFTokenizer:
    """GPT-2-style byte-level BPE from vocab.json + merges.txt, as transformers' slow BART, RoBERTa
    and GPT-2 tokenizers read them. A BART/RoBERTa tokenizer (tokenizer_config.json's
    tokenizer_class, or a vocabulary holding <s> and </s>) wraps each text in <s> ... </s>, as
    theirs do."""
    from tokenizers import decoders, models, pre_tokenizers, processors

    backend = _HFTokenizer(models.BPE.from_file(str(path / "vocab.json"), str(path / "merges.txt")))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)))
    backend.decoder = decoders.ByteLevel()
    vocab = backend.get_vocab()
    kind = str(config.get("tokenizer_class") or "")
    if kind.startswith(("Bart", "Roberta")) or ("<s>" in vocab and "</s>" in vocab and "gpt2" not in kind.lower()):
        specials = {k: _token_text(config.get(k)) or v for k, v in _ROBERTA_SPECIALS.items()}
        # transformers' BartTokenizer built from these two files keeps <mask> as the vocabulary
        # holds it: a special token that leaves the space before it a token of its own.
        mask = _token_text(config.get("mask_token")) or "<mask>"
        backend.add_special_tokens([t for t in [*specials.values(), mask] if t in vocab])
        bos, eos = specials["bos_token"], specials["eos_token"]
        backend.post_processor = processors.RobertaProcessing((eos, vocab[eos]), (bos, vocab[bos]))
        for key, value in specials.items():
            config.setdefault(key, value)
    return backend


def load_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer of a checkpoint directory (tokenizer.json) or single file (e.g. ``.gguf``)."""
    path = Path(path)
    if path.is_file():
        loader = TOKENIZER_LOADERS.get(path.suffix.lower())
        if loader is None:
            import zoo.families  # noqa: F401  (families register their file formats)

            loader = TOKENIZER_LOADERS.get(path.suffix.lower())
        if loader is None:
            raise ValueError(f"{path}: no tokenizer reader for {path.suffix or 'files without suffix'} files")
        return loader(path)
    file = path / "tokenizer.json"
    has_bpe_files = (path / "vocab.json").exists() and (path / "merges.txt").exists()
    if not file.exists() and not has_bpe_files:
        spm = sorted(p.name for p in path.glob("*.model"))
        if spm:
            # T5, Marian and others ship a sentencepiece model; zoo reads tokenizers' format only.
            raise ValueError(
                f"{path}: no tokenizer.json, only the sentencepiece model {', '.join(spm)}; write a tokenizer.json "
                "beside it once with transformers (AutoTokenizer.from_pretrained(dir).save_pretrained(dir)), or "
                "download the repository's tokenizer.json (google-t5/t5-small and flan-t5 have one)"
            )
        raise ValueError(f"{path}: no tokenizer.json (nor vocab.json + merges.txt) in this directory")
    config = {}
    if (path / "tokenizer_config.json").exists():
        config = json.loads((path / "tokenizer_config.json").read_text())
    template = config.get("chat_template")
    if template is None and (path / "chat_template.jinja").exists():
        template = (path / "chat_template.jinja").read_text()
    backend = _HFTokenizer.from_file(str(file)) if file.exists() else _byte_level_bpe(path, config)
    pad_token = _token_text(config.get("pad_token"))
    if backend.padding is not None:
        # A tokenizer.json may pad every text to a fixed length (all-MiniLM-L6-v2's pads to 128):
        # ``encode`` returns the text's own tokens and ``__call__`` pads a batch to its longest.
        pad_token = pad_token or backend.padding.get("pad_token")
        backend.no_padding()
    return Tokenizer(
        backend,
        bos_token=_token_text(config.get("bos_token")),
        eos_token=_token_text(config.get("eos_token")),
        pad_token=pad_token,
        chat_template=template,
    )
