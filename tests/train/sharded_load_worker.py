"""Run by test_multiprocess.py under torchrun (2 processes, gloo): load a zoo save straight into
FSDP2 shards, and record what each process read and holds, as JSON in OUT/rank{R}.json.

    torchrun --nproc_per_node 2 tests/train/sharded_load_worker.py SAVE_DIR OUT
"""

import json
import sys
from pathlib import Path

import safetensors
import torch

from zoo.info import process_memory
from zoo.registry import FAMILIES
from zoo.train.distributed import load_sharded_pretrained, setup

save_dir, out = Path(sys.argv[1]), Path(sys.argv[2])
world = setup("cpu")

# Count every element the load reads from the files: a slice is all that should ever be read.
read = {"elements": 0, "largest": {}}
real_open = safetensors.safe_open


class CountingOpen:
    def __init__(self, *args, **kwargs):
        self.inner = real_open(*args, **kwargs)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def keys(self):
        return self.inner.keys()

    def get_slice(self, name):
        part = self.inner.get_slice(name)

        class Slice:
            def get_shape(self):
                return part.get_shape()

            def __getitem__(self, index):
                tensor = part[index]
                read["elements"] += tensor.numel()
                read["largest"][name] = list(tensor.shape)
                return tensor

        return Slice()


safetensors.safe_open = CountingOpen
model = load_sharded_pretrained(save_dir, world)
safetensors.safe_open = real_open

params = dict(model.named_parameters())
local = {n: list(p.to_local().shape) for n, p in params.items()}
weight_bytes = sum(p.to_local().numel() * p.element_size() for p in params.values())

# The reference: the same save loaded whole on one process, compared after gathering the shards.
import zoo  # noqa: E402

reference = zoo.from_pretrained(save_dir).state_dict()
max_diff = max(float((p.full_tensor() - reference[n]).abs().max()) for n, p in params.items())
buffers_equal = all(torch.equal(b, reference[n]) for n, b in model.named_buffers() if n in reference)

# One training step on the sharded model: the gradients and AdamW moments each process holds.
ids = torch.arange(24).reshape(2, 12) % model.config.vocab_size
model(input_ids=ids, labels=ids).loss.backward()
grad_bytes = sum(p.grad.to_local().numel() * p.grad.element_size() for p in params.values())
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
optimizer.step()
moment_bytes = sum(v.to_local().numel() * v.element_size() for s in optimizer.state.values()
                   for k, v in s.items() if k in ("exp_avg", "exp_avg_sq"))  # fmt: skip

with torch.device("meta"):
    unsharded = FAMILIES[model.family].model_class(model.task)(model.config)
planned = process_memory(unsharded, world.size, "fsdp")
result = {
    "rank": world.rank,
    "read_elements": read["elements"],
    "largest_read": read["largest"],
    "local_shapes": local,
    "full_shapes": {n: list(p.shape) for n, p in params.items()},
    "max_diff": max_diff,
    "buffers_equal": buffers_equal,
    "measured": {"weights": weight_bytes, "gradients": grad_bytes, "optimizer": moment_bytes},
    "planned": {"weights": planned.weights, "gradients": planned.gradients, "optimizer": planned.optimizer},
}
(out / f"rank{world.rank}.json").write_text(json.dumps(result))
torch.distributed.destroy_process_group()
