"""Reading llama-architecture GGUF files (llama.cpp's single-file format): config, weights, tokenizer.

A GGUF holds metadata (``llama.embedding_length``, ``tokenizer.ggml.tokens``, ...) and tensors
under llama.cpp's names, many of them block-quantized. ``load_gguf`` maps the metadata into a
``LlamaConfig``, dequantizes every tensor to fp32 with the ``gguf`` package, and converts the
names with the same rule engine as Hugging Face checkpoints. Two layout differences matter:

- llama.cpp's converter reorders the rows of ``attn_q``/``attn_k`` so that each head's rotary
  pairs are interleaved ((x0, x1), (x2, x3), ...), where LLaMA's Hugging Face layout, and
  zoo's ``apply_rope``, pair channel i with channel i + head_dim / 2. The rules undo that.
- GGUF lists tensor dimensions fastest-varying first, the reverse of torch's order.

``load_gguf_tokenizer`` builds a ``tokenizers`` tokenizer from the vocabulary in the metadata:
a byte-level BPE with the file's merges (kind ``gpt2``: SmolLM2, Llama 3, ...) split by the
pre-tokenizer ``tokenizer.ggml.pre`` names, or a SentencePiece BPE with merges rebuilt from the
scores (kind ``llama``: LLaMA 2, Mistral); then the special tokens and the chat template.
"""

from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType, GGUFReader, quants
from tokenizers import AddedToken, Regex, decoders, pre_tokenizers, processors
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers.models import BPE

from zoo.config import ConfigError
from zoo.convert import Rule, convert_state_dict, drop, permute, rename
from zoo.families.llama.config import LlamaConfig
from zoo.families.llama.model import Llama
from zoo.hub import CheckpointError, load_converted
from zoo.tokenizer import Tokenizer

ARCHITECTURES = ("llama",)  # llama.cpp writes LLaMA, Mistral, Mixtral and SmolLM2 files as "llama"
_REQUIRED = object()


def open_gguf(path: str | Path) -> GGUFReader:
    """Parse a GGUF file's header, metadata and tensor table (the tensor data stays memory-mapped)."""
    try:
        return GGUFReader(str(path))
    except Exception as err:  # the reader fails with whatever numpy or struct raise on a short or foreign file
        raise CheckpointError(
            f"{path}: not a readable GGUF file, truncated or corrupt? ({type(err).__name__}: {err})"
        ) from err


def _meta(reader: GGUFReader, path: Path, key: str, default=_REQUIRED):
    field = reader.fields.get(key)
    if field is None:
        if default is _REQUIRED:
            raise CheckpointError(f"{path}: GGUF metadata has no {key!r}, which zoo needs to build the model")
        return default
    return field.contents()


def _architecture(reader: GGUFReader, path: Path) -> str:
    arch = _meta(reader, path, "general.architecture")
    if arch not in ARCHITECTURES:
        raise CheckpointError(
            f"{path}: general.architecture is {arch!r}; zoo reads GGUF files of architecture "
            f"{', '.join(ARCHITECTURES)} (LLaMA, Mistral, Mixtral, SmolLM2 and other llama-style models)"
        )
    return arch


def _llama3_scaling(factors: torch.Tensor, head_dim: int, theta: float) -> dict:
    """Recover Llama 3.1's ``rope_scaling`` from the per-frequency factors llama.cpp stores as
    ``rope_freqs.weight``: the factors only say how much each frequency is slowed, so the
    published parameters are tried and kept only if they reproduce every factor."""
    from zoo.blocks.position import rope_inv_freq

    base = rope_inv_freq(head_dim, theta)
    if factors.shape != base.shape:
        raise CheckpointError(f"rope_freqs.weight: shape {tuple(factors.shape)}, expected {tuple(base.shape)}")
    if torch.allclose(factors, torch.ones_like(factors)):
        return {}
    factor = float(factors.max())
    for original in (8192, 4096, 2048, 16384, 32768):
        scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": original}  # fmt: skip
        if torch.allclose(base / rope_inv_freq(head_dim, theta, scaling), factors, rtol=1e-4, atol=0):
            return scaling
    raise CheckpointError(
        "rope_freqs.weight: these per-frequency RoPE factors match no Llama 3 rope_scaling "
        "(low_freq_factor=1, high_freq_factor=4); zoo cannot express them"
    )


