"""Tiny GPT-2 checkpoints shared by the generation tests (module-scoped: built once per file)."""

import pytest
import torch
import transformers

import zoo
from tests.conftest import randomize_

# Non-square on purpose: d_ff != 4 * d_model, an odd vocabulary.
GPT2 = dict(vocab_size=211, n_positions=64, n_embd=48, n_layer=2, n_head=4, n_inner=104, bos_token_id=0, eos_token_id=0)


@pytest.fixture(scope="module")
def gpt2_pair(tmp_path_factory):
    """(transformers GPT2LMHeadModel, the same weights loaded through zoo.from_pretrained)."""
    path = tmp_path_factory.mktemp("gpt2")
    randomize_(transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2))).save_pretrained(path)
    ref = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    return ref, zoo.from_pretrained(path)


def padded_prompts(vocab: int, seed: int = 0, lengths=(9, 6, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    """Random prompts of different lengths, left-padded to one width (the padding ids are random too)."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(1, vocab, (len(lengths), width), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, width - n :] = 1
    return ids, mask


@pytest.fixture(autouse=True, scope="module")
def _one_thread_here(one_thread):
    """Every generation test module runs on one thread (tests/conftest.py's ``one_thread``)."""
    yield
