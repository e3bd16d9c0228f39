"""GPT-2: the first family, and the template for decoder-only LMs."""

from zoo.families.gpt import variants  # noqa: F401  (registers the variants)
from zoo.families.gpt.config import GPTConfig
from zoo.families.gpt.convert import config_from_hf, config_to_hf, rules
from zoo.families.gpt.model import GPT
from zoo.parity import causal_lm_parity
from zoo.registry import Family, register_family

register_family(
    Family(
        name="gpt",
        config_cls=GPTConfig,
        tasks={"causal_lm": GPT},
        hf_model_types=("gpt2",),
        hf_architectures={"GPT2LMHeadModel": "causal_lm"},
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        rules=rules,
        parity=causal_lm_parity("transformers", "AutoModelForCausalLM"),
    )
)

__all__ = ["GPT", "GPTConfig"]