def config_from_gguf(reader: GGUFReader, path: Path) -> LlamaConfig:
    """The model's config from the GGUF metadata (``llama.embedding_length`` etc.)."""
    a = _architecture(reader, path) + "."
    names = {t.name for t in reader.tensors}
    d_model = int(_meta(reader, path, a + "embedding_length"))
    n_heads = int(_meta(reader, path, a + "attention.head_count"))
    n_kv_heads = _meta(reader, path, a + "attention.head_count_kv", n_heads)
    if isinstance(n_kv_heads, list):
        raise CheckpointError(f"{path}: {a}attention.head_count_kv differs per layer, which zoo's LLaMA cannot express")
    head_dim = int(_meta(reader, path, a + "attention.key_length", d_model // n_heads))
    rotary = int(_meta(reader, path, a + "rope.dimension_count", head_dim))
    if rotary != head_dim:
        raise CheckpointError(f"{path}: {a}rope.dimension_count={rotary} rotates part of each head of {head_dim}")
    theta = float(_meta(reader, path, a + "rope.freq_base", 10000.0))
    scaling = None
    kind = _meta(reader, path, a + "rope.scaling.type", "none")
    if kind == "linear":
        scaling = {"rope_type": "linear", "factor": float(_meta(reader, path, a + "rope.scaling.factor"))}
    elif kind != "none":
        raise CheckpointError(f"{path}: {a}rope.scaling.type is {kind!r}; zoo reads 'linear' (or none)")
    if "rope_freqs.weight" in names:
        scaling = _llama3_scaling(_tensor(reader, "rope_freqs.weight", path), head_dim, theta) or scaling
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    vocab_size = len(tokens.data) if tokens is not None else _meta(reader, path, a + "vocab_size")
    n_experts = _meta(reader, path, a + "expert_count", 0) or None
    try:
        return LlamaConfig(
            vocab_size=int(vocab_size),
            max_seq_len=int(_meta(reader, path, a + "context_length")),
            d_model=d_model,
            n_layers=int(_meta(reader, path, a + "block_count")),
            n_heads=n_heads,
            n_kv_heads=int(n_kv_heads),
            head_dim=head_dim,
            d_ff=int(_meta(reader, path, a + "feed_forward_length")),
            norm_eps=float(_meta(reader, path, a + "attention.layer_norm_rms_epsilon")),
            rope_theta=theta,
            rope_scaling=scaling,
            tie_embeddings="output.weight" not in names,
            attn_bias="blk.0.attn_q.bias" in names,
            mlp_bias="blk.0.ffn_up.bias" in names,
            n_experts=int(n_experts) if n_experts else None,
            top_k=int(_meta(reader, path, a + "expert_used_count", 2)),
        )
    except ConfigError as err:
        raise CheckpointError(f"{path}: the GGUF metadata gives an invalid config: {err}") from err


def _tensor(reader: GGUFReader, name: str, path: Path) -> torch.Tensor:
    t = next(t for t in reader.tensors if t.name == name)
    return _dequantize(t, path)


def _dequantize(t, path: Path) -> torch.Tensor:
    shape = tuple(int(n) for n in reversed(t.shape))  # GGUF lists the fastest-varying dimension first
    qtype = GGMLQuantizationType(t.tensor_type)
    try:
        if qtype == GGMLQuantizationType.F64:
            data = np.asarray(t.data, dtype=np.float64)
        else:
            data = quants.dequantize(t.data, qtype)
    except NotImplementedError as err:
        raise CheckpointError(
            f"{path}: tensor {t.name} {shape} is stored as {qtype.name}, which zoo cannot dequantize; it reads "
            "F32, F16, BF16, F64 and the block quantizations the gguf package decodes (Q4_0, Q4_1, Q5_0, Q5_1, "
            "Q8_0, the K-quants, the IQ types)"
        ) from err
    if data.size != int(np.prod(shape)):
        raise CheckpointError(f"{path}: tensor {t.name} holds {data.size} values, its shape {shape} needs more")
    return torch.from_numpy(np.array(data, dtype=np.float32).reshape(shape))  # a copy: the file stays read-only


def gguf_state_dict(reader: GGUFReader, path: Path, placeholders: bool = False) -> dict[str, torch.Tensor]:
    """Every tensor, dequantized to fp32, under its GGUF name. With ``placeholders``, the tensors
    that ``quantization="native"`` keeps as codes are not dequantized (the slowest part of
    loading) but stand as zeros of their shape, so the strict load still checks every key."""

    def kept(t) -> bool:
        return placeholders and GGMLQuantizationType(t.tensor_type) in _BLOCKS and len(t.shape) >= 2

    return {
        t.name: torch.zeros(()).expand(tuple(int(n) for n in reversed(t.shape))) if kept(t) else _dequantize(t, path)
        for t in reader.tensors
    }


# Block layouts llama.cpp's ggml-common.h defines: bytes per block of 32 weights, where the codes start.
_BLOCKS = {GGMLQuantizationType.Q4_0: (18, 2), GGMLQuantizationType.Q4_1: (20, 4), GGMLQuantizationType.Q8_0: (34, 2)}
# 16-bit floats, kept in bf16 under quantization="native" (F16 rounded to bf16).
_HALF = (GGMLQuantizationType.F16, GGMLQuantizationType.BF16)
KEPT_QUANTIZATIONS = tuple(q.name for q in (*_BLOCKS, *_HALF))


def gguf_block_codes(t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A Q4_0, Q4_1 or Q8_0 tensor's stored codes and block scales, unchanged: (codes (..., K),
    d (..., K / 32), m (..., K / 32)) with ``w = d * codes + m`` per block of 32 weights.

    Q4_1 stores d and m (fp16) and codes 0..15; Q4_0 stores d and codes 0..15 meaning codes - 8
    (m = -8d); Q8_0 stores d and int8 codes (m = 0). A 4-bit block packs element j in the low
    nibble of byte j and element j + 16 in its high nibble. Rows come in torch's order."""
    qtype = GGMLQuantizationType(t.tensor_type)
    size, start = _BLOCKS[qtype]
    raw = torch.from_numpy(np.array(t.data))  # (*rows, bytes per row); a copy, the file stays read-only
    blocks = raw.reshape(*raw.shape[:-1], -1, size)  # (*rows, K / 32, bytes per block)
    d = blocks[..., 0:2].contiguous().view(torch.float16).squeeze(-1).float()  # (*rows, K / 32)
    if qtype == GGMLQuantizationType.Q8_0:
        codes, m = blocks[..., start:].contiguous().view(torch.int8), torch.zeros_like(d)
    else:
        qs = blocks[..., start:]  # (*rows, K / 32, 16)
        codes = torch.cat([qs & 15, qs >> 4], dim=-1)  # (*rows, K / 32, 32)
        m = blocks[..., 2:4].contiguous().view(torch.float16).squeeze(-1).float() if start == 4 else -8 * d
    return codes.reshape(*raw.shape[:-1], -1), d, m


def _keep_file_quantization(model: Llama, reader: GGUFReader, path: Path) -> Llama:
    """Replace each linear layer whose GGUF tensor is Q4_0, Q4_1 or Q8_0 by a ``QuantLinear`` on
    the file's own codes and scales (the same renaming and RoPE row order as the fp32 path),
    F16 and BF16 ones by bf16 layers (``_keep_half_weights``), keeping the rest as ``load_gguf``
    dequantized it (fp32: F32, the K-quants, ...)."""
    from zoo.quant import QuantLinear, _fused_bias, fusable

    codes, d, m = {}, {}, {}
    for t in reader.tensors:
        if GGMLQuantizationType(t.tensor_type) in _BLOCKS and len(t.shape) >= 2:
            codes[t.name], d[t.name], m[t.name] = gguf_block_codes(t)
    rules = gguf_rules(model.config)
    codes, d, m = (convert_state_dict(s, rules, source_name=str(path)) for s in (codes, d, m))
    # q/k/v and gate/up stored alike fuse into one layer each: their rows simply stack.
    for name, owner, projections, fuse in fusable(model.layers):
        keys = [f"layers.{name}.{p}.weight" for p in projections]
        if all(k in codes for k in keys) and len({(codes[k].dtype, d[k].shape[1]) for k in keys}) == 1:
            parts = [getattr(owner, p) for p in projections]
            fused = [torch.cat([state.pop(k) for k in keys]) for state in (codes, d, m)]
            getattr(owner, fuse)(QuantLinear.from_blocks(*fused, _fused_bias(parts)))
    for key in codes:
        name = key.removesuffix(".weight")
        if name == "embed":
            # The input embedding reads only the step's rows: it is dequantized (bf16 below, as
            # the activations are); tied, the codes serve as the output projection too.
            with torch.no_grad():
                block = lambda t: t.repeat_interleave(32, -1)  # (N, K / 32) -> (N, K)
                model.embed.weight.copy_(block(d[key]) * codes[key] + block(m[key]))
            if not model.config.tie_embeddings:
                continue
            name = "lm_head"
        old = model.get_submodule(name) if name != "lm_head" or model.lm_head is not None else None
        bias = None if old is None else old.bias
        layer = QuantLinear.from_blocks(codes[key], d[key], m[key], bias)
        if name == "lm_head":
            layer.keep_exact_rows(codes[key], d[key], m[key])
            model.lm_head = layer
        else:
            model.set_submodule(name, layer)
    return _keep_half_weights(model, reader, path)


def _keep_half_weights(model: Llama, reader: GGUFReader, path: Path) -> Llama:
    """Replace each linear layer whose GGUF tensor is F16 or BF16 by a bf16 ``QuantLinear``
    (its weights as loaded, exact for BF16, rounded to bf16 for F16), q/k/v and gate/up fused."""
    from zoo.quant import QuantLinear, _fused_bias, fusable

    # Which zoo weights came from 16-bit tensors: the same rules on shapes alone (meta tensors).
    half = {
        t.name: torch.empty(tuple(int(n) for n in reversed(t.shape)), device="meta")
        for t in reader.tensors
        if GGMLQuantizationType(t.tensor_type) in _HALF and len(t.shape) >= 2
    }
    keys = set(convert_state_dict(half, gguf_rules(model.config), source_name=str(path)))
    with torch.no_grad():
        for name, owner, projections, fuse in fusable(model.layers):
            names = [f"layers.{name}.{p}.weight" for p in projections]
            if all(k in keys for k in names):
                parts = [getattr(owner, p) for p in projections]
                weight = torch.cat([p.weight for p in parts])
                getattr(owner, fuse)(QuantLinear.from_bf16(weight, _fused_bias(parts)))
                keys -= set(names)
        for key in sorted(keys):
            name = key.removesuffix(".weight")
            if name == "embed":
                if not model.config.tie_embeddings:
                    continue  # the input embedding reads only the step's rows: it stays fp32
                name = "lm_head"
            source = model.embed if name == "lm_head" and model.lm_head is None else model.get_submodule(name)
            layer = QuantLinear.from_bf16(source.weight, getattr(source, "bias", None))
            if name == "lm_head":
                # bf16 logits tie; the top candidates are recomputed in fp32 from the bf16 weights.
                ones = torch.ones(layer.out_features, 1)
                layer.keep_exact_rows(layer.codes, ones, torch.zeros_like(ones))
                model.lm_head = layer
            else:
                model.set_submodule(name, layer)
    return model


def _rope_rows(n_heads: int):
    """(llama.cpp's interleaved rotary rows -> half-split rows, and back), per head, for a weight or bias."""

    def from_gguf(w: torch.Tensor) -> torch.Tensor:
        return w.reshape(n_heads, -1, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)  # (H, 2, hd/2, ...)

    def to_gguf(w: torch.Tensor) -> torch.Tensor:
        return w.reshape(n_heads, 2, -1, *w.shape[1:]).transpose(1, 2).reshape(w.shape)  # (H, hd/2, 2, ...)

    return from_gguf, to_gguf


def _stacked_experts(n_experts: int):
    def fn(ts: list[torch.Tensor]) -> list[torch.Tensor]:
        if ts[0].dim() != 3 or ts[0].shape[0] != n_experts:
            raise ValueError(f"expected ({n_experts} experts, ...), got shape {tuple(ts[0].shape)}")
        return [e.contiguous() for e in ts[0]]

    return fn, lambda ts: [torch.stack(ts)]


def gguf_rules(c: LlamaConfig) -> list[Rule]:
    """llama.cpp's tensor names -> zoo's (see llama.cpp's gguf-py ``tensor_mapping.py``)."""
    b, z = "blk.{i}", "layers.{i}"
    out = [
        rename("token_embd.weight", "embed.weight"),
        rename("output_norm.weight", "norm.weight"),
        rename(f"{b}.attn_norm.weight", f"{z}.norm1.weight"),
        rename(f"{b}.ffn_norm.weight", f"{z}.norm2.weight"),
        # Consumed into rope_scaling by config_from_gguf.
        drop("rope_freqs.weight"),
    ]
    if not c.tie_embeddings:
        out.append(rename("output.weight", "lm_head.weight"))
    params = ("weight", "bias") if c.attn_bias else ("weight",)
    for p in params:
        out.append(permute(f"{b}.attn_q.{p}", f"{z}.attn.q_proj.{p}", *_rope_rows(c.n_heads)))
        out.append(permute(f"{b}.attn_k.{p}", f"{z}.attn.k_proj.{p}", *_rope_rows(c.kv_heads)))
        out.append(rename(f"{b}.attn_v.{p}", f"{z}.attn.v_proj.{p}"))
        out.append(rename(f"{b}.attn_output.{p}", f"{z}.attn.o_proj.{p}"))
    if c.n_experts is None:
        params = ("weight", "bias") if c.mlp_bias else ("weight",)
        out += [rename(f"{b}.ffn_{n}.{p}", f"{z}.mlp.{n}.{p}") for n in ("gate", "up", "down") for p in params]
    else:
        out.append(rename(f"{b}.ffn_gate_inp.weight", f"{z}.mlp.router.weight"))
        for n in ("gate", "up", "down"):
            # Current files stack the experts in one 3-D tensor; older ones keep one tensor per expert.
            dst = tuple(f"{z}.mlp.experts.{e}.{n}.weight" for e in range(c.n_experts))
            out.append(Rule((f"{b}.ffn_{n}_exps.weight",), dst, *_stacked_experts(c.n_experts)))
            out.append(rename(f"{b}.ffn_{n}.{{e}}.weight", f"{z}.mlp.experts.{{e}}.{n}.weight"))
    return out


def load_gguf(path: str | Path, task: str | None = None, quantization: str | None = None) -> Llama:
    """A zoo model from a llama-architecture GGUF file.

    Args:
        quantization: None dequantizes every weight to fp32; ``"native"`` keeps the file's Q4_0,
            Q4_1 and Q8_0 weights as they are stored and F16/BF16 ones as bf16
            (``zoo.quant.QuantLinear``), the other tensors in fp32; ``"int8"``/``"int4"``
            dequantize, then ``zoo.quant.quantize``.
    """
    from zoo.quant import check_quantization, quantize

    check_quantization(quantization, native=True)
    path = Path(path)
    reader = open_gguf(path)
    config = config_from_gguf(reader, path)
    if task not in (None, Llama.task):
        raise ValueError(f"task: a GGUF file holds a causal LM; task {task!r} is not available")
    model = Llama(config)
    state = gguf_state_dict(reader, path, placeholders=quantization == "native")
    model = load_converted(model, state, gguf_rules(config), source_name=str(path))
    if quantization == "native":
        return _keep_file_quantization(model, reader, path)
    return quantize(model, quantization) if quantization is not None else model


# llama.cpp's pre-tokenizer names (tokenizer.ggml.pre) -> how text is split before byte-level BPE,
# from llama.cpp's llama-vocab.cpp.
_GPT2_SPLIT = ("default", "gpt2", "mpt", "olmo", "jais")
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva")
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3 = ("llama3", "llama-bpe", "llama-v3", "smaug-bpe", "falcon3", "pixtral", "dbrx")
_UNKNOWN, _CONTROL, _USER_DEFINED = 2, 3, 4  # llama.cpp's token types


def _pre_tokenizer(pre: str, path: Path):
    if pre in _GPT2_SPLIT:
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGITS_THEN_GPT2:
        return pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
    if pre in _LLAMA3:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )
    known = ", ".join(_GPT2_SPLIT + _DIGITS_THEN_GPT2 + _LLAMA3)
    raise CheckpointError(f"{path}: tokenizer.ggml.pre is {pre!r}, a pre-tokenizer zoo does not know; known: {known}")


def _byte_level_bpe(reader: GGUFReader, path: Path, tokens: list[str]) -> BackendTokenizer:
    """GPT-2-style BPE over bytes spelled as printable characters, with the merges the file lists."""
    merges = [tuple(m.split(" ", 1)) for m in _meta(reader, path, "tokenizer.ggml.merges")]
    backend = BackendTokenizer(BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=False))
    backend.pre_tokenizer = _pre_tokenizer(_meta(reader, path, "tokenizer.ggml.pre", "default"), path)
    backend.decoder = decoders.ByteLevel()
    return backend


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """SentencePiece BPE files list scores, not merges: every split of a piece into two pieces of the
    vocabulary is a merge, ranked by the score of the piece it makes (best first), ties broken by
    the longer left then right part, as llama.cpp and transformers rebuild them."""
    vocab = {t: i for i, t in enumerate(tokens)}
    merges = []
    for token, score in zip(tokens, scores, strict=True):
        splits = [
            (token[:i], token[i:], score) for i in range(1, len(token)) if token[:i] in vocab and token[i:] in vocab
        ]
        merges += sorted(splits, key=lambda m: (vocab[m[0]], vocab[m[1]]))
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def _sentencepiece_bpe(reader: GGUFReader, path: Path, tokens: list[str]) -> BackendTokenizer:
    """LLaMA 2 / Mistral's SentencePiece BPE: spaces become "▁" (one is prepended to the text),
    characters outside the vocabulary fall back to <0xNN> byte tokens."""
    scores = _meta(reader, path, "tokenizer.ggml.scores")
    merges = merges_from_scores(tokens, scores)
    backend = BackendTokenizer(BPE({t: i for i, t in enumerate(tokens)}, merges, fuse_unk=True, byte_fallback=True))
    prefix = bool(_meta(reader, path, "tokenizer.ggml.add_space_prefix", True))
    backend.pre_tokenizer = pre_tokenizers.Metaspace("▁", prepend_scheme="first" if prefix else "never", split=False)
    steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    return backend


