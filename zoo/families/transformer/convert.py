"""The original Transformer <-> transformers' Marian layout (MarianMTModel: config.json + model.safetensors).

Marian (the opus-mt models) is the nearest public reference of the architecture: post-LN layers,
static sinusoidal positions, embeddings scaled by sqrt(d_model) and shared three ways. Its
differences from the paper are config switches here: the [sin | cos] halves layout of the
sinusoids, the activation (swish in opus-mt), and a ``final_logits_bias`` buffer.
"""

from zoo.config import ConfigError
from zoo.convert import Rule, drop, rename
from zoo.families.transformer.config import TransformerConfig

ARCHITECTURES = {"seq2seq_lm": "MarianMTModel"}
# transformers' ACT2FN names of the plain activations zoo's MLP has.
_ACT_FROM_HF = {"relu": "relu", "gelu": "gelu", "gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh",
                "swish": "silu", "silu": "silu", "quick_gelu": "quick_gelu"}  # fmt: skip
_ACT_TO_HF = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "silu": "swish", "quick_gelu": "quick_gelu"}


def config_from_hf(hf: dict) -> TransformerConfig:
    act = hf.get("activation_function", "swish")
    if act not in _ACT_FROM_HF:
        raise ConfigError(f"activation_function: Marian checkpoint uses {act!r}, which zoo does not map")
    vocab = hf["vocab_size"]
    # Switches of transformers' Marian that zoo's Transformer does not have: refuse them rather
    # than load a model that computes something else.
    for key, want in (("share_encoder_decoder_embeddings", True), ("tie_word_embeddings", True),
                      ("decoder_vocab_size", vocab), ("activation_dropout", 0.0)):  # fmt: skip
        if hf.get(key, want) not in (want, None):
            raise ConfigError(
                f"{key}: the Marian checkpoint sets {key}={hf[key]!r}; zoo's Transformer shares one "
                f"embedding between source, target and output and supports only {want!r}"
            )
    d_ff, decoder_d_ff = hf["encoder_ffn_dim"], hf["decoder_ffn_dim"]
    heads, decoder_heads = hf["encoder_attention_heads"], hf["decoder_attention_heads"]
    layers, decoder_layers = hf["encoder_layers"], hf["decoder_layers"]
    return TransformerConfig(
        vocab_size=vocab,
        max_seq_len=hf.get("max_position_embeddings", 512),
        d_model=hf["d_model"],
        n_layers=layers,
        n_heads=heads,
        d_ff=d_ff,
        n_decoder_layers=None if decoder_layers == layers else decoder_layers,
        n_decoder_heads=None if decoder_heads == heads else decoder_heads,
        decoder_d_ff=None if decoder_d_ff == d_ff else decoder_d_ff,
        mlp=_ACT_FROM_HF[act],
        dropout=hf.get("dropout", 0.1),
        attn_dropout=hf.get("attention_dropout", 0.0),
        scale_embedding=hf.get("scale_embedding", False),
        sinusoid_layout="halves",
        pad_token_id=hf["pad_token_id"],
        eos_token_id=hf["eos_token_id"],
        decoder_start_token_id=hf.get("decoder_start_token_id", hf["pad_token_id"]),
    )


def config_to_hf(c: TransformerConfig, task: str) -> dict:
    if c.sinusoid_layout != "halves":
        raise ConfigError(
            "sinusoid_layout: Marian stores the sinusoids as [sin | cos] halves; a model with the paper's "
            "'interleaved' layout cannot be written in its layout (save with format='zoo')"
        )
    if c.norm_eps != 1e-5:
        raise ConfigError(f"norm_eps: Marian's LayerNorms use eps=1e-5; this config has {c.norm_eps}")
    return {
        "model_type": "marian",
        "architectures": [ARCHITECTURES[task]],
        "vocab_size": c.vocab_size,
        "decoder_vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_seq_len,
        "d_model": c.d_model,
        "encoder_layers": c.n_layers,
        "decoder_layers": c.decoder_layers,
        "encoder_attention_heads": c.n_heads,
        "decoder_attention_heads": c.decoder_heads,
        "encoder_ffn_dim": c.d_ff,
        "decoder_ffn_dim": c.decoder_ff,
        "activation_function": _ACT_TO_HF[c.mlp],
        "dropout": c.dropout,
        "attention_dropout": c.attn_dropout,
        "activation_dropout": 0.0,
        "scale_embedding": c.scale_embedding,
        "share_encoder_decoder_embeddings": True,
        "tie_word_embeddings": True,
        "pad_token_id": c.pad_token_id,
        "eos_token_id": c.eos_token_id,
        "forced_eos_token_id": c.eos_token_id,
        "decoder_start_token_id": c.decoder_start_token_id,
        "is_encoder_decoder": True,
    }


def _layer_rules(side: str, cross: bool) -> list[Rule]:
    src, dst = f"model.{side}.layers.{{i}}", f"{side}_layers.{{i}}"
    pairs = [
        ("self_attn.q_proj", "attn.q_proj"),
        ("self_attn.k_proj", "attn.k_proj"),
        ("self_attn.v_proj", "attn.v_proj"),
        ("self_attn.out_proj", "attn.o_proj"),
        ("self_attn_layer_norm", "norm1"),
        ("fc1", "mlp.up"),
        ("fc2", "mlp.down"),
        ("final_layer_norm", "norm2"),
    ]
    if cross:
        pairs += [
            ("encoder_attn.q_proj", "cross_attn.q_proj"),
            ("encoder_attn.k_proj", "cross_attn.k_proj"),
            ("encoder_attn.v_proj", "cross_attn.v_proj"),
            ("encoder_attn.out_proj", "cross_attn.o_proj"),
            ("encoder_attn_layer_norm", "norm_cross"),
        ]
    return [rename(f"{src}.{a}.{w}", f"{dst}.{b}.{w}") for a, b in pairs for w in ("weight", "bias")]


# What older Marian checkpoints store beside model.shared: the tied copies of the embedding and
# the sinusoid tables (fixed, recomputed from the config). transformers ties and recomputes
# them on load; so does zoo.
_DERIVED = ["model.encoder.embed_tokens.weight", "model.decoder.embed_tokens.weight", "lm_head.weight",
            "model.encoder.embed_positions.weight", "model.decoder.embed_positions.weight"]  # fmt: skip


def rules(c: TransformerConfig, task: str) -> list[Rule]:
    """Rules from Marian's layout to zoo's; inverted, they export what MarianMTModel saves."""
    if task not in ARCHITECTURES:
        raise ValueError(f"task: the Transformer has no task {task!r}; choose one of {', '.join(ARCHITECTURES)}")
    return [
        rename("model.shared.weight", "embed.weight"),
        rename("final_logits_bias", "logits_bias"),
        *_layer_rules("encoder", cross=False),
        *_layer_rules("decoder", cross=True),
        *(drop(k) for k in _DERIVED),
    ]
