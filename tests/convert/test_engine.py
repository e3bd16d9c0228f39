"""The conversion engine: strict errors listing every problem with shapes; rules that invert exactly."""

import re

import pytest
import torch

from zoo.convert import (
    ConversionError,
    convert_state_dict,
    drop,
    fuse,
    identity_rules,
    invert_rules,
    permute,
    rename,
    split,
    transpose,
)

g = torch.Generator().manual_seed(0)


def rand(*shape):
    return torch.randn(*shape, generator=g)


def _interleave(w: torch.Tensor) -> torch.Tensor:
    """Rows (a0..a3, b0..b3) -> (a0, b0, a1, b1, ...): the shape of a RoPE row permutation."""
    half = w.shape[0] // 2
    return torch.stack([w[:half], w[half:]], dim=1).reshape(w.shape)


def _deinterleave(w: torch.Tensor) -> torch.Tensor:
    return torch.cat([w[0::2], w[1::2]], dim=0)


RULES = [
    rename("wte", "embed.weight"),
    split("h.{i}.qkv", ["layers.{i}.q", "layers.{i}.k", "layers.{i}.v"], sizes=[6, 2, 2], transposed=True),
    transpose("h.{i}.proj", "layers.{i}.o"),
    fuse(["h.{i}.gate", "h.{i}.up"], "layers.{i}.gate_up"),
    permute("h.{i}.rot", "layers.{i}.rot", _interleave, _deinterleave),
    rename("h.{i}.experts.{e}.w", "layers.{i}.moe.{e}.w"),
    drop("h.{i}.attn.bias"),
]


def _source(n_layers=2, n_experts=3):
    s = {"wte": rand(11, 6)}
    for i in range(n_layers):
        s |= {
            f"h.{i}.qkv": rand(6, 10),  # Conv1D layout (in, out)
            f"h.{i}.proj": rand(6, 5),
            f"h.{i}.gate": rand(7, 6),
            f"h.{i}.up": rand(7, 6),
            f"h.{i}.rot": rand(8, 6),
            f"h.{i}.attn.bias": torch.ones(1, 1, 4, 4),
        }
        s |= {f"h.{i}.experts.{e}.w": rand(3, 4) for e in range(n_experts)}
    return s


def _expected(out):
    return {k: v.shape for k, v in out.items()}


def test_rules_apply_and_invert_exactly():
    source = _source()
    out = convert_state_dict(source, RULES)
    assert out["layers.1.q"].shape == (6, 6) and out["layers.1.k"].shape == (2, 6)
    torch.testing.assert_close(
        torch.cat([out["layers.0.q"], out["layers.0.k"], out["layers.0.v"]]).T, source["h.0.qkv"]
    )
    torch.testing.assert_close(out["layers.0.o"], source["h.0.proj"].T)
    torch.testing.assert_close(out["layers.1.gate_up"], torch.cat([source["h.1.gate"], source["h.1.up"]]))
    torch.testing.assert_close(out["layers.0.rot"][1], source["h.0.rot"][4])  # interleaved rows
    torch.testing.assert_close(out["layers.1.moe.2.w"], source["h.1.experts.2.w"])
    assert not any("attn.bias" in k for k in out)  # dropped
    back = convert_state_dict(out, invert_rules(RULES))
    assert set(back) == set(source) - {k for k in source if k.endswith("attn.bias")}
    for key, value in back.items():
        assert torch.equal(value, source[key]), key


def test_invert_rules_skips_drops():
    assert len(invert_rules(RULES)) == len(RULES) - 1
    assert all(r.dst for r in invert_rules(RULES))


def test_every_problem_in_one_error_with_shapes():
    source = _source()
    expected = _expected(convert_state_dict(source, RULES))
    del source["h.1.proj"]  # -> layers.1.o is missing
    source["h.0.extra"] = rand(2, 3)  # no rule maps it
    source["lm_head"] = rand(11, 6)  # no rule maps it
    expected["layers.0.qk_norm"] = torch.Size([4])  # the model wants a key nothing gives
    with pytest.raises(ConversionError) as err:
        convert_state_dict(source, RULES, expected=expected, source_name="ckpt")
    msg = str(err.value)
    assert msg.startswith("ckpt does not fit the model (4 problems):")
    assert "unexpected ckpt key h.0.extra (2, 3): no rule maps it" in msg
    assert "unexpected ckpt key lm_head (11, 6): no rule maps it" in msg
    # Named as the checkpoint spells it, with the zoo parameter it fills and that one's shape.
    assert "missing ckpt key h.1.proj: it fills layers.1.o (5, 6) in the model" in msg
    assert "missing ckpt key for layers.0.qk_norm: the model expects shape (4,)" in msg


