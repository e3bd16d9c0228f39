"""The `zoo` command line: list, info, parity (and the commands later modules add)."""

import argparse
import sys

import torch


def _variant_rows(names: list[str]) -> list[dict]:
    from zoo.registry import VARIANTS, create_model

    rows = []
    for name in names:
        v = VARIANTS[name]
        with torch.device("meta"):  # counts only: no memory, even for 47B parameters
            model = create_model(name)
        rows.append({"name": name, "family": v.family, "task": model.task, "parameters": model.num_parameters(),
                     "source": v.source})  # fmt: skip
    return rows


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def cmd_list(args) -> int:
    import json

    from zoo.registry import list_models

    names = list_models(args.pattern)
    if not names:
        print(f"no registered model matches {args.pattern!r}", file=sys.stderr)
        return 1
    rows = _variant_rows(names)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'NAME':<28} {'FAMILY':<8} {'TASK':<24} {'PARAMS':>8}  SOURCE")
    for r in rows:
        print(f"{r['name']:<28} {r['family']:<8} {r['task']:<24} {_human(r['parameters']):>8}  {r['source']}")
    return 0


def _info_model(name_or_path: str):
    """A registered name, or a checkpoint (directory, file, pkg://, Hub repo id), built on the
    meta device from its config alone where it can be (a single file is read whole)."""
    from zoo.hub import from_pretrained, read_architecture, resolve_checkpoint
    from zoo.registry import create_model, list_models

    if name_or_path in list_models():  # (list_models loads the families, which fill the registry)
        with torch.device("meta"):  # shapes and counts only: no memory, even for 47B parameters
            return create_model(name_or_path)
    try:
        path = resolve_checkpoint(name_or_path)
    except ValueError:
        if "/" in name_or_path or "." in name_or_path:
            raise
        create_model(name_or_path)  # not a path either: the registry's error, with close names
        raise
    if path.is_file():
        return from_pretrained(path)
    family, task, config, _ = read_architecture(path)
    with torch.device("meta"):
        return family.model_class(task)(config)


def cmd_info(args) -> int:
    from zoo.info import (
        compute_plan,
        kv_cache_bytes_per_token,
        model_info,
        process_memory,
        processes_text,
        scale_text,
        training_memory,
    )

    if args.context is not None and args.context < 1:
        raise ValueError(f"--context: must be a positive number of tokens, got {args.context}")
    if args.batch < 1:
        raise ValueError(f"--batch: must be at least 1, got {args.batch}")
    if args.processes < 1:
        raise ValueError(f"--processes: must be at least 1, got {args.processes}")
    dtype = getattr(torch, args.dtype)
    model = _info_model(args.name)
    if not next(model.parameters()).is_meta:  # a single file read whole: plan on a weightless copy
        with torch.device("meta"):
            model = type(model)(model.config)
    model = model.to(dtype)
    info = model_info(model, args.name, context=args.context)
    print(info.text())
    seq_len = args.seq_len or info.context
    memory = training_memory(model, args.batch, seq_len) if seq_len else None
    kv = kv_cache_bytes_per_token(model.config, dtype) if model.task == "causal_lm" else None
    print(scale_text(memory, kv, compute_plan(info, tokens=args.tokens, throughput=args.throughput)))
    if args.processes > 1:
        n = args.processes
        print(processes_text(process_memory(model, n, "ddp"), process_memory(model, n, "fsdp")))
    return 0


def cmd_parity(args) -> int:
    from zoo.parity import run_parity

    report = run_parity(
        args.path, dtypes=tuple(args.dtype), task=args.task, roundtrip=not args.no_roundtrip, per_layer=args.per_layer
    )
    print(report.table())
    print("parity: ok" if report.ok else "parity: FAILED (above tolerance)")
    return 0 if report.ok else 1


def cmd_finetune(args) -> int:
    from zoo.train import TrainingDiverged, load_recipe
    from zoo.train.config import describe_recipe
    from zoo.train.recipes import finetune

    recipe = load_recipe(args.recipe, args.overrides)
    if args.print_config:
        print(describe_recipe(recipe))
        return 0
    distributed = torch.distributed.is_available()
    try:
        finetune(recipe)
        if distributed and torch.distributed.is_initialized():
            torch.distributed.barrier()  # every process done before any tears its connections down
    except TrainingDiverged as err:
        print(f"zoo finetune: {err}\n{err.report}", file=sys.stderr)
        return 1
    finally:
        if distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
    return 0


