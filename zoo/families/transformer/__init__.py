"""The original Transformer (Vaswani et al. 2017): encoder-decoder, sinusoidal positions, post-LN,
shared embeddings; reads and writes transformers' Marian layout (the opus-mt models)."""

from zoo.families.transformer import variants  # noqa: F401  (registers the variants)
from zoo.families.transformer.config import TransformerConfig
from zoo.families.transformer.convert import ARCHITECTURES, config_from_hf, config_to_hf, rules
from zoo.families.transformer.model import Transformer
from zoo.parity import seq2seq_lm_parity
from zoo.registry import Family, register_family

register_family(
    Family(
        name="transformer",
        config_cls=TransformerConfig,
        tasks={"seq2seq_lm": Transformer},
        hf_model_types=("marian",),
        hf_architectures={arch: task for task, arch in ARCHITECTURES.items()},
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        rules=rules,
        parity=seq2seq_lm_parity("AutoModelForSeq2SeqLM"),
    )
)

__all__ = ["Transformer", "TransformerConfig"]
