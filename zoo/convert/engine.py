"""The conversion engine: apply a family's rules to a state dict, strictly.

A rule maps one or more source keys (templates such as ``"h.{i}.attn.c_attn.weight"``, where
``{i}``/``{e}`` stand for integers) to one or more target keys through a function, and
carries the inverse function, so the same list exports back (``invert_rules``). The engine
fails with every unmatched source key, every unfilled target key and every shape mismatch,
shapes included, in one error.
"""

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

Tensors = list[torch.Tensor]


class ConversionError(ValueError):
    """A checkpoint does not fit the model: the message lists each offending key with its shape."""


def _identity(ts: Tensors) -> Tensors:
    return list(ts)


@dataclass(frozen=True)
class Rule:
    """Source key templates -> target key templates through ``fn``; ``inv`` goes back.

    A rule with no targets drops its source keys (buffers a reference stores, such as GPT-2's
    causal-mask ``attn.bias``); dropping has no inverse and is skipped when inverting.
    """

    src: tuple[str, ...]
    dst: tuple[str, ...]
    fn: Callable[[Tensors], Tensors] = _identity
    inv: Callable[[Tensors], Tensors] = _identity

    def inverted(self) -> "Rule":
        return Rule(self.dst, self.src, self.inv, self.fn)


def rename(src: str, dst: str) -> Rule:
    return Rule((src,), (dst,))


def transpose(src: str, dst: str) -> Rule:
    """A 2-D weight stored transposed (GPT-2's Conv1D keeps (in, out))."""
    return Rule((src,), (dst,), lambda ts: [ts[0].t().contiguous()], lambda ts: [ts[0].t().contiguous()])


def split(
    src: str, dsts: Sequence[str], dim: int = 0, sizes: Sequence[int] | None = None, transposed: bool = False
) -> Rule:
    """One fused source tensor -> several targets (fused qkv -> q, k, v); inverse concatenates.

    Args:
        sizes: sizes along ``dim`` (after transposing); equal parts when None.
        transposed: the source is stored transposed (Conv1D) and is transposed first.
    """

    def fn(ts: Tensors) -> Tensors:
        t = ts[0].t() if transposed else ts[0]
        parts = t.chunk(len(dsts), dim) if sizes is None else t.split(list(sizes), dim)
        return [p.contiguous() for p in parts]

    def inv(ts: Tensors) -> Tensors:
        t = torch.cat(ts, dim)
        return [(t.t() if transposed else t).contiguous()]

    return Rule((src,), tuple(dsts), fn, inv)


def fuse(srcs: Sequence[str], dst: str, dim: int = 0, sizes: Sequence[int] | None = None) -> Rule:
    """Several source tensors -> one target (the inverse of ``split``)."""
    return split(dst, srcs, dim, sizes).inverted()


def permute(
    src: str, dst: str, fn: Callable[[torch.Tensor], torch.Tensor], inv: Callable[[torch.Tensor], torch.Tensor]
) -> Rule:
    """A reordering of one tensor (e.g. GGUF's interleaved RoPE rows), with its inverse."""
    return Rule((src,), (dst,), lambda ts: [fn(ts[0])], lambda ts: [inv(ts[0])])


def drop(src: str) -> Rule:
    return Rule((src,), ())


def invert_rules(rules: Iterable[Rule]) -> list[Rule]:
    return [r.inverted() for r in rules if r.dst]


def identity_rules(keys: Iterable[str]) -> list[Rule]:
    """One rename-to-itself per key: a checkpoint already in zoo's layout, still checked strictly."""
    return [rename(k, k) for k in keys]


_PLACEHOLDER = re.compile(r"\{(\w+)\}")


def _pattern(template: str) -> re.Pattern:
    parts, last = [], 0
    for m in _PLACEHOLDER.finditer(template):
        parts.append(re.escape(template[last : m.start()]))
        parts.append(f"(?P<{m.group(1)}>\\d+)")
        last = m.end()
    parts.append(re.escape(template[last:]))
    return re.compile("".join(parts))


def _shape(t) -> tuple:
    return tuple(t.shape) if hasattr(t, "shape") else tuple(t)


