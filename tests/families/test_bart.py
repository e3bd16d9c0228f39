"""BART's own pieces: the variants' shapes against transformers' models of the same config, the
tokenizer of an older directory (vocab.json + merges.txt) against transformers' BartTokenizer,
the dropout between the feed-forward projections, and what is refused."""

import json

import pytest
import torch
import transformers

import zoo
from zoo.blocks import MLP
from zoo.config import ConfigError
from zoo.families.bart.convert import config_to_hf
from zoo.generation import GenerationConfig
from zoo.tokenizer import load_tokenizer


@pytest.mark.parametrize("name", ["bart-base", "bart-large"])
def test_variants_have_the_parameters_of_transformers_models(name):
    config = zoo.get_variant(name).config
    with torch.device("meta"):
        ours = zoo.create_model(name)
        theirs = transformers.BartForConditionalGeneration(
            transformers.BartConfig(**config_to_hf(config, "seq2seq_lm"))
        )
    assert ours.num_parameters() == theirs.num_parameters()  # 139M and 406M
    assert (config.vocab_size, config.max_seq_len, config.decoder_start_token_id, config.forced_bos_token_id) == (
        50265, 1024, 2, 0,
    )  # fmt: skip


def test_act_dropout_drops_between_the_projections():
    torch.manual_seed(0)
    mlp = MLP(8, 16, act_dropout=0.5).train()
    x = torch.randn(4, 8)
    h = mlp.act(mlp.up(x))
    torch.manual_seed(1)
    dropped = mlp(x)
    torch.manual_seed(1)
    assert torch.allclose(dropped, mlp.down(torch.nn.functional.dropout(h, 0.5)))
    assert torch.allclose(mlp.eval()(x), mlp.down(h))


def test_older_directories_tokenize_as_transformers_bart_tokenizer(tmp_path):
    """A byte-level BPE trained here, saved as vocab.json + merges.txt in BART's special-token order:
    zoo's tokenizer gives transformers' BartTokenizer's ids: <s> ... </s>, <mask> a special token."""
    from tokenizers import ByteLevelBPETokenizer

    text = "The zoo opens at nine. The keepers feed the lions, the giraffes and the elephants. " * 20
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([text], vocab_size=300, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(tmp_path))
    ours = load_tokenizer(tmp_path)
    theirs = transformers.BartTokenizer(str(tmp_path / "vocab.json"), str(tmp_path / "merges.txt"))
    samples = ["The lions sleep.", "The keepers <mask> the giraffes at nine.", "zebras!"]
    for sample in samples:
        assert ours.encode(sample) == theirs(sample)["input_ids"], sample
    assert (ours.bos_token_id, ours.pad_token_id, ours.eos_token_id) == (0, 1, 2)
    ids = ours.encode(samples[1])
    assert ids[0] == 0 and ids[-1] == 2 and 4 in ids
    assert ours.decode(ids) == theirs.decode(theirs(samples[1])["input_ids"], skip_special_tokens=True)
    batch = ours(samples)
    assert batch["input_ids"][2, -1] == 1  # right-padded with <pad>


def test_forced_tokens_are_checked():
    with pytest.raises(ValueError, match=r"^forced_bos_token_id: one token can be forced first"):
        GenerationConfig(forced_bos_token_id=[0, 1])
    with pytest.raises(ValueError, match=r"^forced_eos_token_id: must be a non-negative integer"):
        GenerationConfig(forced_eos_token_id=-2)
    model = zoo.create_model("bart-tiny")
    with pytest.raises(ValueError, match=r"^forced_bos_token_id: 500 is outside the model's vocab_size=97"):
        model.generate(torch.tensor([[5, 6]]), forced_bos_token_id=500)
    with pytest.raises(ConfigError, match=r"^forced_bos_token_id: 97 is outside vocab_size=97"):
        zoo.get_variant("bart-tiny").config.replace(forced_bos_token_id=97)


def test_decoder_shape_follows_the_encoder_unless_given():
    c = zoo.get_variant("bart-base").config
    assert (c.n_decoder_layers, c.n_decoder_heads, c.decoder_d_ff) == (6, 12, 3072)
    d = c.replace(n_layers=3, n_heads=8, d_ff=1024)
    assert (d.n_decoder_layers, d.n_decoder_heads, d.decoder_d_ff) == (3, 8, 1024)
    tiny = zoo.get_variant("bart-tiny").config
    assert tiny.replace(n_layers=3).n_decoder_layers == 1  # given, so kept
    with pytest.raises(ConfigError, match=r"^d_model: d_model=32 is not divisible by n_decoder_heads=5"):
        tiny.replace(n_decoder_heads=5)


@pytest.mark.parametrize(
    ("key", "value"), [("tie_word_embeddings", False), ("encoder_layerdrop", 0.1), ("activation_function", "mish")]
)
def test_switches_zoo_lacks_are_refused(tmp_path, key, value):
    model = zoo.create_model("bart-tiny")
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {key: value}))
    with pytest.raises(ConfigError, match=rf"^{key}: "):
        zoo.from_pretrained(tmp_path)
