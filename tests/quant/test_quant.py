"""QuantLinear against the float weights it stands for, GGUF block codes against the gguf package's
dequantization, and zoo.quantize on tiny decoders of each kind (GPT-2 tied, LLaMA, Mixtral)."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, quants

import zoo
from tests.conftest import randomize_
from zoo.families.llama.gguf import gguf_block_codes
from zoo.quant import QuantLinear, quantization_summary

pytestmark = pytest.mark.usefixtures("one_thread")


def _bf16(t: torch.Tensor) -> torch.Tensor:
    """Values the kernels' bf16 scales hold exactly, so the reference below is exact too."""
    return t.to(torch.bfloat16).float()


def _close(y: torch.Tensor, ref: torch.Tensor) -> None:
    # bf16 output: a relative rounding of 2^-8 of the largest output, plus fp32 accumulation order
    assert y.dtype == torch.bfloat16
    err = (y.float() - ref).abs().max() / ref.abs().max()
    assert err < 8e-3, err


def _x(K: int, rows: int = 5) -> torch.Tensor:
    return torch.randn(rows, K, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)


@pytest.mark.parametrize("N", [48, 40])  # 40: not a multiple of 16, padded inside
def test_int4_codes_scales_and_zeros(N):
    g = torch.Generator().manual_seed(0)
    K, group = 128, 32
    codes = torch.randint(0, 16, (N, K), generator=g, dtype=torch.uint8)
    scales = _bf16(torch.rand(N, K // group, generator=g) + 0.1)
    zeros = _bf16(torch.randn(N, K // group, generator=g))
    bias = torch.randn(N, generator=g)
    w = (codes.float() - 8) * scales.repeat_interleave(group, 1) + zeros.repeat_interleave(group, 1)
    layer = QuantLinear.from_int4(codes, scales, zeros, bias)
    x = _x(K)
    _close(layer(x), x.float() @ w.t() + _bf16(bias))
    assert layer(x[None]).shape == (1, 5, N)


def test_int8_codes_and_scales():
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-128, 128, (40, 48), generator=g, dtype=torch.int8)
    scales = _bf16(torch.rand(40, generator=g) + 0.1)
    layer = QuantLinear.from_int8(codes, scales)
    x = _x(48)
    _close(layer(x), x.float() @ (codes.float() * scales[:, None]).t())


def test_8bit_blocks_run_as_two_4bit_halves_exactly():
    """Q8_0: int8 codes with a scale per block of 32, which no torch kernel takes as such."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(-128, 128, (64, 96), generator=g, dtype=torch.int8)
    d = _bf16(torch.rand(64, 3, generator=g) * 0.02)
    layer = QuantLinear.from_blocks(codes, d, torch.zeros_like(d))
    x = _x(96)
    _close(layer(x), x.float() @ (codes.float() * d.repeat_interleave(32, 1)).t())


def test_4bit_blocks_with_an_offset():
    """Q4_1's w = d * q + m becomes the kernel's (q - 8) * s + z with s = d, z = m + 8d."""
    g = torch.Generator().manual_seed(0)
    codes = torch.randint(0, 16, (32, 64), generator=g, dtype=torch.uint8)
    d = _bf16(torch.rand(32, 2, generator=g) * 0.02)
    m = _bf16(-8 * d + 0.001 * torch.randn(32, 2, generator=g))
    layer = QuantLinear.from_blocks(codes, d, m)
    x = _x(64)
    _close(layer(x), x.float() @ (codes.float() * d.repeat_interleave(32, 1) + m.repeat_interleave(32, 1)).t())


@pytest.mark.parametrize("qtype", ["Q4_0", "Q4_1", "Q8_0"])
def test_gguf_block_codes_reconstruct_the_gguf_dequantization_bit_for_bit(qtype):
    qtype = GGMLQuantizationType[qtype]
    w = np.random.default_rng(0).standard_normal((24, 96)).astype(np.float32)
    tensor = SimpleNamespace(tensor_type=qtype, data=quants.quantize(w, qtype))
    codes, d, m = gguf_block_codes(tensor)
    ours = codes.float() * d.repeat_interleave(32, -1) + m.repeat_interleave(32, -1)
    theirs = torch.from_numpy(quants.dequantize(tensor.data, qtype))
    assert ours.shape == theirs.shape == (24, 96)
    assert torch.equal(ours, theirs)


def test_quantized_weights_are_close_to_the_float_ones():
    """Round to nearest: int8 per channel errs far less than int4 in groups of 32, less than groups of 128."""
    g = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(256, 64)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(64, 256, generator=g) * 0.05)
    x = _x(256, rows=16)
    ref = linear(x.float())
    errs = {}
    for kind, group in (("int8", None), ("int4", 32), ("int4", 128)):
        y = QuantLinear.from_linear(linear, kind, group)(x).float()
        errs[kind, group] = ((y - ref).norm() / ref.norm()).item()
    assert errs["int8", None] < 0.01 < errs["int4", 32] < errs["int4", 128] < 0.15, errs


def test_bad_group_size_names_the_layer():
    model = zoo.create_model("llama-tiny")  # d_model 48: no group of 32 divides it
    with pytest.raises(
        ValueError, match=r"layers\.0\.attn\.q_proj\+k_proj\+v_proj: group_size: 32 must .* divide the input width 48"
    ):
        zoo.quantize(model, "int4")
    with pytest.raises(ValueError, match="int8 uses one scale per output channel"):
        zoo.quantize(zoo.create_model("llama-tiny"), "int8", group_size=32)
    with pytest.raises(ValueError, match="quantization: unknown kind 'int3'"):
        zoo.quantize(zoo.create_model("llama-tiny"), "int3")


TINY = {
    "gpt2-tiny": dict(d_model=64, n_heads=4, d_ff=128),  # tied embeddings, vocabulary not a multiple of 16
    "llama-tiny": dict(d_model=64, head_dim=16, d_ff=96),
    "mixtral-tiny": dict(d_model=64, head_dim=16, d_ff=64),
}


@pytest.mark.parametrize("name", list(TINY))
@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_quantize_decoders(name, kind):
    ref = randomize_(zoo.create_model(name, **TINY[name]), std=0.05)
    model = zoo.quantize(randomize_(zoo.create_model(name, **TINY[name]), std=0.05), kind)
    linears = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert all(n.endswith("router") for n in linears), linears  # only MoE routers stay float
    assert model.dtype == torch.float32 and "lm_head" in dict(model.named_modules())
    summary = quantization_summary(model)
    assert summary.startswith("float32, weights 8-bit blocks as 2x int4 g32 (1 layers), " + kind), summary
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = ref(ids).logits, model(ids).logits.float()
    rel = ((a - b).norm() / a.norm()).item()
    assert rel < (0.05 if kind == "int8" else 0.3), rel  # random weights: 4 bits hurt them most
    if kind == "int8":  # random logits are close together: 4-bit noise reorders them, 8-bit seldom
        assert (a.argmax(-1) == b.argmax(-1)).float().mean() > 0.9
    out = model.generate(ids, max_new_tokens=4)
    assert out.shape == (2, 28)
    with pytest.raises(ValueError, match="a quantized model is for inference and is not saved"):
        zoo.save_pretrained(model, "unused")


def test_output_projection_keeps_8_bit_blocks_unless_asked():
    """The head is stored as Q8_0-style 8-bit blocks by default: less error than the layers' int4,
    and head='same' gives the old behaviour."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(160, 64, generator=g)
    blocks = QuantLinear.from_weight_blocks(w)
    assert blocks.input_copies == 2 and blocks.in_features == 64
    four = QuantLinear.from_weight(w, "int4", 32)
    eye = torch.eye(64)
    err = lambda layer: ((layer(eye).float().t() - w).norm() / w.norm()).item()
    assert err(blocks) < err(four) / 4, (err(blocks), err(four))
    assert err(blocks) < 0.01  # 8 bits and bf16 scales: under 1% of the weights' norm
    model = randomize_(zoo.create_model("llama-tiny", **TINY["llama-tiny"]), std=0.05)
    assert zoo.quantize(model, "int4").lm_head.input_copies == 2
    same = zoo.quantize(randomize_(zoo.create_model("llama-tiny", **TINY["llama-tiny"]), std=0.05), "int4", head="same")
    assert same.lm_head.input_copies == 1 and same.lm_head.kind == "int4"
    with pytest.raises(ValueError, match=r"^head: unknown output-projection storage 'int2'"):
        zoo.quantize(zoo.create_model("llama-tiny"), "int4", head="int2")
    with pytest.raises(ValueError, match=r"^block: 48 must be one of"):
        QuantLinear.from_weight_blocks(w, block=48)


def test_output_projection_recomputes_its_top_logits_in_fp32():
    """bf16 outputs have 8 bits: near-equal logits tie. The top candidates come back at fp32 resolution."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(160, 64, generator=g)
    head = QuantLinear.from_weight(w, "int4", 32, exact_rows=True)
    plain = QuantLinear.from_weight(w, "int4", 32)
    x = torch.randn(3, 64, generator=g) * 4
    y, rough = head(x), plain(x)
    assert y.dtype == torch.float32
    exact = (
        x
        @ (head.exact_codes.float() * head.exact_d.repeat_interleave(32, 1) + head.exact_m.repeat_interleave(32, 1)).t()
    )
    top = rough.topk(16, dim=-1).indices
    assert torch.allclose(y.gather(1, top), exact.gather(1, top), rtol=1e-5, atol=1e-4)
    assert not torch.equal(y.gather(1, top), rough.gather(1, top))  # the bf16 values were coarser
    assert torch.equal(y.argmax(-1), exact.argmax(-1))


@pytest.mark.parametrize("kind", ["int8", "int4"])
def test_fused_projections_compute_what_separate_ones_do(kind, monkeypatch):
    """q/k/v and gate/up quantized as one stacked matrix: every row keeps its own scales, so the
    outputs are those of the separate layers."""
    make = lambda: randomize_(zoo.create_model("mixtral-tiny", **TINY["mixtral-tiny"]), std=0.05)
    fused = zoo.quantize(make(), kind)
    assert fused.layers[0].attn.qkv_proj is not None and fused.layers[0].mlp.experts[0].gate_up is not None
    monkeypatch.setattr(zoo.quant, "fusable", lambda layers: [])
    separate = zoo.quantize(make(), kind)
    assert isinstance(separate.layers[0].attn.q_proj, QuantLinear)
    ids = torch.randint(0, 157, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(fused(ids).logits, separate(ids).logits, rtol=1e-2, atol=1e-2)
