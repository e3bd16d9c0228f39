"""Bad arguments get a ValueError that starts with the argument's name."""

import pytest
import torch

from tests.generation.conftest import GPT2
from zoo.generation import Decoder, stream

V, CONTEXT = GPT2["vocab_size"], GPT2["n_positions"]
IDS = torch.randint(1, V, (2, 5), generator=torch.Generator().manual_seed(0))
LEFT_PAD = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])

CASES = {
    "empty prompt": ("input_ids", torch.zeros(1, 0, dtype=torch.long), {}),
    "empty batch": ("input_ids", torch.zeros(0, 4, dtype=torch.long), {}),
    "1-d prompt": ("input_ids", torch.tensor([1, 2, 3]), {}),
    "float prompt": ("input_ids", torch.ones(1, 3), {}),
    "prompt longer than context": ("input_ids", torch.ones(1, CONTEXT + 1, dtype=torch.long), {}),
    "past the context": ("max_new_tokens", torch.ones(1, CONTEXT - 4, dtype=torch.long), dict(max_new_tokens=5)),
    "no new tokens": ("max_new_tokens", IDS, dict(max_new_tokens=0)),
    "min above max": ("min_new_tokens", IDS, dict(max_new_tokens=3, min_new_tokens=4)),
    "zero beams": ("num_beams", IDS, dict(num_beams=0)),
    "beam sampling": ("num_beams", IDS, dict(num_beams=2, do_sample=True)),
    "top_p zero": ("top_p", IDS, dict(do_sample=True, top_p=0.0)),
    "top_p above one": ("top_p", IDS, dict(do_sample=True, top_p=1.5)),
    "top_p negative": ("top_p", IDS, dict(do_sample=True, top_p=-0.1)),
    "zero temperature": ("temperature", IDS, dict(do_sample=True, temperature=0.0)),
    "negative temperature": ("temperature", IDS, dict(do_sample=True, temperature=-1.0)),
    "negative top_k": ("top_k", IDS, dict(do_sample=True, top_k=-1)),
    "top_k without sampling": ("top_k", IDS, dict(top_k=5)),
    "temperature without sampling": ("temperature", IDS, dict(temperature=0.7)),
    "length penalty without beams": ("length_penalty", IDS, dict(length_penalty=2.0)),
    "zero repetition penalty": ("repetition_penalty", IDS, dict(repetition_penalty=0.0)),
    "bad early stopping": ("early_stopping", IDS, dict(num_beams=2, early_stopping="sometimes")),
    "eos outside vocab": ("eos_token_id", IDS, dict(eos_token_id=V)),
    "negative pad": ("pad_token_id", IDS, dict(pad_token_id=-1)),
    "unknown option": ("max_tokens", IDS, dict(max_tokens=5)),
    "seed and generator": ("seed", IDS, dict(do_sample=True, seed=1, generator=torch.Generator())),
    "streamer with beams": ("streamer", IDS, dict(num_beams=2, streamer=print)),
}


@pytest.mark.parametrize("name, ids, options", CASES.values(), ids=CASES.keys())
def test_bad_arguments_are_named(gpt2_pair, name, ids, options):
    _, model = gpt2_pair
    with pytest.raises(ValueError, match=rf"^{name}:"):
        model.generate(ids, **options)


def test_unknown_option_suggests_the_right_name(gpt2_pair):
    _, model = gpt2_pair
    with pytest.raises(ValueError, match="did you mean max_new_tokens"):
        model.generate(IDS, max_tokens=5)


@pytest.mark.parametrize(
    "mask, what",
    [
        (torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]), "end in padding"),
        (torch.tensor([[0, 0, 0, 0, 0], [1, 1, 1, 1, 1]]), "no real token"),
        (torch.ones(2, 4, dtype=torch.long), "expected shape"),
        (torch.full((2, 5), 2), "1 for real tokens"),
    ],
    ids=["right padding", "empty row", "wrong shape", "not 0/1"],
)
def test_bad_attention_masks_are_named(gpt2_pair, mask, what):
    _, model = gpt2_pair
    with pytest.raises(ValueError, match=rf"^attention_mask: .*{what}"):
        model.generate(IDS, mask)


def test_left_padding_is_accepted(gpt2_pair):
    _, model = gpt2_pair
    assert model.generate(IDS, LEFT_PAD, max_new_tokens=2).shape == (2, 7)


def test_stream_checks_arguments_before_the_first_token(gpt2_pair):
    _, model = gpt2_pair
    with pytest.raises(ValueError, match=r"^num_beams:"):
        stream(model, IDS, num_beams=3)
    with pytest.raises(ValueError, match=r"^top_p:"):
        stream(model, IDS, do_sample=True, top_p=2.0)


def test_a_full_decoder_says_so(gpt2_pair):
    _, model = gpt2_pair
    decoder = Decoder(model, IDS, max_new_tokens=1)
    decoder.append(IDS[:, 0])
    with pytest.raises(ValueError, match=r"^max_new_tokens: .* full"):
        decoder.append(IDS[:, 1])