# tokenizer.ggml.model -> (builder, whether BOS is added when the file does not say, as llama.cpp does)
_TOKENIZER_KINDS = {"gpt2": (_byte_level_bpe, False), "llama": (_sentencepiece_bpe, True)}


def load_gguf_tokenizer(path: str | Path) -> Tokenizer:
    """The tokenizer embedded in a GGUF file: byte-level BPE (``tokenizer.ggml.model == "gpt2"``:
    SmolLM2, Llama 3, ...) or SentencePiece BPE (``"llama"``: LLaMA 2, Mistral)."""
    path = Path(path)
    reader = open_gguf(path)
    kind = _meta(reader, path, "tokenizer.ggml.model")
    if kind not in _TOKENIZER_KINDS:
        raise CheckpointError(
            f"{path}: tokenizer.ggml.model is {kind!r}; zoo builds GGUF tokenizers of kind "
            f"{', '.join(map(repr, _TOKENIZER_KINDS))} (byte-level and SentencePiece BPE)"
        )
    build, bos_by_default = _TOKENIZER_KINDS[kind]
    tokens = _meta(reader, path, "tokenizer.ggml.tokens")
    types = _meta(reader, path, "tokenizer.ggml.token_type", [])
    backend = build(reader, path, tokens)
    # Control tokens (<|im_start|>, <s>) and user-defined ones are matched whole in the text, never
    # split; so is SentencePiece's <unk>.
    special = (_CONTROL, _UNKNOWN) if kind == "llama" else (_CONTROL,)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, k in zip(tokens, types, strict=False) if k in special])  # fmt: skip
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, k in zip(tokens, types, strict=False) if k == _USER_DEFINED])  # fmt: skip

    def special_id(key: str) -> int | None:
        index = _meta(reader, path, f"tokenizer.ggml.{key}_token_id", None)
        if index is not None and not 0 <= index < len(tokens):
            raise CheckpointError(f"{path}: tokenizer.ggml.{key}_token_id={index} is outside the {len(tokens)} tokens")
        return index

    bos, eos, pad = special_id("bos"), special_id("eos"), special_id("padding")
    # Which special tokens encode() adds around the text (SmolLM2 adds none; Llama 3 adds BOS).
    wrap = {}
    for key, index in (("bos", bos), ("eos", eos)):
        if _meta(reader, path, f"tokenizer.ggml.add_{key}_token", bos_by_default and key == "bos"):
            if index is None:
                raise CheckpointError(f"{path}: tokenizer.ggml.add_{key}_token is set but there is no {key}_token_id")
            wrap[key] = index
    if wrap:

        def template(seq: str, type_id: int) -> str:
            parts = [f"{tokens[wrap['bos']]}:{type_id}"] if "bos" in wrap else []
            parts.append(f"${seq}:{type_id}")
            parts += [f"{tokens[wrap['eos']]}:{type_id}"] if "eos" in wrap else []
            return " ".join(parts)

        backend.post_processor = processors.TemplateProcessing(
            single=template("A", 0),
            pair=f"{template('A', 0)} {template('B', 1)}",
            special_tokens=[(tokens[i], i) for i in set(wrap.values())],
        )
    name = lambda index: None if index is None else tokens[index]
    return Tokenizer(
        backend,
        bos_token=name(bos),
        eos_token=name(eos),
        pad_token=name(pad),
        chat_template=_meta(reader, path, "tokenizer.chat_template", None),
    )
