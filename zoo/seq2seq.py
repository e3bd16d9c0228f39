"""Seq2SeqLM: the forward glue every encoder-decoder family shares (T5, BART, the original Transformer).

A family subclass builds ``encoder_layers``, ``encoder_norm``, ``decoder_layers`` (each a
``TransformerLayer`` with ``cross_attn``) and ``decoder_norm`` (``nn.Identity`` for post-LN
stacks), and writes three small hooks: ``embed_encoder`` and ``embed_decoder`` (tokens and
positions to vectors, with whatever scaling, norm and dropout the family has) and ``head``
(final hidden states to logits). It may also override ``encoder_bias`` / ``decoder_bias`` for an
additive attention bias (T5's relative buckets), computed once per stack and forward and shared
by its layers. This class runs the rest, with the same preamble as ``CausalLM`` and ``Encoder``
(``zoo.preamble``).

The config must have ``vocab_size``, ``max_seq_len`` (None: no limit), ``pad_token_id``,
``eos_token_id`` and ``decoder_start_token_id``. Inputs and outputs follow transformers'
seq2seq models: ``model(input_ids, attention_mask, decoder_input_ids, decoder_attention_mask,
labels)`` returns ``.logits``, ``.loss`` and ``.encoder_last_hidden_state``; with ``labels`` and
no ``decoder_input_ids`` the labels are shifted right behind ``decoder_start_token_id``.
"""

import abc
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from zoo.blocks.cache import ContextCache, KVCache
from zoo.modeling import ZooModel
from zoo.outputs import ModelOutput
from zoo.preamble import context_mask, prepare, run_stack


