"""BERT's config: a post-LN bidirectional encoder with token types and learned positions."""

from dataclasses import dataclass

from zoo.config import Config, ConfigError
from zoo.encoder import PROBLEM_TYPES

# Plain (ungated) activations: BERT's feed-forward and masked-LM transform use one by name.
ACTIVATIONS = ("gelu", "gelu_tanh", "relu", "silu", "quick_gelu")


@dataclass(frozen=True)
class BertConfig(Config):
    vocab_size: int = 30522
    max_seq_len: int = 512
    type_vocab_size: int = 2  # segments A/B of a sentence pair
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    norm_eps: float = 1e-12
    mlp: str = "gelu"  # activation of the feed-forward and of the masked-LM transform
    dropout: float = 0.1  # on embeddings and each sub-layer's output (transformers' hidden_dropout_prob)
    attn_dropout: float = 0.1  # on attention weights
    classifier_dropout: float | None = None  # before the classifier; None: ``dropout``
    n_labels: int = 2  # sequence classification outputs; 1 is regression
    problem_type: str | None = None  # None: inferred from n_labels and the labels' dtype, as transformers does
    pad_token_id: int | None = 0  # the tokenizer's [PAD]; kept for export, padding itself is the attention_mask
    init_std: float = 0.02

    def __post_init__(self):
        self._positive("vocab_size", "max_seq_len", "type_vocab_size", "d_model", "n_layers", "n_heads", "d_ff")
        self._positive("n_labels")
        self._divisible("d_model", "n_heads")
        self._choice("mlp", ACTIVATIONS)
        self._fraction("dropout", "attn_dropout")
        if self.classifier_dropout is not None:
            self._fraction("classifier_dropout")
        if self.problem_type is not None:
            self._choice("problem_type", PROBLEM_TYPES)
        if self.pad_token_id is not None and not 0 <= self.pad_token_id < self.vocab_size:
            raise ConfigError(f"pad_token_id: {self.pad_token_id} is outside vocab_size={self.vocab_size}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads
