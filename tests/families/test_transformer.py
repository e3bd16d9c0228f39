"""The original Transformer against transformers' MarianMTModel, its nearest public reference: logits
on padded batches in both directions of the conversion, and generate's token ids (greedy and beam
search) on tiny random non-square models saved to disk and loaded through zoo.from_pretrained."""

import json
from collections import Counter

import pytest
import torch
import transformers

import zoo
from tests.conftest import check_parity_tool_and_strict_export, randomize_, swap_decoder_queries
from zoo.config import ConfigError
from zoo.parity import run_parity

pytestmark = pytest.mark.usefixtures("one_thread")

PAD, EOS = 96, 0
# Non-square: d_ff != 4 d_model, an odd vocabulary, encoder and decoder of other depths, head
# counts and widths; swish and scaled embeddings as opus-mt.
MARIAN = dict(vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
              decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=40, max_position_embeddings=64,
              pad_token_id=PAD, eos_token_id=EOS, decoder_start_token_id=PAD, forced_eos_token_id=None,
              activation_function="swish", scale_embedding=True)  # fmt: skip


@pytest.fixture(scope="module")
def marian_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("marian")
    torch.manual_seed(0)
    ref = randomize_(transformers.MarianMTModel(transformers.MarianConfig(**MARIAN)), std=0.3)
    with torch.no_grad():
        ref.final_logits_bias.normal_(generator=torch.Generator().manual_seed(1))  # a buffer randomize_ skips
    ref.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pair(marian_dir):
    ref = transformers.MarianMTModel.from_pretrained(marian_dir, attn_implementation="eager").eval()
    return ref, zoo.from_pretrained(marian_dir)


def sources(seed: int = 0, lengths=(11, 7, 4)) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources of three lengths, right-padded as MarianTokenizer pads (pad ids as the pad token)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, PAD, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return ids.masked_fill(mask == 0, PAD), mask


def test_loads_as_the_transformer_family(pair):
    _, model = pair
    c = model.config
    assert model.family == "transformer" and model.task == "seq2seq_lm"
    assert (c.n_layers, c.decoder_layers, c.n_heads, c.decoder_heads, c.d_ff, c.decoder_ff) == (2, 3, 4, 2, 48, 40)
    assert c.sinusoid_layout == "halves" and c.mlp == "silu" and c.scale_embedding


def test_logits_match_marian_on_padded_batches(pair):
    ref, model = pair
    ids, mask = sources()
    dec = torch.randint(1, PAD, (3, 6), generator=torch.Generator().manual_seed(2))
    dec[:, 0] = PAD
    labels = torch.randint(1, PAD, (3, 6), generator=torch.Generator().manual_seed(3))
    labels[2, 4:] = -100
    with torch.no_grad():
        ours = model(ids, mask, decoder_input_ids=dec, labels=labels)
        theirs = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, labels=labels)
        torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.encoder_last_hidden_state, theirs.encoder_last_hidden_state, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=0)
        # labels alone: both shift them right behind the decoder start token (the pad token).
        torch.testing.assert_close(
            model(ids, mask, labels=labels).logits, ref(input_ids=ids, attention_mask=mask, labels=labels).logits,
            atol=1e-5, rtol=0,
        )  # fmt: skip


def test_parity_tool_both_directions_and_strict_export(marian_dir, tmp_path):
    check_parity_tool_and_strict_export(marian_dir, transformers.MarianMTModel, tmp_path)


def test_a_wrong_mapping_is_caught(marian_dir, monkeypatch):
    """Swap the decoder's self- and cross-attention query projections (same shapes): the parity
    check must fail, so it is not passing by accident."""
    from zoo.families.transformer import convert

    original = convert._layer_rules

    def swapped(side, cross):
        rules = original(side, cross)
        return swap_decoder_queries(rules) if cross else rules

    monkeypatch.setattr(convert, "_layer_rules", swapped)
    report = run_parity(marian_dir, dtypes=("float32",), roundtrip=False)
    assert not report.ok


def _end_tokens(model, ids, mask, n=2) -> list[int]:
    """Tokens a free run produces after its first step in some rows but not all: as end tokens they
    stop rows at different steps. (Random tiny decoders soon repeat one token; the repetition
    penalty used with them below keeps the outputs varied.)"""
    new = model.generate(ids, mask, max_new_tokens=16, eos_token_id=[], repetition_penalty=1.5)[:, 2:]
    rows = Counter(t for row in new.tolist() for t in set(row))
    return [t for t, k in rows.most_common() if k < len(new) and t != PAD][:n]


def _hf_generate(ref, ids, mask, **options):
    config = transformers.GenerationConfig(
        decoder_start_token_id=PAD, pad_token_id=PAD, do_sample=False, **options
    )  # no forced_eos_token_id or bad_words_ids: zoo applies neither (see docs/families/transformer.md)
    return ref.generate(input_ids=ids, attention_mask=mask, generation_config=config)