def _source_keys(target: str, rules: Sequence[Rule], fired: set[int]) -> tuple[str, ...] | None:
    """The checkpoint keys that would fill ``target``: from a rule that matched other keys of
    this checkpoint if one can (GPT-2's rules read both ``transformer.h...`` and ``h...``)."""
    found = None
    for index, rule in enumerate(rules):
        for template in rule.dst:
            m = _pattern(template).fullmatch(target)
            if m is not None:
                keys = tuple(t.format(**m.groupdict()) for t in rule.src)
                if index in fired:
                    return keys
                found = found or keys
    return found


def _missing(targets: list[str], rules: Sequence[Rule], fired: set[int], expected: dict, source_name: str) -> list[str]:
    """One line per absent checkpoint key, spelled as the checkpoint spells it, with the zoo
    parameters it fills and their shapes (a fused qkv key fills three)."""
    by_source: dict[tuple[str, ...] | None, list[str]] = {}
    for key in targets:
        by_source.setdefault(_source_keys(key, rules, fired), []).append(key)
    lines = []
    for src, keys in by_source.items():
        fills = ", ".join(f"{k} {_shape(expected[k])}" for k in keys)
        if src is None:  # no rule reads it (zoo's own layout: the checkpoint spells it as zoo does)
            lines += [f"missing {source_name} key for {k}: the model expects shape {_shape(expected[k])}" for k in keys]
        else:
            lines.append(f"missing {source_name} key {', '.join(src)}: it fills {fills} in the model")
    return lines


def convert_state_dict(
    source: dict[str, torch.Tensor],
    rules: Sequence[Rule],
    expected: dict[str, torch.Size] | None = None,
    source_name: str = "checkpoint",
) -> dict[str, torch.Tensor]:
    """Apply ``rules`` to ``source``; check the result against ``expected`` (key -> shape).

    Raises:
        ConversionError: listing unmatched source keys, missing or unexpected target keys
            and shape mismatches, each with its shape and the source key it came from.
    """
    remaining = dict(source)
    out: dict[str, torch.Tensor] = {}
    origin: dict[str, str] = {}
    problems: list[str] = []
    fired: set[int] = set()
    for index, rule in enumerate(rules):
        first = _pattern(rule.src[0])
        # A template without placeholders names one key: look it up rather than scan, so
        # identity rules over a whole state dict stay linear.
        literal = not _PLACEHOLDER.search(rule.src[0])
        candidates = [rule.src[0]] if literal else sorted(remaining)
        for key in candidates:
            if key not in remaining:
                continue
            m = first.fullmatch(key)
            if m is None:
                continue
            names = m.groupdict()
            src_keys = [t.format(**names) for t in rule.src]
            absent = [k for k in src_keys if k not in remaining]
            if absent:
                problems.append(f"{key} {_shape(remaining[key])}: needs {', '.join(absent)} beside it, not found")
                remaining.pop(key)
                continue
            tensors = [remaining.pop(k) for k in src_keys]
            fired.add(index)
            if not rule.dst:
                continue
            try:
                results = rule.fn(tensors)
            except Exception as err:  # a tensor of the wrong shape for the rule's arithmetic
                shapes = ", ".join(f"{k} {_shape(t)}" for k, t in zip(src_keys, tensors, strict=False))
                problems.append(f"{shapes}: cannot convert ({err})")
                continue
            for template, tensor in zip(rule.dst, results, strict=False):
                target = template.format(**names)
                out[target], origin[target] = tensor, src_keys[0]
    for key in sorted(remaining):
        problems.append(f"unexpected {source_name} key {key} {_shape(remaining[key])}: no rule maps it")
    if expected is not None:
        problems += _missing(sorted(set(expected) - set(out)), rules, fired, expected, source_name)
        for key in sorted(set(out) - set(expected)):
            problems.append(f"{source_name} key {origin[key]} {_shape(out[key])} maps to {key}, which the model lacks")
        for key in sorted(set(out) & set(expected)):
            if _shape(out[key]) != _shape(expected[key]):
                problems.append(
                    f"shape mismatch: {source_name} key {origin[key]} gives {key} shape {_shape(out[key])}, "
                    f"the model expects {_shape(expected[key])}"
                )
    if problems:
        raise ConversionError(
            f"{source_name} does not fit the model ({len(problems)} problems):\n  " + "\n  ".join(problems)
        )
    return out
