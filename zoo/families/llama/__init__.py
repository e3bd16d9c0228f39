"""LLaMA 2/3, Mistral and Mixtral: one decoder family; also reads llama-architecture GGUF files."""

from zoo.families.llama import variants  # noqa: F401  (registers the variants)
from zoo.families.llama.config import LlamaConfig
from zoo.families.llama.convert import ARCHITECTURES, MODEL_TYPES, config_from_hf, config_to_hf, rules
from zoo.families.llama.gguf import load_gguf, load_gguf_tokenizer
from zoo.families.llama.model import Llama
from zoo.hub import FILE_LOADERS
from zoo.parity import causal_lm_parity
from zoo.registry import Family, register_family
from zoo.tokenizer import TOKENIZER_LOADERS

register_family(
    Family(
        name="llama",
        config_cls=LlamaConfig,
        tasks={"causal_lm": Llama},
        hf_model_types=MODEL_TYPES,
        hf_architectures=ARCHITECTURES,
        config_from_hf=config_from_hf,
        config_to_hf=config_to_hf,
        rules=rules,
        # LlamaForCausalLM and MistralForCausalLM ignore the flag; Mixtral then reports its aux_loss.
        parity=causal_lm_parity("transformers", "AutoModelForCausalLM", {"output_router_logits": True}),
    )
)
FILE_LOADERS[".gguf"] = load_gguf
TOKENIZER_LOADERS[".gguf"] = load_gguf_tokenizer

__all__ = ["Llama", "LlamaConfig", "load_gguf", "load_gguf_tokenizer"]
