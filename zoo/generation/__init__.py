"""Text generation: greedy, sampling, beam search and streaming, for decoder-only LMs and
encoder-decoders alike.

``generate(model, input_ids, ...)`` takes transformers' keyword names (max_new_tokens, do_sample,
temperature, top_k, top_p, repetition_penalty, num_beams, length_penalty, early_stopping,
eos_token_id, pad_token_id, forced_bos_token_id, forced_eos_token_id) and follows its order of
logits processing and its beam search, so greedy and beam outputs are token for token those of
transformers on the same weights. For a causal LM the result holds the prompt followed by the
new tokens; for an encoder-decoder the decoder start token followed by the new tokens (the
source is not part of it). ``stream(...)`` yields each step's tokens as they come.

The package by concern: ``config`` (GenerationConfig), ``processing`` (the logits processors,
in transformers' order: repetition penalty, then min_new_tokens, then the forced first and last
tokens, then, when sampling, temperature, top-k and top-p), ``state`` (the decoding states
models return from ``start_decoding``: ``Decoder`` for causal LMs, ``Seq2SeqDecoder`` for
encoder-decoders), ``search`` (the loops) and ``streaming`` (TextStreamer).
"""

import contextlib
import difflib
from collections.abc import Callable, Iterator
from dataclasses import fields

import torch
from torch import nn

from zoo.blocks import onednn
from zoo.generation.config import GenerationConfig
from zoo.generation.processing import _Processor, apply_repetition_penalty, apply_top_k, apply_top_p
from zoo.generation.search import _Sampler, beam_search, sample_steps
from zoo.generation.state import Decoder, DecodingState, Seq2SeqDecoder
from zoo.generation.streaming import TextStreamer

__all__ = [
    "Decoder",
    "DecodingState",
    "GenerationConfig",
    "Seq2SeqDecoder",
    "TextStreamer",
    "_Processor",
    "apply_repetition_penalty",
    "apply_top_k",
    "apply_top_p",
    "generate",
    "stream",
]


