"""The GPT series <-> Hugging Face transformers: configs and key rules.

Two layouts: GPT-2's (``model_type: "gpt2"``, ``GPT2LMHeadModel`` / ``GPT2Model`` /
``GPT2DoubleHeadsModel``) and GPT-1's (``"openai-gpt"``, ``OpenAIGPTLMHeadModel`` /
``OpenAIGPTModel`` / ``OpenAIGPTDoubleHeadsModel``). On export the layout follows from the
switches: post-LN without a final norm is GPT-1's, pre-LN with one is GPT-2's.
"""

from zoo.config import ConfigError
from zoo.convert import Rule, drop, rename, split, transpose
from zoo.convert.hf import ACT_TO_HF, activation_from_hf
from zoo.families.gpt.config import GPTConfig

MODEL_TYPES = ("gpt2", "openai-gpt")
ARCHITECTURES = {
    "GPT2LMHeadModel": "causal_lm",
    "GPT2DoubleHeadsModel": "double_heads",
    "OpenAIGPTLMHeadModel": "causal_lm",
    "OpenAIGPTDoubleHeadsModel": "double_heads",
}
# transformers' OpenAIGPT has its own table: its "gelu" is the tanh approximation (gelu_new).
_GPT1_ACT_FROM_HF = {"gelu": "gelu_tanh", "relu": "relu", "silu": "silu", "swish": "silu"}
_GPT1_ACT_TO_HF = {"gelu_tanh": "gelu", "relu": "relu", "silu": "silu"}
# The multiple-choice head both double-heads models build: one score read at the classification
# token, through a Linear(d_model, 1) and no activation.
_SUMMARY = {"summary_type": "cls_index", "summary_use_proj": True, "summary_proj_to_labels": True,
            "summary_activation": None}  # fmt: skip


def _is_gpt1(c: GPTConfig) -> bool:
    return not c.prenorm


def _check_summary(hf: dict) -> None:
    for key, value in _SUMMARY.items():
        if hf.get(key, value) != value:
            raise ConfigError(f"{key}: the checkpoint sets {key}={hf[key]!r}; zoo's multiple-choice head has {value!r}")


def config_from_hf(hf: dict) -> GPTConfig:
    _check_summary(hf)
    if hf.get("model_type") == "openai-gpt":
        return _gpt1_config_from_hf(hf)
    mlp = activation_from_hf(hf.get("activation_function", "gelu_new"), "activation_function", "GPT-2")
    # Switches of transformers' GPT-2 that change the arithmetic and that zoo's GPT does not have:
    # refuse them rather than load a model that computes something else.
    for key, default in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                         ("add_cross_attention", False)):  # fmt: skip
        if hf.get(key, default) != default:
            raise ConfigError(f"{key}: GPT-2 checkpoint sets {key}={hf[key]!r}; zoo's GPT supports only {default}")
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        dropout=_dropout(hf),
        max_seq_len=hf.get("n_positions", 1024),
        d_model=hf["n_embd"],
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        d_ff=hf.get("n_inner"),
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp=mlp,
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


def _gpt1_config_from_hf(hf: dict) -> GPTConfig:
    mlp = activation_from_hf(hf.get("afn", "gelu"), "afn", "GPT-1", _GPT1_ACT_FROM_HF)
    return GPTConfig(
        vocab_size=hf["vocab_size"],
        dropout=_dropout(hf),
        max_seq_len=hf.get("n_positions", 512),
        d_model=hf["n_embd"],
        n_layers=hf["n_layer"],
        n_heads=hf["n_head"],
        norm_eps=hf.get("layer_norm_epsilon", 1e-5),
        mlp=mlp,
        tie_embeddings=hf.get("tie_word_embeddings", True),
        prenorm=False,
        final_norm=False,
        init_std=hf.get("initializer_range", 0.02),
    )


def _refuse(c: GPTConfig, unsupported: dict[str, bool], reference: str) -> None:
    for name, bad in unsupported.items():
        if bad:
            raise ConfigError(
                f"{name}: {getattr(c, name)!r} has no equivalent in transformers' {reference}; "
                "save with format='zoo' instead"
            )


_DROPOUTS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")


def _dropout(hf: dict) -> float:
    """transformers' three GPT-1/GPT-2 dropouts (0.1 each by default); zoo's GPT has one for all three."""
    values = {key: hf.get(key, 0.1) for key in _DROPOUTS}
    first = _DROPOUTS[0]
    which = "GPT-1" if hf.get("model_type") == "openai-gpt" else "GPT-2"
    for key, value in values.items():
        if value != values[first]:
            raise ConfigError(
                f"{key}: {which} checkpoint sets {key}={value} but {first}={values[first]}; zoo's GPT has one "
                "dropout for residual, embedding and attention: set the three equal in config.json"
            )
    return values[first]


