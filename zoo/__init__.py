"""zoo: the transformer family tree on one shared block library.

import zoo
zoo.list_models("gpt2*")
model = zoo.create_model("gpt2", n_layers=2, norm="rmsnorm", mlp="swiglu")
model = zoo.from_pretrained("path/to/hf-checkpoint")
zoo.save_pretrained(model, "out/", format="hf")
zoo.generate(model, input_ids, max_new_tokens=20)
model = zoo.quantize(model, "int4")  # or from_pretrained(path.gguf, quantization="native")
zoo.compile_decoding(model)  # decoding steps through torch.compile
"""

from zoo.blocks.layers import compile_decoding
from zoo.generation import generate
from zoo.hub import from_pretrained, save_pretrained
from zoo.quant import quantize
from zoo.registry import create_model, get_variant, list_models
from zoo.tokenizer import load_tokenizer

__all__ = [
    "compile_decoding",
    "create_model",
    "from_pretrained",
    "generate",
    "get_variant",
    "list_models",
    "load_tokenizer",
    "quantize",
    "save_pretrained",
]
__version__ = "0.1.0"
