"""T5 <-> transformers (T5ForConditionalGeneration, T5EncoderModel): configs and key rules.

transformers' layout: ``shared`` (the embedding of both stacks), ``{encoder,decoder}.block.{i}.layer.{j}``
with j = 0 self-attention (``SelfAttention.{q,k,v,o}`` and its ``layer_norm``), in the decoder
j = 1 cross-attention (``EncDecAttention``), and the last j the feed-forward (``DenseReluDense.wi``
or ``wi_0``/``wi_1`` gated, ``wo``); the bucket table sits in block 0's self-attention only
(``relative_attention_bias``); ``final_layer_norm`` closes each stack; ``lm_head`` when untied.

Tying in transformers 5: T5Config turns a config.json's ``tie_word_embeddings`` into
``scale_decoder_outputs`` (the d_model**-0.5 rescale) and then always sets tie_word_embeddings
to True, untying only when a checkpoint holds an ``lm_head.weight`` that differs from
``shared.weight``. So a config.json written by transformers 5 says ``tie_word_embeddings: true``
for every model, and its ``scale_decoder_outputs`` tells v1.0 (tied, scaled) from v1.1 (untied,
unscaled); older files (the Hub's) state ``tie_word_embeddings`` for what it is.
"""

from typing import Any

from zoo.blocks.mlp import GATED_MLPS
from zoo.config import ConfigError
from zoo.convert import Rule, drop, rename
from zoo.convert.hf import activation_from_hf, activation_to_hf
from zoo.families.t5.config import T5Config

ARCHITECTURES = {"T5ForConditionalGeneration": "seq2seq_lm", "T5EncoderModel": "encoder"}
_TASK_ARCHITECTURE = {task: arch for arch, task in ARCHITECTURES.items()}
_GATED_BY_ACTIVATION = {act: kind for kind, act in GATED_MLPS.items()}


def _mlp_from_hf(proj: str) -> str:
    """zoo's MLP kind for transformers' ``feed_forward_proj`` ("relu", "gated-gelu", "gated-silu", ...)."""
    parts = proj.split("-")
    gated = len(parts) == 2 and parts[0] == "gated"
    if len(parts) > 2 or (len(parts) == 2 and not gated):
        raise ConfigError(f"feed_forward_proj: {proj!r} is not 'ACT' or 'gated-ACT'")
    # transformers' one special case: "gated-gelu" gates with gelu_new (the tanh approximation).
    act = activation_from_hf("gelu_new" if proj == "gated-gelu" else parts[-1], "feed_forward_proj", "T5")
    if not gated:
        return act
    if act not in _GATED_BY_ACTIVATION:
        raise ConfigError(f"feed_forward_proj: zoo has no MLP gated by {act!r}; gated ones: {', '.join(GATED_MLPS)}")
    return _GATED_BY_ACTIVATION[act]


def _mlp_to_hf(kind: str) -> str:
    if kind == "geglu_tanh":
        return "gated-gelu"
    if kind == "geglu":
        raise ConfigError(
            "mlp: transformers' T5 reads 'gated-gelu' as a gelu_new (tanh) gate, so zoo's exact-GELU 'geglu' has "
            "no feed_forward_proj; use 'geglu_tanh' or save with format='zoo'"
        )
    if kind in GATED_MLPS:
        return f"gated-{activation_to_hf(GATED_MLPS[kind], 'mlp', 'T5')}"
    return activation_to_hf(kind, "mlp", "T5")


def config_from_hf(hf: dict) -> T5Config:
    scale = hf.get("scale_decoder_outputs")
    tie = hf.get("tie_word_embeddings", True) is not False
    if scale is not None:
        # Written by transformers 5, whose tie_word_embeddings is True for every T5: scale_decoder_outputs
        # is what still tells a tied v1.0 model from an untied v1.1 one (see the module docstring).
        tie = bool(scale)
    layers = hf["num_layers"]
    decoder_layers = hf.get("num_decoder_layers") or layers
    return T5Config(
        vocab_size=hf["vocab_size"],
        d_model=hf["d_model"],
        n_layers=layers,
        n_decoder_layers=decoder_layers,
        n_heads=hf["num_heads"],
        head_dim=hf["d_kv"],
        d_ff=hf["d_ff"],
        mlp=_mlp_from_hf(hf.get("feed_forward_proj", "relu")),
        n_buckets=hf.get("relative_attention_num_buckets", 32),
        max_distance=hf.get("relative_attention_max_distance", 128),
        norm_eps=hf.get("layer_norm_epsilon", 1e-6),
        dropout=float(hf.get("dropout_rate", 0.1)),
        tie_embeddings=tie,
        scale_decoder_outputs=tie if scale is None else bool(scale),
        pad_token_id=hf.get("pad_token_id", 0),
        eos_token_id=_one_token(hf.get("eos_token_id", 1)),
        decoder_start_token_id=hf.get("decoder_start_token_id", hf.get("pad_token_id", 0)),
        init_factor=hf.get("initializer_factor", 1.0),
    )


def _one_token(value) -> int:
    """transformers allows a list of end tokens; T5 checkpoints have one."""
    if isinstance(value, list):
        if len(value) != 1:
            raise ConfigError(f"eos_token_id: zoo's T5 has one end token, the checkpoint lists {value}")
        return value[0]
    return value


