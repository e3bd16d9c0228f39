"""Parity: run the same padded batch through zoo and the reference implementation, compare.

``run_parity(path)`` loads a checkpoint in zoo and in its reference (transformers, timm, ...),
compares every output both produce at each dtype against the tolerance table below, then
exports the zoo model back to the reference format, loads that strictly into the reference
and compares again: both directions of the conversion in one call.
"""

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

# max |zoo - reference| must be <= atol + rtol * max |reference|, per family and dtype.
# fp32 is exact arithmetic up to summation order; bf16 keeps ~3 significant digits, and the
# two implementations round at different places, so it is judged relative to the output scale.
# A row keyed "family/format" (e.g. "llama/gguf") applies to checkpoints of that file format and
# wins over the family's row, which wins over "default".
TOLERANCES: dict[str, dict[str, tuple[float, float]]] = {
    "default": {"float32": (1e-5, 0.0), "bfloat16": (0.0, 5e-2)},
    # Real SmolLM2 weights through 30 layers: logits reach ~30 and fp32 summation order alone
    # moves them by a few 1e-5, so the bound is 1e-4 (random tiny models stay at 1e-5).
    "llama/gguf": {"float32": (1e-4, 0.0)},
}


def tolerance(family: str, dtype: str, source: str | None = None) -> tuple[float, float]:
    for key in ([f"{family}/{source}"] if source else []) + [family]:
        if dtype in TOLERANCES.get(key, {}):
            return TOLERANCES[key][dtype]
    return TOLERANCES["default"][dtype]


@dataclass
class ParitySpec:
    """A family's hooks for the parity tool.

    Attributes:
        load_reference: (path, task) -> the reference model, in eval mode, fp32.
        make_inputs: (zoo model, generator) -> a dict of input tensors (a padded batch).
        run_zoo: (zoo model, inputs) -> named outputs.
        run_reference: (reference model, inputs) -> the same names.
        where: (inputs) -> bool mask over the outputs' leading dims of the positions to compare
            (real tokens, not padding), or None to compare everything.
    """

    load_reference: Callable[[Path, str], nn.Module]
    make_inputs: Callable[[nn.Module, torch.Generator], dict]
    run_zoo: Callable[[nn.Module, dict], dict[str, torch.Tensor]]
    run_reference: Callable[[nn.Module, dict], dict[str, torch.Tensor]]
    where: Callable[[dict], torch.Tensor | None] = lambda inputs: None


@dataclass
class ParityRow:
    direction: str
    output: str
    dtype: str
    max_abs_diff: float
    scale: float
    atol: float
    rtol: float

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol + self.rtol * self.scale


@dataclass
class ParityReport:
    path: str
    family: str
    task: str
    rows: list[ParityRow] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.rows) and all(r.ok for r in self.rows)

    def table(self) -> str:
        lines = [
            f"parity of {self.path} (family {self.family}, task {self.task})",
            f"{'direction':<22}{'output':<20}{'dtype':<10}{'max |diff|':>12}{'tolerance':>12}  result",
        ]
        for r in self.rows:
            tol = r.atol + r.rtol * r.scale
            verdict = "ok" if r.ok else "FAIL"
            lines.append(f"{r.direction:<22}{r.output:<20}{r.dtype:<10}{r.max_abs_diff:>12.3g}{tol:>12.3g}  {verdict}")
        return "\n".join(lines)


def _compare(zoo_out, ref_out, where, direction, family, dtype_name, source=None) -> list[ParityRow]:
    rows = []
    names = [n for n in zoo_out if n in ref_out]
    if not names:
        raise ValueError("parity: zoo and the reference produced no output of the same name")
    for name in names:
        a, b = zoo_out[name].float(), ref_out[name].float()
        if a.shape != b.shape:
            raise ValueError(
                f"parity: output {name} has shape {tuple(a.shape)} in zoo, {tuple(b.shape)} in the reference"
            )
        if where is not None and a.shape[: where.dim()] == where.shape:
            a, b = a[where], b[where]
        atol, rtol = tolerance(family, dtype_name, source)
        rows.append(
            ParityRow(direction, name, dtype_name, (a - b).abs().max().item(), b.abs().max().item(), atol, rtol)
        )
    return rows


