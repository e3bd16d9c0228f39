"""The original Transformer <-> transformers' Marian layout (MarianMTModel: config.json + model.safetensors).

Marian (the opus-mt models) is the nearest public reference of the architecture: post-LN layers,
static sinusoidal positions, embeddings scaled by sqrt(d_model) and shared three ways. Its
differences from the paper are config switches here: the [sin | cos] halves layout of the
sinusoids, the activation (swish in opus-mt), and a ``final_logits_bias`` buffer.
"""

from zoo.config import ConfigError
from zoo.convert import Rule, drop, rename
from zoo.convert.hf import ACT_TO_HF, activation_from_hf, activation_to_hf, fairseq_layer_rules
from zoo.families.transformer.config import TransformerConfig

ARCHITECTURES = {"seq2seq_lm": "MarianMTModel"}
# Marian's configs name silu "swish" (opus-mt): export writes that name.
_ACT_TO_MARIAN = {**ACT_TO_HF, "silu": "swish"}


def config_from_hf(hf: dict) -> TransformerConfig:
    mlp = activation_from_hf(hf.get("activation_function", "swish"), "activation_function", "Marian")
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
    # Keys older opus-mt config.json files still carry from BART's config: only Marian's values
    # describe this architecture (post-LN, no embedding norm, static sinusoids).
    for key, want in (("normalize_before", False), ("normalize_embedding", False), ("add_final_layer_norm", False),
                      ("add_bias_logits", False), ("static_position_embeddings", True)):  # fmt: skip
        if key in hf and hf[key] != want:
            raise ConfigError(f"{key}: the Marian checkpoint sets {key}={hf[key]!r}; zoo's Transformer is {want!r}")
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
        mlp=mlp,
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
        "activation_function": activation_to_hf(c.mlp, "mlp", "Marian", _ACT_TO_MARIAN),
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
    return fairseq_layer_rules(f"model.{side}.layers.{{i}}", f"{side}_layers.{{i}}", cross)


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
