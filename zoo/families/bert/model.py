"""BERT (Devlin et al. 2018): a post-LN bidirectional encoder, with its pooler and heads.

The layers are the shared ``TransformerLayer`` with ``prenorm=False``: each sub-layer is
``norm(x + f(x))``, so the stack ends in a norm and needs no final one (``norm`` is Identity).
"""

import torch
from torch import nn
from torch.nn import functional as F

from zoo.blocks import (
    Attention,
    FirstTokenPooler,
    LearnedPositions,
    TransformerLayer,
    check_token_ids,
    get_activation,
    make_mlp,
    make_norm,
)
from zoo.encoder import Encoder, classification_loss, init_encoder_weights, mean_pool
from zoo.families.bert.config import BertConfig
from zoo.outputs import ModelOutput


class Bert(Encoder):
    """The base encoder (transformers' BertModel): embeddings, post-LN layers and the pooler.

    Subclasses add a head; ``has_pooler`` says whether they keep the pooler, as transformers'
    classes do (the masked-LM model has none).
    """

    family = "bert"
    task = "base"
    has_pooler = True

    def __init__(self, config: BertConfig):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.pos = LearnedPositions(c.max_seq_len, c.d_model)
        self.token_type = nn.Embedding(c.type_vocab_size, c.d_model)
        self.embed_norm = make_norm("layernorm", c.d_model, c.norm_eps)
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(
                attn=Attention(c.d_model, c.n_heads, bias=True, dropout=c.attn_dropout),
                # The layer applies the residual dropout; the MLP's own would drop twice.
                mlp=make_mlp(c.mlp, c.d_model, c.d_ff),
                norm1=make_norm("layernorm", c.d_model, c.norm_eps),
                norm2=make_norm("layernorm", c.d_model, c.norm_eps),
                prenorm=False,
                dropout=c.dropout,
            )
            for _ in range(c.n_layers)
        )
        self.norm = nn.Identity()  # post-LN: every layer already ends in a norm
        self.pooler = FirstTokenPooler(c.d_model) if self.has_pooler else None
        self.build_head()
        init_encoder_weights(self, c.init_std)

    def build_head(self) -> None:
        """Subclasses build their head here (before the weights are initialised)."""

    def _check_inputs(self, input_ids, attention_mask, token_type_ids) -> None:
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected shape (batch, seq), got {tuple(input_ids.shape)}")
        check_token_ids(input_ids, self.config.vocab_size)
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
            if t is not None and t.shape != input_ids.shape:
                raise ValueError(
                    f"{name}: expected shape {tuple(input_ids.shape)} like input_ids, got {tuple(t.shape)}"
                )
        if token_type_ids is not None:
            check_token_ids(token_type_ids, self.config.type_vocab_size, "token_type_ids", "type_vocab_size")

    def trunk(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """Embeddings and layers: (B, T) ids -> final hidden states (B, T, d_model), hidden states."""
        self._check_inputs(input_ids, attention_mask, token_type_ids)
        T = input_ids.shape[1]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        # Positions count from 0 in every row, padding included, as BERT was trained (right padding).
        positions = torch.arange(T, device=input_ids.device)
        x = self.embed(input_ids) + self.token_type(token_type_ids) + self.pos(positions)  # (B, T, d_model)
        x = self.drop(self.embed_norm(x))
        return self.encode(x, attention_mask, output_hidden_states)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """Encode a batch.

        Args:
            input_ids: (B, T) token ids.
            attention_mask: (B, T) 1 for real tokens, 0 for padding.
            token_type_ids: (B, T) segment of each token (0 for sentence A, 1 for B); default 0.
            labels: targets for the head (not accepted by the base model, which has none).
            output_hidden_states: return the embeddings, each layer's output and the final one.
        """
        if labels is not None:
            raise ValueError(
                "labels: the base BERT model has no head; load task 'masked_lm' or 'sequence_classification'"
            )
        x, states = self.trunk(input_ids, attention_mask, token_type_ids, output_hidden_states)
        return ModelOutput(last_hidden_state=x, pooler_output=self.pooler(x), hidden_states=states)

    @torch.no_grad()
    def embed_sentences(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        normalize: bool = True,
    ) -> torch.Tensor:
        """Sentence embeddings (B, d_model): the mean of the final hidden states over real tokens,
        unit length when ``normalize`` (sentence-transformers' all-MiniLM recipe), so a dot
        product is the cosine similarity. Inference only (no gradients); to train on embeddings,
        apply ``zoo.encoder.mean_pool`` to ``last_hidden_state``."""
        x, _ = self.trunk(input_ids, attention_mask, token_type_ids)
        emb = mean_pool(x, attention_mask)
        return F.normalize(emb, dim=-1) if normalize else emb


class MaskedLMHead(nn.Module):
    """dense -> activation -> LayerNorm, then scores against the (tied) token embeddings plus a bias.

    Args:
        d_model: hidden width.
        vocab_size: number of token scores.
        activation: activation name (BERT's ``hidden_act``).
        eps: LayerNorm epsilon.
    """

    def __init__(self, d_model: int, vocab_size: int, activation: str, eps: float):
        super().__init__()
        self.dense = nn.Linear(d_model, d_model)
        self.act = get_activation(activation)
        self.norm = nn.LayerNorm(d_model, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor, embedding: torch.Tensor) -> torch.Tensor:
        """x (B, T, d_model), embedding (vocab, d_model) -> scores (B, T, vocab)."""
        return F.linear(self.norm(self.act(self.dense(x))), embedding, self.bias)


class BertForMaskedLM(Bert):
    """BERT with the masked-LM head (transformers' BertForMaskedLM): no pooler."""

    task = "masked_lm"
    has_pooler = False

    def build_head(self) -> None:
        c = self.config
        self.mlm = MaskedLMHead(c.d_model, c.vocab_size, c.mlp, c.norm_eps)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, output_hidden_states=False):
        """As ``Bert.forward``; ``labels`` (B, T) are the original ids at masked places, -100 elsewhere."""
        x, states = self.trunk(input_ids, attention_mask, token_type_ids, output_hidden_states)
        logits = self.mlm(x, self.embed.weight)  # (B, T, vocab)
        loss = None
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(
                    f"labels: expected shape {tuple(input_ids.shape)} like input_ids, got {tuple(labels.shape)}"
                )
            loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100)
        return ModelOutput(logits=logits, loss=loss, last_hidden_state=x, hidden_states=states)


class BertForSequenceClassification(Bert):
    """BERT with a linear classifier on the pooled [CLS] (transformers' BertForSequenceClassification)."""

    task = "sequence_classification"

    def build_head(self) -> None:
        c = self.config
        dropout = c.dropout if c.classifier_dropout is None else c.classifier_dropout
        self.classifier_drop = nn.Dropout(dropout)
        self.classifier = nn.Linear(c.d_model, c.n_labels)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, labels=None, output_hidden_states=False):
        """As ``Bert.forward``; ``labels`` (B,) class ids, or floats for regression (n_labels=1) and
        multi-label targets (B, n_labels); the loss is chosen as transformers chooses it."""
        x, states = self.trunk(input_ids, attention_mask, token_type_ids, output_hidden_states)
        pooled = self.pooler(x)
        logits = self.classifier(self.classifier_drop(pooled))  # (B, n_labels)
        loss = None
        if labels is not None:
            if labels.shape[0] != input_ids.shape[0]:
                raise ValueError(f"labels: {labels.shape[0]} rows for a batch of {input_ids.shape[0]}")
            loss = classification_loss(logits, labels, self.config.problem_type)
        return ModelOutput(logits=logits, loss=loss, last_hidden_state=x, pooler_output=pooled, hidden_states=states)
