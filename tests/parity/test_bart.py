"""BART against transformers' BartForConditionalGeneration: logits and encoder states on padded
batches in both directions of the conversion, attentions, and generate's token ids (greedy and
beam search, with forced BOS/EOS) on tiny random non-square models saved to disk and loaded
through zoo.from_pretrained."""

import json
from collections import Counter

import pytest
import torch
import transformers

import zoo
from tests.conftest import check_parity_tool_and_strict_export, randomize_, swap_decoder_queries
from zoo.parity import run_parity

pytestmark = pytest.mark.usefixtures("one_thread")

PAD, BOS, EOS = 1, 0, 2
# Non-square: d_ff != 4 d_model, an odd vocabulary, encoder and decoder of other depths, head
# counts and widths; scaled embeddings (off in the public checkpoints) so the switch is exercised;
# all three dropouts set (eval mode must ignore them).
BART = dict(vocab_size=97, d_model=32, encoder_layers=2, decoder_layers=3, encoder_attention_heads=4,
            decoder_attention_heads=2, encoder_ffn_dim=48, decoder_ffn_dim=40, max_position_embeddings=24,
            pad_token_id=PAD, bos_token_id=BOS, eos_token_id=EOS, decoder_start_token_id=EOS,
            forced_bos_token_id=BOS, forced_eos_token_id=EOS, scale_embedding=True, dropout=0.1,
            attention_dropout=0.1, activation_dropout=0.1)  # fmt: skip


def _random_bart(cls=transformers.BartForConditionalGeneration, **overrides):
    torch.manual_seed(0)
    ref = randomize_(cls(transformers.BartConfig(**(BART | overrides))), std=0.3)
    if hasattr(ref, "final_logits_bias"):
        # transformers 5 keeps the forced first token in generation_config.json only (as bart-large's).
        ref.generation_config.forced_bos_token_id = BOS
        with torch.no_grad():  # a buffer randomize_ skips
            ref.final_logits_bias.normal_(generator=torch.Generator().manual_seed(1))
    return ref


@pytest.fixture(scope="module")
def bart_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bart")
    _random_bart().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def pair(bart_dir):
    ref = transformers.BartForConditionalGeneration.from_pretrained(bart_dir, attn_implementation="eager").eval()
    return ref, zoo.from_pretrained(bart_dir)