@torch.no_grad()
def run_parity(
    path: str | Path,
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
    task: str | None = None,
    roundtrip: bool = True,
    seed: int = 0,
) -> ParityReport:
    """Compare zoo with the reference on the checkpoint at ``path``; see the module docstring."""
    from zoo.hub import from_pretrained, resolve_checkpoint
    from zoo.registry import get_family

    path = resolve_checkpoint(path)  # a directory or file, pkg://..., or a Hub repo id in the local cache
    model = from_pretrained(path, task=task)
    family = get_family(model.family)
    spec: ParitySpec | None = family.parity
    if spec is None:
        raise ValueError(f"parity: family {family.name!r} has no reference implementation wired for parity")
    reference = spec.load_reference(path, model.task)
    inputs = spec.make_inputs(model, torch.Generator().manual_seed(seed))
    where = spec.where(inputs)
    # Single-file checkpoints (GGUF) carry real, often quantized weights: their own tolerance row,
    # for both directions, since the exported copy holds the same weights.
    source = path.suffix.lstrip(".").lower() if path.is_file() else None
    report = ParityReport(str(path), family.name, model.task)
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        z, r = model.to(dtype), reference.to(dtype)
        report.rows += _compare(
            spec.run_zoo(z, inputs), spec.run_reference(r, inputs), where, "load into zoo", family.name, dtype_name,
            source,
        )  # fmt: skip
    model, reference = model.float(), reference.float()
    if roundtrip:
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp, format="hf")
            exported = spec.load_reference(Path(tmp), model.task)
            report.rows += _compare(
                spec.run_zoo(model, inputs), spec.run_reference(exported, inputs), where, "export to reference",
                family.name, "float32", source,
            )  # fmt: skip
    return report


def padded_token_batch(model: nn.Module, generator: torch.Generator, batch: int = 3, length: int = 12) -> dict:
    """Random token ids with three rows: unpadded, left-padded and right-padded."""
    config = model.config
    length = min(length, config.max_seq_len)
    input_ids = torch.randint(0, config.vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:
        attention_mask[1, : length // 4] = 0  # left padding
    if batch > 2:
        attention_mask[2, -(length // 3) :] = 0  # right padding
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def _real_tokens(inputs: dict) -> torch.Tensor:
    return inputs["attention_mask"].bool()


def strict_transformers_loader(auto_class: str) -> Callable[[Path, str], nn.Module]:
    """A loader that fails unless transformers reads every key of the directory, and nothing is missing.

    A ``.gguf`` file is read by transformers' own GGUF reader (``from_pretrained(dir, gguf_file=name)``,
    which needs the gguf package), independent of zoo's.
    """

    def load(path: Path, task: str) -> nn.Module:
        import transformers

        cls = getattr(transformers, auto_class)
        where = {"pretrained_model_name_or_path": str(path)}
        if path.is_file() and path.suffix.lower() == ".gguf":
            # dequantize=True: fp32 weights the comparison can cast to other dtypes.
            where = {
                "pretrained_model_name_or_path": str(path.parent),
                "gguf_file": path.name,
                "quantization_config": transformers.GgufConfig(dequantize=True),
            }
        model, info = cls.from_pretrained(
            **where, dtype=torch.float32, attn_implementation="eager", output_loading_info=True
        )
        problems = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if problems:
            raise ValueError(f"parity: transformers did not load {path} strictly: {problems}")
        return model.eval()

    return load


def causal_lm_parity(reference: str, auto_class: str, reference_kwargs: dict | None = None) -> ParitySpec:
    """Parity hooks for a causal LM whose reference is a transformers Auto class.

    Args:
        reference_kwargs: extra arguments for the reference's forward, e.g.
            ``{"output_router_logits": True}`` so a mixture of experts reports its ``aux_loss``.
            When both sides produce an aux loss, it is compared too.
    """
    if reference != "transformers":
        raise ValueError(f"reference: only transformers causal LMs are wired here, not {reference!r}")
    from zoo.lm import positions_from_mask

    def run_zoo(model, inputs):
        out = model(**inputs, output_hidden_states=True)
        outputs = {"logits": out.logits, "last_hidden_state": out.hidden_states[-1]}
        if out.aux_loss is not None:
            outputs["aux_loss"] = out.aux_loss
        return outputs

    def run_reference(model, inputs):
        position_ids = positions_from_mask(inputs["attention_mask"])
        out = model(**inputs, position_ids=position_ids, output_hidden_states=True, **(reference_kwargs or {}))
        outputs = {"logits": out.logits, "last_hidden_state": out.hidden_states[-1]}
        if getattr(out, "aux_loss", None) is not None:
            outputs["aux_loss"] = out.aux_loss
        return outputs

    return ParitySpec(strict_transformers_loader(auto_class), padded_token_batch, run_zoo, run_reference, _real_tokens)