def config_to_hf(c: GPTConfig, task: str) -> dict:
    common = {
        "norm": c.norm != "layernorm",
        "position": c.position != "learned",
        "n_kv_heads": c.n_kv_heads not in (None, c.n_heads),
        "bias": not c.bias,
        "sliding_window": c.sliding_window is not None,
    }
    summary = {**_SUMMARY, "summary_first_dropout": c.dropout} if task == "double_heads" else {}
    if _is_gpt1(c):
        _refuse(c, {"final_norm": c.final_norm, "mlp": c.mlp not in _GPT1_ACT_TO_HF, **common,
                    "d_ff": c.d_ff not in (None, 4 * c.d_model)}, "OpenAIGPT (GPT-1)")  # fmt: skip
        arch = "OpenAIGPTDoubleHeadsModel" if task == "double_heads" else "OpenAIGPTLMHeadModel"
        return {
            "model_type": "openai-gpt",
            "architectures": [arch],
            "vocab_size": c.vocab_size,
            "n_positions": c.max_seq_len,
            "n_embd": c.d_model,
            "n_layer": c.n_layers,
            "n_head": c.n_heads,
            "afn": _GPT1_ACT_TO_HF[c.mlp],
            "layer_norm_epsilon": c.norm_eps,
            "resid_pdrop": c.dropout,
            "embd_pdrop": c.dropout,
            "attn_pdrop": c.dropout,
            "initializer_range": c.init_std,
            "tie_word_embeddings": c.tie_embeddings,
            **summary,
        }
    _refuse(c, {"final_norm": not c.final_norm, "mlp": c.mlp not in ACT_TO_HF, **common}, "GPT-2")
    hf = {
        "model_type": "gpt2",
        "architectures": ["GPT2DoubleHeadsModel" if task == "double_heads" else "GPT2LMHeadModel"],
        "vocab_size": c.vocab_size,
        "n_positions": c.max_seq_len,
        "n_embd": c.d_model,
        "n_layer": c.n_layers,
        "n_head": c.n_heads,
        "n_inner": c.d_ff,
        "activation_function": ACT_TO_HF[c.mlp],
        "layer_norm_epsilon": c.norm_eps,
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "tie_word_embeddings": c.tie_embeddings,
        **summary,
    }
    if c.vocab_size > 50256:  # GPT-2 tokenizer's <|endoftext|>; zoo's config holds no token ids to write
        hf |= {"bos_token_id": 50256, "eos_token_id": 50256}
    return hf


def rules(c: GPTConfig, task: str) -> list[Rule]:
    # The LM-head models save their trunk under "transformer."; checkpoints saved from the bare
    # trunk (GPT2Model, OpenAIGPTModel: openai-community/gpt2 itself) have no prefix. Read both;
    # export the first.
    layout = _gpt1_rules if _is_gpt1(c) else _gpt2_rules
    return layout(c, "transformer.") + _heads(c, task) + layout(c, "")


def _heads(c: GPTConfig, task: str) -> list[Rule]:
    if not c.tie_embeddings:
        out = [rename("lm_head.weight", "lm_head.weight")]
    elif task == "double_heads":
        # OpenAIGPTDoubleHeadsModel ties the other way round and saves the shared matrix as
        # lm_head.weight only (read after the trunk's rules, so a copy in both places is fine).
        out = [rename("lm_head.weight", "embed.weight")]
    else:
        out = [drop("lm_head.weight")]  # tied LM checkpoints may still carry it, a copy of the embedding
    if task == "double_heads":
        out += [rename(f"multiple_choice_head.summary.{w}", f"mc_head.{w}") for w in ("weight", "bias")]
    return out


def _layer_rules(c: GPTConfig, h: str) -> list[Rule]:
    """The layer keys GPT-1 and GPT-2 share: Conv1D projections and two LayerNorms."""
    kv = (c.n_kv_heads or c.n_heads) * c.head_dim
    qkv = ("layers.{i}.attn.q_proj", "layers.{i}.attn.k_proj", "layers.{i}.attn.v_proj")
    out = [
        # Conv1D stores (in, out): the fused qkv is transposed, then split into q, k, v.
        split(f"{h}.attn.c_attn.weight", [f"{n}.weight" for n in qkv], sizes=[c.d_model, kv, kv], transposed=True),
        split(f"{h}.attn.c_attn.bias", [f"{n}.bias" for n in qkv], sizes=[c.d_model, kv, kv]),
        transpose(f"{h}.attn.c_proj.weight", "layers.{i}.attn.o_proj.weight"),
        rename(f"{h}.attn.c_proj.bias", "layers.{i}.attn.o_proj.bias"),
        transpose(f"{h}.mlp.c_fc.weight", "layers.{i}.mlp.up.weight"),
        rename(f"{h}.mlp.c_fc.bias", "layers.{i}.mlp.up.bias"),
        transpose(f"{h}.mlp.c_proj.weight", "layers.{i}.mlp.down.weight"),
        rename(f"{h}.mlp.c_proj.bias", "layers.{i}.mlp.down.bias"),
        # The causal-mask buffer older checkpoints stored.
        drop(f"{h}.attn.bias"),
    ]
    # Pre-LN (GPT-2) ln_1 comes before attention, post-LN (GPT-1) ln_1 after it: either way the
    # norm of the attention sub-layer, zoo's norm1.
    for n in ("1", "2"):
        out += [rename(f"{h}.ln_{n}.{w}", f"layers.{{i}}.norm{n}.{w}") for w in ("weight", "bias")]
    return out


def _gpt2_rules(c: GPTConfig, p: str) -> list[Rule]:
    return [
        rename(f"{p}wte.weight", "embed.weight"),
        rename(f"{p}wpe.weight", "pos.weight"),
        *_layer_rules(c, f"{p}h.{{i}}"),
        rename(f"{p}ln_f.weight", "norm.weight"),
        rename(f"{p}ln_f.bias", "norm.bias"),
        drop(f"{p}h.{{i}}.attn.masked_bias"),  # the mask's fill value, another old buffer
    ]


def _gpt1_rules(c: GPTConfig, p: str) -> list[Rule]:
    return [
        rename(f"{p}tokens_embed.weight", "embed.weight"),
        rename(f"{p}positions_embed.weight", "pos.weight"),
        *_layer_rules(c, f"{p}h.{{i}}"),
    ]
