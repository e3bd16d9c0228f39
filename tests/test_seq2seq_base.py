"""The encoder-decoder base (zoo.seq2seq) on a tiny model built from blocks here: teacher forcing,
the cross-attention cache, an additive bias flowing through every base, and generation through
the shared decoding interface. Parity with a reference (transformers' Marian) is in
tests/families/test_transformer.py."""

from dataclasses import dataclass

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from tests.conftest import randomize_
from zoo.blocks import MLP, Attention, LearnedPositions, RelativePositionBias, TransformerLayer
from zoo.config import Config
from zoo.generation import Seq2SeqDecoder, stream
from zoo.seq2seq import Seq2SeqLM, shift_right

pytestmark = pytest.mark.usefixtures("one_thread")

V, PAD, EOS, START = 23, 1, 2, 0


@dataclass(frozen=True)
class TinyConfig(Config):
    vocab_size: int = V
    max_seq_len: int = 24
    pad_token_id: int = PAD
    eos_token_id: int = EOS
    decoder_start_token_id: int = START
    relative: bool = False  # T5-like buckets as the additive bias of both stacks


class Tiny(Seq2SeqLM):
    """2 encoder layers, 1 decoder layer, 4 heads of 6 channels on d_model 32 (n_heads * head_dim
    != d_model), learned positions with BART's offset, or T5-like relative biases."""

    family = "test"

    def __init__(self, config: TinyConfig):
        super().__init__(config)
        d, h = 32, 4

        def layer(cross: bool) -> TransformerLayer:
            return TransformerLayer(
                Attention(d, h, head_dim=6),
                MLP(d, 48),
                nn.LayerNorm(d),
                nn.LayerNorm(d),
                cross_attn=Attention(d, h, head_dim=6) if cross else None,
                norm_cross=nn.LayerNorm(d) if cross else None,
            )

        self.embed = nn.Embedding(V, d)
        self.pos = None if config.relative else LearnedPositions(config.max_seq_len, d, offset=2)
        self.enc_rel = RelativePositionBias(h, 8, 16, bidirectional=True) if config.relative else None
        self.dec_rel = RelativePositionBias(h, 8, 16, bidirectional=False) if config.relative else None
        self.encoder_layers = nn.ModuleList([layer(False) for _ in range(2)])
        self.encoder_norm = nn.LayerNorm(d)
        self.decoder_layers = nn.ModuleList([layer(True)])
        self.decoder_norm = nn.LayerNorm(d)

    def _embed(self, ids, positions):
        x = self.embed(ids)
        return x if self.pos is None else x + self.pos(positions)

    def embed_encoder(self, input_ids, position_ids):
        return self._embed(input_ids, position_ids)

    def embed_decoder(self, decoder_input_ids, position_ids):
        return self._embed(decoder_input_ids, position_ids)

    def head(self, hidden):
        return F.linear(hidden, self.embed.weight)

    def encoder_bias(self, q_idx, k_idx):
        return None if self.enc_rel is None else self.enc_rel(q_idx, k_idx)

    def decoder_bias(self, q_idx, k_idx):
        return None if self.dec_rel is None else self.dec_rel(q_idx, k_idx)


def tiny(relative: bool = False, seed: int = 0) -> Tiny:
    torch.manual_seed(seed)
    return randomize_(Tiny(TinyConfig(relative=relative)), seed=seed, std=0.3)


def sources(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Three sources of 7, 4 and 6 tokens, right-padded (as Marian and BART tokenizers pad)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (3, 7), generator=g)
    mask = torch.ones(3, 7, dtype=torch.long)
    mask[1, 4:] = 0
    mask[2, 6:] = 0
    return ids.masked_fill(mask == 0, PAD), mask


def test_labels_are_shifted_right_and_ignored_labels_dropped():
    model = tiny()
    ids, mask = sources()
    labels = torch.randint(3, V, (3, 5), generator=torch.Generator().manual_seed(1))
    labels[1, 3:] = -100
    dec = shift_right(labels, START, PAD)
    assert dec[:, 0].eq(START).all() and torch.equal(dec[0, 1:], labels[0, :-1])
    assert dec[1, 4] == PAD  # a shifted -100 becomes the pad token
    out = model(ids, mask, labels=labels)
    again = model(ids, mask, decoder_input_ids=dec)
    torch.testing.assert_close(out.logits, again.logits, atol=0, rtol=0)
    keep = labels != -100
    expected = F.cross_entropy(out.logits[keep], labels[keep])
    torch.testing.assert_close(out.loss, expected)
    smoothed = model(ids, mask, labels=labels, label_smoothing=0.1).loss
    assert smoothed > 0 and not torch.allclose(smoothed, out.loss)
    assert out.encoder_last_hidden_state.shape == (3, 7, 32)