def shift_right(labels: torch.Tensor, decoder_start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Decoder inputs for teacher forcing: (B, T) labels -> (B, T) ``[start, labels[:-1]]``, with the
    ignored label -100 replaced by the pad token (transformers' ``shift_tokens_right``)."""
    shifted = labels.new_full(labels.shape, decoder_start_token_id)
    shifted[:, 1:] = labels[:, :-1]
    return shifted.masked_fill(shifted == -100, pad_token_id)


def seq2seq_loss(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy of logits (B, T, V) at t against labels (B, T) at t (the decoder inputs are
    already shifted); -100 labels are ignored. ``label_smoothing`` spreads that much target mass
    uniformly over the vocabulary (Szegedy et al. 2016, as the Transformer paper trains)."""
    if labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels: expected shape {tuple(logits.shape[:2])} like the decoder inputs, got {tuple(labels.shape)}"
        )
    return F.cross_entropy(
        logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100, label_smoothing=label_smoothing
    )


@dataclass
class Seq2SeqCache:
    """The decoder's two caches: self-attention keys that grow each step, and the cross-attention
    keys and values of the encoder output, projected once. Beam search reorders both together."""

    self_attn: KVCache
    cross_attn: ContextCache

    @property
    def length(self) -> int:
        return self.self_attn.length

    def reorder(self, rows: torch.Tensor) -> None:
        self.self_attn.reorder(rows)
        self.cross_attn.reorder(rows)

    def memory_bytes(self) -> int:
        return self.self_attn.memory_bytes() + self.cross_attn.memory_bytes()


class Seq2SeqLM(ZooModel, metaclass=abc.ABCMeta):
    task = "seq2seq_lm"
    # Subclasses set every one of these in __init__. No class-level defaults: a class attribute
    # would shadow the submodule nn.Module registers.
    encoder_layers: nn.ModuleList
    encoder_norm: nn.Module
    decoder_layers: nn.ModuleList
    decoder_norm: nn.Module

    # The family's hooks.

    @abc.abstractmethod
    def embed_encoder(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """(B, S) source ids and positions -> (B, S, d_model), the encoder's first layer input."""

    @abc.abstractmethod
    def embed_decoder(self, decoder_input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """(B, T) target ids and positions (past the cache) -> (B, T, d_model)."""

    @abc.abstractmethod
    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, T, d_model) final decoder states -> (B, T, vocab_size) logits."""

    def encoder_bias(self, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor | None:
        """Additive bias on the encoder's self-attention scores, (1 or B, n_heads, S, S); none by default."""
        return None

    def decoder_bias(self, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor | None:
        """Additive bias on the decoder's self-attention scores, (1 or B, n_heads, T, past + T); q_idx
        holds absolute indices (the cache offset included). None by default."""
        return None

    # What the base runs.

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs made from labels, behind the config's ``decoder_start_token_id``."""
        return shift_right(labels, self.config.decoder_start_token_id, self.config.pad_token_id)

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None) -> Seq2SeqCache:
        """Empty decoder caches for ``max_len`` target tokens (the cross-attention one fills on the first step)."""
        attn = self.decoder_layers[0].attn
        self_attn = KVCache(
            len(self.decoder_layers),
            batch_size,
            attn.n_kv_heads,
            attn.head_dim,
            max_len,
            dtype=dtype or self.dtype,
            device=self.device,
        )
        return Seq2SeqCache(self_attn, ContextCache(len(self.decoder_layers)))

    def encode(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, output_hidden_states: bool = False
    ) -> ModelOutput:
        """Run the encoder: (B, S) ids and 1/0 mask -> ``last_hidden_state`` (B, S, d_model) (and
        ``hidden_states``). Positions count 0 .. S-1 in every row, as transformers' do."""
        prep = prepare(
            input_ids,
            vocab_size=self.config.vocab_size,
            max_seq_len=self.config.max_seq_len,
            attention_mask=attention_mask,
        )
        x = self.embed_encoder(input_ids, prep.position_ids)  # (B, S, d_model)
        x, states = run_stack(
            self.encoder_layers,
            self.encoder_norm,
            x,
            checkpointing=self.gradient_checkpointing,
            output_hidden_states=output_hidden_states,
            bias=prep.bias(self.encoder_bias),
            **prep.mask_kwargs(causal=False),
        )
        return ModelOutput(last_hidden_state=x, hidden_states=states)

    def decode(
        self,
        decoder_input_ids: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Seq2SeqCache | None = None,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,
    ) -> ModelOutput:
        """Run the decoder over target ids, attending the encoder's output.

        Args:
            decoder_input_ids: (B, T) target ids (after what the cache holds).
            encoder_hidden_states: (B, S, d_model) from ``encode``.
            encoder_attention_mask: (B, S) 1 for real source tokens, 0 for padding.
            decoder_attention_mask: (B, T) (with a cache, (B, past + T)) padding of the targets;
                the causal mask applies in any case.
            position_ids: (B, T); default past .. past + T - 1.
            cache: a ``Seq2SeqCache`` from ``new_cache``: the self-attention keys are appended, the
                encoder's keys and values projected on the first call and reused after.
            logits_to_keep: if > 0, logits for the last this many positions only.
        """
        if encoder_hidden_states.dim() != 3 or encoder_hidden_states.shape[0] != decoder_input_ids.shape[0]:
            raise ValueError(
                f"encoder_hidden_states: expected shape (batch={decoder_input_ids.shape[0]}, src_len, d_model), "
                f"got {tuple(encoder_hidden_states.shape)}"
            )
        prep = prepare(
            decoder_input_ids,
            vocab_size=self.config.vocab_size,
            max_seq_len=self.config.max_seq_len,
            attention_mask=decoder_attention_mask,
            position_ids=position_ids,
            cache=cache.self_attn if cache is not None else None,
            name="decoder_input_ids",
        )
        x = self.embed_decoder(decoder_input_ids, prep.position_ids)  # (B, T, d_model)
        x, states = run_stack(
            self.decoder_layers,
            self.decoder_norm,
            x,
            checkpointing=self.gradient_checkpointing,
            output_hidden_states=output_hidden_states,
            bias=prep.bias(self.decoder_bias),
            cache=cache.self_attn if cache is not None else None,
            context=encoder_hidden_states,
            context_mask=context_mask(encoder_hidden_states, encoder_attention_mask),
            context_cache=cache.cross_attn if cache is not None else None,
            **prep.mask_kwargs(causal=True),
        )
        h = x[:, -logits_to_keep:] if logits_to_keep > 0 else x
        return ModelOutput(logits=self.head(h), last_hidden_state=x, hidden_states=states, cache=cache)

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        cache: Seq2SeqCache | None = None,
        output_hidden_states: bool = False,
        logits_to_keep: int = 0,
        label_smoothing: float = 0.0,
    ) -> ModelOutput:
        """Encode the source and decode the target, as transformers' ``*ForConditionalGeneration``.

        Args:
            input_ids: (B, S) source ids (not needed when ``encoder_hidden_states`` is given).
            attention_mask: (B, S) 1 for real source tokens, 0 for padding.
            decoder_input_ids: (B, T) target ids; default ``shift_right(labels)``.
            decoder_attention_mask: (B, T) padding of the targets.
            labels: (B, T) the tokens the decoder should predict at each position; -100 is ignored.
            encoder_hidden_states: (B, S, d_model) an encoder output to reuse instead of encoding.
            cache: a ``Seq2SeqCache`` (incremental decoding; see ``decode``).
            label_smoothing: for the loss (see ``seq2seq_loss``).
        """
        encoder_states = None
        if encoder_hidden_states is None:
            if input_ids is None:
                raise ValueError("input_ids: give the source ids (or encoder_hidden_states from encode)")
            encoded = self.encode(input_ids, attention_mask, output_hidden_states)
            encoder_hidden_states, encoder_states = encoded.last_hidden_state, encoded.hidden_states
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("decoder_input_ids: give decoder_input_ids, or labels to shift right")
            decoder_input_ids = self.shift_right(labels)
        out = self.decode(
            decoder_input_ids,
            encoder_hidden_states,
            encoder_attention_mask=attention_mask,
            decoder_attention_mask=decoder_attention_mask,
            cache=cache,
            output_hidden_states=output_hidden_states,
            logits_to_keep=logits_to_keep,
        )
        if labels is not None:
            out.loss = seq2seq_loss(out.logits, labels, label_smoothing)
        out.encoder_last_hidden_state = encoder_hidden_states
        out.encoder_hidden_states = encoder_states
        return out

    # Generation (zoo.generation talks to start_decoding only).

    def generation_defaults(self) -> dict:
        """Options ``generate`` takes from the config unless given: the end and pad tokens."""
        return {"eos_token_id": self.config.eos_token_id, "pad_token_id": self.config.pad_token_id}

    def start_decoding(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        max_new_tokens: int = 1,
        use_cache: bool = True,
    ):
        """Encode the sources once and return the decoding state (``zoo.generation.Seq2SeqDecoder``)."""
        from zoo.generation.state import Seq2SeqDecoder

        return Seq2SeqDecoder(self, input_ids, attention_mask, max_new_tokens, use_cache)

    def generate(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **options) -> torch.Tensor:
        """Translate the sources: (B, S) -> (B, 1 + new) decoder ids, starting with
        ``decoder_start_token_id``, as transformers returns them; see ``zoo.generation.generate``."""
        from zoo.generation import generate

        return generate(self, input_ids, attention_mask, **options)
