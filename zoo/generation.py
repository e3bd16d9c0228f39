"""Text generation for decoder-only LMs: greedy, sampling, beam search and streaming over a KV cache.

``generate(model, input_ids, ...)`` takes transformers' keyword names (max_new_tokens, do_sample,
temperature, top_k, top_p, repetition_penalty, num_beams, length_penalty, early_stopping,
eos_token_id, pad_token_id) and follows its order of logits processing and its beam search, so
greedy and beam outputs are token for token those of transformers on the same weights. The
result holds the prompt followed by the new tokens. ``stream(...)`` yields each step's tokens as
they come; ``Decoder`` is the incremental state under both (tokens, mask, KV cache).

Order of logits processing, as in transformers: repetition penalty, then min_new_tokens (end
tokens banned), then, when sampling, temperature, top-k and top-p.
"""

import contextlib
import difflib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, fields

import torch
from torch import nn
from torch.nn import functional as F

# Added to scores that must never win (finished or banned candidates), as transformers does:
# a finite value keeps the beam arithmetic free of inf - inf.
NEG = -1.0e9


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding options; see ``generate`` for what each does. Checked at construction: a bad
    value raises ``ValueError`` naming the argument."""

    max_new_tokens: int = 20
    min_new_tokens: int = 0
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    repetition_penalty: float = 1.0
    num_beams: int = 1
    length_penalty: float = 1.0
    early_stopping: bool | str = False
    eos_token_id: tuple[int, ...] = field(default=())
    pad_token_id: int | None = None
    seed: int | None = None
    use_cache: bool = True

    def __post_init__(self):
        eos = self.eos_token_id
        eos = () if eos is None else (eos,) if isinstance(eos, int) else tuple(eos)
        object.__setattr__(self, "eos_token_id", eos)
        for name, low in (("max_new_tokens", 1), ("min_new_tokens", 0), ("num_beams", 1)):
            value = getattr(self, name)
            if not _is_int(value) or value < low:
                raise ValueError(f"{name}: must be an integer >= {low}, got {value!r}")
        if self.min_new_tokens > self.max_new_tokens:
            raise ValueError(f"min_new_tokens: {self.min_new_tokens} is more than max_new_tokens={self.max_new_tokens}")
        for name in ("eos_token_id", "pad_token_id", "seed"):
            values = getattr(self, name)
            for v in values if isinstance(values, tuple) else (values,):
                if v is not None and (not _is_int(v) or v < 0):
                    raise ValueError(f"{name}: must be a non-negative integer, got {v!r}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty: must be > 0 (1.0 is no penalty), got {self.repetition_penalty!r}")
        if self.early_stopping not in (True, False, "never"):
            raise ValueError(f"early_stopping: choose True, False or 'never', got {self.early_stopping!r}")
        if self.do_sample:
            if not self.temperature > 0:
                raise ValueError(
                    f"temperature: must be > 0 when sampling, got {self.temperature!r} "
                    "(for the most likely token every step, use do_sample=False)"
                )
            if self.top_k is not None and (not _is_int(self.top_k) or self.top_k < 0):
                raise ValueError(f"top_k: must be an integer >= 1 (0 or None: no top-k), got {self.top_k!r}")
            if self.top_p is not None and not 0 < self.top_p <= 1:
                raise ValueError(f"top_p: must be in (0, 1], got {self.top_p!r}")
            if self.num_beams > 1:
                raise ValueError("num_beams: beam search is deterministic here; use do_sample=False with num_beams > 1")
        else:
            # Sampling options without sampling would be silently ignored; say so instead.
            ignored = {"temperature": self.temperature != 1.0, "top_k": self.top_k, "top_p": self.top_p is not None}
            for name, set_ in ignored.items():
                if set_:
                    raise ValueError(f"{name}: only used when sampling; pass do_sample=True")
        if self.num_beams == 1:
            for name, set_ in (("length_penalty", self.length_penalty != 1.0), ("early_stopping", self.early_stopping)):
                if set_:
                    raise ValueError(f"{name}: only used by beam search; pass num_beams > 1")

    @property
    def pad(self) -> int | None:
        """The token finished rows are filled with: pad_token_id, else the first end token."""
        if self.pad_token_id is not None:
            return self.pad_token_id
        return self.eos_token_id[0] if self.eos_token_id else None


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Logits processing: each takes and returns float scores (N, vocab).


def apply_repetition_penalty(
    scores: torch.Tensor, sequences: torch.Tensor, penalty: float, start: torch.Tensor | None = None
) -> torch.Tensor:
    """Penalise every token already in a row (CTRL's penalty, as transformers applies it): a
    positive score is divided by ``penalty``, a negative one multiplied, once per token.

    Args:
        scores: (N, V) next-token scores.
        sequences: (N, L) the tokens so far.
        penalty: > 1 discourages repeats, < 1 encourages them.
        start: (N,) first real position of each row; the left padding before it is not counted.
    """
    V = scores.shape[-1]
    ids = sequences
    if start is not None:
        before = torch.arange(ids.shape[1], device=ids.device)[None, :] < start[:, None]  # (N, L)
        ids = ids.masked_fill(before, V)  # column V is a dummy past the vocabulary
    padded = F.pad(scores, (0, 1))  # (N, V + 1)
    picked = padded.gather(1, ids)
    picked = torch.where(picked < 0, picked * penalty, picked / penalty)
    return padded.scatter(1, ids, picked)[:, :V]


def apply_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k highest scores of each row (ties with the k-th kept too); the rest become -inf."""
    kth = scores.topk(min(k, scores.shape[-1]), dim=-1).values[:, -1:]  # (N, 1)
    return scores.masked_fill(scores < kth, float("-inf"))


def apply_top_p(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filtering: keep the smallest set of most likely tokens whose probabilities sum to at
    least ``p``; the tail becomes -inf. A token is dropped when the tokens more likely than it
    already hold ``p``; the most likely token always stays."""
    ordered, order = scores.sort(dim=-1, descending=True)
    probs = ordered.softmax(dim=-1)
    mass_before = probs.cumsum(dim=-1) - probs  # (N, V) probability of the tokens ranked above
    drop_sorted = mass_before >= p
    drop_sorted[:, 0] = False
    drop = drop_sorted.scatter(1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


class _Processor:
    """The logits processing of one generate call, in transformers' order."""

    def __init__(self, config: GenerationConfig, prompt_len: int, start: torch.Tensor | None, device):
        self.c = config
        self.prompt_len = prompt_len
        self.start = start
        self.eos = torch.tensor(config.eos_token_id, device=device) if config.eos_token_id else None

    def __call__(self, scores: torch.Tensor, sequences: torch.Tensor) -> torch.Tensor:
        c = self.c
        if c.repetition_penalty != 1.0:
            scores = apply_repetition_penalty(scores, sequences, c.repetition_penalty, self.start)
        if self.eos is not None and sequences.shape[1] - self.prompt_len < c.min_new_tokens:
            scores = scores.index_fill(1, self.eos, float("-inf"))
        if c.do_sample:
            if c.temperature != 1.0:
                scores = scores / c.temperature
            if c.top_k:
                scores = apply_top_k(scores, c.top_k)
            if c.top_p is not None and c.top_p < 1.0:
                scores = apply_top_p(scores, c.top_p)
        return scores


class Decoder:
    """Incremental decoding state of a causal LM: the tokens so far, their mask, the KV cache.

    Args:
        model: a ``zoo.lm.CausalLM`` (any decoder family).
        input_ids: (B, T) prompt, left-padded when rows differ in length.
        attention_mask: (B, T) 1 for real tokens, 0 for padding; None when nothing is padded.
        max_new_tokens: how many tokens will be appended at most; sizes the cache.
        use_cache: keep past keys and values (a static cache, or a rolling window for
            sliding-window models); False recomputes the whole prefix every step.

    ``logits()`` runs the model on what it has not seen yet and returns the next-token logits;
    ``append(tokens)`` adds one token per row; ``reorder(rows)`` selects rows (beam search).
    """

    def __init__(
        self,
        model,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 1,
        use_cache: bool = True,
    ):
        B, T = input_ids.shape
        self.model = model
        capacity = T + max_new_tokens
        self.ids = input_ids.new_zeros(B, capacity)
        self.ids[:, :T] = input_ids
        self.mask = torch.ones(B, capacity, dtype=torch.long, device=input_ids.device)
        # Without padding the model needs no mask at all: positions are 0..L-1 and only the
        # causal structure matters, which skips building and applying a padding mask every step.
        self.padded = attention_mask is not None and not bool(attention_mask.bool().all())
        if self.padded:
            self.mask[:, :T] = attention_mask
        self.length = T
        self.cache = model.new_cache(B, capacity) if use_cache else None
        self._seen = 0  # tokens the cache holds

    @property
    def sequences(self) -> torch.Tensor:
        """(B, L) the prompt and the tokens appended so far."""
        return self.ids[:, : self.length]

    def logits(self) -> torch.Tensor:
        """Next-token logits (B, vocab) in float32."""
        start = self._seen if self.cache is not None else 0
        mask = self.mask[:, : self.length] if self.padded else None
        out = self.model(self.ids[:, start : self.length], attention_mask=mask, cache=self.cache, logits_to_keep=1)
        self._seen = self.length
        return out.logits[:, -1].float()

    def append(self, tokens: torch.Tensor) -> None:
        """Add one token (B,) to every row."""
        if self.length == self.ids.shape[1]:
            raise ValueError(f"max_new_tokens: this decoder was sized for {self.ids.shape[1]} tokens and is full")
        self.ids[:, self.length] = tokens
        self.length += 1

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows ``rows`` (in that order; repeats allowed), cache included."""
        self.ids = self.ids.index_select(0, rows)
        self.mask = self.mask.index_select(0, rows)
        if self.cache is not None:
            self.cache.reorder(rows)


def _check_inputs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, c: GenerationConfig) -> None:
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__
        raise ValueError(f"input_ids: expected a (batch, seq) tensor of token ids, got {shape}")
    B, T = input_ids.shape
    if B == 0 or T == 0:
        raise ValueError(f"input_ids: empty prompt (shape {(B, T)}); give at least one token per row")
    if input_ids.is_floating_point():
        raise ValueError(f"input_ids: expected integer token ids, got {input_ids.dtype}")
    context = model.config.max_seq_len
    if T > context:
        raise ValueError(f"input_ids: the prompt has {T} tokens, more than the model's context (max_seq_len={context})")
    if T + c.max_new_tokens > context:
        raise ValueError(
            f"max_new_tokens: {T} prompt tokens + {c.max_new_tokens} new tokens is past the model's context "
            f"(max_seq_len={context}); ask for at most {context - T}"
        )
    vocab = model.config.vocab_size
    for name in ("eos_token_id", "pad_token_id"):
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
    right = (attention_mask[:, -1] == 0).nonzero().flatten().tolist()
    if right:
        raise ValueError(
            f"attention_mask: rows {right} end in padding; generation appends after the last column, so pad "
            "on the left (tokenizer padding_side='left')"
        )


def _prepare(model, input_ids, attention_mask, generator, options) -> tuple[GenerationConfig, torch.Generator | None]:
    known = [f.name for f in fields(GenerationConfig)]
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; options are {', '.join(known)}"
            raise ValueError(f"{name}: not a generation option{hint}")
    c = GenerationConfig(**options)
    _check_inputs(model, input_ids, attention_mask, c)
    if generator is not None and c.seed is not None:
        raise ValueError("seed: pass either seed or generator, not both")
    if c.seed is not None:
        generator = torch.Generator(device=model.device).manual_seed(c.seed)
    if generator is not None and not c.do_sample:
        raise ValueError("generator: only used when sampling; pass do_sample=True")
    return c, generator


def _first_real(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B,) index of each row's first real token (its amount of left padding)."""
    return None if attention_mask is None else (attention_mask != 0).int().argmax(dim=1)


class _Sampler:
    """Greedy or sampled decoding, one step per call; the work runs in inference mode (no
    autograd bookkeeping), while the caller, between steps, stays in whatever mode it was in."""

    @torch.inference_mode()
    def __init__(self, model, input_ids, attention_mask, c: GenerationConfig, generator):
        B, T = input_ids.shape
        self.c, self.generator = c, generator
        self.decoder = Decoder(model, input_ids, attention_mask, c.max_new_tokens, use_cache=c.use_cache)
        self.process = _Processor(c, T, _first_real(attention_mask), input_ids.device)
        self.unfinished = torch.ones(B, dtype=torch.bool, device=input_ids.device)
        self.steps_left = c.max_new_tokens
        self.last: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        if self.steps_left == 0:
            return True
        return self.process.eos is not None and not self.unfinished.any()

    @torch.inference_mode()
    def step(self) -> torch.Tensor:
        """The next (B,) tokens."""
        if self.last is not None:
            self.decoder.append(self.last)
        scores = self.process(self.decoder.logits(), self.decoder.sequences)
        if self.c.do_sample:
            tokens = torch.multinomial(scores.softmax(dim=-1), 1, generator=self.generator).squeeze(1)
        else:
            tokens = scores.argmax(dim=-1)
        eos = self.process.eos
        if eos is not None:  # rows that have stopped get the pad token, and stay stopped
            tokens = torch.where(self.unfinished, tokens, self.c.pad)
            self.unfinished &= ~torch.isin(tokens, eos)
        self.steps_left -= 1
        self.last = tokens
        return tokens


def _sample_steps(model, input_ids, attention_mask, c: GenerationConfig, generator) -> Iterator[torch.Tensor]:
    """Greedy or sampled decoding: yields the (B,) tokens of each step."""
    sampler = _Sampler(model, input_ids, attention_mask, c, generator)
    while not sampler.done:
        yield sampler.step().clone()  # a clone outside inference mode is an ordinary tensor


def _beam_search(model, input_ids, attention_mask, c: GenerationConfig) -> torch.Tensor:
    """Beam search as transformers runs it (vectorised over the batch), returning the best beam.

    Each step keeps the ``keep`` best (beam, token) continuations by summed log-probability, the
    ``num_beams`` best of those that did not end go on, and those that ended (an end token, or
    the length limit) join each row's finished hypotheses scored by sum / length**length_penalty.
    """
    B, T = input_ids.shape
    K, max_len, lp_exp = c.num_beams, T + c.max_new_tokens, c.length_penalty
    device = input_ids.device
    decoder = Decoder(model, input_ids, attention_mask, c.max_new_tokens, use_cache=c.use_cache)
    start = _first_real(attention_mask)
    process = _Processor(c, T, start.repeat_interleave(K) if start is not None else None, device)
    eos = process.eos
    keep = max(2, 1 + len(c.eos_token_id)) * K  # enough that num_beams survive even if many end
    fill = c.pad if c.pad is not None else 0  # only ever visible after an end token

    logits = decoder.logits()  # the prompt once per row, then copied into its beams
    expand = torch.arange(B, device=device).repeat_interleave(K)
    decoder.reorder(expand)
    logits = logits.index_select(0, expand)

    running = torch.full((B, K, max_len), fill, dtype=input_ids.dtype, device=device)
    running[:, :, :T] = input_ids[:, None]
    running_score = torch.zeros(B, K, device=device)
    running_score[:, 1:] = NEG  # all beams start equal: only the first may expand at step one
    done_seq = running.clone()
    done_score = torch.full((B, K), NEG, device=device)
    done = torch.zeros(B, K, dtype=torch.bool, device=device)
    done_len = torch.zeros(B, K, dtype=torch.long, device=device)  # new tokens in each finished hypothesis
    improvable = torch.ones(B, 1, dtype=torch.bool, device=device)
    in_top = torch.arange(keep, device=device) < K  # only the num_beams best may finish
    row_offset = torch.arange(B, device=device)[:, None] * K

    for cur in range(T, max_len):
        logprobs = process(logits.log_softmax(dim=-1), running[:, :, :cur].reshape(B * K, cur))
        V = logprobs.shape[-1]
        total = (logprobs.view(B, K, V) + running_score[:, :, None]).view(B, K * V)
        cand_score, flat = total.topk(keep, dim=1)  # (B, keep)
        parent, token = flat // V, flat % V
        cand = running.gather(1, parent[:, :, None].expand(-1, -1, max_len)).clone()  # (B, keep, max_len)
        cand[:, :, cur] = token
        cand_row = parent + row_offset  # flat decoder row of each candidate's parent
        ended = torch.zeros_like(in_top).expand(B, keep) if eos is None else torch.isin(token, eos)
        if cur + 1 >= max_len:
            ended = torch.ones_like(ended)

        # The num_beams best continuations that did not end run on.
        live_score = cand_score + ended.float() * NEG
        pick = live_score.topk(K, dim=1).indices
        running = cand.gather(1, pick[:, :, None].expand(-1, -1, max_len))
        running_score = live_score.gather(1, pick)
        rows = cand_row.gather(1, pick)

        # Those that ended compete with the finished hypotheses for the num_beams places.
        just = ended & in_top
        final = cand_score / ((cur + 1 - T) ** lp_exp)
        final += (done.all(dim=1, keepdim=True) & (c.early_stopping is True)).float() * NEG
        final += (~improvable).float() * NEG
        final += (~just) * NEG
        merged = torch.cat((done_score, final), dim=1)
        best = merged.topk(K, dim=1).indices
        done_seq = torch.cat((done_seq, cand), dim=1).gather(1, best[:, :, None].expand(-1, -1, max_len))
        done_score = merged.gather(1, best)
        done = torch.cat((done, just), dim=1).gather(1, best)
        done_len = torch.cat((done_len, torch.full_like(cand_row, cur + 1 - T)), dim=1).gather(1, best)

        # Can a running beam still beat the worst finished one? (transformers' heuristic: with
        # early_stopping="never" and a positive length penalty it assumes the longest length.)
        best_len = (max_len if c.early_stopping == "never" and lp_exp > 0 else cur + 1) - T
        best_running = running_score[:, :1] / (best_len**lp_exp)
        worst_done = torch.where(done, done_score.min(dim=1, keepdim=True).values, NEG)
        improvable = improvable & (best_running > worst_done).any(dim=1, keepdim=True)
        all_done = bool(done.all()) and c.early_stopping is True
        if not improvable.any() or all_done or bool(ended.all()):
            break
        decoder.reorder(rows.flatten())
        decoder.append(running[:, :, cur].flatten())
        logits = decoder.logits()

    return done_seq[:, 0, : T + int(done_len[:, 0].max())]


@contextlib.contextmanager
def _decode_layout(model, rows: int):
    """Store the projection weights column-major while a batch of ``rows`` > 1 decodes on CPU.

    A decoding step multiplies a few rows by each weight. For such skinny products, MKL's
    kernel for ``x @ W`` with W stored (in, out) ran about 1.5x faster than for ``x @ W.T`` with
    W stored (out, in) (nn.Linear's layout) at batch 8 (GPT-2 124M: 39 vs 59 ms a step); at
    batch 1 both are bound by memory bandwidth and equal, so nothing is moved. Same values,
    same Parameter objects; the layout is restored on exit, whatever happens.
    """
    if rows < 2 or model.device.type != "cpu":
        yield
        return
    weights = {id(m.weight): m.weight for m in model.modules() if isinstance(m, nn.Linear)}
    if getattr(model, "lm_head", True) is None:  # tied head: the embedding is the output projection
        weights[id(model.embed.weight)] = model.embed.weight
    moved = [w for w in weights.values() if w.dim() == 2 and w.is_contiguous()]
    with torch.no_grad():
        for w in moved:
            w.data = w.data.t().contiguous().t()  # (out, in) view of (in, out) storage
    try:
        yield
    finally:
        with torch.no_grad():
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
    seed: int | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
    streamer: Callable[[torch.Tensor], None] | None = None,
    **unknown,
) -> torch.Tensor:
    """Continue each prompt; returns (B, T + new) token ids: the prompt, then the new tokens.

    Args:
        model: a decoder-only zoo model (``zoo.lm.CausalLM``).
        input_ids: (B, T) prompts; rows of different lengths are padded on the left.
        attention_mask: (B, T) 1 for real tokens, 0 for left padding (None: nothing padded).
        max_new_tokens: the most tokens to add; prompt + new must fit ``max_seq_len``.
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
        pad_token_id: fills the rows that have stopped (default: the first end token).
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
                best = _beam_search(model, input_ids, attention_mask, c)
            return best.clone()  # an ordinary tensor, usable with autograd later
        new = []
        for tokens in _sample_steps(model, input_ids, attention_mask, c, generator):
            new.append(tokens)
            if streamer is not None:
                streamer(tokens)
    return torch.cat([input_ids, torch.stack(new, dim=1).to(input_ids.dtype)], dim=1)


def stream(
    model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **options
) -> Iterator[torch.Tensor]:
    """Like ``generate`` (same options, greedy or sampling), but yields each step's (B,) new
    tokens as soon as they are chosen. Arguments are checked before the first token."""
    generator = options.pop("generator", None)
    c, generator = _prepare(model, input_ids, attention_mask, generator, options)
    if c.num_beams > 1:
        raise ValueError("num_beams: beam search picks its tokens only at the end; stream with num_beams=1")

    return _sample_steps(model, input_ids, attention_mask, c, generator)


class TextStreamer:
    """A ``streamer`` for ``generate`` that writes the text of one row as its tokens arrive.

    Args:
        tokenizer: a ``zoo.tokenizer.Tokenizer`` (anything with ``decode(ids)``).
        write: receives each new piece of text (default: print to stdout at once).

    Each step decodes the tokens so far and writes what was not written yet; a piece that ends
    inside a multi-byte character waits for the token that completes it.
    """

    def __init__(self, tokenizer, write: Callable[[str], None] | None = None):
        self.tokenizer = tokenizer
        self.write = write or (lambda text: print(text, end="", flush=True))
        self.ids: list[int] = []
        self.written = 0

    def __call__(self, tokens: torch.Tensor) -> None:
        if tokens.numel() != 1:
            raise ValueError(f"streamer: TextStreamer writes one row, got a batch of {tokens.numel()}")
        self.ids.append(int(tokens))
        text = self.tokenizer.decode(self.ids)
        if not text.endswith("\ufffd"):  # U+FFFD: the bytes of a character are still arriving
            self.write(text[self.written :])
            self.written = len(text)
