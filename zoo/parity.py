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
    # Real Whisper tiny.en (fp16 weights) against ctranslate2's float32 encoder over 1500
    # positions of speech-like clips: outputs reach ~13 and differ by ~3e-5 (summation order).
    "whisper/ct2": {"float32": (1e-4, 0.0)},
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


# In bf16, zoo's error against the fp32 reference must stay within this many times the
# reference's own bf16-vs-fp32 error (flash-attention's tests judge their kernels this way).
REFERENCE_ERROR_FACTOR = 3.0


@dataclass
class ParityRow:
    direction: str
    output: str
    dtype: str
    max_abs_diff: float
    scale: float
    atol: float
    rtol: float
    # Below a dtype other than fp32: max |zoo - reference at fp32| and max |reference - reference
    # at fp32|, i.e. zoo's rounding error and the reference's own in the same dtype.
    error_vs_fp32: float | None = None
    reference_error: float | None = None

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.atol + self.rtol * self.scale

    @property
    def ok_relative(self) -> bool | None:
        """Within REFERENCE_ERROR_FACTOR x the reference's own error (None where not measured)."""
        if self.error_vs_fp32 is None or self.reference_error is None:
            return None
        return self.error_vs_fp32 <= REFERENCE_ERROR_FACTOR * self.reference_error + 1e-6 * self.scale


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
        relative = any(r.ok_relative is not None for r in self.rows)
        extra = f"{'vs fp32 ref':>13}{'ref own err':>13}  <=3x" if relative else ""
        lines = [
            f"parity of {self.path} (family {self.family}, task {self.task})",
            f"{'direction':<22}{'output':<20}{'dtype':<10}{'max |diff|':>12}{'tolerance':>12}  result" + extra,
        ]
        for r in self.rows:
            tol = r.atol + r.rtol * r.scale
            verdict = "ok" if r.ok else "FAIL"
            line = f"{r.direction:<22}{r.output:<20}{r.dtype:<10}{r.max_abs_diff:>12.3g}{tol:>12.3g}  {verdict:<6}"
            if r.ok_relative is not None:
                line += f"{r.error_vs_fp32:>13.3g}{r.reference_error:>13.3g}  {'ok' if r.ok_relative else 'FAIL'}"
            lines.append(line.rstrip())
        divergence = self.first_divergence()
        if any(r.output.startswith("layer ") for r in self.rows):
            lines.append(
                f"first divergence: {divergence}" if divergence else "first divergence: none, every layer agrees"
            )
        return "\n".join(lines)

    def first_divergence(self) -> str | None:
        """With per-layer rows, the first layer whose output is outside tolerance (fp32 first,
        then other dtypes), named with its max |diff|; None when every layer agrees."""
        for dtype in sorted({r.dtype for r in self.rows}, key=lambda d: d != "float32"):
            for r in self.rows:
                if r.dtype == dtype and r.output.startswith("layer ") and not r.ok:
                    return (
                        f"{r.output.removesuffix(' output')} ({r.direction}, {dtype}: max |diff| {r.max_abs_diff:.3g})"
                    )
        return None


def layer_stack(model: nn.Module, n_layers: int) -> nn.ModuleList | None:
    """The model's stack of repeated layers: the first ModuleList (or Sequential) of n_layers
    modules of one class (``transformer.h``, ``model.layers``, ``encoder.layer``, timm's
    ``blocks``, zoo's ``layers``)."""
    for module in model.modules():
        if isinstance(module, (nn.ModuleList, nn.Sequential)) and len(module) == n_layers and n_layers > 0:
            if len({type(m) for m in module}) == 1:
                return module
    return None


class LayerOutputs:
    """Records each layer's output (the first tensor it returns) on the first forward while active."""

    def __init__(self, stack: nn.ModuleList):
        self.outputs: list[torch.Tensor | None] = [None] * len(stack)
        self._handles = [layer.register_forward_hook(self._hook(i)) for i, layer in enumerate(stack)]

    def _hook(self, i: int):
        def hook(module, args, output):
            if self.outputs[i] is None:
                self.outputs[i] = output[0] if isinstance(output, (tuple, list)) else output

        return hook

    def __enter__(self) -> "LayerOutputs":
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()

    def named(self) -> dict[str, torch.Tensor]:
        return {f"layer {i} output": t for i, t in enumerate(self.outputs) if isinstance(t, torch.Tensor)}


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


def _run(run, model, inputs, stack: nn.ModuleList | None) -> dict[str, torch.Tensor]:
    """The spec's run function, plus every layer's output when a stack is given."""
    if stack is None:
        return run(model, inputs)
    with LayerOutputs(stack) as layers:
        outputs = run(model, inputs)
    return {**layers.named(), **outputs}


