"""GPT-2 <-> Hugging Face transformers (GPT2LMHeadModel / GPT2Model): config and key rules."""

from zoo.config import ConfigError
from zoo.convert import Rule, drop, rename, split, transpose
from zoo.families.gpt.config import GPTConfig

_ACT_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu", "silu": "silu", "quick_gelu": "quick_gelu"}
_ACT_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu",
                "silu": "silu", "swish": "silu", "quick_gelu": "quick_gelu"}  # fmt: skip


def config_from_hf(hf: dict) -> GPTConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in _ACT_FROM_HF:
        raise ConfigError(f"activation_function: GPT-2 checkpoint uses {act!r}, which zoo does not map")
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
        mlp=_ACT_FROM_HF[act],
        tie_embeddings=hf.get("tie_word_embeddings", True),
    )


_DROPOUTS = ("resid_pdrop", "embd_pdrop", "attn_pdrop")


def _dropout(hf: dict) -> float:
    """transformers' three GPT-2 dropouts (0.1 each by default); zoo's GPT has one for all three."""
    values = {key: hf.get(key, 0.1) for key in _DROPOUTS}
    first = _DROPOUTS[0]
    for key, value in values.items():
        if value != values[first]:
            raise ConfigError(
                f"{key}: GPT-2 checkpoint sets {key}={value} but {first}={values[first]}; zoo's GPT has one "
                "dropout for residual, embedding and attention: set the three equal in config.json"
            )
    return values[first]


def config_to_hf(c: GPTConfig, task: str) -> dict:
    unsupported = {
        "norm": c.norm != "layernorm",
        "mlp": c.mlp not in _ACT_TO_HF,
        "position": c.position != "learned",
        "n_kv_heads": c.n_kv_heads not in (None, c.n_heads),
        "bias": not c.bias,
        "sliding_window": c.sliding_window is not None,
    }
    for name, bad in unsupported.items():
        if bad:
            raise ConfigError(
                f"{name}: {getattr(c, name)!r} has no equivalent in transformers' GPT-2; save with format='zoo' instead"
            )
    hf = {
        "model_type": "gpt2",
        "architectures": ["GPT2LMHeadModel"],
        "vocab_size": c.vocab_size,
        "n_positions": c.max_seq_len,
        "n_embd": c.d_model,
        "n_layer": c.n_layers,
        "n_head": c.n_heads,
        "n_inner": c.d_ff,
        "activation_function": _ACT_TO_HF[c.mlp],
        "layer_norm_epsilon": c.norm_eps,
        "resid_pdrop": c.dropout,
        "embd_pdrop": c.dropout,
        "attn_pdrop": c.dropout,
        "tie_word_embeddings": c.tie_embeddings,
    }
    if c.vocab_size > 50256:  # GPT-2 tokenizer's <|endoftext|>; zoo's config holds no token ids to write
        hf |= {"bos_token_id": 50256, "eos_token_id": 50256}
    return hf


def rules(c: GPTConfig, task: str) -> list[Rule]:
    # GPT2LMHeadModel saves its trunk under "transformer."; checkpoints saved from the bare
    # GPT2Model (openai-community/gpt2 itself) have no prefix. Read both; export the first.
    return _rules(c, "transformer.") + _rules(c, "", head=False)


def _rules(c: GPTConfig, p: str, head: bool = True) -> list[Rule]:
    h = f"{p}h.{{i}}"
    kv = (c.n_kv_heads or c.n_heads) * c.head_dim
    qkv = ("layers.{i}.attn.q_proj", "layers.{i}.attn.k_proj", "layers.{i}.attn.v_proj")
    out = [
        rename(f"{p}wte.weight", "embed.weight"),
        rename(f"{p}wpe.weight", "pos.weight"),
        # Conv1D stores (in, out): the fused qkv is transposed, then split into q, k, v.
        split(f"{h}.attn.c_attn.weight", [f"{n}.weight" for n in qkv], sizes=[c.d_model, kv, kv], transposed=True),
        split(f"{h}.attn.c_attn.bias", [f"{n}.bias" for n in qkv], sizes=[c.d_model, kv, kv]),
        transpose(f"{h}.attn.c_proj.weight", "layers.{i}.attn.o_proj.weight"),
        rename(f"{h}.attn.c_proj.bias", "layers.{i}.attn.o_proj.bias"),
        transpose(f"{h}.mlp.c_fc.weight", "layers.{i}.mlp.up.weight"),
        rename(f"{h}.mlp.c_fc.bias", "layers.{i}.mlp.up.bias"),
        transpose(f"{h}.mlp.c_proj.weight", "layers.{i}.mlp.down.weight"),
        rename(f"{h}.mlp.c_proj.bias", "layers.{i}.mlp.down.bias"),
        rename(f"{p}ln_f.weight", "norm.weight"),
        rename(f"{p}ln_f.bias", "norm.bias"),
        # Buffers older checkpoints stored: the causal mask and its fill value.
        drop(f"{h}.attn.bias"),
        drop(f"{h}.attn.masked_bias"),
    ]
    for n in ("1", "2"):
        out += [rename(f"{h}.ln_{n}.{w}", f"layers.{{i}}.norm{n}.{w}") for w in ("weight", "bias")]
    # Tied checkpoints may still carry lm_head.weight, a copy of wte.
    if head:
        out.append(drop("lm_head.weight") if c.tie_embeddings else rename("lm_head.weight", "lm_head.weight"))
    return out
