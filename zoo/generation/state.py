"""Decoding states: what the search loops talk to, one per kind of model.

A model offers ``start_decoding(input_ids, attention_mask, max_new_tokens, use_cache)``, which
checks the inputs against the model and returns a state with this small interface:

- ``sequences``: (N, L) the tokens the output holds so far (a causal LM's prompt and new tokens;
  an encoder-decoder's decoder start token and new tokens);
- ``prompt_len``: how many of them were there before the first new token;
- ``first_real``: (N,) each row's first real position (left padding before it) or None, for the
  repetition penalty;
- ``logits()``: (N, vocab) float32 next-token logits, running the model on what it has not seen;
- ``greedy_tokens()``: (N,) their argmax, or None where the state cannot give it without them;
- ``append(tokens)``: add one token (N,) per row;
- ``reorder(rows)``: keep rows ``rows`` (beam search), every cache and per-row tensor with them.

Greedy, sampling, beam search and streaming (``zoo.generation.search``) are written against
this interface only.
"""

import torch


class DecodingState:
    """The token buffer every state shares: ``capacity`` columns, ``length`` of them filled."""

    def __init__(self, prefix: torch.Tensor, capacity: int, fill: int = 0):
        B, T = prefix.shape
        self.ids = prefix.new_full((B, capacity), fill)
        self.ids[:, :T] = prefix
        self.length = self.prompt_len = T
        self.first_real: torch.Tensor | None = None

    @property
    def sequences(self) -> torch.Tensor:
        """(N, L) the tokens so far."""
        return self.ids[:, : self.length]

    def append(self, tokens: torch.Tensor) -> None:
        """Add one token (N,) to every row."""
        if self.length == self.ids.shape[1]:
            raise ValueError(f"max_new_tokens: this decoder was sized for {self.ids.shape[1]} tokens and is full")
        self.ids[:, self.length] = tokens
        self.length += 1

    def greedy_tokens(self) -> torch.Tensor | None:
        """(N,) the argmax of the next-token logits, where the state can find it without them (a
        screened output projection); None otherwise, and the caller asks ``logits()``."""
        return None

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows ``rows`` (in that order; repeats allowed)."""
        self.ids = self.ids.index_select(0, rows)
        if self.first_real is not None:
            self.first_real = self.first_real.index_select(0, rows)


def _first_real(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """(B,) index of each row's first real token (its amount of left padding)."""
    return None if attention_mask is None else (attention_mask != 0).int().argmax(dim=1)


