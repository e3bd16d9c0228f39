"""BERT: the post-LN bidirectional encoder, with masked-LM and sequence-classification heads."""

from zoo.families.bert import variants  # noqa: F401  (registers the variants)
from zoo.families.bert.config import BertConfig
from zoo.families.bert.convert import ARCHITECTURES, config_from_hf, config_to_hf, rules
from zoo.families.bert.model import Bert, BertForMaskedLM, BertForSequenceClassification
from zoo.families.bert.parity import PARITY
from zoo.registry import Family, register_family

register_family(
    Family(
        name="bert",
        config_cls=BertConfig,
        tasks={"base": Bert, "masked_lm": BertForMaskedLM, "sequence_classification": BertForSequenceClassification},
        hf_model_types=("bert",),
        hf_architectures={arch: task for task, arch in ARCHITECTURES.items()} | {"BertForPreTraining": "masked_lm"},
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        rules=rules,
        parity=PARITY,
    )
)

__all__ = ["Bert", "BertConfig", "BertForMaskedLM", "BertForSequenceClassification"]
