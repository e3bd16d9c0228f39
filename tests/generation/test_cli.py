"""`zoo generate` on a tiny GPT-2 checkpoint with its own tokenizer.json (and chat template)."""

import json
import re

import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

import zoo
from tests.conftest import randomize_
from tests.generation.conftest import GPT2
from zoo.cli import main
from zoo.generation import TextStreamer

WORDS = ["[UNK]", "<eos>", "user", "system", "assistant", *[f"w{i}" for i in range(GPT2["vocab_size"] - 5)]]
TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    "{% if add_generation_prompt %}assistant{% endif %}"
)


def _checkpoint(path, chat_template=None):
    randomize_(transformers.GPT2LMHeadModel(transformers.GPT2Config(**GPT2))).save_pretrained(path)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path / "tokenizer.json"))
    config = {"eos_token": "<eos>"} | ({"chat_template": chat_template} if chat_template else {})
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    return path


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("plain"))


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    return _checkpoint(tmp_path_factory.mktemp("chat"), TEMPLATE)


def _expected(path, text: str, **options) -> str:
    model, tok = zoo.from_pretrained(path), zoo.load_tokenizer(path)
    ids = tok.encode(text, add_special_tokens=False)
    out = model.generate(torch.tensor([ids]), eos_token_id=tok.eos_token_id, **options)
    return tok.decode(out[0, len(ids) :].tolist())


def test_generate_streams_the_continuation(plain_dir, capsys):
    assert main(["generate", str(plain_dir), "--prompt", "w1 w7 w3", "--max-new-tokens", "9"]) == 0
    printed = capsys.readouterr().out
    expected = _expected(plain_dir, "w1 w7 w3", max_new_tokens=9)
    assert printed == expected + "\n" and len(expected.split()) >= 5


def test_generate_uses_the_chat_template_when_there_is_one(chat_dir, capsys):
    args = ["generate", str(chat_dir), "--prompt", "w5 w9", "--max-new-tokens", "8"]
    assert main(args) == 0
    chat = capsys.readouterr().out
    assert chat == _expected(chat_dir, "user w5 w9 assistant", max_new_tokens=8) + "\n"
    assert main([*args, "--system", "w2"]) == 0
    assert capsys.readouterr().out == _expected(chat_dir, "system w2 user w5 w9 assistant", max_new_tokens=8) + "\n"
    assert main([*args, "--no-chat"]) == 0
    assert capsys.readouterr().out == _expected(chat_dir, "w5 w9", max_new_tokens=8) + "\n"


def test_generate_sampling_and_beams(plain_dir, capsys):
    base = ["generate", str(plain_dir), "--prompt", "w4 w4 w8", "--max-new-tokens", "6"]
    assert main([*base, "--do-sample", "--top-p", "0.9", "--temperature", "1.3", "--seed", "5"]) == 0
    sampled = capsys.readouterr().out
    expected = _expected(plain_dir, "w4 w4 w8", max_new_tokens=6, do_sample=True, top_p=0.9, temperature=1.3, seed=5)
    assert sampled == expected + "\n"
    assert main([*base, "--num-beams", "3"]) == 0
    assert capsys.readouterr().out == _expected(plain_dir, "w4 w4 w8", max_new_tokens=6, num_beams=3) + "\n"


def test_generate_compile_gives_the_eager_text_and_says_which_it_ran(plain_dir, capsys):
    args = ["generate", str(plain_dir), "--prompt", "w1 w7 w3", "--max-new-tokens", "9"]
    assert main([*args, "--compile"]) == 0
    out = capsys.readouterr()
    assert out.out == _expected(plain_dir, "w1 w7 w3", max_new_tokens=9) + "\n"
    assert "decoding steps compiled" in out.err
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "decoding steps eager (--compile" in err
    from zoo.blocks import onednn

    assert ("float32 products of up to 8 rows through oneDNN" in err) == onednn.available()


