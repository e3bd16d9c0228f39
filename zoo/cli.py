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
