"""Whisper encoder <-> transformers' WhisperEncoder, WhisperModel, WhisperForConditionalGeneration
and WhisperForAudioClassification.

The encoder's tensors sit under three prefixes: none (a saved ``WhisperEncoder``), ``encoder.``
(``WhisperModel``, ``WhisperForAudioClassification``) and ``model.encoder.``
(``WhisperForConditionalGeneration``). zoo's whisper family is the encoder only: the decoder's
tensors of a full checkpoint are matched by an explicit list of templates (``decoder_ignore_rules``)
and not used, and loading says so in a warning; a decoder key outside that list still fails.
"""

import warnings

from zoo.config import ConfigError
from zoo.convert import Rule, drop, rename
from zoo.convert.hf import activation_from_hf, activation_to_hf, labels_to_hf, n_labels_from_hf
from zoo.families.whisper.config import WhisperConfig

# config.json architectures -> task. Export writes the first one listed per task.
ARCHITECTURES = {
    "WhisperEncoder": "base",
    "WhisperModel": "base",
    "WhisperForConditionalGeneration": "base",
    "WhisperForAudioClassification": "audio_classification",
}
_EXPORT = {"base": "WhisperEncoder", "audio_classification": "WhisperForAudioClassification"}
_WITH_DECODER = ("WhisperModel", "WhisperForConditionalGeneration")


def config_from_hf(hf: dict) -> WhisperConfig:
    mlp = activation_from_hf(hf.get("activation_function", "gelu"), "activation_function", "Whisper")
    if hf.get("activation_dropout", 0.0):
        raise ConfigError(
            f"activation_dropout: {hf['activation_dropout']} has no equivalent in zoo (its MLP has no dropout "
            "between the two projections); set it to 0.0"
        )
    if hf.get("encoder_layerdrop", 0.0):
        raise ConfigError(f"encoder_layerdrop: {hf['encoder_layerdrop']}: zoo does not skip layers; set it to 0.0")
    if hf.get("use_weighted_layer_sum", False):
        raise ConfigError("use_weighted_layer_sum: True is not supported; zoo's head pools the last layer")
    archs = hf.get("architectures") or []
    if any(a in _WITH_DECODER for a in archs):
        warnings.warn(
            f"{archs[0]}: zoo's whisper family is the encoder; the decoder's tensors (decoder.*, model.decoder.*, "
            "proj_out.weight) are matched by name and not used",
            UserWarning,
            stacklevel=2,
        )
    return WhisperConfig(
        n_mels=hf["num_mel_bins"],
        max_seq_len=hf.get("max_source_positions", 1500),
        d_model=hf["d_model"],
        n_layers=hf["encoder_layers"],
        n_heads=hf["encoder_attention_heads"],
        d_ff=hf["encoder_ffn_dim"],
        mlp=mlp,
        dropout=hf.get("dropout", 0.0),
        attn_dropout=hf.get("attention_dropout", 0.0),
        classifier_proj_size=hf.get("classifier_proj_size", 256),
        n_labels=n_labels_from_hf(hf),
    )


def config_to_hf(c: WhisperConfig, task: str) -> dict:
    if c.norm_eps != 1e-5:
        raise ConfigError(f"norm_eps: {c.norm_eps} has no equivalent in transformers' Whisper (always 1e-5)")
    hf = {
        "model_type": "whisper",
        "architectures": [_EXPORT[task]],
        "num_mel_bins": c.n_mels,
        "max_source_positions": c.max_seq_len,
        "d_model": c.d_model,
        "encoder_layers": c.n_layers,
        "encoder_attention_heads": c.n_heads,
        "encoder_ffn_dim": c.d_ff,
        "activation_function": activation_to_hf(c.mlp, "mlp", "Whisper"),
        "dropout": c.dropout,
        "attention_dropout": c.attn_dropout,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.0,
        "use_weighted_layer_sum": False,
        "classifier_proj_size": c.classifier_proj_size,
    }
    if task == "audio_classification":
        hf.update(labels_to_hf(c.n_labels))
    return hf


def encoder_rules(p: str) -> list[Rule]:
    """The encoder's tensors under prefix ``p`` ("", "encoder." or "model.encoder.")."""
    h, z = f"{p}layers.{{i}}", "layers.{i}"
    out = [
        rename(f"{p}conv1.weight", "conv1.weight"),
        rename(f"{p}conv1.bias", "conv1.bias"),
        rename(f"{p}conv2.weight", "conv2.weight"),
        rename(f"{p}conv2.bias", "conv2.bias"),
        rename(f"{p}embed_positions.weight", "pos"),
        rename(f"{p}layer_norm.weight", "norm.weight"),
        rename(f"{p}layer_norm.bias", "norm.bias"),
        rename(f"{h}.self_attn.k_proj.weight", f"{z}.attn.k_proj.weight"),  # keys have no bias
    ]
    for src, dst in (("q_proj", "q_proj"), ("v_proj", "v_proj"), ("out_proj", "o_proj")):
        out += [rename(f"{h}.self_attn.{src}.{t}", f"{z}.attn.{dst}.{t}") for t in ("weight", "bias")]
    for src, dst in (("self_attn_layer_norm", "norm1"), ("final_layer_norm", "norm2"), ("fc1", "mlp.up"),
                     ("fc2", "mlp.down")):  # fmt: skip
        out += [rename(f"{h}.{src}.{t}", f"{z}.{dst}.{t}") for t in ("weight", "bias")]
    return out


def decoder_ignore_rules(p: str) -> list[Rule]:
    """Every tensor of transformers' WhisperDecoder under prefix ``p``, listed so it is not used
    without being silently dropped: a key outside this list is still reported as unmatched."""
    h = f"{p}layers.{{i}}"
    keys = [f"{p}embed_tokens.weight", f"{p}embed_positions.weight", f"{p}layer_norm.weight", f"{p}layer_norm.bias"]
    for attn in ("self_attn", "encoder_attn"):
        keys.append(f"{h}.{attn}.k_proj.weight")
        keys += [f"{h}.{attn}.{proj}.{t}" for proj in ("q_proj", "v_proj", "out_proj") for t in ("weight", "bias")]
    for sub in ("self_attn_layer_norm", "encoder_attn_layer_norm", "final_layer_norm", "fc1", "fc2"):
        keys += [f"{h}.{sub}.{t}" for t in ("weight", "bias")]
    return [drop(k) for k in keys]


def rules(c: WhisperConfig, task: str) -> list[Rule]:
    if task == "audio_classification":
        head = [rename(f"{m}.{t}", f"{m}.{t}") for m in ("projector", "classifier") for t in ("weight", "bias")]
        return encoder_rules("encoder.") + head
    # The first prefix is what export writes: a saved WhisperEncoder's own layout.
    out = encoder_rules("") + encoder_rules("encoder.") + encoder_rules("model.encoder.")
    out += decoder_ignore_rules("decoder.") + decoder_ignore_rules("model.decoder.")
    return [*out, drop("proj_out.weight")]  # WhisperForConditionalGeneration's head, when stored untied