def test_generate_screens_greedy_fp32_decoding_by_default_and_says_so(plain_dir, capsys):
    args = ["generate", str(plain_dir), "--prompt", "w1 w7 w3", "--max-new-tokens", "9"]
    expected = _expected(plain_dir, "w1 w7 w3", max_new_tokens=9) + "\n"  # the full fp32 product's text
    for extra, screened in (
        ([], True),
        (["--no-screen"], False),
        (["--draft", str(plain_dir)], True),
        (["--draft", "int8"], True),
    ):
        assert main([*args, *extra]) == 0
        out = capsys.readouterr()
        assert out.out == expected, extra
        assert ("greedy tokens through the screened output projection" in out.err) == screened, extra
    assert main([*args, "--do-sample", "--seed", "1"]) == 0
    assert "screened" not in capsys.readouterr().err  # sampling needs every logit


def test_generate_with_a_draft_gives_the_models_own_text(plain_dir, capsys):
    """--draft CHECKPOINT (here the model itself: everything is accepted) prints what plain
    decoding prints, and the acceptance on stderr; the flags speculative decoding cannot take are
    refused before loading."""
    args = ["generate", str(plain_dir), "--prompt", "w1 w7 w3", "--max-new-tokens", "9"]
    assert main([*args, "--draft", str(plain_dir), "--draft-k", "3"]) == 0
    out = capsys.readouterr()
    assert out.out == _expected(plain_dir, "w1 w7 w3", max_new_tokens=9) + "\n"
    assert "speculative" in out.err and "100% of drafted tokens accepted" in out.err
    assert main([*args, "--draft", "int8", "--num-beams", "2"]) == 2
    assert "--draft: speculative decoding is greedy or sampling, not beam search" in capsys.readouterr().err
    assert main([*args, "--draft", "int8", "--draft-k", "0"]) == 2
    assert "--draft-k: draft at least 1 token a round, got 0" in capsys.readouterr().err


def test_generate_errors_are_named(plain_dir, capsys):
    assert main(["generate", "gpt2-tiny", "--prompt", "w1"]) == 2
    assert "--tokenizer" in capsys.readouterr().err
    assert main(["generate", str(plain_dir), "--prompt", "w1", "--top-k", "3"]) == 2
    assert "--top-k: only used when sampling" in capsys.readouterr().err
    assert main(["generate", str(plain_dir), "--prompt", "w1", "--max-new-tokens", "100"]) == 2
    assert "--max-new-tokens:" in capsys.readouterr().err


def test_generate_checks_its_flags_before_loading(tmp_path, capsys):
    # The model path does not exist: a flag error that comes first was found before any loading.
    assert main(["generate", str(tmp_path / "absent"), "--prompt", "w1", "--do-sample", "--top-p", "1.5"]) == 2
    err = capsys.readouterr().err
    assert err == "zoo generate: error: --top-p: must be in (0, 1], got 1.5\n"
    assert main(["generate", str(tmp_path / "absent"), "--prompt", "w1", "--temperature", "0.5"]) == 2
    assert "--temperature: only used when sampling; pass --do-sample" in capsys.readouterr().err


def test_generate_shows_loading_progress(plain_dir, capsys):
    assert main(["generate", str(plain_dir), "--prompt", "w1", "--max-new-tokens", "2"]) == 0
    err = capsys.readouterr().err
    assert f"zoo generate: loading {plain_dir} ..." in err and re.search(r"loaded in \d+\.\d s", err)


def test_text_streamer_waits_for_complete_characters():
    class Bytes:  # a byte-level tokenizer: token i is byte i
        def decode(self, ids):
            return bytes(ids).decode("utf-8", errors="replace")

    pieces = []
    stream = TextStreamer(Bytes(), pieces.append)
    for b in "é!".encode():
        stream(torch.tensor([b]))
    assert pieces == ["é", "!"]  # the first byte of é alone wrote nothing
