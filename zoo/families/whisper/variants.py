"""Registered Whisper encoders, each with the public config it mirrors (openai's checkpoints on the Hub)."""

from zoo.families.whisper.config import WhisperConfig
from zoo.registry import register_variant

_SRC = "https://huggingface.co/openai/{}/blob/main/config.json"

# (name, n_mels, d_model, n_layers, n_heads): encoder_ffn_dim is 4 * d_model in every one.
for _name, _mels, _width, _layers, _heads in (
    ("whisper-tiny", 80, 384, 4, 6),
    ("whisper-tiny.en", 80, 384, 4, 6),
    ("whisper-base", 80, 512, 6, 8),
    ("whisper-small", 80, 768, 12, 12),
    ("whisper-medium", 80, 1024, 24, 16),
    ("whisper-large-v3", 128, 1280, 32, 20),
):
    register_variant(
        _name,
        "whisper",
        WhisperConfig(n_mels=_mels, d_model=_width, n_layers=_layers, n_heads=_heads, d_ff=4 * _width),
        _SRC.format(_name),
    )

# Tiny shapes for tests: n_mels != d_model, d_ff != 4 * d_model, 48 frames -> 24 positions.
_TINY = WhisperConfig(n_mels=20, max_seq_len=24, d_model=48, n_layers=2, n_heads=4, d_ff=104,
                      classifier_proj_size=20, n_labels=5)  # fmt: skip
register_variant("whisper-test-tiny", "whisper", _TINY, "zoo test config (transformers' WhisperEncoder layout)")
register_variant(
    "whisper-cls-tiny", "whisper", _TINY, "zoo test config (transformers' WhisperForAudioClassification)",
    task="audio_classification",
)  # fmt: skip
