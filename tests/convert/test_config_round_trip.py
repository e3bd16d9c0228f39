"""Every config.json field zoo reads survives a load and an export; one it cannot honour is refused.

Each reference config sets its fields away from transformers' defaults (dropouts, eps, rope theta,
activation), so an export that writes a default in place of what was read is caught."""

import json

import pytest
import transformers

import zoo
from zoo.config import ConfigError
from zoo.hub import detect_family

CASES = {
    "gpt2": (transformers.GPT2LMHeadModel, transformers.GPT2Config(
        vocab_size=211, n_positions=64, n_embd=48, n_layer=2, n_head=4, n_inner=104, resid_pdrop=0.2,
        embd_pdrop=0.2, attn_pdrop=0.2, layer_norm_epsilon=1e-6, activation_function="relu",
        tie_word_embeddings=False)),
    "bert": (transformers.BertModel, transformers.BertConfig(
        vocab_size=211, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=104,
        max_position_embeddings=40, type_vocab_size=3, hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.3,
        layer_norm_eps=1e-6)),
    "llama": (transformers.LlamaForCausalLM, transformers.LlamaConfig(
        vocab_size=211, hidden_size=48, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=104, max_position_embeddings=64, rms_norm_eps=1e-6, rope_theta=5000.0,
        attention_dropout=0.1, tie_word_embeddings=True)),
    "vit": (transformers.ViTModel, transformers.ViTConfig(
        hidden_size=48, num_hidden_layers=2, num_attention_heads=4, intermediate_size=104, image_size=32,
        patch_size=8, hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.2, layer_norm_eps=1e-6)),
}  # fmt: skip


class _Reads(dict):
    """A config dict that records which keys the reader looks at."""

    def __init__(self, data):
        super().__init__(data)
        self.read = set()

    def __getitem__(self, key):
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key, default=None):
        self.read.add(key)
        return super().get(key, default)

    def __contains__(self, key):
        self.read.add(key)
        return super().__contains__(key)


@pytest.mark.parametrize("name", CASES)
def test_every_field_read_survives_load_and_export(tmp_path, name):
    cls, config = CASES[name]
    cls(config).save_pretrained(tmp_path / "ref")
    original = json.loads((tmp_path / "ref" / "config.json").read_text())
    reads = _Reads(original)
    detect_family(original, tmp_path).config_from_hf(reads)
    zoo.from_pretrained(tmp_path / "ref").save_pretrained(tmp_path / "out")
    written = json.loads((tmp_path / "out" / "config.json").read_text())
    # What zoo reads, and what it writes (a field written but never read is a made-up value),
    # among the fields the original has; both sides through transformers' own reader, so
    # equivalent spellings (rope_theta at the top level or inside rope_parameters) compare equal.
    keys = (reads.read | set(written)) & set(original)
    before = transformers.AutoConfig.from_pretrained(tmp_path / "ref").to_dict()
    after = transformers.AutoConfig.from_pretrained(tmp_path / "out").to_dict()
    lost = {k: (before.get(k), after.get(k)) for k in sorted(keys) if before.get(k) != after.get(k)}
    assert not lost, f"fields not written back as they were read (before, after): {lost}"


def test_gpt2_dropouts_that_differ_are_refused_by_name(tmp_path):
    _, config = CASES["gpt2"]
    hf = config.to_dict() | {"attn_pdrop": 0.0}
    with pytest.raises(ConfigError, match=r"attn_pdrop: GPT-2 checkpoint sets attn_pdrop=0.0 but resid_pdrop=0.2"):
        detect_family(hf, tmp_path).config_from_hf(hf)
