"""The GPT series: GPT-2 (the first family, and the template for decoder-only LMs), GPT-1 and GPT-3."""

import dataclasses
from pathlib import Path

from zoo.families.gpt import variants  # noqa: F401  (registers the variants)
from zoo.families.gpt.config import GPTConfig
from zoo.families.gpt.convert import ARCHITECTURES, MODEL_TYPES, config_from_hf, config_to_hf, rules
from zoo.families.gpt.model import GPT, GPTDoubleHeads
from zoo.lm import positions_from_mask
from zoo.parity import causal_lm_parity, strict_transformers_loader
from zoo.registry import Family, register_family


def _load_reference(path: Path, task: str):
    # The Auto class has no double-heads model: name transformers' class from the config.
    if task == "double_heads":
        from zoo.hub import read_json

        arch = read_json(path / "config.json")["architectures"][0]
        return strict_transformers_loader(arch)(path, task)
    return strict_transformers_loader("AutoModelForCausalLM")(path, task)


_LM = causal_lm_parity("transformers", "AutoModelForCausalLM")


# The double-heads models also score each sequence (at its last position): compare that too.
def _run_zoo(model, inputs):
    outputs = _LM.run_zoo(model, inputs)
    if model.task == "double_heads":
        outputs["mc_logits"] = model(**inputs).mc_logits
    return outputs


def _run_reference(model, inputs):
    outputs = _LM.run_reference(model, inputs)
    if hasattr(model, "multiple_choice_head"):
        outputs["mc_logits"] = model(**inputs, position_ids=positions_from_mask(inputs["attention_mask"])).mc_logits
    return outputs


_PARITY = dataclasses.replace(_LM, load_reference=_load_reference, run_zoo=_run_zoo, run_reference=_run_reference)

register_family(
    Family(
        name="gpt",
        config_cls=GPTConfig,
        tasks={"causal_lm": GPT, "double_heads": GPTDoubleHeads},
        hf_model_types=MODEL_TYPES,
        hf_architectures=ARCHITECTURES,
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        rules=rules,
        parity=_PARITY,
    )
)

__all__ = ["GPT", "GPTConfig", "GPTDoubleHeads"]
