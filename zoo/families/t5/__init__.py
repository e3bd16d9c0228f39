"""T5 (v1.0, v1.1, FLAN-T5): encoder-decoder with relative position buckets; reads and writes
transformers' T5ForConditionalGeneration and T5EncoderModel."""

from zoo.families.t5 import variants  # noqa: F401  (registers the variants)
from zoo.families.t5.config import T5Config
from zoo.families.t5.convert import ARCHITECTURES, config_from_hf, config_to_hf, rules
from zoo.families.t5.model import T5, T5Encoder
from zoo.families.t5.parity import PARITY
from zoo.registry import Family, register_family

register_family(
    Family(
        name="t5",
        config_cls=T5Config,
        tasks={"seq2seq_lm": T5, "encoder": T5Encoder},
        hf_model_types=("t5",),
        hf_architectures=ARCHITECTURES,
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        rules=rules,
        parity=PARITY,
    )
)

__all__ = ["T5", "T5Config", "T5Encoder"]