class Decoder(DecodingState):
    """Incremental decoding state of a causal LM: the tokens so far, their mask, the KV cache.

    Args:
        model: a ``zoo.lm.CausalLM`` (any decoder family).
        input_ids: (B, T) prompt, left-padded when rows differ in length.
        attention_mask: (B, T) 1 for real tokens, 0 for padding; None when nothing is padded.
        max_new_tokens: how many tokens will be appended at most; sizes the cache.
        use_cache: keep past keys and values (a static cache, or a rolling window for
            sliding-window models); False recomputes the whole prefix every step.
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
        context = model.config.max_seq_len
        if T > context:
            raise ValueError(
                f"input_ids: the prompt has {T} tokens, more than the model's context (max_seq_len={context})"
            )
        if T + max_new_tokens > context:
            raise ValueError(
                f"max_new_tokens: {T} prompt tokens + {max_new_tokens} new tokens is past the model's context "
                f"(max_seq_len={context}); ask for at most {context - T}"
            )
        if attention_mask is not None:
            right = (attention_mask[:, -1] == 0).nonzero().flatten().tolist()
            if right:
                raise ValueError(
                    f"attention_mask: rows {right} end in padding; generation appends after the last column, so pad "
                    "on the left (tokenizer padding_side='left')"
                )
        super().__init__(input_ids, T + max_new_tokens)
        self.model = model
        self.first_real = _first_real(attention_mask)
        self.mask = torch.ones(B, T + max_new_tokens, dtype=torch.long, device=input_ids.device)
        # Without padding the model needs no mask at all: positions are 0..L-1 and only the
        # causal structure matters, which skips building and applying a padding mask every step.
        self.padded = attention_mask is not None and not bool(attention_mask.bool().all())
        if self.padded:
            self.mask[:, :T] = attention_mask
        self.cache = model.new_cache(B, T + max_new_tokens) if use_cache else None
        self._seen = 0  # tokens the cache holds

    def logits(self) -> torch.Tensor:
        """Next-token logits (B, vocab) in float32."""
        start = self._seen if self.cache is not None else 0
        mask = self.mask[:, : self.length] if self.padded else None
        out = self.model(self.ids[:, start : self.length], attention_mask=mask, cache=self.cache, logits_to_keep=1)
        self._seen = self.length
        return out.logits[:, -1].float()

    def greedy_tokens(self) -> torch.Tensor | None:
        """With ``zoo.quant.screen_head``: the model's layers, then the screened argmax."""
        head = self.model.__dict__.get("screened_head")
        if head is None:
            return None
        start = self._seen if self.cache is not None else 0
        mask = self.mask[:, : self.length] if self.padded else None
        ids = self.ids[:, start : self.length]
        out = self.model(ids, attention_mask=mask, cache=self.cache, logits_to_keep=1, compute_logits=False)
        self._seen = self.length
        return head.argmax(out.last_hidden_state[:, -1])

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows ``rows`` (in that order; repeats allowed), cache included."""
        super().reorder(rows)
        self.mask = self.mask.index_select(0, rows)
        if self.cache is not None:
            self.cache.reorder(rows)


class Seq2SeqDecoder(DecodingState):
    """Incremental decoding state of an encoder-decoder (``zoo.seq2seq.Seq2SeqLM``).

    The sources are encoded once, here; the decoder starts from ``decoder_start_token_id`` in
    every row, and ``max_new_tokens`` counts decoder tokens after it (transformers' convention).
    With ``use_cache`` the decoder keeps its self-attention keys (growing each step) and the
    encoder output's cross-attention keys and values (projected on the first step, then reused).

    Args:
        model: a ``Seq2SeqLM``.
        input_ids: (B, S) sources, padded on either side.
        attention_mask: (B, S) 1 for real source tokens, 0 for padding; None when nothing is padded.
        max_new_tokens: decoder tokens to add at most.
        use_cache: False reruns the decoder over every target token (and the cross-attention
            projections) each step; the encoder runs once either way.
    """

    def __init__(
        self,
        model,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 1,
        use_cache: bool = True,
    ):
        B, S = input_ids.shape
        c = model.config
        if c.max_seq_len is not None:
            if S > c.max_seq_len:
                raise ValueError(
                    f"input_ids: the source has {S} tokens, more than the model's max_seq_len={c.max_seq_len}"
                )
            if 1 + max_new_tokens > c.max_seq_len:
                raise ValueError(
                    f"max_new_tokens: the decoder start token + {max_new_tokens} new tokens is past the model's "
                    f"max_seq_len={c.max_seq_len}; ask for at most {c.max_seq_len - 1}"
                )
        start = torch.full((B, 1), c.decoder_start_token_id, dtype=input_ids.dtype, device=input_ids.device)
        super().__init__(start, 1 + max_new_tokens)
        self.model = model
        padded = attention_mask is not None and not bool(attention_mask.bool().all())
        self.source_mask = attention_mask.bool() if padded else None
        self.encoder_out = model.encode(input_ids, self.source_mask).last_hidden_state  # (B, S, d_model)
        self.cache = model.new_cache(B, 1 + max_new_tokens) if use_cache else None
        self._seen = 0

    def logits(self) -> torch.Tensor:
        """Next-token logits (B, vocab) in float32."""
        start = self._seen if self.cache is not None else 0
        out = self.model.decode(
            self.ids[:, start : self.length], self.encoder_out, self.source_mask, cache=self.cache, logits_to_keep=1
        )
        self._seen = self.length
        return out.logits[:, -1].float()

    def reorder(self, rows: torch.Tensor) -> None:
        """Keep rows ``rows``: the tokens, the encoder output and its mask, both caches."""
        super().reorder(rows)
        self.encoder_out = self.encoder_out.index_select(0, rows)
        if self.source_mask is not None:
            self.source_mask = self.source_mask.index_select(0, rows)
        if self.cache is not None:
            self.cache.reorder(rows)
