"""BART: the post-LN encoder-decoder with learned positions (offset 2), layernorm_embedding and a
shared, tied embedding; reads and writes transformers' BartForConditionalGeneration layout."""

from zoo.families.bart import variants  # noqa: F401  (registers the variants)
from zoo.families.bart.config import BartConfig
from zoo.families.bart.convert import (
    ARCHITECTURES,
    BASE_ARCHITECTURE,
    config_from_hf,
    config_to_hf,
    missing_defaults,
    rules,
)
from zoo.families.bart.model import Bart
from zoo.parity import seq2seq_lm_parity
from zoo.registry import Family, register_family

register_family(
    Family(
        name="bart",
        config_cls=BartConfig,
        tasks={"seq2seq_lm": Bart},
        hf_model_types=("bart",),
        hf_architectures={arch: task for task, arch in ARCHITECTURES.items()} | {BASE_ARCHITECTURE: "seq2seq_lm"},
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        rules=rules,
        parity=seq2seq_lm_parity("AutoModelForSeq2SeqLM"),
        missing_defaults=missing_defaults,
    )
)

__all__ = ["Bart", "BartConfig"]
