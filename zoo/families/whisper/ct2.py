"""Whisper encoders in CTranslate2's directory format (faster-whisper's): model.bin + config.json.

``zoo.convert.ct2.read_ct2`` reads the binary (dequantizing int8/int16 weights); this module
derives the encoder's config from the tensors' shapes and ``encoder/num_heads``, and converts
CTranslate2's names with the same rule engine as transformers' checkpoints. Two differences:

- self-attention stores q, k and v fused in ``linear_0`` ((3 d_model, d_model)), and its fused
  bias holds zeros for the keys (transformers' k_proj has none). A key bias adds the same
  q . b_k to every score of a query, which softmax cancels, so dropping it is exact; export
  writes zeros back.
- config.json holds decoding settings only (suppressed tokens, language ids, alignment heads);
  the architecture is in model.bin.

The decoder's tensors are matched by an explicit list and not used (the family is the encoder),
with a warning, as for transformers' checkpoints.
"""

import re
import warnings
from pathlib import Path

import torch

from zoo.config import ConfigError
from zoo.convert import Rule, drop, rename
from zoo.convert.ct2 import CT2FormatError, read_ct2
from zoo.families.whisper.config import WhisperConfig
from zoo.families.whisper.model import WhisperEncoder
from zoo.hub import CheckpointError, load_converted

SPEC = "WhisperSpec"
MARKER = "model.bin"


def _qkv_from_ct2(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.contiguous() for t in ts[0].chunk(3)]  # (3 d_model, d_model) -> q, k, v


def _qkv_to_ct2(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    return [torch.cat(ts)]


def _qkv_bias_from_ct2(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    q, _k, v = ts[0].chunk(3)  # (3 d_model,) -> q, k, v: the key bias is dropped (softmax-invariant)
    return [q.contiguous(), v.contiguous()]


def _qkv_bias_to_ct2(ts: list[torch.Tensor]) -> list[torch.Tensor]:
    q, v = ts
    return [torch.cat([q, torch.zeros_like(q), v])]


def config_from_ct2(variables: dict[str, torch.Tensor], path: Path) -> WhisperConfig:
    def need(name: str) -> torch.Tensor:
        if name not in variables:
            raise CheckpointError(f"{path}: model.bin has no {name!r}, which a Whisper encoder needs")
        return variables[name]

    layers = {int(m.group(1)) for k in variables if (m := re.match(r"encoder/layer_(\d+)/", k))}
    if not layers:
        raise CheckpointError(f"{path}: model.bin has no encoder/layer_N/ tensors")
    up = need("encoder/layer_0/ffn/linear_0/weight")
    return WhisperConfig(
        n_mels=need("encoder/conv1/weight").shape[1],
        max_seq_len=need("encoder/position_encodings/encodings").shape[0],
        d_model=need("encoder/layer_norm/gamma").shape[0],
        n_layers=max(layers) + 1,
        n_heads=int(need("encoder/num_heads")),
        d_ff=up.shape[0],
    )


def ct2_rules(c: WhisperConfig) -> list[Rule]:
    e, z = "encoder/layer_{i}", "layers.{i}"
    qkv = (f"{z}.attn.q_proj.weight", f"{z}.attn.k_proj.weight", f"{z}.attn.v_proj.weight")
    out = [
        rename("encoder/conv1/weight", "conv1.weight"),
        rename("encoder/conv1/bias", "conv1.bias"),
        rename("encoder/conv2/weight", "conv2.weight"),
        rename("encoder/conv2/bias", "conv2.bias"),
        rename("encoder/position_encodings/encodings", "pos"),
        rename("encoder/layer_norm/gamma", "norm.weight"),
        rename("encoder/layer_norm/beta", "norm.bias"),
        drop("encoder/num_heads"),  # read into the config
        Rule((f"{e}/self_attention/linear_0/weight",), qkv, _qkv_from_ct2, _qkv_to_ct2),
        Rule(
            (f"{e}/self_attention/linear_0/bias",),
            (f"{z}.attn.q_proj.bias", f"{z}.attn.v_proj.bias"),
            _qkv_bias_from_ct2,
            _qkv_bias_to_ct2,
        ),
    ]
    for src, dst in (("self_attention/linear_1", "attn.o_proj"), ("ffn/linear_0", "mlp.up"),
                     ("ffn/linear_1", "mlp.down")):  # fmt: skip
        out += [rename(f"{e}/{src}/{t}", f"{z}.{dst}.{t}") for t in ("weight", "bias")]
    for src, dst in (("self_attention/layer_norm", "norm1"), ("ffn/layer_norm", "norm2")):
        out += [rename(f"{e}/{src}/gamma", f"{z}.{dst}.weight"), rename(f"{e}/{src}/beta", f"{z}.{dst}.bias")]
    return out + decoder_ignore_rules()


def decoder_ignore_rules() -> list[Rule]:
    """Every tensor of CTranslate2's Whisper decoder, listed so that none is dropped unseen."""
    d = "decoder/layer_{i}"
    keys = ["decoder/embeddings/weight", "decoder/position_encodings/encodings", "decoder/layer_norm/gamma",
            "decoder/layer_norm/beta", "decoder/projection/weight", "decoder/projection/bias"]  # fmt: skip
    for sub, n_linear in (("self_attention", 2), ("attention", 3)):
        keys += [f"{d}/{sub}/linear_{j}/{t}" for j in range(n_linear) for t in ("weight", "bias")]
        keys += [f"{d}/{sub}/layer_norm/{t}" for t in ("gamma", "beta")]
    keys += [f"{d}/ffn/linear_{j}/{t}" for j in range(2) for t in ("weight", "bias")]
    keys += [f"{d}/ffn/layer_norm/{t}" for t in ("gamma", "beta")]
    return [drop(k) for k in keys]


def load_ct2(path: str | Path, task: str | None = None) -> WhisperEncoder:
    """A CTranslate2 Whisper directory (model.bin beside config.json) as a zoo Whisper encoder, fp32."""
    path = Path(path)
    if task not in (None, "base"):
        raise ConfigError(
            f"task: a CTranslate2 Whisper checkpoint holds the encoder and decoder, no {task!r} head; load it as "
            "'base' (a recipe's model.task then adds a new head)"
        )
    try:
        ct2 = read_ct2(path / MARKER)
    except CT2FormatError as err:
        raise CheckpointError(str(err)) from err
    if ct2.spec != SPEC:
        raise CheckpointError(f"{path / MARKER}: a CTranslate2 {ct2.spec!r} model; zoo reads {SPEC!r} from this format")
    variables = dict(ct2.variables)
    # The decoder's spec flags (pre_norm, activation, alignment_heads, ...) are scalars, not weights.
    flags = [k for k, v in variables.items() if k.startswith("decoder/") and v.dim() == 0]
    for k in flags:
        variables.pop(k)
    config = config_from_ct2(variables, path)
    warnings.warn(
        f"{path}: zoo's whisper family is the encoder; the CTranslate2 decoder's tensors (decoder/*) are matched "
        "by name and not used",
        UserWarning,
        stacklevel=2,
    )
    model = WhisperEncoder(config)
    state = {k: v.float() for k, v in variables.items()}
    return load_converted(model, state, ct2_rules(config), source_name=str(path / MARKER))
