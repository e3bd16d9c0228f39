"""Tiny models and data for the training tests: everything runs on CPU in seconds."""

import pytest
import torch

import zoo
from zoo.train import TrainConfig

VOCAB = 211  # gpt2-tiny's


def lm_examples(n: int, seed: int = 0, min_len: int = 4, max_len: int = 24) -> list[dict]:
    """Sequences of varying length from a few repeating patterns (learnable in a few steps)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        start = int(torch.randint(0, 50, (1,), generator=g))
        ids = (start + torch.arange(length) * (1 + i % 3)) % VOCAB
        out.append({"input_ids": ids, "labels": ids.clone()})
    return out


def tiny_gpt(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return zoo.create_model("gpt2-tiny", **overrides)


def config(**kw) -> TrainConfig:
    base = dict(steps=4, batch_size=6, lr=3e-3, progress="none", tensorboard=False, seed=0)
    base.update(kw)
    return TrainConfig(**base)


@pytest.fixture
def run_dir(tmp_path):
    return tmp_path / "run"