def sources(seed: int = 0, lengths=(11, 7, 4), left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources of three lengths, padded with the pad token on the right as BART's tokenizer pads
    (or on the left): positions count the padding, so the offset-2 table is read past it."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 97, (len(lengths), max(lengths)), generator=g)
    mask = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        if left:
            mask[row, max(lengths) - n :] = 1
        else:
            mask[row, :n] = 1
    return ids.masked_fill(mask == 0, PAD), mask


def test_loads_as_the_bart_family(pair):
    _, model = pair
    c = model.config
    assert model.family == "bart" and model.task == "seq2seq_lm"
    assert (c.n_layers, c.n_decoder_layers, c.n_heads, c.n_decoder_heads, c.d_ff, c.decoder_d_ff) == (
        2,
        3,
        4,
        2,
        48,
        40,
    )
    assert (c.dropout, c.attn_dropout, c.act_dropout, c.scale_embedding) == (0.1, 0.1, 0.1, True)
    assert (c.forced_bos_token_id, c.forced_eos_token_id, c.decoder_start_token_id) == (BOS, EOS, EOS)
    assert model.encoder_pos.weight.shape == (24 + 2, 32)  # BART's offset of 2 rows


@pytest.mark.parametrize("left", [False, True], ids=["right-padded", "left-padded"])
def test_logits_match_transformers_on_padded_batches(pair, left):
    ref, model = pair
    ids, mask = sources(left=left)
    dec = torch.randint(3, 97, (3, 6), generator=torch.Generator().manual_seed(2))
    dec[:, 0] = EOS
    labels = torch.randint(3, 97, (3, 6), generator=torch.Generator().manual_seed(3))
    labels[2, 4:] = -100
    with torch.no_grad():
        ours = model(ids, mask, decoder_input_ids=dec, labels=labels, output_hidden_states=True)
        theirs = ref(
            input_ids=ids, attention_mask=mask, decoder_input_ids=dec, labels=labels, output_hidden_states=True
        )
        torch.testing.assert_close(ours.logits, theirs.logits, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.encoder_last_hidden_state, theirs.encoder_last_hidden_state, atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.last_hidden_state, theirs.decoder_hidden_states[-1], atol=1e-5, rtol=0)
        torch.testing.assert_close(ours.loss, theirs.loss, atol=1e-5, rtol=0)
        # labels alone: both shift them right behind the decoder start token (</s>).
        torch.testing.assert_close(
            model(ids, mask, labels=labels).logits, ref(input_ids=ids, attention_mask=mask, labels=labels).logits,
            atol=1e-5, rtol=0,
        )  # fmt: skip


def test_the_position_offset_and_the_embedding_norm_matter(pair):
    """Reading row p instead of p + 2, or skipping layernorm_embedding, changes the logits: the
    test above would catch a wrong offset or a missing norm."""
    ref, model = pair
    ids, mask = sources()
    dec = torch.full((3, 4), EOS)
    with torch.no_grad():
        want = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        model.decoder_pos.offset = 0
        moved = model(ids, mask, decoder_input_ids=dec).logits
        model.decoder_pos.offset = 2
        norm, model.encoder_embed_norm = model.encoder_embed_norm, torch.nn.Identity()
        unnormed = model(ids, mask, decoder_input_ids=dec).logits
        model.encoder_embed_norm = norm
    assert (moved - want).abs().max() > 1e-2 and (unnormed - want).abs().max() > 1e-2


def test_attentions_match_transformers_eager(pair):
    ref, model = pair
    ids, mask = sources(1)
    dec = torch.randint(3, 97, (3, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        theirs = ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, output_attentions=True)
        ours = model(ids, mask, decoder_input_ids=dec, output_attentions=True)
    # zoo lists the self-attentions in call order (encoder, then decoder), cross-attentions apart,
    # and by stack under transformers' names.
    assert len(ours.attentions) == 2 + 3 and len(ours.cross_attentions) == 3
    assert ours.encoder_attentions == ours.attentions[:2] and ours.decoder_attentions == ours.attentions[2:]
    real = mask.bool()[:, None, :, None]  # a padding query's row is never used
    for o, t in zip(ours.attentions[:2], theirs.encoder_attentions, strict=True):
        assert o.shape == t.shape == (3, 4, 11, 11)
        assert (o - t).abs()[real.expand_as(o)].max() < 1e-5
    for o, t in zip(ours.attentions[2:] + ours.cross_attentions, theirs.decoder_attentions + theirs.cross_attentions,
                    strict=True):  # fmt: skip
        assert o.shape == t.shape and (o - t).abs().max() < 1e-5
    assert ours.cross_attentions[0][1, :, :, 7:].abs().max() == 0  # nothing on source padding
    assert all(m.backend == "sdpa" for m in model.modules() if hasattr(m, "backend"))


def test_parity_tool_both_directions_and_strict_export(bart_dir, tmp_path):
    check_parity_tool_and_strict_export(bart_dir, transformers.BartForConditionalGeneration, tmp_path)


def test_a_wrong_mapping_is_caught(bart_dir, monkeypatch):
    """Swap the decoder's self- and cross-attention query projections (same shapes): the parity
    check must fail, so it is not passing by accident."""
    from zoo.families.bart import convert

    original = convert._layer_rules

    def swapped(p, side, cross):
        rules = original(p, side, cross)
        return swap_decoder_queries(rules) if cross else rules

    monkeypatch.setattr(convert, "_layer_rules", swapped)
    report = run_parity(bart_dir, dtypes=("float32",), roundtrip=False)
    assert not report.ok


def test_a_bart_model_checkpoint_without_head_loads_as_transformers_loads_it(tmp_path):
    """facebook/bart-base and bart-large are saved as BartModel: no ``model.`` prefix and no
    final_logits_bias. transformers loads them into BartForConditionalGeneration with a zero bias;
    so does zoo."""
    _random_bart(transformers.BartModel).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["BartModel"]
    ref = transformers.BartForConditionalGeneration.from_pretrained(tmp_path).eval()
    model = zoo.from_pretrained(tmp_path)
    assert model.logits_bias.abs().max() == 0
    ids, mask = sources(2)
    dec = torch.full((3, 3), EOS)
    with torch.no_grad():
        torch.testing.assert_close(
            model(ids, mask, decoder_input_ids=dec).logits,
            ref(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits,
            atol=1e-5, rtol=0,
        )  # fmt: skip


def _end_tokens(model, ids, mask, n=2) -> list[int]:
    """Tokens a free run produces in some rows but not all: as end tokens they stop rows at
    different steps (the repetition penalty keeps random tiny decoders from repeating one token)."""
    new = model.generate(ids, mask, max_new_tokens=16, eos_token_id=[], forced_eos_token_id=[],
                         repetition_penalty=1.5)[:, 2:]  # fmt: skip
    rows = Counter(t for row in new.tolist() for t in set(row))
    return [t for t, k in rows.most_common() if k < len(new) and t not in (PAD, BOS)][:n]


def _hf_generate(ref, ids, mask, **options):
    """transformers' generate with exactly these options: the model's own defaults (its forced
    tokens) are cleared for the call, since a None option falls back to them."""
    config = transformers.GenerationConfig(decoder_start_token_id=EOS, pad_token_id=PAD, do_sample=False, **options)
    saved = ref.generation_config
    ref.generation_config = transformers.GenerationConfig(decoder_start_token_id=EOS, pad_token_id=PAD)
    try:
        return ref.generate(input_ids=ids, attention_mask=mask, generation_config=config)
    finally:
        ref.generation_config = saved


P = dict(repetition_penalty=1.5)
CASES = {
    "greedy-forced-bos": dict(eos="none", forced_bos_token_id=BOS, **P),
    "greedy-eos-forced-eos": dict(eos="a", forced_bos_token_id=BOS, forced="eos", **P),
    "greedy-forced-eos-only": dict(eos="none", forced="a", **P),
    "beam-4-length-penalty-forced": dict(
        eos="a", forced="eos", forced_bos_token_id=BOS, num_beams=4, length_penalty=0.6, **P
    ),
    "beam-4-no-eos": dict(eos="none", num_beams=4, length_penalty=1.4),
    "beam-4-early-stopping": dict(eos="ab", forced="eos", num_beams=4, length_penalty=1.4, early_stopping=True, **P),
}


@pytest.mark.parametrize("options", CASES.values(), ids=CASES.keys())
def test_generate_is_token_identical_to_transformers(pair, options):
    ref, model = pair
    ids, mask = sources(4)
    options = dict(options)
    which, forced = options.pop("eos"), options.pop("forced", None)
    ends = _end_tokens(model, ids, mask)
    eos = [] if which == "none" else [ends[0]] if which == "a" else ends
    forced_eos = [] if forced is None else eos if forced == "eos" else [ends[0]]
    bos = options.pop("forced_bos_token_id", None)
    ours = model.generate(ids, mask, max_new_tokens=12, eos_token_id=eos, forced_eos_token_id=forced_eos,
                          forced_bos_token_id=[] if bos is None else bos, **options)  # fmt: skip
    theirs = _hf_generate(ref, ids, mask, max_new_tokens=12, eos_token_id=eos or None,
                          forced_eos_token_id=forced_eos or None, forced_bos_token_id=bos, **options)  # fmt: skip
    assert ours[:, 0].eq(EOS).all()  # the decoder start token, as transformers returns it
    assert ours.shape == theirs.shape and torch.equal(ours, theirs), (ours, theirs)
    assert ours.shape[1] > 4  # a real search, not one step to the end token
    if bos is not None:
        assert ours[:, 1].eq(BOS).all()
    if forced_eos and ours.shape[1] == 13:  # a row that ran to the limit ends in a forced end token
        assert all(row[-1] in forced_eos for row in ours.tolist() if PAD not in row)


def test_generate_defaults_are_transformers_defaults(pair):
    """With no options, zoo takes the end, pad and forced tokens from the config as transformers'
    generate does (forced <s> first, </s> at the length limit)."""
    ref, model = pair
    ids, mask = sources(6)
    ours = model.generate(ids, mask, max_new_tokens=8)
    theirs = ref.generate(input_ids=ids, attention_mask=mask, max_new_tokens=8)
    assert torch.equal(ours, theirs), (ours, theirs)
    assert ours[:, 1].eq(BOS).all()


def test_training_steps_match_transformers(tmp_path):
    """The backward too: the same weights trained with the same Adam steps on the same padded
    batches (dropout off) keep the same losses, so zoo's BART learns as transformers' does."""
    _random_bart(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0).save_pretrained(tmp_path)
    ref = transformers.BartForConditionalGeneration.from_pretrained(tmp_path, attn_implementation="eager").train()
    ours = zoo.from_pretrained(tmp_path).train()
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3) for m in (ref, ours)]
    losses = []
    for step in range(8):
        ids, mask = sources(step)
        labels = torch.randint(3, 97, (3, 6), generator=torch.Generator().manual_seed(100 + step))
        labels[2, 4:] = -100  # a shorter target: ignored positions
        pair_losses = []
        for model, opt in zip((ref, ours), opts, strict=True):
            loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            pair_losses.append(loss.item())
        losses.append(pair_losses)
    assert losses[-1][0] < losses[0][0]  # it trains
    for theirs, mine in losses:
        assert abs(theirs - mine) < 1e-4 * max(1.0, abs(theirs)), losses
