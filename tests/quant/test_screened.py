"""The screened output projection (zoo.quant.ScreenedHead / screen_head): greedy tokens of an fp32
model from int8 codes, a proven error bound and fp32 rescoring of the candidates."""

import pytest
import torch
from torch.nn import functional as F

import zoo
import zoo.quant
from tests.conftest import randomize_
from zoo.families.gpt.model import GPTDoubleHeads
from zoo.quant import ScreenedHead, screen_head, unscreenable
from zoo.speculative import layer_skip_draft, quantized_draft, speculative_generate

pytestmark = pytest.mark.usefixtures("one_thread")


def _weights(V=1000, K=96, seed=0):
    """Rows of very different sizes (the bound is per row), and near-twins: row 2i+1 is row 2i
    changed by 0.1%, far below an int8 step, so their logits differ by less than the int8 error
    (and by far more than fp32 rounding, which would let differently ordered sums disagree)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(V, K, generator=g) * torch.logspace(-2, 0, V)[torch.randperm(V, generator=g)][:, None]
    w[1::2] = w[0::2] * (1 + 1e-3 * torch.randn(V // 2, K, generator=g))
    return w, torch.randn(V, generator=g) * 0.1


@pytest.mark.parametrize("with_bias", [False, True])
def test_the_bound_holds_and_the_argmax_is_exact(with_bias):
    w, b = _weights()
    bias = b if with_bias else None
    head = ScreenedHead(w, bias)
    g = torch.Generator().manual_seed(1)
    wrong_without_screening = 0
    for scale in (0.1, 1.0, 30.0):
        h = torch.randn(64, w.shape[1], generator=g) * scale
        exact = F.linear(h, w, bias)
        approx, bound = head.approximate(h)
        assert ((approx - exact).abs() <= bound).all()
        keep = head.candidates(h)
        assert keep.gather(1, exact.argmax(1, keepdim=True)).all()  # the true argmax is always a candidate
        assert keep.sum(1).max() < w.shape[0] // 8  # and few others are
        assert torch.equal(head.argmax(h), exact.argmax(1))
        wrong_without_screening += int((approx.argmax(1) != exact.argmax(1)).sum())
    assert head.fallbacks == 0
    # The near-twin rows make the int8 logits alone pick wrongly: the rescoring is what makes it exact.
    assert wrong_without_screening > 10


def test_a_bound_without_the_measured_error_misses_the_argmax(monkeypatch):
    """The test above can fail: with the quantization error and rounding left out of the bound,
    the bound is broken and the near-twins' true argmax is missed for some rows."""
    w, _ = _weights()
    head = ScreenedHead(w)
    for t in (head.max_error, head.l2_error, head.input_coef):
        t.zero_()
    monkeypatch.setattr(zoo.quant, "_ROUNDING", 0.0)
    h = torch.randn(64, w.shape[1], generator=torch.Generator().manual_seed(1))
    approx, bound = head.approximate(h)
    assert not ((approx - F.linear(h, w)).abs() <= bound).all()
    assert not torch.equal(head.argmax(h), F.linear(h, w).argmax(1))


def test_too_many_candidates_run_the_full_product():
    w = torch.ones(64, 32)  # every logit equal: all 64 are candidates
    w[5] += 1e-7
    head = ScreenedHead(w)
    h = torch.ones(2, 32)
    assert torch.equal(head.argmax(h), F.linear(h, w).argmax(1)) and head.fallbacks == 1


TINY = {
    "gpt2-tiny": dict(d_model=64, n_heads=4, d_ff=128),  # tied output projection
    "llama-tiny": dict(d_model=64, head_dim=16, d_ff=96),  # its own lm_head, GQA
    "mixtral-tiny": dict(d_model=64, head_dim=16, d_ff=64),
}


def _model(name):
    torch.manual_seed(0)
    return randomize_(zoo.create_model(name, **TINY[name]), std=0.08).eval()