@torch.no_grad()
def run_parity(
    path: str | Path,
    dtypes: tuple[str, ...] = ("float32", "bfloat16"),
    task: str | None = None,
    roundtrip: bool = True,
    seed: int = 0,
    per_layer: bool = False,
) -> ParityReport:
    """Compare zoo with the reference on the checkpoint at ``path``; see the module docstring.

    ``per_layer``: also compare every layer's output (found by hooks on each model's layer
    stack), so the report names the first layer where zoo and the reference part: a key-and-shape
    check cannot see a right-shaped tensor loaded under the wrong name, a layer-by-layer one can.
    Below fp32, each row also says how far zoo and the reference each are from the reference at
    fp32: zoo should be within 3x the reference's own rounding error.
    """
    from zoo.hub import directory_format, from_pretrained, resolve_checkpoint
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
    # Single-file checkpoints (GGUF) and directories of other formats (CTranslate2) carry real,
    # often quantized weights: their own tolerance row, for both directions, since the exported
    # copy holds the same weights.
    source = path.suffix.lstrip(".").lower() if path.is_file() else directory_format(path)
    report = ParityReport(str(path), family.name, model.task)
    n_layers = getattr(model.config, "n_layers", 0)
    stacks = (layer_stack(model, n_layers), layer_stack(reference, n_layers)) if per_layer else (None, None)
    if per_layer and None in stacks:
        which = "zoo's model" if stacks[0] is None else "the reference"
        raise ValueError(f"--per-layer: found no stack of {n_layers} layers in {which} ({family.name})")
    ref_fp32 = None
    for dtype_name in dtypes:
        dtype = getattr(torch, dtype_name)
        z, r = model.to(dtype), reference.to(dtype)
        zoo_out, ref_out = _run(spec.run_zoo, z, inputs, stacks[0]), _run(spec.run_reference, r, inputs, stacks[1])
        rows = _compare(zoo_out, ref_out, where, "load into zoo", family.name, dtype_name, source)
        if dtype_name == "float32":
            ref_fp32 = ref_out
        elif ref_fp32 is not None:
            _add_reference_error(rows, zoo_out, ref_out, ref_fp32, where)
        report.rows += rows
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


def _add_reference_error(rows, zoo_out, ref_out, ref_fp32, where) -> None:
    """Fill each row's error_vs_fp32 (zoo) and reference_error (the reference) against the
    reference's fp32 output of the same name."""
    for row in rows:
        name = row.output
        if name not in ref_fp32:
            continue
        a, b, c = zoo_out[name].float(), ref_out[name].float(), ref_fp32[name].float()
        if where is not None and a.shape[: where.dim()] == where.shape:
            a, b, c = a[where], b[where], c[where]
        row.error_vs_fp32 = (a - c).abs().max().item()
        row.reference_error = (b - c).abs().max().item()


def padded_token_batch(model: nn.Module, generator: torch.Generator, batch: int = 3, length: int = 12) -> dict:
    """Random token ids with three rows: unpadded, left-padded and right-padded."""
    config = model.config
    if config.max_seq_len is not None:
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


def seq2seq_token_batch(model: nn.Module, generator: torch.Generator, batch: int = 3, length: int = 11) -> dict:
    """Sources of three rows (unpadded, right-padded, left-padded) and random decoder inputs of
    another length, starting with the decoder start token: an encoder-decoder's parity batch."""
    config = model.config
    src = padded_token_batch(model, generator, batch, length)
    if batch > 2:  # padded_token_batch pads row 1 on the left and row 2 on the right: swap sides
        src["attention_mask"] = src["attention_mask"][[0, 2, 1]]
    tgt_len = max(2, length * 2 // 3)
    if config.max_seq_len is not None:
        tgt_len = min(tgt_len, config.max_seq_len)
    decoder_input_ids = torch.randint(0, config.vocab_size, (batch, tgt_len), generator=generator)
    decoder_input_ids[:, 0] = config.decoder_start_token_id
    return {**src, "decoder_input_ids": decoder_input_ids}


def seq2seq_lm_parity(auto_class: str) -> ParitySpec:
    """Parity hooks for an encoder-decoder (``zoo.seq2seq.Seq2SeqLM``) whose reference is a
    transformers Auto class (``AutoModelForSeq2SeqLM``): the decoder's logits and the encoder's
    output on ``seq2seq_token_batch``."""

    def run_zoo(model, inputs):
        out = model(**inputs)
        return {"logits": out.logits, "encoder_last_hidden_state": out.encoder_last_hidden_state}

    def run_reference(model, inputs):
        out = model(**inputs)
        return {"logits": out.logits, "encoder_last_hidden_state": out.encoder_last_hidden_state}

    return ParitySpec(strict_transformers_loader(auto_class), seq2seq_token_batch, run_zoo, run_reference)
