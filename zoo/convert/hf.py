"""transformers' config vocabulary that every family's conversion shares: activation names and
classifier labels, in one place.

transformers names one function several ways (``gelu_new`` and ``gelu_pytorch_tanh`` are both
the tanh approximation; ``swish`` is ``silu``); zoo has one name per function (see
``zoo.blocks.mlp``). A family whose reference uses its own table (GPT-1's ``afn``, where
``"gelu"`` means the tanh approximation) passes that table instead.
"""

from zoo.config import ConfigError
from zoo.convert.engine import Rule, rename

ACT_FROM_HF = {
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "relu": "relu",
    "silu": "silu",
    "swish": "silu",
    "quick_gelu": "quick_gelu",
}
# Export writes the reference's canonical name for each of zoo's functions.
ACT_TO_HF = {"gelu": "gelu", "gelu_tanh": "gelu_new", "relu": "relu", "silu": "silu", "quick_gelu": "quick_gelu"}


def activation_from_hf(name: str, field: str, family: str, table: dict[str, str] = ACT_FROM_HF) -> str:
    """zoo's name for a checkpoint's activation; ``field`` is the config.json key it came from."""
    if name not in table:
        raise ConfigError(
            f"{field}: {family} checkpoint uses {name!r}, which zoo does not map; zoo maps {', '.join(table)}"
        )
    return table[name]


def activation_to_hf(name: str, field: str, family: str, table: dict[str, str] = ACT_TO_HF) -> str:
    """The reference's name for one of zoo's activations, or a ConfigError naming zoo's ``field``."""
    if name not in table:
        raise ConfigError(
            f"{field}: {family} in transformers' format has no activation for zoo's {name!r}; "
            f"exportable: {', '.join(table)}"
        )
    return table[name]


def n_labels_from_hf(hf: dict) -> int:
    """A classifier's number of labels as transformers reads it: ``num_labels``, else the size of
    ``id2label``, else its default of 2."""
    if hf.get("num_labels") is not None:
        return hf["num_labels"]
    return len(hf["id2label"]) if hf.get("id2label") else 2


def labels_to_hf(n_labels: int) -> dict:
    """``id2label`` and ``label2id`` with transformers' default names (LABEL_0, ...)."""
    id2label = {str(i): f"LABEL_{i}" for i in range(n_labels)}
    return {"id2label": id2label, "label2id": {name: int(i) for i, name in id2label.items()}}


# fairseq's layer names, which transformers keeps for BART and Marian (and so for the original
# Transformer's public layout) -> zoo's TransformerLayer names.
_FAIRSEQ_LAYER = [
    ("self_attn.q_proj", "attn.q_proj"),
    ("self_attn.k_proj", "attn.k_proj"),
    ("self_attn.v_proj", "attn.v_proj"),
    ("self_attn.out_proj", "attn.o_proj"),
    ("self_attn_layer_norm", "norm1"),
    ("fc1", "mlp.up"),
    ("fc2", "mlp.down"),
    ("final_layer_norm", "norm2"),
]
_FAIRSEQ_CROSS = [
    ("encoder_attn.q_proj", "cross_attn.q_proj"),
    ("encoder_attn.k_proj", "cross_attn.k_proj"),
    ("encoder_attn.v_proj", "cross_attn.v_proj"),
    ("encoder_attn.out_proj", "cross_attn.o_proj"),
    ("encoder_attn_layer_norm", "norm_cross"),
]


def fairseq_layer_rules(src: str, dst: str, cross: bool) -> list[Rule]:
    """Rules for one stack of fairseq-named layers with biases everywhere: ``src`` and ``dst`` are
    the layer prefixes with an ``{i}`` (``"model.decoder.layers.{i}"``, ``"decoder_layers.{i}"``);
    ``cross`` adds the decoder's cross-attention (``encoder_attn``)."""
    pairs = _FAIRSEQ_LAYER + (_FAIRSEQ_CROSS if cross else [])
    return [rename(f"{src}.{a}.{w}", f"{dst}.{b}.{w}") for a, b in pairs for w in ("weight", "bias")]
