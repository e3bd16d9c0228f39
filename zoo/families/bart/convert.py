"""BART <-> Hugging Face transformers (BartForConditionalGeneration: config.json + model.safetensors
or pytorch_model.bin).

facebook/bart-base and bart-large name ``BartModel`` in config.json: their weights load into the
conditional-generation model, as transformers loads them (keys with or without the ``model.``
prefix; the head is tied to ``model.shared``, and an absent ``final_logits_bias`` is zeros).
"""

import torch

from zoo.config import ConfigError
from zoo.convert import Rule, drop, rename
from zoo.convert.hf import activation_from_hf, activation_to_hf, fairseq_layer_rules
from zoo.families.bart.config import BartConfig

ARCHITECTURES = {"seq2seq_lm": "BartForConditionalGeneration"}
# Saved as BartModel (the pretrained checkpoints' architectures entry): the same weights, no head.
BASE_ARCHITECTURE = "BartModel"


def config_from_hf(hf: dict) -> BartConfig:
    mlp = activation_from_hf(hf.get("activation_function", "gelu"), "activation_function", "BART")
    # Switches of transformers' BART that zoo's BART does not have: refuse them rather than load a
    # model that computes something else.
    for key, want in (("tie_word_embeddings", True), ("encoder_layerdrop", 0.0), ("decoder_layerdrop", 0.0)):
        if hf.get(key, want) not in (want, None):
            raise ConfigError(f"{key}: the BART checkpoint sets {key}={hf[key]!r}; zoo's BART supports only {want!r}")
    # generate's defaults: generation_config.json (which hub reads beside config.json) wins, as in transformers.
    generation = hf | hf.get("generation_config", {})
    layers, heads, d_ff = hf["encoder_layers"], hf["encoder_attention_heads"], hf["encoder_ffn_dim"]
    return BartConfig(
        vocab_size=hf["vocab_size"],
        max_seq_len=hf.get("max_position_embeddings", 1024),
        d_model=hf["d_model"],
        n_layers=layers,
        n_heads=heads,
        d_ff=d_ff,
        n_decoder_layers=hf.get("decoder_layers", layers),
        n_decoder_heads=hf.get("decoder_attention_heads", heads),
        decoder_d_ff=hf.get("decoder_ffn_dim", d_ff),
        mlp=mlp,
        dropout=hf.get("dropout", 0.1),
        attn_dropout=hf.get("attention_dropout", 0.0),
        act_dropout=hf.get("activation_dropout", 0.0),
        scale_embedding=bool(hf.get("scale_embedding", False)),
        pad_token_id=hf.get("pad_token_id", 1),
        bos_token_id=hf.get("bos_token_id", 0),
        eos_token_id=hf.get("eos_token_id", 2),
        decoder_start_token_id=hf.get("decoder_start_token_id", 2),
        forced_bos_token_id=generation.get("forced_bos_token_id"),
        forced_eos_token_id=generation.get("forced_eos_token_id"),
        init_std=hf.get("init_std", 0.02),
    )


def config_to_hf(c: BartConfig, task: str) -> dict:
    if c.norm_eps != 1e-5:
        raise ConfigError(f"norm_eps: transformers' BART LayerNorms use eps=1e-5; this config has {c.norm_eps}")
    return {
        "model_type": "bart",
        "architectures": [ARCHITECTURES[task]],
        "vocab_size": c.vocab_size,
        "max_position_embeddings": c.max_seq_len,
        "d_model": c.d_model,
        "encoder_layers": c.n_layers,
        "decoder_layers": c.n_decoder_layers,
        "encoder_attention_heads": c.n_heads,
        "decoder_attention_heads": c.n_decoder_heads,
        "encoder_ffn_dim": c.d_ff,
        "decoder_ffn_dim": c.decoder_d_ff,
        "activation_function": activation_to_hf(c.mlp, "mlp", "BART"),
        "dropout": c.dropout,
        "attention_dropout": c.attn_dropout,
        "activation_dropout": c.act_dropout,
        "encoder_layerdrop": 0.0,
        "decoder_layerdrop": 0.0,
        "scale_embedding": c.scale_embedding,
        "init_std": c.init_std,
        "tie_word_embeddings": True,
        "pad_token_id": c.pad_token_id,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": c.eos_token_id,
        "decoder_start_token_id": c.decoder_start_token_id,
        "forced_bos_token_id": c.forced_bos_token_id,
        "forced_eos_token_id": c.forced_eos_token_id,
        "is_encoder_decoder": True,
    }


def _layer_rules(p: str, side: str, cross: bool) -> list[Rule]:
    return fairseq_layer_rules(f"{p}{side}.layers.{{i}}", f"{side}_layers.{{i}}", cross)


def _trunk(p: str) -> list[Rule]:
    """The encoder-decoder under prefix ``p`` ("model." in BartForConditionalGeneration, "" as
    BartModel saves it)."""
    out = [rename(f"{p}shared.weight", "embed.weight")]
    for side in ("encoder", "decoder"):
        out.append(rename(f"{p}{side}.embed_positions.weight", f"{side}_pos.weight"))
        out += [rename(f"{p}{side}.layernorm_embedding.{w}", f"{side}_embed_norm.{w}") for w in ("weight", "bias")]
        out += _layer_rules(p, side, cross=side == "decoder")
        # Tied copies of model.shared (older checkpoints store them), and fairseq's version buffers.
        out += [drop(f"{p}{side}.embed_tokens.weight"), drop(f"{p}{side}.version")]
    return out


def rules(c: BartConfig, task: str) -> list[Rule]:
    """Rules from transformers' layout to zoo's; inverted, the first rule matching a key exports
    it, so export writes what BartForConditionalGeneration saves."""
    if task not in ARCHITECTURES:
        raise ValueError(f"task: BART has no task {task!r}; choose one of {', '.join(ARCHITECTURES)}")
    return [
        *_trunk("model."),
        rename("final_logits_bias", "logits_bias"),
        drop("lm_head.weight"),  # tied to model.shared
        *_trunk(""),
    ]


def missing_defaults(c: BartConfig, task: str) -> dict[str, torch.Tensor]:
    """transformers fills an absent final_logits_bias with zeros (_keys_to_ignore_on_load_missing)."""
    return {"final_logits_bias": torch.zeros(1, c.vocab_size)}
