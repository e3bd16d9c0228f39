"""The `zoo` command line: list, info, parity (and the commands later modules add)."""

import argparse
import sys

import torch


def cmd_list(args) -> int:
    from zoo.registry import VARIANTS, list_models

    names = list_models(args.pattern)
    if not names:
        print(f"no registered model matches {args.pattern!r}", file=sys.stderr)
        return 1
    for name in names:
        v = VARIANTS[name]
        print(f"{name:<28} {v.family:<8} {v.source}")
    return 0


def cmd_info(args) -> int:
    from zoo.info import model_info
    from zoo.registry import create_model

    with torch.device("meta"):  # shapes and counts only: no memory, even for 47B parameters
        model = create_model(args.name)
    print(model_info(model, args.name, context=args.context).text())
    return 0


def cmd_parity(args) -> int:
    from zoo.parity import run_parity

    report = run_parity(args.path, dtypes=tuple(args.dtype), task=args.task, roundtrip=not args.no_roundtrip)
    print(report.table())
    print("parity: ok" if report.ok else "parity: FAILED (above tolerance)")
    return 0 if report.ok else 1


def cmd_finetune(args) -> int:
    from zoo.train import TrainingDiverged, load_recipe
    from zoo.train.recipes import finetune

    recipe = load_recipe(args.recipe, args.overrides)
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


def cmd_generate(args) -> int:
    from pathlib import Path

    from zoo.generation import TextStreamer, generate
    from zoo.hub import from_pretrained
    from zoo.registry import create_model
    from zoo.tokenizer import load_tokenizer

    if Path(args.model).exists():
        from zoo.quant import default_quantization, quantization_summary

        quantization = default_quantization(args.model, args.quantization)
        model = from_pretrained(args.model, quantization=quantization)
        print(f"zoo generate: {quantization_summary(model)}", file=sys.stderr)
    elif args.tokenizer is None:
        raise ValueError(f"--tokenizer: {args.model!r} is no path, and a registered name has no tokenizer")
    else:
        model = create_model(args.model).eval()
        print(f"zoo generate: {args.model} is a registered name: random weights", file=sys.stderr)
    tokenizer = load_tokenizer(args.tokenizer or args.model)
    chat = bool(tokenizer.chat_template) if args.chat is None else args.chat
    if chat:
        messages = [{"role": "system", "content": args.system}] if args.system else []
        text = tokenizer.apply_chat_template([*messages, {"role": "user", "content": args.prompt}])
        ids = tokenizer.encode(text, add_special_tokens=False)  # the template places the special tokens
    else:
        ids = tokenizer.encode(args.prompt)
    options = dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams, seed=args.seed)
    options.update(eos_token_id=tokenizer.eos_token_id, repetition_penalty=args.repetition_penalty)
    options.update(do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p)
    streamer = TextStreamer(tokenizer) if args.num_beams == 1 else None
    with torch.inference_mode():
        out = generate(model, torch.tensor([ids]), streamer=streamer, **options)
    if streamer is None:
        print(tokenizer.decode(out[0, len(ids) :].tolist()), end="")
    print()
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zoo", description="A model zoo of transformer families.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("list", help="list registered models (a glob filters: 'llama*')")
    p.add_argument("pattern", nargs="?")
    p.set_defaults(fn=cmd_list)

    p = sub.add_parser("info", help="parameter count, layer shapes and FLOPs per token of a registered model")
    p.add_argument("name")
    p.add_argument("--context", type=int, default=None, help="context length for the attention FLOPs term")
    p.set_defaults(fn=cmd_info)

    p = sub.add_parser("parity", help="compare a checkpoint in zoo against its reference implementation")
    p.add_argument("path")
    p.add_argument("--dtype", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"])
    p.add_argument("--task", default=None)
    p.add_argument("--no-roundtrip", action="store_true", help="skip exporting back to the reference format")
    p.set_defaults(fn=cmd_parity)

    p = sub.add_parser("generate", help="continue a prompt (or answer it, for chat models), streaming the text")
    p.add_argument("model", help="a checkpoint directory or .gguf file, or a registered name (random weights)")
    p.add_argument("--prompt", required=True)
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
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser(
        "finetune",
        help="train with a recipe: zoo finetune recipes/X.yaml train.lr=1e-3 ... (torchrun for several processes)",
    )
    p.add_argument("recipe", help="a recipe YAML file (see recipes/ and docs/training.md)")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=20 lora.r=4")
    p.set_defaults(fn=cmd_finetune)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (ValueError, FileNotFoundError) as err:
        print(f"zoo {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