P = dict(repetition_penalty=1.5)
CASES = {
    "greedy-no-eos": dict(eos="none"),
    "greedy-eos": dict(eos="a", **P),
    "greedy-min-new": dict(eos="a", min_new_tokens=5, **P),
    "beam-4-no-eos": dict(eos="none", num_beams=4, length_penalty=0.6),
    "beam-4-length-penalty": dict(eos="a", num_beams=4, length_penalty=0.6, **P),
    "beam-4-early-stopping": dict(eos="a", num_beams=4, length_penalty=1.4, early_stopping=True, **P),
    "beam-3-two-eos": dict(eos="ab", num_beams=3, **P),
}


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_generate_is_token_identical_to_marian(pair, options):
    ref, model = pair
    ids, mask = sources(4)
    options = dict(options)
    which = options.pop("eos")
    ends = _end_tokens(model, ids, mask)
    eos = [] if which == "none" else ends[0] if which == "a" else ends
    ours = model.generate(ids, mask, max_new_tokens=14, eos_token_id=eos, **options)
    theirs = _hf_generate(ref, ids, mask, max_new_tokens=14, eos_token_id=eos or None, **options)
    assert ours[:, 0].eq(PAD).all()  # the decoder start token, as transformers returns it
    assert ours.shape == theirs.shape and torch.equal(ours, theirs), (ours, theirs)
    assert ours.shape[1] > 4  # a real search, not one step to the end token
    if which == "a" and options.get("num_beams", 1) == 1:
        ended = (ours[:, 1:] == eos).any(dim=1)
        assert ended.any() and not ended.all()  # some rows stopped early, others ran on


def test_cached_generation_equals_uncached(pair):
    _, model = pair
    ids, mask = sources(5)
    for beams in (dict(), dict(num_beams=4, length_penalty=0.6)):
        cached = model.generate(ids, mask, max_new_tokens=12, eos_token_id=[], **beams)
        assert torch.equal(
            cached, model.generate(ids, mask, max_new_tokens=12, eos_token_id=[], use_cache=False, **beams)
        )


def test_marian_switches_zoo_lacks_are_refused(tmp_path):
    cfg = transformers.MarianConfig(**(MARIAN | {"share_encoder_decoder_embeddings": False}))
    (tmp_path / "config.json").write_text(json.dumps(cfg.to_dict() | {"architectures": ["MarianMTModel"]}))
    transformers.MarianMTModel(transformers.MarianConfig(**MARIAN)).save_pretrained(tmp_path / "w")
    (tmp_path / "model.safetensors").write_bytes((tmp_path / "w" / "model.safetensors").read_bytes())
    with pytest.raises(ConfigError, match=r"share_encoder_decoder_embeddings: the Marian checkpoint sets"):
        zoo.from_pretrained(tmp_path)


def test_the_papers_layout_is_refused_by_marian_export(tmp_path):
    model = zoo.create_model("transformer-tiny", sinusoid_layout="interleaved")
    with pytest.raises(ConfigError, match=r"^sinusoid_layout: Marian stores the sinusoids as \[sin \| cos\] halves"):
        model.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path / "zoo", format="zoo")
    assert zoo.from_pretrained(tmp_path / "zoo").config.sinusoid_layout == "interleaved"


def test_paper_variants_have_table_3_shapes():
    base, big = zoo.get_variant("transformer-base").config, zoo.get_variant("transformer-big").config
    assert (base.n_layers, base.decoder_layers, base.d_model, base.d_ff, base.n_heads, base.dropout) == (
        6, 6, 512, 2048, 8, 0.1,
    )  # fmt: skip
    assert (big.n_layers, big.d_model, big.d_ff, big.n_heads, big.dropout) == (6, 1024, 4096, 16, 0.3)
    assert base.sinusoid_layout == "interleaved" and base.mlp == "relu" and base.scale_embedding
    # ~65M parameters in the paper's Table 3 with a 37000-token vocabulary shared three ways.
    with torch.device("meta"):  # counts only
        n = zoo.create_model("transformer-base").num_parameters()
    assert 60e6 < n < 65e6, n


def test_lora_by_module_name_and_activation_checkpointing():
    """The shared names reach both stacks (``attn.q_proj`` is self-attention's, ``cross_attn.q_proj``
    the decoder's cross-attention), and recomputing activations in backward gives the gradients of
    storing them."""
    from zoo.lora import apply_lora

    ids, mask = sources(6)
    labels = torch.randint(1, PAD, (3, 5), generator=torch.Generator().manual_seed(7))
    model = randomize_(zoo.create_model("transformer-tiny"), std=0.3).train()
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)  # the same dropout masks in both runs
        model.zero_grad()
        model.set_gradient_checkpointing(checkpointing)(ids, mask, labels=labels).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-6, rtol=1e-5, msg=name)
    adapted = apply_lora(model, ["attn.q_proj", "attn.v_proj", "cross_attn.q_proj"], r=2)
    assert sum(n.startswith("encoder_layers.") for n in adapted) == 4  # 2 layers x (q, v)
    assert sorted(n for n in adapted if n.startswith("decoder_layers.")) == [
        "decoder_layers.0.attn.q_proj", "decoder_layers.0.attn.v_proj", "decoder_layers.0.cross_attn.q_proj",
    ]  # fmt: skip
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora" in n for n in trainable)
