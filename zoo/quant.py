"""Weight-only quantization for CPU decoding: int8 per output channel, int4 in groups along the input.

A decoding step at batch 1 reads every weight once, so its speed is set by the bytes of weights:
fp32 4 bytes a weight, bf16 2, int8 1, int4 half a byte (plus a scale and zero per group).
``QuantLinear`` holds the codes and runs torch's own CPU kernels on them:

- ``int8``: ``torch.ops.aten._weight_int8pack_mm``, ``y = x @ (q * s[:, None]).T`` with one bf16
  scale ``s`` per output channel (the kernel takes no group scales);
- ``int4``: ``torch.ops.aten._weight_int4pack_mm_for_cpu`` over codes packed by
  ``_convert_weight_to_int4pack_for_cpu``, ``w = (q - 8) * s + z`` with a bf16 scale ``s`` and
  zero point ``z`` per group of ``group_size`` inputs of one output channel.

Both kernels are fast only with bf16 inputs (with fp32 ones they are 5-40x slower than fp32
``F.linear``), take their scales in the input dtype and write bf16. So a ``QuantLinear`` casts
its input to bf16 and its output back; everything else (embedding, norms, residual stream,
attention and its KV cache) stays fp32. A bf16 residual stream summed over 30 layers made
SmolLM2's greedy answers drift from fp32's, and fp32 attention is faster than bf16 on CPU (the
casts' cost could not be told from the noise of the loaded machine; docs/quantization.md). An
output projection also recomputes its top candidates in fp32 (``keep_exact_rows``), since bf16
logits tie.

``quantize(model, "int8" | "int4", group_size=)`` quantizes every linear projection of a
decoder's layers and its output projection, the latter at 8 bits in blocks of 32 by default
(``head=``; a tied output projection gets its own quantized copy; the input embedding stays as
it is, since a step reads only the rows of its B tokens).
MoE experts are quantized like any MLP; routers stay float, since they are tiny and a flipped
routing choice changes a whole expert's output.
"""

import torch
from torch import nn
from torch.nn import functional as F

KINDS = ("int8", "int4")
# How ``quantize`` stores the output projection: 8-bit codes in blocks of 32 inputs (llama.cpp's
# Q8_0, which its quantizers keep for the output projection), or the same kind as the layers.
HEAD_KINDS = ("int8-blocks", "same")
HEAD_BLOCK = 32
GROUP_SIZES = (32, 64, 128, 256)  # what _weight_int4pack_mm_for_cpu accepts
_N_MULTIPLE = 16  # the int4 packing needs the output channels in multiples of 16; others are padded


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


