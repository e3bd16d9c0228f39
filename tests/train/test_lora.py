"""LoRA by module name: on every registered family, merge equals unmerged, small adapter files."""

import pytest
import torch

import zoo
from tests.conftest import randomize_, tiny_test_variants
from tests.train.conftest import config, lm_examples, tiny_gpt
from zoo.blocks import Attention
from zoo.lora import LoRALinear, apply_lora, load_adapter, merge_lora, save_adapter
from zoo.registry import get_family
from zoo.train import CausalLMTask, Trainer

ATTENTION = ["attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj"]


def _inputs(model) -> dict:
    """The batch the family's parity spec builds for it (token ids, images, or both)."""
    return get_family(model.family).parity.make_inputs(model, torch.Generator().manual_seed(0))


def _out(model, inputs) -> torch.Tensor:
    """Every output the family's parity spec compares, flattened into one vector."""
    outputs = get_family(model.family).parity.run_zoo(model, inputs)
    return torch.cat([v.float().flatten() for _, v in sorted(outputs.items())])


def _randomize_adapters(model) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(0.3 * torch.randn(m.lora_B.shape, generator=g))  # B starts at 0; make it count


@pytest.mark.parametrize("name", tiny_test_variants())
def test_merge_equals_unmerged_on_every_family(name):
    torch.manual_seed(0)
    model = randomize_(zoo.create_model(name))
    inputs = _inputs(model)
    with torch.no_grad():
        base = _out(model, inputs)
    adapted = apply_lora(model, ATTENTION, r=4, alpha=8)
    # attn.* names the self-attention; an encoder-decoder's cross_attn.* is another name.
    self_attention = [m for n, m in model.named_modules() if isinstance(m, Attention) and not n.endswith("cross_attn")]
    assert len(adapted) == 4 * len(self_attention)
    with torch.no_grad():
        same = _out(model, inputs)
        _randomize_adapters(model)
        unmerged = _out(model, inputs)
    torch.testing.assert_close(same, base, atol=1e-6, rtol=0)  # B = 0 at the start: no change
    assert (unmerged - base).abs().max() > 1e-3  # the adapters do something
    merge_lora(model)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())
    with torch.no_grad():
        merged = _out(model, inputs)
    torch.testing.assert_close(merged, unmerged, atol=2e-5, rtol=1e-5)


def test_only_adapters_train_and_the_base_stays(run_dir):
    model = tiny_gpt()
    apply_lora(model, ["attn.q_proj", "attn.v_proj", "mlp.up"], r=4)
    base = {n: p.detach().clone() for n, p in model.named_parameters() if not n.split(".")[-1].startswith("lora_")}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"layers.{i}.{m}.lora_{x}" for i in range(2) for m in ("attn.q_proj", "attn.v_proj", "mlp.up")
                         for x in "AB"}  # fmt: skip
    result = Trainer(model, CausalLMTask(), lm_examples(12), config(steps=6, lr=1e-2), run_dir).fit()
    assert result.losses[-1] < result.losses[0]
    for n, p in model.named_parameters():
        if n in base:
            assert torch.equal(p, base[n]), n
    saved = set(__import__("zoo.train.checkpoint", fromlist=["x"]).load_checkpoint(result.checkpoint)["model"])
    assert saved == trainable  # the training checkpoint holds the adapters, not the frozen model


def test_adapter_files_are_small_and_load_back(tmp_path):
    model = randomize_(tiny_gpt())
    apply_lora(model, ["attn.q_proj", "attn.v_proj"], r=2, train_also=["norm.*"])
    _randomize_adapters(model)
    inputs = _inputs(model)
    with torch.no_grad():
        expected = model(**inputs).logits
    save_adapter(model, tmp_path / "adapter")
    zoo.save_pretrained(merge_lora(model), tmp_path / "full", format="zoo")
    adapter_bytes = (tmp_path / "adapter" / "adapter.safetensors").stat().st_size
    full_bytes = (tmp_path / "full" / "model.safetensors").stat().st_size
    assert adapter_bytes < 0.1 * full_bytes, (adapter_bytes, full_bytes)

    fresh = randomize_(tiny_gpt())  # the same base weights (same seed), no adapters yet
    load_adapter(fresh, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs).logits, expected, atol=1e-6, rtol=0)
    assert fresh.norm.weight.requires_grad and not fresh.embed.weight.requires_grad


def test_a_target_that_matches_nothing_is_named():
    with pytest.raises(ValueError, match=r"targets: 'attn\.qkv' matches no linear layer.*attn\.q_proj"):
        apply_lora(tiny_gpt(), ["attn.qkv"])
    with pytest.raises(ValueError, match=r"train_also: 'head' matches no parameter"):
        apply_lora(tiny_gpt(), ["attn.q_proj"], train_also=["head"])