def _check_inputs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, c: GenerationConfig) -> None:
    """What every model needs of its inputs; ``start_decoding`` checks the rest (context length,
    padding side) against the model."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids: expected a (batch, seq) tensor of token ids, got {shape}")
    B, T = input_ids.shape
    if B == 0 or T == 0:
        raise ValueError(f"input_ids: empty prompt (shape {(B, T)}); give at least one token per row")
    if input_ids.is_floating_point():
        raise ValueError(f"input_ids: expected integer token ids, got {input_ids.dtype}")
    vocab = model.config.vocab_size
    for name in ("eos_token_id", "pad_token_id", "forced_bos_token_id", "forced_eos_token_id"):
        values = getattr(c, name)
        for v in values if isinstance(values, tuple) else (values,):
            if v is not None and v >= vocab:
                raise ValueError(f"{name}: {v} is outside the model's vocab_size={vocab}")
    if attention_mask is None:
        return
    if attention_mask.shape != input_ids.shape:
        raise ValueError(
            f"attention_mask: expected shape {tuple(input_ids.shape)} like input_ids, got {tuple(attention_mask.shape)}"
        )
    if not ((attention_mask == 0) | (attention_mask == 1)).all():
        raise ValueError("attention_mask: expected 1 for real tokens and 0 for padding only")
    empty = (attention_mask == 0).all(dim=1).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"attention_mask: rows {empty} have no real token; every prompt needs at least one")


def _prepare(model, input_ids, attention_mask, generator, options) -> tuple[GenerationConfig, torch.Generator | None]:
    known = [f.name for f in fields(GenerationConfig)]
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; options are {', '.join(known)}"
            raise ValueError(f"{name}: not a generation option{hint}")
    for name, value in model.generation_defaults().items():
        if options.get(name) is None:
            options[name] = value
    c = GenerationConfig(**options)
    _check_inputs(model, input_ids, attention_mask, c)
    if generator is not None and c.seed is not None:
        raise ValueError("seed: pass either seed or generator, not both")
    if c.seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(c.seed)
    if generator is not None and not c.do_sample:
        raise ValueError("generator: only used when sampling; pass do_sample=True")
    return c, generator


@contextlib.contextmanager
def _decode_layout(model, rows: int):
    """The fastest fp32 kernels for decoding ``rows`` rows a step on CPU.

    - Up to ``zoo.blocks.onednn.MAX_ROWS`` (8) rows, where oneDNN is available: the float32
      linear layers run their small products through oneDNN (``zoo.blocks.onednn``), 1.7x
      (one row) and 1.5-3.5x (2 to 8 rows) faster than MKL's ``F.linear`` on GPT-2's layer
      weights; nothing is copied.
    - More rows (beam search over a batch, say): the projection weights are stored column-major
      while decoding. For such skinny products MKL's ``x @ W`` with W stored (in, out) ran about
      1.5x faster than ``x @ W.T`` with nn.Linear's (out, in) layout (GPT-2 124M at batch 8: 39
      against 59 ms a step). Same values, same Parameter objects; the layout is restored on
      exit, whatever happens.

    Not for a model whose decoding steps are compiled (``zoo.compile_decoding``): its graphs take
    the weights and their strides as fixed, so they stay as they are.
    """
    compiled = any(getattr(m, "compiled_decoding", False) for m in model.modules())
    if model.device.type != "cpu" or compiled:
        yield
        return
    if rows <= onednn.MAX_ROWS and onednn.available():
        with onednn.onednn_linears(model):
            yield
        return
    if rows < 2:
        yield
        return
    weights = {id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Linear)}
    if getattr(model, "lm_head", True) is None:  # tied head: the embedding is the output projection
        weights[id(model.embed.weight)] = model.embed.weight
    moved = [w for w in weights.values() if w.dim() == 2 and w.is_contiguous()]
    # Not inference tensors, even when the caller is in inference mode: the model may train later.
    with torch.inference_mode(False), torch.no_grad():
        for w in moved:
            w.data = w.data.t().contiguous().t()  # (out, in) view of (in, out) storage
    try:
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for w in moved:
                w.data = w.data.contiguous()


@torch.no_grad()
def generate(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int = 20,
    min_new_tokens: int = 0,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    repetition_penalty: float = 1.0,
    num_beams: int = 1,
    length_penalty: float = 1.0,
    early_stopping: bool | str = False,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
    forced_bos_token_id: int | list[int] | None = None,
    forced_eos_token_id: int | list[int] | None = None,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    streamer: Callable[[torch.Tensor], None] | None = None,
    **unknown,
) -> torch.Tensor:
    """Continue each prompt; returns (B, T + new) token ids: the prompt, then the new tokens. For an
    encoder-decoder, (B, 1 + new): the decoder start token, then the new tokens.

    Args:
        model: a zoo model with ``start_decoding`` (``zoo.lm.CausalLM``, ``zoo.seq2seq.Seq2SeqLM``).
        input_ids: (B, T) prompts, rows of different lengths padded on the left; for an
            encoder-decoder the sources (padded on either side).
        attention_mask: (B, T) 1 for real tokens, 0 for padding (None: nothing padded).
        max_new_tokens: the most tokens to add; prompt + new must fit ``max_seq_len`` (an
            encoder-decoder: start token + new).
        min_new_tokens: the end tokens are banned until this many tokens are added.
        do_sample: sample from the (processed) distribution instead of taking the most likely token.
        temperature: divide the logits by this before sampling (> 0; sampling only).
        top_k: sample among the k most likely tokens only (None or 0: all).
        top_p: sample among the smallest set of most likely tokens holding probability >= top_p.
        repetition_penalty: CTRL's penalty on tokens already in the row, prompt included
            (left padding excluded); 1.0 is none.
        num_beams: beam search with this many beams when > 1 (deterministic).
        length_penalty: beam search scores a finished hypothesis as sum of log-probs / length**this.
        early_stopping: beam search stops a row when it has num_beams finished hypotheses
            (True), when a heuristic says none can improve (False), or only when no running beam
            can beat the worst finished one at full length ("never").
        eos_token_id: end (stop) token id, or a list of them; a row stops after producing one.
            None: the model's default (``generation_defaults``: none for a causal LM, the
            config's for an encoder-decoder; pass [] for no end token there).
        pad_token_id: fills the rows that have stopped (default: the model's, else the first end token).
        forced_bos_token_id: the token chosen first whatever the logits (transformers' forced BOS,
            at the step where the sequence holds one token: an encoder-decoder's start token).
            None: the model's default (``generation_defaults``; [] for none).
        forced_eos_token_id: the end token(s) allowed, alone, at the last step max_new_tokens
            allows. None: the model's default (``generation_defaults``; [] for none).
        seed: seed of a private random generator, for reproducible sampling.
        generator: a ``torch.Generator`` to sample with (instead of ``seed``).
        use_cache: False recomputes the whole prefix each step (slow; for checking the cache).
        streamer: called with each step's (B,) new tokens as they are chosen (greedy and
            sampling; beam search knows its tokens only at the end). See also ``stream``.
    """
    options = dict(locals())
    for name in ("model", "input_ids", "attention_mask", "generator", "streamer", "unknown"):
        options.pop(name)
    options.update(unknown)  # rejected by name, with the closest option suggested
    c, generator = _prepare(model, input_ids, attention_mask, generator, options)
    if c.num_beams > 1 and streamer is not None:
        raise ValueError("streamer: beam search picks its tokens only at the end; stream with num_beams=1")
    with _decode_layout(model, rows=input_ids.shape[0] * c.num_beams):
        if c.num_beams > 1:
            with torch.inference_mode():
                best = beam_search(model, input_ids, attention_mask, c)
            return best.clone()  # an ordinary tensor, usable with autograd later
        sampler = _Sampler(model, input_ids, attention_mask, c, generator)
        new = []
        for tokens in sample_steps(sampler):
            new.append(tokens)
            if streamer is not None:
                streamer(tokens)
    return torch.cat([sampler.prefix, torch.stack(new, dim=1).to(input_ids.dtype)], dim=1)


def stream(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **options
) -> Iterator[torch.Tensor]:
    """Like ``generate`` (same options, greedy or sampling), but yields each step's (B,) new
    tokens as soon as they are chosen. Arguments are checked (and an encoder-decoder's sources
    encoded) before the first token."""
    generator = options.pop("generator", None)
    c, generator = _prepare(model, input_ids, attention_mask, generator, options)
    if c.num_beams > 1:
        raise ValueError("num_beams: beam search picks its tokens only at the end; stream with num_beams=1")
    return sample_steps(_Sampler(model, input_ids, attention_mask, c, generator))