def cmd_export(args) -> int:
    from pathlib import Path

    from zoo.train.export import choose_checkpoint, export_run

    path = choose_checkpoint(Path(args.run_dir), args.checkpoint)
    out = export_run(args.run_dir, args.out, format=args.format, checkpoint=str(path), lora=args.lora)
    kind = "sharded" if (path / "shards").is_dir() else "full"
    print(f"exported {path} ({kind} checkpoint) to {out} ({args.format} format)")
    return 0


def _flag(message: str, options: dict) -> str:
    """``top_p: must be ...`` -> ``--top-p: must be ...``: the option as the user typed it."""
    import re

    def flag(name: str) -> str:
        return "--" + name.replace("_", "-")

    name, sep, rest = message.partition(":")
    if not sep or name not in options:
        return message
    for option in options:
        rest = re.sub(rf"\b{option}=True\b", flag(option), rest)
        rest = re.sub(rf"\b{option}=False\b", f"no {flag(option)}", rest)
        rest = re.sub(rf"(?<![-\w]){option}\b", flag(option), rest)
    return f"{flag(name)}:{rest}"


def _generation_config(args):
    """The decoding options, checked before the (slow) load so a bad flag fails at once."""
    from zoo.generation import GenerationConfig

    options = dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, seed=args.seed)
    options.update(repetition_penalty=args.repetition_penalty, do_sample=args.do_sample)
    options.update(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    try:
        GenerationConfig(**options)
    except ValueError as err:
        raise ValueError(_flag(str(err), options)) from None
    if args.draft is not None:
        if args.num_beams > 1:
            raise ValueError("--draft: speculative decoding is greedy or sampling, not beam search (--num-beams)")
        if args.repetition_penalty != 1.0:
            raise ValueError("--draft: speculative decoding has no --repetition-penalty")
        if args.draft_k < 1:
            raise ValueError(f"--draft-k: draft at least 1 token a round, got {args.draft_k}")
    return options


def _load_draft(args, model):
    """The draft model --draft names: a quantized copy of MODEL (int8, int4), or a checkpoint
    with the same tokenizer (a GGUF file runs on its own codes)."""
    from zoo.hub import from_pretrained, resolve_checkpoint
    from zoo.quant import default_quantization
    from zoo.speculative import quantized_draft

    if model.task == "seq2seq_lm":
        raise ValueError("--draft: speculative decoding serves decoder-only models, not encoder-decoders")
    if args.draft in ("int8", "int4"):
        return quantized_draft(model, args.draft)
    path = resolve_checkpoint(args.draft)
    return from_pretrained(path, quantization=default_quantization(path, "auto"))


def _load_for_generate(args):
    """(model, the directory or file its tokenizer is read from): a checkpoint, a run directory
    (its model/, or its adapter/ on the recorded base), BASE --adapter DIR, or a registered name."""
    from pathlib import Path

    from zoo.hub import from_pretrained, resolve_checkpoint
    from zoo.lora import load_adapted
    from zoo.registry import VARIANTS, _load_families, create_model
    from zoo.train.rundir import is_run_dir

    _load_families()

    if args.adapter is not None:
        adapter = Path(args.adapter)
        model = load_adapted(adapter, base=args.model)
        return model, adapter if (adapter / "tokenizer.json").is_file() else resolve_checkpoint(args.model)
    if args.model in VARIANTS and not Path(args.model).exists():
        if args.tokenizer is None:
            raise ValueError(
                f"--tokenizer: {args.model!r} is a registered name (random weights), which has no tokenizer"
            )
        print(f"zoo generate: {args.model} is a registered name: random weights", file=sys.stderr)
        return create_model(args.model).eval(), None
    path = resolve_checkpoint(args.model)
    if is_run_dir(path):
        if (path / "model").is_dir():
            return from_pretrained(path / "model"), path / "model"
        if (path / "adapter").is_dir():
            return load_adapted(path / "adapter"), path / "adapter"
        raise ValueError(f"{path}: a run directory with no model/ or adapter/ yet (has the run finished?)")
    from zoo.quant import default_quantization, quantization_summary

    model = from_pretrained(path, quantization=default_quantization(path, args.quantization))
    print(f"zoo generate: {quantization_summary(model)}", file=sys.stderr)
    return model, path


def cmd_generate(args) -> int:
    import time

    from zoo.generation import TextStreamer, generate
    from zoo.hub import resolve_checkpoint
    from zoo.tokenizer import load_tokenizer

    options = _generation_config(args)
    print(f"zoo generate: loading {args.model}{f' with adapter {args.adapter}' if args.adapter else ''} ...",
          file=sys.stderr, flush=True)  # fmt: skip
    start = time.perf_counter()
    model, tokenizer_path = _load_for_generate(args)
    tokenizer = load_tokenizer(resolve_checkpoint(args.tokenizer) if args.tokenizer else tokenizer_path)
    print(f"zoo generate: loaded in {time.perf_counter() - start:.1f} s", file=sys.stderr, flush=True)
    if args.compile:
        from zoo.blocks.layers import compile_decoding

        compile_decoding(model)
        print("zoo generate: decoding steps compiled (torch.compile; the first steps compile)", file=sys.stderr)
    else:
        from zoo.blocks import onednn

        kernels = "; float32 products of up to 8 rows through oneDNN" if onednn.available() else ""
        eager = "decoding steps eager (--compile: faster steps after a compile, for quantized models)"
        print(f"zoo generate: {eager}{kernels}", file=sys.stderr)
    _screen_for_greedy(args, model, options)
    chat = bool(tokenizer.chat_template) if args.chat is None else args.chat
    if chat:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        text = tokenizer.apply_chat_template([*messages, {"role": "user", "content": args.prompt}])
        ids = tokenizer.encode(text, add_special_tokens=False)  # the template places the special tokens
    else:
        ids = tokenizer.encode(args.prompt)
    seq2seq = model.task == "seq2seq_lm"  # the prompt is the source; the output starts with the start token
    if seq2seq and tokenizer.eos_token_id is not None and ids[-1:] != [tokenizer.eos_token_id]:
        ids.append(tokenizer.eos_token_id)  # a source ends in the end token, as the model was trained
    options.update(eos_token_id=tokenizer.eos_token_id)
    streamer = TextStreamer(tokenizer) if args.num_beams == 1 else None
    with torch.inference_mode():
        try:
            if args.draft is not None:
                out = _speculate(args, model, ids, options, streamer)
            else:
                out = generate(model, torch.tensor([ids]), streamer=streamer, **options)
        except ValueError as err:  # what depends on the model: max_new_tokens past its context, say
            raise ValueError(_flag(str(err), options)) from None
    if streamer is None:
        print(tokenizer.decode(out[0, 1 if seq2seq else len(ids) :].tolist()), end="")
    print()
    return 0


def _screen_for_greedy(args, model, options: dict) -> None:
    """Greedy decoding of an fp32 causal LM on CPU goes through ``zoo.quant.screen_head`` unless
    --no-screen: the same tokens as the full output projection, from a quarter of its bytes."""
    from zoo.quant import screen_head, unscreenable

    greedy = not options["do_sample"] and options["num_beams"] == 1
    if args.no_screen or not greedy or unscreenable(model) is not None:
        return
    screen_head(model)
    print(
        "zoo generate: greedy tokens through the screened output projection (int8 codes + fp32 rescoring of the "
        "candidates: the fp32 tokens; --no-screen: the full product)",
        file=sys.stderr,
    )


def _speculate(args, model, ids: list[int], options: dict, streamer) -> torch.Tensor:
    """--draft: the target's own output, drafted by another model (zoo.speculative), streamed a
    verified round at a time; the acceptance rate goes to stderr at the end."""
    from zoo.speculative import speculative_generate

    draft = _load_draft(args, model)
    if args.compile:  # the draft's steps are one token each; the model's verifications are k + 1, eager
        from zoo.blocks.layers import compile_decoding

        compile_decoding(draft)
    sampling = {k: options[k] for k in ("temperature", "top_k", "top_p")} if options["do_sample"] else {}
    out, stats = speculative_generate(
        model,
        draft,
        torch.tensor([ids]),
        max_new_tokens=options["max_new_tokens"],
        k=args.draft_k,
        do_sample=options["do_sample"],
        eos_token_id=options["eos_token_id"],
        seed=options["seed"],
        streamer=streamer,
        **sampling,
    )
    print(
        f"zoo generate: speculative, {args.draft} drafting {args.draft_k} a round: {stats.acceptance_rate:.0%} of "
        f"drafted tokens accepted, {stats.tokens_per_target_forward:.2f} tokens per forward of the model",
        file=sys.stderr,
    )
    return out


def cmd_attention(args) -> int:
    from pathlib import Path

    from zoo import attention_maps as am
    from zoo.hub import from_pretrained, resolve_checkpoint
    from zoo.registry import VARIANTS, _load_families, create_model
    from zoo.tokenizer import load_tokenizer

    _load_families()
    if (args.text is None) == (args.image is None):
        raise ValueError("--text / --image: give exactly one")
    if args.image is not None and not Path(args.image).is_file():
        raise ValueError(f"--image: no such file {args.image!r}")
    checkpoint = None
    if args.model in VARIANTS and not Path(args.model).exists():
        model = create_model(args.model).eval()
        print(f"zoo attention: {args.model} is a registered name: random weights", file=sys.stderr)
    else:  # a directory or file, pkg://..., or a Hub repo id in the local cache, as zoo generate takes
        checkpoint = resolve_checkpoint(args.model)
        model = from_pretrained(checkpoint)
    out = Path(args.out)
    if args.image is not None:
        if not hasattr(model.config, "patch_size"):
            raise ValueError(f"--image: {args.model} is a {model.family} model, not an image model; use --text")
        pixels, shown = am.load_image(args.image, model.config.image_size, checkpoint)
        maps = am.image_attention(model, pixels)
    else:
        if hasattr(model.config, "patch_size"):
            raise ValueError(f"--text: {args.model} is an image model; use --image")
        if args.tokenizer is None and checkpoint is None:
            raise ValueError("--tokenizer: a registered name has no tokenizer; give one (a checkpoint or .gguf)")
        tokenizer = load_tokenizer(resolve_checkpoint(args.tokenizer) if args.tokenizer else checkpoint)
        maps = am.text_attention(model, tokenizer, args.text)
    layer = args.layer % len(maps.layers) if -len(maps.layers) <= args.layer < len(maps.layers) else args.layer
    maps.check(layer, args.head)
    out.mkdir(parents=True, exist_ok=True)
    written = [am.plot_heads(maps, layer, out / f"layer{layer}-heads.png")]
    written.append(am.plot_head(maps, layer, args.head, out / f"layer{layer}-head{args.head}.png"))
    if args.image is not None:
        written.append(am.plot_rollout(maps, shown, out / "rollout.png"))
    written.append(am.write_html(maps, out / "attention.html", title=f"{args.model}: attention maps"))
    for path in written:
        print(path)
    return 0


def cmd_study(args) -> int:
    from zoo.study import run_study

    run_study(args.name, args.overrides, args.out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    from zoo import __version__
    from zoo.info import DEFAULT_THROUGHPUT

    parser = argparse.ArgumentParser(prog="zoo", description="A model zoo of transformer families.")
    parser.add_argument("--version", action="version", version=f"zoo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered models (a glob filters: 'llama*')")
    p.add_argument("pattern", nargs="?")
    p.add_argument("--json", action="store_true", help="one JSON object per model: name, family, task, parameters")
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("info", help="parameter count, layer shapes and FLOPs per token of a model or checkpoint")
    p.add_argument("name", help="a registered name, or a checkpoint: directory, file, pkg://..., Hub repo id")
    p.add_argument("--context", type=int, default=None, help="context length for the attention FLOPs term")
    p.add_argument("--batch", type=int, default=1, help="batch size for the training-memory figures (default 1)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens per example for them (default: the context)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"], help="training dtype")
    p.add_argument("--tokens", type=float, default=None, help="training tokens D (default: 20 per parameter)")
    p.add_argument("--processes", type=int, default=1, help="also show one process's share under DDP and FSDP2")
    p.add_argument(
        "--throughput",
        type=float,
        default=DEFAULT_THROUGHPUT,
        help="achieved FLOP/s for the time estimate (default 1.25e14: an A100's bf16 peak at 40%% MFU)",
    )
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("parity", help="compare a checkpoint in zoo against its reference implementation")
    p.add_argument("path")
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--task", default=None)
    p.add_argument("--no-roundtrip", action="store_true", help="skip exporting back to the reference format")
    p.add_argument(
        "--per-layer", action="store_true", help="compare every layer's output and name the first that diverges"
    )
    p.set_defaults(fn=cmd_parity)

    p = sub.add_parser("generate", help="continue a prompt (or answer it, for chat models), streaming the text")
    p.add_argument(
        "model",
        help="a checkpoint (directory, .gguf, pkg://..., Hub repo id), a run directory of zoo finetune, "
        "or a registered name (random weights)",
    )
    p.add_argument("--prompt", required=True)
    p.add_argument("--adapter", default=None, help="a LoRA adapter directory to apply to MODEL")
    p.add_argument("--tokenizer", default=None, help="tokenizer path, if not the checkpoint's own")
    p.add_argument(
        "--chat",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="wrap the prompt in the chat template (default: when the tokenizer has one)",
    )
    p.add_argument("--system", default=None, help="a system message for the chat template")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--do-sample", action="store_true", help="sample instead of taking the most likely token")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--num-beams", type=int, default=1, help="beam search (prints the text at the end)")
    p.add_argument("--seed", type=int, default=None, help="for reproducible sampling")
    p.add_argument(
        "--quantization",
        choices=["auto", "none", "native", "int8", "int4"],
        default="auto",
        help="auto: a GGUF file's own Q4/Q8 weights (native), else none (fp32); see docs/quantization.md",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="run the decoding steps through torch.compile: tens of seconds to compile, then faster steps for "
        "quantized models (a GGUF on its codes; fp32 models decode faster eagerly); decoder-only; docs/generation.md",
    )
    p.add_argument(
        "--draft",
        default=None,
        help="speculative decoding: int8 or int4 (a quantized copy of MODEL drafts for it), or a checkpoint with "
        "the same tokenizer (a GGUF runs on its own codes); MODEL's own output, streamed a verified round at a time",
    )
    p.add_argument("--draft-k", type=int, default=4, help="tokens the draft proposes a round (--draft)")
    p.add_argument(
        "--no-screen",
        action="store_true",
        help="greedy decoding of an fp32 model picks each token through int8 codes of the output projection and "
        "fp32 rescoring of the few candidates (the same tokens, faster; docs/generation.md); this runs the full "
        "fp32 product instead",
    )
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("attention", help="attention heatmaps (PNG) and a page to browse every layer and head (HTML)")
    p.add_argument("model", help="a checkpoint (directory, file, pkg://..., Hub repo id) or a registered name")
    p.add_argument("--text", default=None, help="the input text (text models)")
    p.add_argument("--image", default=None, help="an image file (vision models): adds the attention rollout")
    p.add_argument("--tokenizer", default=None, help="tokenizer path, if not the checkpoint's own")
    p.add_argument("--layer", type=int, default=-1, help="the layer whose heads are drawn (default: the last)")
    p.add_argument("--head", type=int, default=0, help="the head drawn large (default 0)")
    p.add_argument("--out", default="attention", help="output directory (default ./attention)")
    p.set_defaults(fn=cmd_attention)

    p = sub.add_parser(
        "finetune",
        help="train with a recipe: zoo finetune recipes/X.yaml train.lr=1e-3 ... (torchrun for several processes)",
    )
    p.add_argument("recipe", help="a recipe YAML file (see recipes/ and docs/training.md)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=20 lora.r=4")
    p.add_argument(
        "--print-config", action="store_true", help="print every recipe key with its type, default and value; no run"
    )
    p.set_defaults(fn=cmd_finetune)

    p = sub.add_parser("export", help="a run's checkpoint (full or sharded) as one model directory, on one process")
    p.add_argument("run_dir", help="a run directory of zoo finetune")
    p.add_argument("out", help="the directory to write")
    p.add_argument("--format", choices=["zoo", "hf"], default="zoo", help="zoo.json + safetensors, or the reference's")
    p.add_argument("--checkpoint", default=None, help="a step number or step-* name (default: the newest)")
    p.add_argument("--lora", choices=["merged", "adapter"], default="merged", help="what a LoRA run exports")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("study", help="run a study: zoo study icl shots=[0,1,2] --out runs/icl (see docs/study/)")
    p.add_argument("name", help="which study (icl, ...)")
    p.add_argument("overrides", nargs="*", help="key=value settings, e.g. questions_per_task=5 shots=[0,1,2]")
    p.add_argument("--out", default=None, help="output directory (default runs/study/NAME)")
    p.set_defaults(fn=cmd_study)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    return f"zoo: warning: {message}\n"  # the message, not zoo's source line


def main(argv: list[str] | None = None) -> int:
    import warnings

    # The format only: replacing showwarning would also swallow warnings that a caller records
    # (warnings.catch_warnings(record=True), pytest.warns).
    warnings.formatwarning = _format_warning
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, OSError) as err:  # every zoo error names what is wrong; a full disk too
        print(f"zoo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
