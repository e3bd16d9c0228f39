"""Whisper's audio encoder (Radford et al. 2022) and the pooled audio classifier on top of it.

Log-mel frames (B, n_mels, 3000) pass a stem of two 3-wide convolutions with GELU, the second
with stride 2 (3000 frames -> 1500 positions), get a fixed sinusoidal table in tensor2tensor's
[sin | cos] layout added, and run through pre-LN layers whose attention has biases on queries
and values but none on keys; a final LayerNorm closes the residual stream.
"""

import torch
from torch import nn
from torch.nn import functional as F

from zoo.blocks import Attention, TransformerLayer, make_mlp, make_norm, timing_signal
from zoo.encoder import Encoder, classification_loss, init_encoder_weights
from zoo.families.whisper.config import WhisperConfig
from zoo.outputs import ModelOutput


class WhisperEncoder(Encoder):
    """The encoder of Whisper (transformers' WhisperEncoder, openai/whisper's AudioEncoder)."""

    family = "whisper"
    task = "base"

    def __init__(self, config: WhisperConfig):
        super().__init__(config)
        c = config
        self.conv1 = nn.Conv1d(c.n_mels, c.d_model, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(c.d_model, c.d_model, kernel_size=3, stride=2, padding=1)
        # Fixed, not trained (transformers freezes it too), but stored in every checkpoint and
        # loaded from there, so a checkpoint's own table (fp16 in CTranslate2's) is what runs.
        self.register_buffer("pos", timing_signal(c.max_seq_len, c.d_model), persistent=True)
        self.drop = nn.Dropout(c.dropout)
        self.layers = nn.ModuleList(
            TransformerLayer(
                attn=Attention(c.d_model, c.n_heads, bias=True, k_bias=False, dropout=c.attn_dropout),
                mlp=make_mlp(c.mlp, c.d_model, c.d_ff),
                norm1=make_norm("layernorm", c.d_model, c.norm_eps),
                norm2=make_norm("layernorm", c.d_model, c.norm_eps),
                prenorm=True,
                dropout=c.dropout,
            )
            for _ in range(c.n_layers)
        )
        self.norm = make_norm("layernorm", c.d_model, c.norm_eps)
        self.build_head()
        init_encoder_weights(self, c.init_std)

    def build_head(self) -> None:
        """Subclasses build their head here (before the weights are initialised)."""

    def features(
        self, input_features: torch.Tensor, output_hidden_states: bool = False
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...] | None]:
        """input_features (B, n_mels, T) -> hidden states (B, ceil(T / 2), d_model).

        T is n_frames (3,000) for what the references compute. Fewer frames (a short clip's
        first frames) run on the first ceil(T / 2) positions of the table: not what Whisper
        computes on the same clip padded to 30 s, but much cheaper to fine-tune on short clips.
        """
        c = self.config
        if input_features.dim() != 3 or input_features.shape[1] != c.n_mels or input_features.shape[2] > c.n_frames:
            raise ValueError(
                f"input_features: expected (batch, n_mels={c.n_mels}, frames <= {c.n_frames}), got "
                f"{tuple(input_features.shape)}; zoo.audio.log_mel_spectrogram pads or trims audio to 30 s"
            )
        x = input_features.to(self.conv1.weight.dtype)
        x = F.gelu(self.conv1(x))  # (B, d_model, T)
        x = F.gelu(self.conv2(x))  # (B, d_model, ceil(T / 2))
        x = x.transpose(1, 2) + self.pos[: x.shape[2]]  # (B, ceil(T / 2), d_model)
        return self.encode(self.drop(x), output_hidden_states=output_hidden_states)

    def forward(
        self, input_features: torch.Tensor, labels: torch.Tensor | None = None, output_hidden_states: bool = False
    ) -> ModelOutput:
        """Encode log-mel features (``zoo.audio.log_mel_spectrogram``).

        Args:
            input_features: (B, n_mels, n_frames), 3,000 frames (30 s) for the public variants
                (fewer run on the first positions; see ``features``).
            labels: not accepted by the base model, which has no head.
            output_hidden_states: return the stem's output, each layer's output and the final one.
        """
        if labels is not None:
            raise ValueError("labels: the base Whisper encoder has no head; load task 'audio_classification'")
        x, states = self.features(input_features, output_hidden_states)
        return ModelOutput(last_hidden_state=x, hidden_states=states)


class WhisperForAudioClassification(WhisperEncoder):
    """transformers' WhisperForAudioClassification: projector on every position, mean over
    positions, linear classifier (without its optional weighted layer sum)."""

    task = "audio_classification"

    def build_head(self) -> None:
        c = self.config
        self.projector = nn.Linear(c.d_model, c.classifier_proj_size)
        self.classifier = nn.Linear(c.classifier_proj_size, c.n_labels)

    def forward(self, input_features, labels=None, output_hidden_states=False):
        """As ``WhisperEncoder.forward``; ``labels`` (B,) class ids give a cross-entropy ``loss``."""
        x, states = self.features(input_features, output_hidden_states)
        pooled = self.projector(x).mean(dim=1)  # (B, classifier_proj_size)
        logits = self.classifier(pooled)  # (B, n_labels)
        loss = None
        if labels is not None:
            if labels.shape[0] != input_features.shape[0]:
                raise ValueError(f"labels: {labels.shape[0]} rows for a batch of {input_features.shape[0]} clips")
            loss = classification_loss(logits, labels, "single_label_classification")
        return ModelOutput(logits=logits, loss=loss, last_hidden_state=x, pooler_output=pooled, hidden_states=states)
