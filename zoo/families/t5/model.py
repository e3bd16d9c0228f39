"""T5 (Raffel et al. 2020) as transformers' T5ForConditionalGeneration and T5EncoderModel compute it.

The forward is ``zoo.seq2seq.Seq2SeqLM``'s (or ``zoo.encoder.Encoder``'s); this module builds the
parts. What sets T5 apart from BART and the original Transformer:

- no absolute positions: a learned bias per (head, relative-position bucket) is added to the
  self-attention scores, computed once per stack and forward (transformers computes it in the
  first layer and hands it down) and shared by every layer; bidirectional buckets in the
  encoder, causal ones in the decoder (whose query indices include the cache offset, so cached
  decoding sees the same bias). Cross-attention has none.
- attention without the 1/sqrt(head_dim) scale (folded into the query initialisation), and
  ``n_heads * head_dim`` need not equal ``d_model``;
- pre-norm layers with RMS norms (no mean subtraction, no bias, statistic in fp32) and a final
  norm in both stacks; no bias on any projection;
- v1.0 ties the output projection to the shared embedding and scales the decoder output by
  d_model**-0.5 before it; v1.1 / FLAN-T5 have an untied ``lm_head`` and no rescale.

T5 is known to overflow float16 (the feed-forward output of the public checkpoints passes 65,504);
transformers keeps ``wo`` in fp32 and clamps. zoo refuses float16 instead (a ValueError naming the
dtype, also under float16 autocast): bfloat16 has float32's range and works.
"""

import torch
from torch import nn
from torch.nn import functional as F

from zoo.blocks import Attention, RelativePositionBias, RMSNorm, TransformerLayer, check_token_ids, make_mlp
from zoo.encoder import Encoder
from zoo.families.t5.config import T5Config
from zoo.outputs import ModelOutput
from zoo.seq2seq import Seq2SeqLM


