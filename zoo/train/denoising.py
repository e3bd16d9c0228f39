"""BART's text infilling (Lewis et al. 2019, section 2.2): spans of text, their lengths drawn from a
Poisson distribution (lambda 3), are each replaced by a single mask token; a zero-length span
inserts a mask. The model learns to reconstruct the original, including how many tokens each mask
stands for. As in fairseq's implementation the spans cover whole words, and ``ratio`` of them
(30% in the paper) are masked.
"""

import random
import re

import numpy as np
import torch


def text_infilling(
    words: list[list[int]],
    mask_id: int,
    rng: random.Random,
    ratio: float = 0.3,
    poisson_lambda: float = 3.0,
) -> list[int]:
    """Noise one text: ``words`` (each word's token ids, in order) -> the token ids with spans masked.

    Exactly ``round(ratio * len(words))`` words are masked (at most all but one, so some text
    always stays), in spans whose lengths are Poisson(``poisson_lambda``) draws (the last one cut
    to fit). Every span becomes one ``mask_id`` and spans never touch (two masks in a row would
    hide where one span ends), so the result always holds at least one mask and one word when
    there are two words or more.

    Args:
        words: the text as words, each a non-empty list of token ids.
        mask_id: the tokenizer's mask token.
        rng: the random source (one per data set and epoch, so runs repeat).
        ratio: fraction of the words to mask, in [0, 1).
        poisson_lambda: mean span length.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio: must be in [0, 1), got {ratio!r}")
    if not poisson_lambda > 0:
        raise ValueError(f"poisson_lambda: must be > 0, got {poisson_lambda!r}")
    if not words or any(not w for w in words):
        raise ValueError("words: a text of at least one word, each word at least one token")
    n = len(words)
    to_mask = min(round(ratio * n), n - 1)
    np_rng = np.random.default_rng(rng.getrandbits(63))
    lengths: list[int] = []
    while sum(lengths) < to_mask or not lengths:  # at least one span: a zero-length one inserts a mask
        lengths.append(int(np_rng.poisson(poisson_lambda)))
    lengths[-1] -= sum(lengths) - to_mask
    kept = n - to_mask
    # Each span sits in its own gap between kept words (kept + 1 gaps): spans never touch. More
    # spans than gaps: the extra ones join others (the masked word count stays exact).
    while len(lengths) > kept + 1:
        extra = lengths.pop(rng.randrange(len(lengths)))
        lengths[rng.randrange(len(lengths))] += extra
    gaps = sorted(rng.sample(range(kept + 1), len(lengths)))
    span_at = dict(zip(gaps, lengths, strict=True))
    out: list[int] = []
    i = 0
    for gap in range(kept + 1):
        if gap in span_at:
            out.append(mask_id)
            i += span_at[gap]  # the masked words
        if gap < kept:
            out.extend(words[i])
            i += 1
    return out


def split_words(ids: list[int], starts_word) -> list[list[int]]:
    """Token ids -> words: a new word begins at each id for which ``starts_word(id)`` is true
    (a byte-level BPE marks a leading space with 'Ġ')."""
    words: list[list[int]] = []
    for t in ids:
        if not words or starts_word(t):
            words.append([])
        words[-1].append(t)
    return words


# --- the denoising recipe's data and evaluation (data.format: denoising) -------------------

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
# BART's special tokens, in its vocabulary's order (ids 0-3), and its mask token.
BART_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def split_sentences(paragraphs: list[str]) -> list[str]:
    """The sentences of some paragraphs (split after . ! or ? and a space)."""
    return [s.strip() for p in paragraphs for s in _SENTENCE_END.split(p) if s.strip()]


def train_denoising_tokenizer(texts: list[str], vocab_size: int):
    """A byte-level BPE trained on ``texts`` with BART's special tokens (<s>=0, <pad>=1, </s>=2,
    <unk>=3, <mask>=4) and its ``<s> ... </s>`` around each text: a vocabulary for a BART trained
    from scratch."""
    from tokenizers import ByteLevelBPETokenizer, processors

    from zoo.tokenizer import Tokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=vocab_size, special_tokens=BART_SPECIALS, show_progress=False)
    backend = bpe._tokenizer  # the tokenizers.Tokenizer inside the convenience wrapper
    backend.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return Tokenizer(backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def mask_token_id(tokenizer) -> int:
    mask = tokenizer.backend.token_to_id("<mask>")
    if mask is None:
        raise ValueError("tokenizer: text infilling needs a <mask> token, and this tokenizer has none")
    return mask


def denoising_examples(
    tokenizer, texts: list[str], max_len: int, seed: int, copies: int = 1, ratio: float = 0.3, poisson_lambda=3.0
) -> list[dict]:
    """Each text ``copies`` times, each with its own noise: ``input_ids`` the noised text, ``labels``
    the original, both as the tokenizer frames a text (``<s> ... </s>`` for BART's) and cut to
    ``max_len`` tokens."""
    rng = random.Random(seed)
    mask = mask_token_id(tokenizer)
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    head = [bos] if bos is not None else []

    def starts_word(t: int) -> bool:
        return tokenizer.backend.id_to_token(t).startswith("Ġ")  # byte-level BPE's leading space

    out = []
    for text in texts:
        ids = tokenizer.encode(text, add_special_tokens=False)[: max_len - len(head) - 1]
        if not ids:
            continue
        words = split_words(ids, starts_word)
        labels = torch.tensor([*head, *ids, eos])
        for _ in range(copies):
            noised = text_infilling(words, mask, rng, ratio, poisson_lambda)
            out.append({"input_ids": torch.tensor([*head, *noised, eos]), "labels": labels})
    return out


def reconstruction_report(model, tokenizer, examples: list[dict], max_new_tokens: int, num_beams: int = 1,
                          length_penalty: float = 1.0) -> dict:  # fmt: skip
    """Reconstruct noised texts with ``zoo.generate`` (the model's forced tokens included, as
    transformers' generate uses BART's): exact matches and chrF (sacrebleu) against the originals."""
    import sacrebleu

    from zoo.generation import generate
    from zoo.train.data import collate

    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    batch = collate([{"input_ids": e["input_ids"]} for e in examples], pad)
    beams = {"num_beams": num_beams, "length_penalty": length_penalty} if num_beams > 1 else {}
    limit = model.config.max_seq_len
    new = min(max_new_tokens, limit - 1) if limit is not None else max_new_tokens
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        out = generate(model, batch["input_ids"].to(device), batch["attention_mask"].to(device), max_new_tokens=new,
                       eos_token_id=eos, pad_token_id=pad, **beams)  # fmt: skip
    finally:
        model.train(was_training)
    hypotheses = []
    for row in out[:, 1:].tolist():
        end = row.index(eos) if eos in row else len(row)
        hypotheses.append(tokenizer.decode(row[:end]).strip())
    references = [tokenizer.decode(e["labels"].tolist()).strip() for e in examples]
    return {
        "exact_match": sum(h == r for h, r in zip(hypotheses, references, strict=True)) / len(examples),
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
        "reconstructions": hypotheses,
        "references": references,
        "sources": [tokenizer.decode(e["input_ids"].tolist(), skip_special_tokens=False) for e in examples],
    }
