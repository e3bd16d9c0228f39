"""Whisper's audio encoder: read from transformers' checkpoints and CTranslate2 (faster-whisper) directories."""

from zoo.families.whisper import variants  # noqa: F401  (registers the variants)
from zoo.families.whisper.config import WhisperConfig
from zoo.families.whisper.convert import ARCHITECTURES, config_from_hf, config_to_hf, rules
from zoo.families.whisper.ct2 import MARKER, load_ct2
from zoo.families.whisper.model import WhisperEncoder, WhisperForAudioClassification
from zoo.families.whisper.parity import PARITY
from zoo.hub import DIRECTORY_LOADERS
from zoo.registry import Family, register_family

register_family(
    Family(
        name="whisper",
        config_cls=WhisperConfig,
        tasks={"base": WhisperEncoder, "audio_classification": WhisperForAudioClassification},
        hf_model_types=("whisper",),
        hf_architectures=ARCHITECTURES,
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        rules=rules,
        parity=PARITY,
    )
)
DIRECTORY_LOADERS["ct2"] = (MARKER, load_ct2)

__all__ = ["WhisperConfig", "WhisperEncoder", "WhisperForAudioClassification", "load_ct2"]