class FinalNorm(RMSNorm):
    """A stack's last norm, then dropout (T5's ``final_layer_norm`` and the stack's dropout)."""

    def __init__(self, dim: int, eps: float, dropout: float):
        super().__init__(dim, eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(super().forward(x))


def _layer(c: T5Config, cross: bool) -> TransformerLayer:
    def attn() -> Attention:
        return Attention(c.d_model, c.n_heads, head_dim=c.head_dim, bias=False, dropout=c.dropout, scale=1.0)

    return TransformerLayer(
        attn=attn(),
        # T5 drops the MLP's hidden activations; the layer drops its output (residual dropout).
        mlp=make_mlp(c.mlp, c.d_model, c.d_ff, bias=False, act_dropout=c.dropout),
        norm1=RMSNorm(c.d_model, c.norm_eps),
        norm2=RMSNorm(c.d_model, c.norm_eps),
        cross_attn=attn() if cross else None,
        norm_cross=RMSNorm(c.d_model, c.norm_eps) if cross else None,
        prenorm=True,
        dropout=c.dropout,
    )


def refuse_float16(x: torch.Tensor) -> None:
    """Raise where T5 would run in float16 (weights, or float16 autocast): its activations pass
    float16's largest value, 65,504, and would come back inf or NaN."""
    device = x.device.type
    autocast = torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
    if x.dtype == torch.float16 or autocast:
        raise ValueError(
            "dtype: T5 does not run in float16 (its feed-forward activations overflow float16's range of "
            "65,504 and the outputs turn inf/NaN); use bfloat16, which has float32's range, or float32"
        )


def init_t5_weights(model: nn.Module, c: T5Config) -> None:
    """transformers' T5 initialisation (``initializer_factor`` f): embeddings and lm_head N(0, f);
    queries N(0, f (d_model head_dim)^-1/2) (the attention's missing scale), keys, values, MLP
    inputs and bucket biases N(0, f d_model^-1/2), outputs N(0, f fan_in^-1/2); norm scales f."""
    f, d = c.init_factor, c.d_model
    for name, p in model.named_parameters():
        if p.dim() == 1:
            nn.init.constant_(p, f)
            continue
        if name in ("embed.weight", "lm_head.weight"):
            std = f
        elif name.endswith("q_proj.weight"):
            std = f * (d * c.head_dim) ** -0.5
        elif name.endswith(("o_proj.weight", "mlp.down.weight")):
            std = f * p.shape[1] ** -0.5
        else:  # k/v projections, MLP gate and up, the bucket tables
            std = f * d**-0.5
        nn.init.normal_(p, std=std)


class T5(Seq2SeqLM):
    """transformers' T5ForConditionalGeneration: T5 v1.0, v1.1 and FLAN-T5."""

    family = "t5"
    task = "seq2seq_lm"

    def __init__(self, config: T5Config):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)  # shared by encoder, decoder (and v1.0's head)
        self.drop = nn.Dropout(c.dropout)
        self.encoder_position_bias = RelativePositionBias(c.n_heads, c.n_buckets, c.max_distance, bidirectional=True)
        self.decoder_position_bias = RelativePositionBias(c.n_heads, c.n_buckets, c.max_distance, bidirectional=False)
        self.encoder_layers = nn.ModuleList(_layer(c, cross=False) for _ in range(c.n_layers))
        self.encoder_norm = FinalNorm(c.d_model, c.norm_eps, c.dropout)
        self.decoder_layers = nn.ModuleList(_layer(c, cross=True) for _ in range(c.n_decoder_layers))
        self.decoder_norm = FinalNorm(c.d_model, c.norm_eps, c.dropout)
        self.lm_head = None if c.tie_embeddings else nn.Linear(c.d_model, c.vocab_size, bias=False)
        init_t5_weights(self, c)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(ids)  # (B, T, d_model); no positions, no scale
        refuse_float16(x)
        return self.drop(x)

    def embed_encoder(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self._embed(input_ids)

    def embed_decoder(self, decoder_input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        return self._embed(decoder_input_ids)

    def encoder_bias(self, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
        return self.encoder_position_bias(q_idx, k_idx)  # (1, H, S, S)

    def decoder_bias(self, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
        return self.decoder_position_bias(q_idx, k_idx)  # (1, H, T, past + T)

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.config.scale_decoder_outputs:
            hidden = hidden * self.config.d_model**-0.5
        weight = self.embed.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight)  # (B, T, vocab_size)


class T5Encoder(Encoder):
    """transformers' T5EncoderModel: the encoder stack alone (what torchtune's T5 is, and what
    text-to-image models use as their text encoder)."""

    family = "t5"
    task = "encoder"

    def __init__(self, config: T5Config):
        super().__init__(config)
        c = config
        self.embed = nn.Embedding(c.vocab_size, c.d_model)
        self.drop = nn.Dropout(c.dropout)
        self.position_bias = RelativePositionBias(c.n_heads, c.n_buckets, c.max_distance, bidirectional=True)
        self.layers = nn.ModuleList(_layer(c, cross=False) for _ in range(c.n_layers))
        self.norm = FinalNorm(c.d_model, c.norm_eps, c.dropout)
        init_t5_weights(self, c)

    def attention_bias(self, q_idx: torch.Tensor, k_idx: torch.Tensor) -> torch.Tensor:
        return self.position_bias(q_idx, k_idx)  # (1, H, S, S)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
    ) -> ModelOutput:
        """(B, S) ids and 1/0 mask -> ``last_hidden_state`` (B, S, d_model) (and ``hidden_states``)."""
        if labels is not None:
            raise ValueError("labels: the T5 encoder has no head; load task 'seq2seq_lm' to train on targets")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected shape (batch, seq), got {tuple(input_ids.shape)}")
        check_token_ids(input_ids, self.config.vocab_size)
        x = self.embed(input_ids)  # (B, S, d_model)
        refuse_float16(x)
        x, states = self.encode(self.drop(x), attention_mask, output_hidden_states)
        return ModelOutput(last_hidden_state=x, hidden_states=states)