class QuantLinear(nn.Module):
    """A linear layer with int8 or int4 weights; computes in bf16, returns the input's dtype. Build
    it with ``from_int8``, ``from_int4``, ``from_blocks`` or ``from_linear``; it holds buffers only
    (inference, no gradients).

    Args:
        in_features, out_features: as ``nn.Linear``.
        kind: ``"int8"`` or ``"int4"``.
        group_size: inputs per scale and zero point (int4 only).
        bias: a (out_features,) bias, or None.
    """

    def __init__(self, in_features: int, out_features: int, kind: str, group_size: int | None = None, bias=None):
        super().__init__()
        if kind not in (*KINDS, "bf16"):
            raise ValueError(f"quantization: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
        self.in_features, self.out_features, self.kind, self.group_size = in_features, out_features, kind, group_size
        self.input_copies = 1  # 2 for 8-bit codes in groups, run as two 4-bit halves (see from_blocks)
        self.refine_top = 0  # see keep_exact_rows
        self.register_buffer("bias", None if bias is None else bias.detach().to(torch.bfloat16).clone())

    @classmethod
    def from_int8(cls, codes: torch.Tensor, scales: torch.Tensor, bias: torch.Tensor | None = None) -> "QuantLinear":
        """``w = codes * scales[:, None]``; codes (N, K) int8, scales (N,)."""
        N, K = codes.shape
        if codes.dtype != torch.int8 or scales.shape != (N,):
            raise ValueError(f"int8 weights: codes (N, K) int8 and scales (N,), got {codes.dtype} and {scales.shape}")
        m = cls(K, N, "int8", bias=bias)
        m.register_buffer("codes", codes.contiguous())
        m.register_buffer("scales", scales.to(torch.bfloat16).contiguous())
        return m

    @classmethod
    def from_bf16(cls, weight: torch.Tensor, bias: torch.Tensor | None = None) -> "QuantLinear":
        """Weights kept in bf16 (a GGUF file's F16/BF16 tensors under ``quantization="native"``):
        half the bytes of fp32 and torch's bf16 matmul, with the same fp32-in, fp32-out contract
        as the integer kinds. BF16 weights are exact; F16 ones are rounded to bf16 (8 bits of
        mantissa instead of 11)."""
        N, K = weight.shape
        m = cls(K, N, "bf16", bias=bias)
        m.register_buffer("codes", weight.detach().to(torch.bfloat16).contiguous())
        return m

    @classmethod
    def from_int4(
        cls, codes: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, bias: torch.Tensor | None = None
    ) -> "QuantLinear":
        """``w = (codes - 8) * s + z`` with codes (N, K) in 0..15 and scales, zeros (N, K / group_size)."""
        N, K = codes.shape
        G = scales.shape[1]
        group = K // G if G else 0
        if group not in GROUP_SIZES or G * group != K or scales.shape != zeros.shape or scales.shape[0] != N:
            raise ValueError(
                f"int4 weights: codes (N, K) and scales, zeros (N, K / group_size) with group_size one of "
                f"{GROUP_SIZES}; got codes {tuple(codes.shape)}, scales {tuple(scales.shape)}, "
                f"zeros {tuple(zeros.shape)}"
            )
        if int(codes.min()) < 0 or int(codes.max()) > 15:
            raise ValueError("int4 weights: codes must lie in 0..15")
        m = cls(K, N, "int4", group_size=group, bias=bias)
        pad = _round_up(N, _N_MULTIPLE) - N  # padded output channels are zero weights, sliced off
        codes, scales, zeros = codes.to(torch.int32), scales.float(), zeros.float()
        if pad:
            codes = F.pad(codes, (0, 0, 0, pad), value=8)
            scales, zeros = F.pad(scales, (0, 0, 0, pad)), F.pad(zeros, (0, 0, 0, pad))
        m.register_buffer("codes", torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1))
        # (K / group, N_padded, 2): the layout the kernel reads, scales and zeros side by side
        m.register_buffer("scales_zeros", torch.stack([scales.t(), zeros.t()], dim=-1).to(torch.bfloat16).contiguous())
        return m

    @classmethod
    def from_blocks(
        cls, codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bias: torch.Tensor | None = None
    ) -> "QuantLinear":
        """Block-quantized weights as llama.cpp stores them, without requantizing: ``w = d * codes + m``
        per block of ``K / d.shape[1]`` inputs, codes (N, K) either 4-bit (uint8 in 0..15; Q4_0, Q4_1)
        or 8-bit (int8; Q8_0, with m = 0).

        4-bit codes map onto the kernel's ``(q - 8) * s + z`` with s = d, z = m + 8d. No kernel
        takes 8-bit codes with a scale per group, so those are split exactly into two 4-bit
        halves, ``q = 16 * hi + lo`` (hi in -8..7, lo in 0..15), stored side by side along the
        input (K -> 2K), and the input is fed twice: ``x @ W.T = [x, x] @ [W_hi, W_lo].T``.
        Only the scales are rounded, to bf16 (the kernel's dtype for them)."""
        d, m = d.float(), m.float()
        if codes.dtype == torch.uint8:
            return cls.from_int4(codes, d, m + 8 * d, bias)
        if codes.dtype != torch.int8:
            raise ValueError(f"block codes: expected uint8 (4-bit) or int8 (8-bit), got {codes.dtype}")
        if m.abs().max() > 0:
            raise ValueError("block codes: 8-bit blocks have no offset (m must be 0)")
        wide = codes.to(torch.int16)
        hi, lo = wide >> 4, wide & 15  # arithmetic shift: hi in -8..7, 16 * hi + lo == codes
        halves = torch.cat([hi + 8, lo], dim=1).to(torch.uint8)  # (N, 2K)
        scales = torch.cat([16 * d, d], dim=1)  # bf16(16 d) = 16 bf16(d): both halves share d's rounding
        zeros = torch.cat([torch.zeros_like(d), 8 * d], dim=1)
        layer = cls.from_int4(halves, scales, zeros, bias)
        layer.in_features, layer.input_copies = codes.shape[1], 2
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, kind: str, group_size: int | None = None) -> "QuantLinear":
        """Quantize a float ``nn.Linear`` (round to nearest): int8 symmetric per output channel;
        int4 asymmetric per group, the group's min and max on the first and last code."""
        return cls.from_weight(linear.weight, kind, group_size, linear.bias)

    @classmethod
    def from_weight(
        cls, w: torch.Tensor, kind: str, group_size: int | None = None, bias=None, exact_rows: bool = False
    ) -> "QuantLinear":
        """Quantize weights ``w`` (N, K); ``exact_rows`` keeps the codes for ``keep_exact_rows``
        (the quantized weights' own values: an output projection's top logits in fp32)."""
        w = w.detach().float()
        N, K = w.shape
        if kind == "int8":
            if group_size is not None:
                raise ValueError("group_size: int8 uses one scale per output channel (the kernel's only layout)")
            scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.bfloat16)  # rounded first: codes fit it
            codes = (w / scales.float()[:, None]).round().clamp(-128, 127).to(torch.int8)
            layer = cls.from_int8(codes, scales, bias)
            if exact_rows:
                layer.keep_exact_rows(codes, scales.float()[:, None], torch.zeros(N, 1))
            return layer
        if kind != "int4":
            raise ValueError(f"quantization: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
        group_size = 32 if group_size is None else group_size
        if group_size not in GROUP_SIZES or K % group_size:
            raise ValueError(
                f"group_size: {group_size} must be one of {GROUP_SIZES} and divide the input width {K} "
                f"(weight {tuple(w.shape)})"
            )
        g = w.view(N, K // group_size, group_size)  # (N, groups, group_size)
        low, high = g.amin(dim=-1), g.amax(dim=-1)
        scales = ((high - low) / 15).clamp(min=1e-12).to(torch.bfloat16).float()
        zeros = (low + 8 * scales).to(torch.bfloat16).float()  # w = (q - 8) * s + z puts low at q = 0
        codes = ((g - zeros[..., None]) / scales[..., None] + 8).round().clamp(0, 15).to(torch.uint8).view(N, K)
        layer = cls.from_int4(codes, scales, zeros, bias)
        if exact_rows:
            layer.keep_exact_rows(codes, scales, zeros - 8 * scales)
        return layer

    @classmethod
    def from_weight_blocks(
        cls, w: torch.Tensor, block: int = HEAD_BLOCK, bias=None, exact_rows: bool = False
    ) -> "QuantLinear":
        """Quantize ``w`` (N, K) to symmetric 8-bit codes with one scale per block of ``block``
        inputs (Q8_0's layout: d = max |w| / 127 over the block), run through ``from_blocks``."""
        w = w.detach().float()
        N, K = w.shape
        if block not in GROUP_SIZES or K % block:
            raise ValueError(f"block: {block} must be one of {GROUP_SIZES} and divide the input width {K}")
        g = w.view(N, K // block, block)  # (N, blocks, block)
        d = (g.abs().amax(dim=-1) / 127).clamp(min=1e-12).to(torch.bfloat16).float()  # rounded first: codes fit it
        codes = (g / d[..., None]).round().clamp(-127, 127).to(torch.int8).view(N, K)
        layer = cls.from_blocks(codes, d, torch.zeros_like(d), bias)
        if exact_rows:
            layer.keep_exact_rows(codes, d, torch.zeros_like(d))
        return layer

    def keep_exact_rows(self, codes: torch.Tensor, d: torch.Tensor, m: torch.Tensor, top: int = 16) -> None:
        """Keep the weights' codes unpacked, ``w = d * codes + m`` per block, with fp32 d and m, and
        recompute the ``top`` largest outputs of each row in fp32 from them.

        For an output projection: the kernels write bf16, whose resolution at a logit of 25 is
        0.125, so two candidates closer than that tie and greedy decoding would pick either.
        Recomputing the few candidates near the top from the exact weights gives the argmax
        (and the top of the sampling distribution) fp32 resolution, for ~1 byte a weight more."""
        self.register_buffer("exact_codes", codes.contiguous())
        self.register_buffer("exact_d", d.float().contiguous())
        self.register_buffer("exact_m", m.float().contiguous())
        self.refine_top = top

    def _refine(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        top = y.topk(min(self.refine_top, self.out_features), dim=-1).indices  # (M, top)
        block = self.in_features // self.exact_d.shape[1]
        codes = self.exact_codes[top].float()  # (M, top, K)
        w = codes * self.exact_d[top].repeat_interleave(block, -1) + self.exact_m[top].repeat_interleave(block, -1)
        exact = (w @ x.float()[:, :, None]).squeeze(-1)  # (M, top)
        if self.bias is not None:
            exact = exact + self.bias.float()[top]
        return y.float().scatter(-1, top, exact)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x2 = x.reshape(-1, self.in_features).to(torch.bfloat16).contiguous()  # (B * T, K)
        exact_x = x.reshape(-1, self.in_features) if self.refine_top else None
        if self.input_copies == 2:
            x2 = torch.cat([x2, x2], dim=1)  # (B * T, 2K), for the two halves of 8-bit codes
        if self.kind == "bf16":
            y = F.linear(x2, self.codes)
        elif self.kind == "int8":
            y = torch.ops.aten._weight_int8pack_mm(x2, self.codes, self.scales)
        else:
            y = torch.ops.aten._weight_int4pack_mm_for_cpu(x2, self.codes, self.group_size, self.scales_zeros)
            if y.shape[-1] != self.out_features:
                y = y[:, : self.out_features]
        if self.bias is not None:
            y = y + self.bias
        if exact_x is not None:
            y = self._refine(exact_x, y)
        return y.view(*shape[:-1], self.out_features).to(x.dtype)

    def weight_bytes(self) -> int:
        return sum(b.numel() * b.element_size() for b in self.buffers())

    def extra_repr(self) -> str:
        group = f", group_size={self.group_size}" if self.kind == "int4" else ""
        group += ", 8-bit codes as two 4-bit halves" if self.input_copies == 2 else ""
        return f"{self.in_features}, {self.out_features}, {self.kind}{group}, bias={self.bias is not None}"


def check_quantization(quantization: str | None, native: bool) -> None:
    """Check a ``from_pretrained(quantization=)`` value; ``native`` says whether the format has its own."""
    allowed = (*KINDS, "native") if native else KINDS
    if quantization is not None and quantization not in allowed:
        extra = "" if native else " ('native' keeps a GGUF file's own quantization; this checkpoint has none)"
        raise ValueError(f"quantization: {quantization!r} is not one of {', '.join(allowed)}{extra}")


def default_quantization(path, choice: str = "auto") -> str | None:
    """What ``zoo generate --quantization`` loads ``path`` with: ``auto`` is the fastest path that
    computes with the checkpoint's own weights: a GGUF file's codes (``native``), else none (fp32).
    ``int8``/``int4`` requantize, so they are never chosen for you."""
    if choice == "auto":
        return "native" if str(path).lower().endswith(".gguf") else None
    return None if choice == "none" else choice


def _skipped(name: str) -> bool:
    return name.endswith("router")  # MoE routers: see the module docstring


def fusable(layers: nn.Module) -> list[tuple[str, nn.Module, tuple[str, ...], str]]:
    """(name, owner, projections, fuse method) for each group of projections that read the same
    input: q/k/v of every self-attention, gate/up of every gated MLP (MoE experts included)."""
    from zoo.blocks.attention import Attention
    from zoo.blocks.mlp import MLP

    groups = []
    for name, m in layers.named_modules():
        if isinstance(m, Attention) and name.rsplit(".", 1)[-1] == "attn" and m.qkv_proj is None:
            groups.append((name, m, ("q_proj", "k_proj", "v_proj"), "fuse_qkv"))
        elif isinstance(m, MLP) and m.gate_up is None and m.gate is not None:  # fused ones have no gate
            groups.append((name, m, ("gate", "up"), "fuse_gate_up"))
    return groups


def _fused_bias(parts: list[nn.Module]) -> torch.Tensor | None:
    if all(p.bias is None for p in parts):
        return None
    return torch.cat([p.bias if p.bias is not None else p.weight.new_zeros(p.weight.shape[0]) for p in parts])


def quantize(model: nn.Module, kind: str, group_size: int | None = None, head: str = "int8-blocks") -> nn.Module:
    """Quantize a decoder's weights in place for CPU inference; returns the model.

    Args:
        model: a decoder-only zoo model (``zoo.lm.CausalLM``: GPT-2, LLaMA, Mistral, Mixtral, ...).
        kind: ``"int8"`` (per output channel) or ``"int4"`` (asymmetric groups).
        group_size: int4's inputs per scale and zero point: 32 (default), 64, 128 or 256.
        head: the output projection's storage: ``"int8-blocks"`` (default; 8-bit codes with a
            scale per 32 inputs, llama.cpp's Q8_0) or ``"same"`` (as ``kind`` and ``group_size``).
            The output projection turns small weight errors into reordered logits, so it keeps
            more bits (docs/quantization.md measures both).

    Every ``nn.Linear`` in the layers (attention, MLP, each MoE expert) and the output
    projection is replaced by a ``QuantLinear``, q/k/v and gate/up fused into one each; routers,
    norms and the input embedding keep their dtype. A model with tied embeddings gets an untied
    quantized output projection.
    """
    if kind not in KINDS:
        raise ValueError(f"quantization: unknown kind {kind!r}; choose one of {', '.join(KINDS)}")
    if head not in HEAD_KINDS:
        raise ValueError(f"head: unknown output-projection storage {head!r}; choose one of {', '.join(HEAD_KINDS)}")
    if not hasattr(model, "layers") or not hasattr(model, "lm_head"):
        raise ValueError(f"model: quantize takes a decoder-only zoo model (CausalLM), not {type(model).__name__}")
    if model.device.type != "cpu":
        raise ValueError(f"model: the int8/int4 kernels used here run on CPU; the model is on {model.device}")
    out = model.lm_head if model.lm_head is not None else model.embed  # tied: the embedding is the projection
    replace = {name: m for name, m in model.layers.named_modules() if isinstance(m, nn.Linear) and not _skipped(name)}
    with torch.no_grad():
        # Each output row is quantized on its own, so quantizing the concatenated weights of q/k/v
        # (gate/up) gives the same codes as quantizing each; one matmul then reads them all.
        for name, owner, projections, fuse in fusable(model.layers):
            parts = [getattr(owner, p) for p in projections]
            weight = torch.cat([p.weight for p in parts])
            try:
                layer = QuantLinear.from_weight(weight, kind, group_size, _fused_bias(parts))
            except ValueError as err:
                raise ValueError(f"layers.{name}.{'+'.join(projections)}: {err}") from err
            getattr(owner, fuse)(layer)
            for p in projections:
                replace.pop(f"{name}.{p}")
        for name, linear in replace.items():
            parent, _, attr = name.rpartition(".")
            try:
                layer = QuantLinear.from_linear(linear, kind, group_size)
            except ValueError as err:
                raise ValueError(f"layers.{name}: {err}") from err
            setattr(model.layers.get_submodule(parent), attr, layer)
        if head == "int8-blocks":
            try:
                model.lm_head = QuantLinear.from_weight_blocks(out.weight, exact_rows=True)
            except ValueError as err:
                raise ValueError(f"lm_head: {err}; pass head='same' to store it as {kind}") from err
        else:
            model.lm_head = QuantLinear.from_weight(out.weight, kind, group_size, exact_rows=True)
    return model


def quantization_summary(model: nn.Module) -> str:
    """What a model runs in, for ``zoo generate`` to say: its dtype and its quantized layers."""
    kinds: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, QuantLinear):
            key = m.kind + (f" g{m.group_size}" if m.kind == "int4" else "")
            key = f"8-bit blocks as 2x int4 g{m.group_size}" if m.input_copies == 2 else key
            kinds[key] = kinds.get(key, 0) + 1
    dtype = str(model.dtype).removeprefix("torch.")
    if not kinds:
        return f"{dtype}, not quantized"
    layers = ", ".join(f"{k} ({n} layers)" for k, n in sorted(kinds.items()))
    return f"{dtype}, weights {layers}, their matmuls in bfloat16"


# The int8 kernel takes bf16 inputs, writes bf16 and dequantizes the weights exactly (measured):
# its input and its output are rounded to bf16 (unit roundoff 2**-9), allowed for twice over.
_ROUNDING = 2.0**-8
_FINGERPRINT = 256  # weights sampled to notice that the output projection changed


class ScreenedHead:
    """The exact greedy choice of an fp32 output projection, reading int8 codes of it and a few
    fp32 rows instead of every fp32 weight.

    Greedy decoding needs only the argmax of the logits ``y = W h (+ b)``. Each row i of W is
    stored as int8 codes with a scale, and the row's quantization error ``d_i = w_i - w~_i`` is
    measured when they are made (its largest entry and its L2 norm). The int8 kernel's logits
    ``y~`` then differ from the exact ones by at most
    ``b_i = min(|h|_1 max|d_i|, |h|_2 |d_i|_2) + r (|h|_1 max|w~_i| + |y~_i|)``
    (Hoelder's and Cauchy-Schwarz's inequalities; r = 2**-8, twice bf16's rounding, for the
    kernel's bf16 input and output; its fp32 accumulation is far inside that margin). Every
    token whose ``y~_i + b_i`` reaches ``max_j (y~_j - b_j)`` may be the argmax and no other
    can be; those candidates are recomputed from the fp32 rows and the largest wins (the lowest
    index among equal ones, as ``argmax``). So the token is the fp32 model's own greedy token, up
    to exact ties that a differently shaped fp32 product rounds apart (~1e-6 of a logit). Where
    more than an eighth of the vocabulary survives, the full fp32 product runs instead.

    The model's weight is read, not copied; the codes (1 byte a weight) are rebuilt when the
    weight is changed in place (an optimizer step: its version counter) or replaced by other
    values (a sample of it is compared each call)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        if weight.dim() != 2 or weight.dtype != torch.float32 or weight.device.type != "cpu":
            raise ValueError(
                "screen_head: the output projection must be a 2-d float32 CPU weight (the int8 kernel runs on "
                f"CPU), got {tuple(weight.shape)} {weight.dtype} on {weight.device}"
            )
        self.weight, self.bias = weight, bias
        self.builds = self.calls = 0
        self.fallbacks = 0  # calls where too many candidates survived and the full product ran
        self._build()

    def _fingerprint(self) -> tuple:
        """The weight's version counter, shape, dtype, device and a sum of fixed entries (the same
        whatever its memory layout: generate may store it column-major for a batch)."""
        w = self.weight
        rows = torch.linspace(0, w.shape[0] - 1, _FINGERPRINT).long()
        cols = torch.arange(_FINGERPRINT) * 7919 % w.shape[1]
        return w._version, tuple(w.shape), w.dtype, w.device, w.detach()[rows, cols].double().sum().item()

    @torch.no_grad()
    def _build(self) -> None:
        with torch.inference_mode(False):  # plain tensors, usable whatever mode the caller is in
            w = self.weight.detach().float()
            scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-12).to(torch.bfloat16)
            s = scales.float()[:, None]
            codes = (w / s).round().clamp(-128, 127).to(torch.int8)
            dequantized = codes.float() * s
            error = w - dequantized  # measured, not assumed
            self.max_error = error.abs().amax(dim=1)  # (V,)
            self.l2_error = error.norm(dim=1)
            self.input_coef = _ROUNDING * dequantized.abs().amax(dim=1)
            self.codes, self.scales = codes.contiguous(), scales.contiguous()
        self.stamp = self._fingerprint()
        self.builds += 1

    def approximate(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits (M, V) from the int8 codes, their error bound (M, V)) for hidden states h (M, K)."""
        x = h.float()
        y = torch.ops.aten._weight_int8pack_mm(x.to(torch.bfloat16).contiguous(), self.codes, self.scales).float()
        l1, l2 = x.abs().sum(dim=1, keepdim=True), x.norm(dim=1, keepdim=True)
        bound = torch.minimum(l1 * self.max_error, l2 * self.l2_error) + l1 * self.input_coef + _ROUNDING * y.abs()
        return (y if self.bias is None else y + self.bias.float()), bound

    def candidates(self, h: torch.Tensor) -> torch.Tensor:
        """(M, V) bool: the tokens that may be each row's argmax, for hidden states h (M, K)."""
        approx, bound = self.approximate(h)
        floor = (approx - bound).amax(dim=1, keepdim=True)
        return approx + bound >= floor

    @torch.no_grad()
    def argmax(self, h: torch.Tensor) -> torch.Tensor:
        """(M,) the argmax of ``W h (+ b)`` for each row of h (M, K)."""
        if self._fingerprint() != self.stamp:
            self._build()
        self.calls += 1
        x = h.float()
        keep = self.candidates(x)
        if int(keep.sum(dim=1).max()) > self.weight.shape[0] // 8:
            self.fallbacks += 1
            return F.linear(x, self.weight, self.bias).argmax(dim=-1)
        tokens = []
        for row, mask in zip(x, keep, strict=True):
            idx = mask.nonzero().squeeze(1)
            exact = self.weight[idx] @ row
            if self.bias is not None:
                exact = exact + self.bias[idx]
            tokens.append(idx[exact.argmax()])
        return torch.stack(tokens)

    def extra_bytes(self) -> int:
        kept = (self.codes, self.scales, self.max_error, self.l2_error, self.input_coef)
        return sum(t.numel() * t.element_size() for t in kept)


def unscreenable(model: nn.Module) -> str | None:
    """Why ``screen_head`` cannot serve ``model`` (one line naming it), or None if it can."""
    if not hasattr(model, "layers") or not hasattr(model, "lm_head") or not hasattr(model, "task"):
        return f"screen_head takes a decoder-only zoo model (CausalLM), not {type(model).__name__}"
    if model.task != "causal_lm":  # GPT-1's double-heads model reshapes the logits it would not have
        return f"{type(model).__name__} ({model.task}) needs its logits; screen_head serves causal LMs"
    if isinstance(model.lm_head, QuantLinear):
        return "the output projection is already quantized (it refines its own top candidates); screen_head is for fp32"
    w = (model.lm_head if model.lm_head is not None else model.embed).weight
    if w.dim() != 2 or w.dtype != torch.float32 or w.device.type != "cpu":
        return (
            "screen_head: the output projection must be a 2-d float32 CPU weight (the int8 kernel runs on CPU), "
            f"got {tuple(w.shape)} {w.dtype} on {w.device}"
        )
    return None


def screen_head(model: nn.Module, enabled: bool = True) -> ScreenedHead | None:
    """Decode greedily through a ``ScreenedHead`` of ``model``'s fp32 output projection: the
    same tokens as the full fp32 product, reading about a quarter of its bytes (GPT-2 124M: 38.6
    of its 154 MB; see docs/generation.md). Used by plain greedy decoding (``generate`` with no
    repetition penalty or forced or banned tokens at that step, and greedy speculative decoding);
    sampling, beam search and the model's own forward keep the full logits. ``enabled=False``
    removes it. Returns the head (or None); ``ValueError`` where ``unscreenable`` says why not."""
    if not enabled:
        model.__dict__.pop("screened_head", None)
        return None
    why = unscreenable(model)
    if why is not None:
        raise ValueError(f"model: {why}")
    out = model.lm_head if model.lm_head is not None else model.embed  # tied: the embedding is the projection
    head = ScreenedHead(out.weight, getattr(out, "bias", None))
    model.__dict__["screened_head"] = head  # not a submodule: no state_dict keys, nothing for export to see
    return head