def config_to_hf(c: T5Config, task: str) -> dict[str, Any]:
    if c.tie_embeddings and not c.scale_decoder_outputs:
        # transformers 5 would read this back as untied (its tie follows the rescale).
        raise ConfigError(
            "scale_decoder_outputs: transformers' T5 ties the head only together with the d_model**-0.5 "
            "rescale; set scale_decoder_outputs=True or tie_embeddings=False, or save with format='zoo'"
        )
    return {
        "model_type": "t5",
        "architectures": [_TASK_ARCHITECTURE[task]],
        "vocab_size": c.vocab_size,
        "d_model": c.d_model,
        "d_kv": c.head_dim,
        "d_ff": c.d_ff,
        "num_layers": c.n_layers,
        "num_decoder_layers": c.n_decoder_layers,
        "num_heads": c.n_heads,
        "relative_attention_num_buckets": c.n_buckets,
        "relative_attention_max_distance": c.max_distance,
        "dropout_rate": c.dropout,
        "layer_norm_epsilon": c.norm_eps,
        "initializer_factor": c.init_factor,
        "feed_forward_proj": _mlp_to_hf(c.mlp),
        # Both, so transformers 4 (which reads the first) and 5 (which reads the second) agree.
        "tie_word_embeddings": c.tie_embeddings,
        "scale_decoder_outputs": c.scale_decoder_outputs,
        "is_encoder_decoder": task == "seq2seq_lm",
        "pad_token_id": c.pad_token_id,
        "eos_token_id": c.eos_token_id,
        "decoder_start_token_id": c.decoder_start_token_id,
    }


def _stack(hf: str, zoo: str, cross: bool) -> list[Rule]:
    """One stack's rules: hf ``encoder``/``decoder`` -> zoo ``encoder_layers``/``decoder_layers`` (or ``layers``)."""
    b, z = f"{hf}.block.{{i}}.layer", f"{zoo}.{{i}}"
    ff = 2 if cross else 1
    out = [rename(f"{b}.0.SelfAttention.{n}.weight", f"{z}.attn.{n}_proj.weight") for n in "qkvo"]
    out.append(rename(f"{b}.0.layer_norm.weight", f"{z}.norm1.weight"))
    if cross:
        out += [rename(f"{b}.1.EncDecAttention.{n}.weight", f"{z}.cross_attn.{n}_proj.weight") for n in "qkvo"]
        out.append(rename(f"{b}.1.layer_norm.weight", f"{z}.norm_cross.weight"))
    for src, dst in (("wi", "up"), ("wi_0", "gate"), ("wi_1", "up"), ("wo", "down")):
        out.append(rename(f"{b}.{ff}.DenseReluDense.{src}.weight", f"{z}.mlp.{dst}.weight"))
    out.append(rename(f"{b}.{ff}.layer_norm.weight", f"{z}.norm2.weight"))
    return out


def rules(c: T5Config, task: str) -> list[Rule]:
    gated = c.mlp in GATED_MLPS
    bucket = "block.0.layer.0.SelfAttention.relative_attention_bias.weight"
    if task == "encoder":
        out = _stack("encoder", "layers", cross=False)
        out += [
            rename(f"encoder.{bucket}", "position_bias.embedding.weight"),
            rename("encoder.final_layer_norm.weight", "norm.weight"),
        ]
        # A full checkpoint's decoder and head, which the encoder leaves out (as T5EncoderModel
        # does when it reads a T5ForConditionalGeneration directory, e.g. t5-v1_1-xxl's).
        decoder = [r.src[0] for r in _stack("decoder", "unused", cross=True)]
        decoder += [f"decoder.{bucket}", "decoder.final_layer_norm.weight", "lm_head.weight"]
        decoder.append("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight")
        out += [drop(key) for key in decoder]
    else:
        out = _stack("encoder", "encoder_layers", cross=False) + _stack("decoder", "decoder_layers", cross=True)
        out += [
            rename(f"encoder.{bucket}", "encoder_position_bias.embedding.weight"),
            rename(f"decoder.{bucket}", "decoder_position_bias.embedding.weight"),
            rename("encoder.final_layer_norm.weight", "encoder_norm.weight"),
            rename("decoder.final_layer_norm.weight", "decoder_norm.weight"),
            # Old checkpoints carry an unused bucket table in the first cross-attention (transformers ignores it).
            drop("decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"),
        ]
        # A tied checkpoint may still store lm_head.weight, a copy of shared.weight.
        out.append(drop("lm_head.weight") if c.tie_embeddings else rename("lm_head.weight", "lm_head.weight"))
    # A plain MLP reads wi, a gated one wi_0 and wi_1; the other kind's keys are then named unexpected.
    out = [r for r in out if not (gated and r.src[0].endswith("DenseReluDense.wi.weight"))]
    out = [r for r in out if gated or not r.src[0].endswith(("wi_0.weight", "wi_1.weight"))]
    out += [
        rename("shared.weight", "embed.weight"),
        # Copies of shared.weight that some checkpoints store (transformers ties them on load).
        drop("encoder.embed_tokens.weight"),
        drop("decoder.embed_tokens.weight"),
    ]
    return out