def test_source_padding_is_masked_in_both_attentions():
    """A padded row decodes as the same row unpadded: the encoder and cross-attention ignore the pad keys."""
    model = tiny(relative=True)
    ids, mask = sources()
    dec = torch.randint(3, V, (3, 4), generator=torch.Generator().manual_seed(2))
    padded = model(ids, mask, decoder_input_ids=dec).logits
    alone = model(ids[1:2, :4], decoder_input_ids=dec[1:2]).logits
    torch.testing.assert_close(padded[1:2], alone, atol=1e-5, rtol=1e-5)
    garbage = model(ids.masked_fill(mask == 0, 7), mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(garbage, padded, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("relative", [False, True], ids=["learned positions", "relative bias"])
def test_cached_decoding_equals_uncached(relative):
    """Step by step with both caches (self-attention keys, cross-attention keys projected once) gives
    the logits of rerunning the whole target; with relative biases the decoder's bias must follow
    the cache offset for this to hold."""
    model = tiny(relative)
    ids, mask = sources()
    follow = torch.randint(3, V, (3, 6), generator=torch.Generator().manual_seed(3))
    runs = []
    for use_cache in (True, False):
        with torch.no_grad():
            state = Seq2SeqDecoder(model, ids, mask, max_new_tokens=6, use_cache=use_cache)
            steps = [state.logits()]
            for tokens in follow.T:
                state.append(tokens)
                steps.append(state.logits())
        runs.append(torch.stack(steps))
    torch.testing.assert_close(runs[0], runs[1], atol=1e-5, rtol=1e-5)
    full = model(ids, mask, decoder_input_ids=torch.cat([torch.full((3, 1), START), follow], 1)).logits
    torch.testing.assert_close(runs[0].transpose(0, 1), full.float(), atol=1e-5, rtol=1e-5)


def test_the_bias_reaches_every_layer_and_agrees_across_backends():
    model = tiny(relative=True)
    ids, mask = sources()
    dec = torch.randint(3, V, (3, 5), generator=torch.Generator().manual_seed(4))
    sdpa = model(ids, mask, decoder_input_ids=dec).logits
    eager = model.set_attention_backend("eager")(ids, mask, decoder_input_ids=dec).logits
    torch.testing.assert_close(sdpa, eager, atol=1e-5, rtol=1e-5)
    for rel in (model.enc_rel, model.dec_rel):
        with torch.no_grad():
            rel.embedding.weight.add_(0.5)  # a constant per head cancels in softmax: not a test
            rel.embedding.weight[:, 0].mul_(3)
        changed = model(ids, mask, decoder_input_ids=dec).logits
        assert not torch.allclose(changed, sdpa, atol=1e-3)
        sdpa = changed


def _count_calls(module: nn.Module) -> list[int]:
    counter = [0]
    module.register_forward_hook(lambda *_: counter.__setitem__(0, counter[0] + 1))
    return counter


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cross_attention_keys_are_projected_once_per_generate_call(num_beams):
    model = tiny()
    ids, mask = sources()
    cross_k = _count_calls(model.decoder_layers[0].cross_attn.k_proj)
    cross_v = _count_calls(model.decoder_layers[0].cross_attn.v_proj)
    self_k = _count_calls(model.decoder_layers[0].attn.k_proj)
    enc_k = _count_calls(model.encoder_layers[0].attn.k_proj)
    out = model.generate(ids, mask, max_new_tokens=8, num_beams=num_beams, eos_token_id=[])
    steps = out.shape[1] - 1
    assert steps == 8
    assert cross_k[0] == 1 and cross_v[0] == 1 and enc_k[0] == 1
    assert self_k[0] == steps  # the self-attention projects each new token once
    uncached_k = _count_calls(model.decoder_layers[0].cross_attn.k_proj)
    model.generate(ids, mask, max_new_tokens=8, num_beams=num_beams, eos_token_id=[], use_cache=False)
    assert uncached_k[0] == steps  # what the cache saves: one projection of the encoder output per step


@pytest.mark.parametrize("relative", [False, True], ids=["learned positions", "relative bias"])
@pytest.mark.parametrize("num_beams", [1, 4])
def test_generate_with_the_cache_gives_the_same_tokens(relative, num_beams):
    model = tiny(relative, seed=5)
    ids, mask = sources(5)
    beam = dict(num_beams=num_beams, length_penalty=0.7) if num_beams > 1 else {}
    cached = model.generate(ids, mask, max_new_tokens=10, **beam)
    uncached = model.generate(ids, mask, max_new_tokens=10, use_cache=False, **beam)
    assert torch.equal(cached, uncached)
    assert cached[:, 0].eq(START).all() and cached.shape[1] <= 11


def test_generation_options_serve_encoder_decoders():
    """min_new_tokens, sampling with a seed, streaming: the loops of decoder-only LMs, unchanged."""
    model = tiny(seed=6)
    ids, mask = sources(6)
    bias = torch.zeros(V)
    bias[EOS] = 50.0  # make the end token the greedy choice at every step
    head = model.head
    model.head = lambda h: head(h) + bias
    assert model.generate(ids, mask, max_new_tokens=5).tolist() == [[START, EOS]] * 3
    late = model.generate(ids, mask, max_new_tokens=5, min_new_tokens=3)
    assert (late[:, 1:4] != EOS).all() and late[:, 4].eq(EOS).all()
    model.head = head
    sampled = model.generate(ids, mask, max_new_tokens=6, do_sample=True, top_k=5, top_p=0.9, seed=0)
    assert torch.equal(sampled, model.generate(ids, mask, max_new_tokens=6, do_sample=True, top_k=5, top_p=0.9, seed=0))
    greedy = model.generate(ids, mask, max_new_tokens=6, eos_token_id=[])
    streamed = torch.stack(list(stream(model, ids, mask, max_new_tokens=6, eos_token_id=[])), dim=1)
    assert torch.equal(greedy[:, 1:], streamed)


def test_bad_inputs_are_named():
    model = tiny()
    ids, mask = sources()
    with pytest.raises(ValueError, match=r"^decoder_input_ids: give decoder_input_ids, or labels"):
        model(ids, mask)
    with pytest.raises(ValueError, match=r"^decoder_input_ids: id 99 is outside"):
        model(ids, mask, decoder_input_ids=torch.tensor([[0, 99]] * 3))
    with pytest.raises(ValueError, match=r"^attention_mask: expected shape \(3, 7\)"):
        model(ids, mask[:, :5], decoder_input_ids=ids)
    with pytest.raises(ValueError, match=r"^encoder_attention_mask: expected shape \(3, 7\)"):
        model.decode(ids[:, :2], model.encode(ids).last_hidden_state, mask[:, :3])
    with pytest.raises(ValueError, match=r"^max_new_tokens: the decoder start token \+ 30 new tokens"):
        model.generate(ids, mask, max_new_tokens=30)
    with pytest.raises(ValueError, match=r"^input_ids: the source has 25 tokens"):
        model.generate(torch.full((1, 25), 5), max_new_tokens=3)


def _alibi(n_heads: int):
    """ALiBi-like slopes (Press et al. 2022): -slope * distance, a bias that depends on absolute indices."""
    slopes = torch.tensor([0.5 ** (h + 1) for h in range(n_heads)])

    def bias(q_idx, k_idx):
        return -slopes[None, :, None, None] * (q_idx[:, None] - k_idx[None, :]).abs().float()  # (1, H, T, S)

    return bias


def test_the_bias_hook_flows_through_the_causal_lm_and_the_encoder_bases():
    """The same preamble gives CausalLM and Encoder an additive bias: it changes the outputs, and a
    causal LM's cached decoding still equals rerunning the prefix (the bias follows the cache offset)."""
    import zoo
    from zoo.generation import Decoder

    lm = randomize_(zoo.create_model("gpt2-tiny"), std=0.1)
    ids = torch.randint(0, lm.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(7))
    plain = lm(ids).logits
    lm.attention_bias = _alibi(lm.layers[0].attn.n_heads)
    biased = lm(ids).logits
    assert not torch.allclose(plain, biased, atol=1e-3)
    runs = []
    for use_cache in (True, False):
        with torch.no_grad():
            state = Decoder(lm, ids[:, :4], max_new_tokens=5, use_cache=use_cache)
            steps = [state.logits()]
            for t in range(4, 9):
                state.append(ids[:, t])
                steps.append(state.logits())
        runs.append(torch.stack(steps))
    torch.testing.assert_close(runs[0], runs[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(runs[0][:-1].transpose(0, 1), biased[:, 3:8].float(), atol=1e-5, rtol=1e-5)

    bert = randomize_(zoo.create_model("bert-tiny"), std=0.1)
    ids = torch.randint(0, bert.config.vocab_size, (2, 6), generator=torch.Generator().manual_seed(8))
    plain = bert(ids).last_hidden_state
    bert.attention_bias = _alibi(bert.layers[0].attn.n_heads)
    assert not torch.allclose(plain, bert(ids).last_hidden_state, atol=1e-3)