@pytest.mark.parametrize("name", list(TINY))
def test_greedy_generate_gives_the_unscreened_tokens(name):
    model = _model(name)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, :4] = 0  # a left-padded row
    plain = model.generate(ids, attention_mask=mask, max_new_tokens=10)
    one = model.generate(ids[:1], max_new_tokens=10)
    head = screen_head(model)
    assert torch.equal(model.generate(ids, attention_mask=mask, max_new_tokens=10), plain)
    assert torch.equal(model.generate(ids[:1], max_new_tokens=10), one)
    assert head.calls == 20 and head.builds == 1  # one per step: the screened path ran every step
    # Processing that can change the argmax, sampling and beam search take the full logits.
    for options in (dict(repetition_penalty=1.3), dict(do_sample=True, seed=3), dict(num_beams=2)):
        screened = model.generate(ids[:1], max_new_tokens=6, **options)
        screen_head(model, enabled=False)
        assert torch.equal(screened, model.generate(ids[:1], max_new_tokens=6, **options)), options
        screen_head(model)
    assert model.__dict__["screened_head"].calls == 0
    # min_new_tokens bans the end token for its first steps only: the logits then, screening after.
    head = model.__dict__["screened_head"]
    banned = model.generate(ids[:1], max_new_tokens=6, min_new_tokens=2, eos_token_id=int(one[0, 12]))
    assert head.calls == 4
    screen_head(model, enabled=False)
    assert torch.equal(
        banned, model.generate(ids[:1], max_new_tokens=6, min_new_tokens=2, eos_token_id=int(one[0, 12]))
    )


def test_changed_weights_rebuild_the_codes():
    model = _model("llama-tiny")
    ids = torch.randint(0, model.config.vocab_size, (1, 8), generator=torch.Generator().manual_seed(0))
    head = screen_head(model)
    model.generate(ids, max_new_tokens=2)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)  # a step large enough to change the greedy tokens
    model.train()
    model(ids, labels=ids).loss.backward()
    opt.step()
    model.eval()
    with torch.no_grad():  # replaced through .data, no version bump: noticed by the sampled values
        model.layers[0].attn.o_proj.weight.data = model.layers[0].attn.o_proj.weight.data * 1.5
    screened = model.generate(ids, max_new_tokens=8)
    assert head.builds == 2
    with torch.no_grad():
        model.lm_head.weight.data = model.lm_head.weight.data.flip(0)
    screened2 = model.generate(ids, max_new_tokens=8)
    assert head.builds == 3
    screen_head(model, enabled=False)
    assert torch.equal(screened2, model.generate(ids, max_new_tokens=8))
    with torch.no_grad():
        model.lm_head.weight.data = model.lm_head.weight.data.flip(0)
    assert torch.equal(screened, model.generate(ids, max_new_tokens=8))


def test_nothing_is_saved_or_exported_with_it(tmp_path):
    model = _model("gpt2-tiny")
    keys = set(model.state_dict())
    screen_head(model)
    assert set(model.state_dict()) == keys
    assert "screened_head" not in dict(model.named_modules())


@pytest.mark.parametrize("name", ["gpt2-tiny", "llama-tiny"])
def test_speculative_verification_through_the_screened_head(name):
    target = _model(name)
    ids = torch.randint(0, target.config.vocab_size, (1, 10), generator=torch.Generator().manual_seed(2))
    alone = target.generate(ids, max_new_tokens=16)
    head = screen_head(target)
    for draft in (quantized_draft(target, "int8"), layer_skip_draft(target, 1)):
        before = head.calls
        out, stats = speculative_generate(target, draft, ids, max_new_tokens=16, k=3)
        assert torch.equal(out, alone)
        assert head.calls - before >= stats.target_forwards  # verification (and the layer-skip draft) screened
    assert "screened_head" not in quantized_draft(target, "int8").__dict__  # the draft has its own head


def test_refused_where_it_cannot_serve():
    assert unscreenable(_model("llama-tiny")) is None  # what the CLI asks before screening by default
    assert "already quantized" in unscreenable(zoo.quantize(_model("llama-tiny"), "int8"))
    with pytest.raises(ValueError, match="already quantized"):
        screen_head(zoo.quantize(_model("llama-tiny"), "int8"))
    with pytest.raises(ValueError, match=r"float32 CPU weight.*bfloat16"):
        screen_head(_model("llama-tiny").to(torch.bfloat16))
    with pytest.raises(ValueError, match="decoder-only zoo model"):
        screen_head(zoo.create_model("t5-tiny"))
    with pytest.raises(ValueError, match=r"GPTDoubleHeads \(double_heads\) needs its logits"):
        screen_head(GPTDoubleHeads(zoo.create_model("gpt1-tiny").config))
    model = _model("llama-tiny")
    with pytest.raises(ValueError, match="labels: the loss needs the logits"):
        model(torch.zeros(1, 4, dtype=torch.long), labels=torch.zeros(1, 4, dtype=torch.long), compute_logits=False)