def test_a_missing_fused_key_names_every_parameter_it_fills():
    source = _source()
    expected = _expected(convert_state_dict(source, RULES))
    del source["h.0.qkv"]
    with pytest.raises(ConversionError) as err:
        convert_state_dict(source, RULES, expected=expected, source_name="ckpt")
    assert "missing ckpt key h.0.qkv: it fills layers.0.k (2, 6), layers.0.q (6, 6), layers.0.v (2, 6)" in str(
        err.value
    )


def test_shape_mismatch_names_source_and_target():
    source = _source()
    expected = _expected(convert_state_dict(source, RULES))
    source["h.1.proj"] = rand(6, 4)
    with pytest.raises(
        ConversionError, match=re.escape("h.1.proj gives layers.1.o shape (4, 6), the model expects (5, 6)")
    ):
        convert_state_dict(source, RULES, expected=expected)


def test_target_the_model_lacks_is_named():
    source = _source()
    expected = _expected(convert_state_dict(source, RULES))
    del expected["layers.1.moe.2.w"]
    with pytest.raises(ConversionError, match=re.escape("h.1.experts.2.w (3, 4) maps to layers.1.moe.2.w, which")):
        convert_state_dict(source, RULES, expected=expected)


def test_fuse_needs_every_part():
    source = _source()
    del source["h.0.up"]
    with pytest.raises(ConversionError, match=re.escape("h.0.gate (7, 6): needs h.0.up beside it, not found")):
        convert_state_dict(source, RULES)


def test_rule_arithmetic_failure_is_reported_with_shapes():
    rules = [split("w", ["a", "b"], sizes=[3, 3])]
    with pytest.raises(ConversionError, match=re.escape("w (5, 2): cannot convert")):
        convert_state_dict({"w": rand(5, 2)}, rules)


@pytest.mark.parametrize("transposed", [False, True])
def test_split_equal_parts_and_inverse(transposed):
    rule = split("w", ["a", "b", "c"], dim=0, transposed=transposed)
    w = rand(4, 9) if transposed else rand(9, 4)
    a, b, c = rule.fn([w])
    base = w.T if transposed else w
    assert torch.equal(a, base[:3]) and torch.equal(c, base[6:])
    assert torch.equal(rule.inv([a, b, c])[0], w)


def test_fuse_along_dim_1_inverts():
    rule = fuse(["a", "b"], "ab", dim=1, sizes=[2, 5])
    a, b = rand(3, 2), rand(3, 5)
    (ab,) = rule.fn([a, b])
    assert torch.equal(ab, torch.cat([a, b], dim=1))
    back = rule.inv([ab])
    assert torch.equal(back[0], a) and torch.equal(back[1], b)


def test_transpose_and_permute_invert_on_non_square():
    w = rand(3, 8)
    t = transpose("x", "y")
    assert torch.equal(t.inv(t.fn([w]))[0], w) and t.fn([w])[0].shape == (8, 3)
    p = permute("x", "y", _interleave, _deinterleave)
    r = rand(8, 3)
    assert not torch.equal(p.fn([r])[0], r)
    assert torch.equal(p.inv(p.fn([r]))[0], r)


def test_identity_rules_check_keys_strictly():
    state = {"a.0.w": rand(2, 3), "b": rand(4)}
    out = convert_state_dict(state, identity_rules(state), expected=_expected(state))
    assert out.keys() == state.keys() and all(torch.equal(out[k], state[k]) for k in state)
    with pytest.raises(ConversionError, match=re.escape("missing checkpoint key for c: the model expects shape (1,)")):
        convert_state_dict(state, identity_rules(state), expected=_expected(state) | {"c": torch.Size([1])})
